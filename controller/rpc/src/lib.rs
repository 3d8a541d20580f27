//! Mica's RPC layer: the contract between the controller (API, scheduler,
//! conductor) and the compute agents, and the two transports it runs on.
//!
//! - **`call`**: request and reply, matched by a correlation id, with a
//!   timeout. **`cast`**: fire and forget, durable.
//! - **Topics** ([`Topic`]): `conductor`, `scheduler`, `compute.<host>` and
//!   the fanout to every compute agent.
//! - **Transports**, chosen by URL: `amqp://user:pass@host:port/vhost`
//!   (RabbitMQ) in production, `memory://<name>` in the all-in-one process.
//!   Both carry the same JSON [`Envelope`] and follow the same rules.
//! - **Servers** register typed async handlers per method in a
//!   [`Dispatcher`] and serve them on [`Subscription`]s.
//!
//! # A caller
//!
//! ```no_run
//! use std::time::Duration;
//! use mica_rpc::{Rpc, RpcError, Topic};
//!
//! #[derive(serde::Serialize)]
//! struct GetConsoleOutput { vmm_id: String, length: Option<u32> }
//! #[derive(serde::Deserialize)]
//! struct ConsoleOutput { output: String }
//!
//! # async fn example() -> Result<(), RpcError> {
//! let rpc = Rpc::connect("amqp://mica:mica@127.0.0.1:5672/mica").await?;
//! let req = GetConsoleOutput { vmm_id: "5c2e…".into(), length: Some(50) };
//! let out: ConsoleOutput = rpc
//!     .with_request_id("req-1234")
//!     .call(Topic::compute("node-3"), "get_console_output", &req, Duration::from_secs(30))
//!     .await?;
//! rpc.cast(Topic::conductor(), "instance_update", &serde_json::json!({"uuid": "…"})).await?;
//! # let _ = out.output; Ok(()) }
//! ```
//!
//! # A server (a compute agent)
//!
//! ```no_run
//! use mica_rpc::{Dispatcher, RemoteError, Rpc, RpcError, Subscription, Version};
//! # #[derive(serde::Deserialize)] struct GetConsoleOutput { vmm_id: String }
//! # #[derive(serde::Serialize)] struct ConsoleOutput { output: String }
//!
//! # async fn example() -> Result<(), RpcError> {
//! let rpc = Rpc::connect("memory://").await?;
//! let dispatcher = Dispatcher::new(Version::new(1, 0))
//!     .handle("get_console_output", |_ctx, req: GetConsoleOutput| async move {
//!         if req.vmm_id.is_empty() {
//!             return Err(RemoteError::new("vmm_not_found", "no such VMM"));
//!         }
//!         Ok(ConsoleOutput { output: String::new() })
//!     });
//! let server = rpc.serve(Subscription::compute_host("node-3"), dispatcher).await?;
//! // … until the agent stops:
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Typed methods
//!
//! A [`Method`] ties a name to its request and response types, so both sides
//! share one definition (the conductor and agent issues define theirs):
//!
//! ```
//! use mica_rpc::{Method, Version};
//! pub struct Ping;
//! impl Method for Ping {
//!     const NAME: &'static str = "ping";
//!     const VERSION: Version = Version::new(1, 0);
//!     type Request = String;
//!     type Response = String;
//! }
//! // rpc.call_method::<Ping>(Topic::conductor(), &"hello".into(), timeout)
//! // Dispatcher::new(v).handle_method::<Ping>(|_ctx, s: String| async move { Ok::<_, RemoteError>(s) })
//! ```
//!
//! # Semantics worth knowing
//! - Casts are **at least once**: persistent, confirmed by the broker, retried
//!   across reconnections for up to [`RpcOptions::publish_timeout`], acked by
//!   the server only after the handler returns. A handler may see a message
//!   twice (same [`Context::id`], [`Context::redelivered`] set); handlers
//!   must be idempotent, as the conductor's saga steps are.
//! - Calls are **at most once from the caller's view**: a call either gets
//!   its reply, a [`RemoteError`], [`RpcError::Timeout`],
//!   [`RpcError::Unavailable`] (the request could not be sent at all), or
//!   [`RpcError::ConnectionLost`] (the connection dropped after the request
//!   was sent: it may or may not have run). Call requests expire in their
//!   queue with the call's timeout, so a server that comes back late does not
//!   run calls nobody waits for.
//! - Handlers, for calls as for casts, may run more than once: a server
//!   whose connection drops before its ack has the message redelivered (a
//!   second reply to a call is ignored by the caller). Make them idempotent
//!   or read-only.
//! - Handlers should return within minutes. Long work (a build) is handed to
//!   a task and its outcome reported by a cast to the conductor: RabbitMQ
//!   closes the channel of a consumer that holds a message unacked longer
//!   than its `consumer_timeout` (30 minutes by default), which redelivers it.
//! - Handler errors travel back as [`RemoteError`] (code, message, optional
//!   typed data). Messages that cannot be handled at all go to the
//!   dead-letter queue ([`Rpc::take_dead_letters`]) with a log line; the
//!   server keeps running.
//! - Versioning rules: see [`envelope`].
//!
//! # Interfaces
//! [`compute`] (what the conductor asks of an agent) and [`conductor`] (what
//! agents report) define Mica's methods with their request and response types.

