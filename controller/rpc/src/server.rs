//! The server side: a [`Dispatcher`] maps method names to typed async
//! handlers; [`crate::Rpc::serve`] runs it on one or more subscriptions.
//!
//! Per message: parse the envelope (unparseable → dead-letter queue), check
//! the interface version, find the handler, decode the payload into its
//! request type, run it in a task of its own (a panic becomes a
//! `handler_panicked` error, the server goes on), reply if it was a call, and
//! only then ack. Up to [`crate::RpcOptions::prefetch`] messages per
//! subscription are handled at once.
//!
//! | outcome                          | call                          | cast                    |
//! |----------------------------------|-------------------------------|-------------------------|
//! | handler returned `Ok`            | reply `ok`, ack               | ack                     |
//! | handler returned `Err`/panicked  | reply `error`, ack            | log, ack (not retried)  |
//! | unknown method, version too new  | reply `error`, ack            | dead-letter             |
//! | payload not the request type     | reply `invalid_request`, ack  | dead-letter             |
//! | not an envelope / newer format   | dead-letter                   | dead-letter             |

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::Instrument;

use crate::envelope::{Envelope, FORMAT, Kind, Outcome, Version};
use crate::error::{Snippet, codes};
use crate::transport::{Consumer, Delivery, OutMessage};
use crate::{Method, RemoteError, Rpc};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a handler learns about the message besides its request.
#[derive(Debug, Clone)]
pub struct Context {
    /// The method called.
    pub method: String,
    /// The message id (a call's correlation id). A cast redelivered after a
    /// broker or consumer failure has the same id, so handlers can spot
    /// duplicates.
    pub id: String,
    /// Call or cast.
    pub kind: Kind,
    /// The interface version the sender asked for.
    pub version: Version,
    /// The API request this message serves, if the sender said.
    pub request_id: Option<String>,
    /// The broker delivered this message before (to this or another
    /// consumer) without an ack: it may have been partly handled.
    pub redelivered: bool,
}

/// A typed async handler: any `Fn(Context, Req) -> impl Future<Output =
/// Result<Resp, E>>` where `E: Into<RemoteError>`.
pub trait Handler<Req, Resp>: Send + Sync + 'static {
    /// Handles one request.
    fn handle(&self, ctx: Context, req: Req) -> BoxFuture<Result<Resp, RemoteError>>;
}

impl<F, Fut, Req, Resp, E> Handler<Req, Resp> for F
where
    F: Fn(Context, Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, E>> + Send + 'static,
    E: Into<RemoteError>,
{
    fn handle(&self, ctx: Context, req: Req) -> BoxFuture<Result<Resp, RemoteError>> {
        let fut = self(ctx, req);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}

enum Failed {
    /// The payload is not the handler's request type.
    BadPayload(String),
    Remote(RemoteError),
}

type Erased = dyn Fn(Context, serde_json::Value) -> BoxFuture<Result<serde_json::Value, Failed>>
    + Send
    + Sync;

/// Method name → handler, for one interface version.
///
/// ```
/// use mica_rpc::{Dispatcher, RemoteError, Version};
/// #[derive(serde::Deserialize)]
/// struct Add { a: i64, b: i64 }
///
/// let dispatcher = Dispatcher::new(Version::new(1, 2))
///     .handle("add", |_ctx, req: Add| async move { Ok::<_, RemoteError>(req.a + req.b) });
/// ```
pub struct Dispatcher {
    version: Version,
    handlers: HashMap<String, Arc<Erased>>,
}

impl Dispatcher {
    /// A dispatcher for servers implementing interface `version`.
    pub fn new(version: Version) -> Self {
        Self {
            version,
            handlers: HashMap::new(),
        }
    }

    /// Registers `handler` for `method` (replacing any earlier one).
    #[must_use]
    pub fn handle<Req, Resp>(mut self, method: &str, handler: impl Handler<Req, Resp>) -> Self
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
    {
        let handler = Arc::new(handler);
        let name = method.to_owned();
        let erased = move |ctx: Context, payload: serde_json::Value| {
            let handler = handler.clone();
            let name = name.clone();
            let fut: BoxFuture<Result<serde_json::Value, Failed>> = Box::pin(async move {
                let req: Req = serde_json::from_value(payload)
                    .map_err(|e| Failed::BadPayload(format!("{name}: {e}")))?;
                let resp = handler.handle(ctx, req).await.map_err(Failed::Remote)?;
                serde_json::to_value(resp).map_err(|e| {
                    Failed::Remote(RemoteError::new(
                        codes::INTERNAL,
                        format!("{name}: cannot encode the response: {e}"),
                    ))
                })
            });
            fut
        };
        self.handlers.insert(method.to_owned(), Arc::new(erased));
        self
    }

    /// Registers `handler` for the typed method `M`.
    #[must_use]
    pub fn handle_method<M: Method>(self, handler: impl Handler<M::Request, M::Response>) -> Self {
        self.handle(M::NAME, handler)
    }

    /// The interface version served.
    pub fn version(&self) -> Version {
        self.version
    }

    async fn dispatch(
        &self,
        ctx: Context,
        payload: serde_json::Value,
    ) -> Result<serde_json::Value, Failed> {
        if !self.version.can_serve(ctx.version) {
            return Err(Failed::Remote(RemoteError::new(
                codes::UNSUPPORTED_VERSION,
                format!(
                    "{}: version {} requested, this server implements {}",
                    ctx.method, ctx.version, self.version
                ),
            )));
        }
        let Some(handler) = self.handlers.get(&ctx.method).cloned() else {
            return Err(Failed::Remote(RemoteError::new(
                codes::NO_SUCH_METHOD,
                format!("no method {:?} here", ctx.method),
            )));
        };
        let span = tracing::info_span!("rpc", method = %ctx.method, id = %ctx.id, request_id = ctx.request_id.as_deref());
        // A task of its own, so that a panic stays there; aborted with the
        // server (the guard), so that dropping a server stops its handlers.
        let task = AbortOnDrop(tokio::spawn(handler(ctx, payload).instrument(span)));
        match task.join().await {
            Ok(result) => result,
            Err(join) => Err(Failed::Remote(RemoteError::new(
                codes::HANDLER_PANICKED,
                format!("the handler failed: {join}"),
            ))),
        }
    }
}

struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A running server. [`Server::shutdown`] stops it gracefully; dropping it
/// stops it abruptly, like a crash: messages being handled are not acked, so
/// the broker redelivers them.
pub struct Server {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    pub(crate) fn new() -> (Self, watch::Receiver<bool>) {
        let (stop, rx) = watch::channel(false);
        (
            Self {
                stop,
                tasks: Vec::new(),
            },
            rx,
        )
    }

    pub(crate) fn start(
        &mut self,
        rpc: Rpc,
        consumer: Consumer,
        dispatcher: Arc<Dispatcher>,
        concurrency: usize,
    ) {
        let stop = self.stop.subscribe();
        self.tasks.push(tokio::spawn(run(
            rpc,
            consumer,
            dispatcher,
            concurrency,
            stop,
        )));
    }

    /// Stops taking messages, waits for those being handled to finish (and be
    /// acked), then returns.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn run(
    rpc: Rpc,
    mut consumer: Consumer,
    dispatcher: Arc<Dispatcher>,
    concurrency: usize,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut handling = JoinSet::new();
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
            _ = stop.wait_for(|s| *s) => break,
        };
        while handling.try_join_next().is_some() {}
        let Some(delivery) = consumer.next().await else {
            break;
        };
        let rpc = rpc.clone();
        let dispatcher = dispatcher.clone();
        handling.spawn(async move {
            handle_delivery(&rpc, &dispatcher, delivery).await;
            drop(slot);
        });
    }
    consumer.cancel().await;
    while handling.join_next().await.is_some() {}
}