mod backoff;
pub mod compute;
pub mod conductor;
pub mod envelope;
mod error;
pub mod metadata;
mod pending;
mod server;
mod topic;
mod transport;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

pub use envelope::{Envelope, Kind, Outcome, Version};
pub use error::{RemoteError, RpcError, codes};
pub use server::{Context, Dispatcher, Handler, Server};
pub use topic::{Subscription, Topic};
pub use transport::DeadLetter;

use pending::{Lost, Pending};
use transport::{OutMessage, Transport};

/// A method of an RPC interface: its name, the interface version that
/// introduced its current shape, and its request and response types.
pub trait Method {
    /// The method name on the wire.
    const NAME: &'static str;
    /// The interface version a sender needs for this method.
    const VERSION: Version = Version::new(1, 0);
    /// The request.
    type Request: Serialize + DeserializeOwned + Send + 'static;
    /// The response (`()` for methods only ever cast).
    type Response: Serialize + DeserializeOwned + Send + 'static;
}

/// Tunables. Every process on one bus must agree on `namespace` and
/// `queue_expiry`.
#[derive(Debug, Clone)]
pub struct RpcOptions {
    /// Prefix of every queue and exchange name (`mica`).
    pub namespace: String,
    /// Messages a server handles at once, per subscription (16).
    pub prefetch: u16,
    /// How long a cast waits for the broker (through reconnections) before
    /// failing with [`RpcError::Unavailable`] (60 s).
    pub publish_timeout: Duration,
    /// How long [`Rpc::connect`] tries to reach the broker (30 s).
    pub connect_timeout: Duration,
    /// First delay between reconnection attempts (100 ms); it doubles…
    pub reconnect_min: Duration,
    /// …up to this (5 s).
    pub reconnect_max: Duration,
    /// AMQP: delete durable queues unused (no consumer, no publish) for this
    /// long (RabbitMQ `x-expires`). `None` (the default) keeps them forever.
    /// Meant for tests and short-lived deployments.
    pub queue_expiry: Option<Duration>,
    /// AMQP: the connection name shown by RabbitMQ (`mica-rpc`).
    pub connection_name: Option<String>,
}

impl Default for RpcOptions {
    fn default() -> Self {
        Self {
            namespace: "mica".into(),
            prefetch: 16,
            publish_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(30),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            queue_expiry: None,
            connection_name: None,
        }
    }
}

/// A handle on the bus. Cheap to clone; clones share one connection. The
/// connection closes when the last clone (and the last [`Server`]) is gone.
#[derive(Clone)]
pub struct Rpc {
    inner: Arc<Inner>,
    request_id: Option<String>,
    version: Version,
}

struct Inner {
    transport: Transport,
    pending: Arc<Pending>,
    options: RpcOptions,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.transport.close();
    }
}

impl Rpc {
    /// Connects to `amqp://…` or `memory://<name>` with default options.
    pub async fn connect(url: &str) -> Result<Rpc, RpcError> {
        Self::connect_with(url, RpcOptions::default()).await
    }

    /// Connects with `options`. For AMQP, the first connection is made here
    /// (retried until `connect_timeout`); later losses are repaired on their
    /// own.
    pub async fn connect_with(url: &str, options: RpcOptions) -> Result<Rpc, RpcError> {
        topic::validate_service(&options.namespace)?;
        let pending = Arc::new(Pending::default());
        let transport = Transport::open(url, &options, pending.clone()).await?;
        Ok(Rpc {
            inner: Arc::new(Inner {
                transport,
                pending,
                options,
            }),
            request_id: None,
            version: Version::default(),
        })
    }

    /// This handle, sending `request_id` with every message (servers put it
    /// in their log spans).
    #[must_use]
    pub fn with_request_id(&self, request_id: impl Into<String>) -> Rpc {
        Rpc {
            request_id: Some(request_id.into()),
            ..self.clone()
        }
    }

    /// This handle, sending `version` as the interface version of `call`s and
    /// `cast`s (1.0 by default).
    #[must_use]
    pub fn with_version(&self, version: Version) -> Rpc {
        Rpc {
            version,
            ..self.clone()
        }
    }

    /// The options in use.
    pub fn options(&self) -> &RpcOptions {
        &self.inner.options
    }

    pub(crate) fn transport(&self) -> &Transport {
        &self.inner.transport
    }

    /// Calls `method` on a server of `topic` and waits up to `timeout` for
    /// its reply. See the crate docs for the possible outcomes.
    pub async fn call<Req, Resp>(
        &self,
        topic: Topic,
        method: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        self.call_as(topic, method, self.version, req, timeout)
            .await
    }

    /// Calls the typed method `M`.
    pub async fn call_method<M: Method>(
        &self,
        topic: Topic,
        req: &M::Request,
        timeout: Duration,
    ) -> Result<M::Response, RpcError> {
        self.call_as(topic, M::NAME, M::VERSION, req, timeout).await
    }

    async fn call_as<Req, Resp>(
        &self,
        topic: Topic,
        method: &str,
        version: Version,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        if topic.is_fanout() {
            return Err(RpcError::InvalidName(format!(
                "{topic} (a call goes to one server; cast to a fanout)"
            )));
        }
        topic.validate()?;
        let deadline = Instant::now() + timeout;
        let payload = serde_json::to_value(req).map_err(RpcError::Encode)?;
        let envelope = Envelope::request(
            Kind::Call,
            method,
            version,
            self.request_id.clone(),
            payload,
        );
        let msg = OutMessage {
            body: envelope.encode(),
            call: Some(envelope.clone()),
            id: envelope.id.clone(),
            kind: Kind::Call,
            method: Some(method.to_owned()),
            expires_at: Some(deadline),
            headers: Vec::new(),
        };
        let dest = topic.destination(&self.inner.options.namespace);
        let (_registration, waiter) = self.inner.pending.register(&envelope.id);
        let generation = self
            .inner
            .transport
            .publish(&dest, &msg, true, deadline)
            .await?;
        self.inner.pending.published(&envelope.id, generation);
        tracing::debug!(%topic, %method, id = %envelope.id, "rpc: call sent");
        let lost = || RpcError::ConnectionLost {
            method: method.to_owned(),
            topic: topic.to_string(),
        };
        match tokio::time::timeout_at(deadline, waiter).await {
            Err(_) => Err(RpcError::Timeout {
                method: method.to_owned(),
                topic: topic.to_string(),
                after: timeout,
            }),
            Ok(Err(_)) | Ok(Ok(Err(Lost))) => Err(lost()),
            Ok(Ok(Ok(Outcome::Ok(value)))) => {
                serde_json::from_value(value).map_err(|source| RpcError::Decode {
                    method: method.to_owned(),
                    source,
                })
            }
            Ok(Ok(Ok(Outcome::Error(err)))) => Err(RpcError::Remote(err)),
        }
    }