async fn handle_delivery(rpc: &Rpc, dispatcher: &Dispatcher, delivery: Delivery) {
    let envelope = match Envelope::decode(&delivery.body) {
        Ok(e) => e,
        Err(err) => {
            tracing::error!(queue = %delivery.queue, %err, body = %Snippet(&delivery.body), "rpc: unparseable message moved to the dead-letter queue");
            delivery.dead_letter(&format!("unparseable: {err}")).await;
            return;
        }
    };
    if envelope.format > FORMAT {
        let reason = format!(
            "envelope format {} (this build reads up to {FORMAT})",
            envelope.format
        );
        tracing::error!(queue = %delivery.queue, id = %envelope.id, "rpc: {reason}; moved to the dead-letter queue");
        if envelope.kind == Kind::Call {
            reply(
                rpc,
                &delivery,
                envelope.reply_to.as_deref(),
                &envelope.id,
                Outcome::Error(RemoteError::new(codes::UNSUPPORTED_VERSION, &reason)),
            )
            .await;
        }
        delivery.dead_letter(&reason).await;
        return;
    }
    let (Some(method), Kind::Call | Kind::Cast) = (envelope.method.clone(), envelope.kind) else {
        tracing::error!(queue = %delivery.queue, id = %envelope.id, kind = ?envelope.kind, "rpc: not a request; moved to the dead-letter queue");
        delivery.dead_letter("not a call or cast").await;
        return;
    };
    let ctx = Context {
        method: method.clone(),
        id: envelope.id.clone(),
        kind: envelope.kind,
        version: envelope.version.unwrap_or_default(),
        request_id: envelope.request_id.clone(),
        redelivered: delivery.redelivered,
    };
    tracing::debug!(queue = %delivery.queue, %method, id = %envelope.id, kind = ?envelope.kind, "rpc: handling");
    let payload = envelope.payload.unwrap_or(serde_json::Value::Null);
    let result = dispatcher.dispatch(ctx, payload).await;
    match envelope.kind {
        Kind::Call => {
            let outcome = match result {
                Ok(value) => Outcome::Ok(value),
                Err(Failed::BadPayload(why)) => {
                    Outcome::Error(RemoteError::new(codes::INVALID_REQUEST, why))
                }
                Err(Failed::Remote(err)) => Outcome::Error(err),
            };
            reply(
                rpc,
                &delivery,
                envelope.reply_to.as_deref(),
                &envelope.id,
                outcome,
            )
            .await;
            delivery.ack().await;
        }
        _ => match result {
            Ok(_) => delivery.ack().await,
            Err(Failed::BadPayload(why)) => {
                tracing::error!(queue = %delivery.queue, %method, id = %envelope.id, %why, "rpc: cast payload not understood; moved to the dead-letter queue");
                delivery
                    .dead_letter(&format!("invalid payload: {why}"))
                    .await;
            }
            Err(Failed::Remote(err))
                if err.is(codes::NO_SUCH_METHOD) || err.is(codes::UNSUPPORTED_VERSION) =>
            {
                tracing::error!(queue = %delivery.queue, %method, id = %envelope.id, %err, "rpc: cast not servable here; moved to the dead-letter queue");
                delivery.dead_letter(&err.to_string()).await;
            }
            Err(Failed::Remote(err)) => {
                tracing::warn!(queue = %delivery.queue, %method, id = %envelope.id, %err, "rpc: cast handler failed");
                delivery.ack().await;
            }
        },
    }
}

async fn reply(rpc: &Rpc, delivery: &Delivery, reply_to: Option<&str>, id: &str, outcome: Outcome) {
    let Some(reply_to) = reply_to.or(delivery.reply_to.as_deref()) else {
        tracing::warn!(queue = %delivery.queue, %id, "rpc: call without reply_to; reply dropped");
        return;
    };
    let envelope = Envelope::reply(id, outcome);
    let msg = OutMessage {
        body: envelope.encode(),
        call: None,
        id: id.to_owned(),
        kind: Kind::Reply,
        method: None,
        expires_at: None,
        headers: Vec::new(),
    };
    if let Err(err) = rpc.transport().reply(reply_to, &msg).await {
        tracing::warn!(%id, %err, "rpc: reply not sent; the caller will time out or see its connection lost");
    }
}