    /// Sends `method` to `topic` without waiting for any handler. Returns once
    /// the broker has the message (persisted, for AMQP).
    pub async fn cast<Req>(&self, topic: Topic, method: &str, req: &Req) -> Result<(), RpcError>
    where
        Req: Serialize + ?Sized,
    {
        self.cast_as(topic, method, self.version, req).await
    }

    /// Casts the typed method `M`.
    pub async fn cast_method<M: Method>(
        &self,
        topic: Topic,
        req: &M::Request,
    ) -> Result<(), RpcError> {
        self.cast_as(topic, M::NAME, M::VERSION, req).await
    }

    async fn cast_as<Req>(
        &self,
        topic: Topic,
        method: &str,
        version: Version,
        req: &Req,
    ) -> Result<(), RpcError>
    where
        Req: Serialize + ?Sized,
    {
        topic.validate()?;
        let payload = serde_json::to_value(req).map_err(RpcError::Encode)?;
        let envelope = Envelope::request(
            Kind::Cast,
            method,
            version,
            self.request_id.clone(),
            payload,
        );
        let msg = OutMessage {
            body: envelope.encode(),
            call: None,
            id: envelope.id.clone(),
            kind: Kind::Cast,
            method: Some(method.to_owned()),
            expires_at: None,
            headers: Vec::new(),
        };
        let dest = topic.destination(&self.inner.options.namespace);
        let deadline = Instant::now() + self.inner.options.publish_timeout;
        self.inner
            .transport
            .publish(&dest, &msg, false, deadline)
            .await?;
        tracing::debug!(%topic, %method, id = %envelope.id, "rpc: cast sent");
        Ok(())
    }

    /// Serves `dispatcher` on `subscriptions`; returns once every one is
    /// consuming (for AMQP, retrying the broker until then).
    pub async fn serve(
        &self,
        subscriptions: impl IntoIterator<Item = Subscription>,
        dispatcher: Dispatcher,
    ) -> Result<Server, RpcError> {
        let subscriptions: Vec<Subscription> = subscriptions.into_iter().collect();
        for s in &subscriptions {
            s.validate()?;
        }
        let dispatcher = Arc::new(dispatcher);
        let (mut server, stop) = Server::new();
        let prefetch = self.inner.options.prefetch.max(1);
        for s in subscriptions {
            let source = s.source(&self.inner.options.namespace);
            let consumer = self
                .inner
                .transport
                .subscribe(source, prefetch, stop.clone())
                .await?;
            server.start(self.clone(), consumer, dispatcher.clone(), prefetch.into());
        }
        Ok(server)
    }

    /// Publishes `body` as is to `topic`, durably (for tools, and for tests
    /// of what servers do with foreign messages).
    pub async fn publish_raw(&self, topic: Topic, body: Vec<u8>) -> Result<(), RpcError> {
        topic.validate()?;
        let dest = topic.destination(&self.inner.options.namespace);
        let deadline = Instant::now() + self.inner.options.publish_timeout;
        self.inner
            .transport
            .publish_raw(&dest, body, deadline)
            .await
    }

    /// How many connections this client has made to the broker: 1, plus one
    /// per reconnection (always 1 for `memory://`). For health reports.
    pub fn connections_made(&self) -> u64 {
        self.inner.transport.connections_made()
    }

    /// Takes up to `max` messages out of the dead-letter queue, oldest first.
    pub async fn take_dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, RpcError> {
        self.inner.transport.take_dead_letters(max).await
    }
}
