//! `amqp://…`: RabbitMQ through lapin.
//!
//! # Topology
//! - Topic queues (`<ns>.conductor`, `<ns>.compute.<host>`, …) are durable,
//!   published to through the default exchange. Publishers declare a queue
//!   before their first message to it, so messages sent before any consumer
//!   ever existed are kept.
//! - A fanout is a durable fanout exchange; each member has its own durable
//!   queue bound to it.
//! - Each client has one reply queue per connection
//!   (`<ns>.rpc_reply.<client>.<generation>`, exclusive, auto-deleted).
//! - `<ns>.rpc_dead_letter` (durable) keeps what could not be handled, with
//!   the headers `x-mica-reason` and `x-mica-queue`.
//!
//! # Reliability
//! - Every publish waits for the broker's confirm; casts are persistent.
//!   Until confirmed, a publish is retried across reconnections, up to the
//!   publish timeout: casts are delivered at least once (a confirm lost in a
//!   connection drop means a resend, so a handler may see a message twice; the
//!   envelope's `id` is the same both times).
//! - Consumers ack after their handler returns, with a prefetch limit; a
//!   consumer whose channel or connection dies has its unacked messages
//!   redelivered by the broker.
//! - One connection per client, replaced with exponential backoff when any
//!   operation finds it broken; consumers resubscribe by themselves.
//! - A call whose request was confirmed on a connection that is then lost
//!   fails at once with [`RpcError::ConnectionLost`]: its reply queue died with
//!   the connection. Calls still publishing carry on over the new connection.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio::sync::{OnceCell, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Acker, DeadLetter, Delivery, OutMessage};
use crate::backoff::Backoff;
use crate::pending::Pending;
use crate::topic::{Destination, Source, dead_letter_queue, reply_queue};
use crate::{RpcError, RpcOptions};

/// Header names on dead letters.
const REASON_HEADER: &str = "x-mica-reason";
const QUEUE_HEADER: &str = "x-mica-queue";

/// How long one connection attempt may take.
const CONNECT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections are single inserts and swaps.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) struct Amqp {
    shared: Arc<Shared>,
}

struct Shared {
    url: String,
    ns: String,
    client: String,
    connection_name: String,
    reconnect_min: Duration,
    reconnect_max: Duration,
    queue_expiry: Option<Duration>,
    pending: Arc<Pending>,
    /// The current connection, if any.
    live: Mutex<Option<Arc<Live>>>,
    /// Held while (re)connecting, so only one task connects at a time.
    connecting: tokio::sync::Mutex<()>,
    generations: AtomicU64,
    closed: AtomicBool,
}

/// One connection and what hangs on it.
struct Live {
    generation: u64,
    conn: Arc<Connection>,
    /// In confirm mode; shared by every publisher of this client.
    publisher: Channel,
    /// Queues (`q:`) and exchanges (`x:`) declared on this connection.
    declared: Mutex<HashSet<String>>,
    /// This connection's reply queue, made on the first call.
    inbox: OnceCell<String>,
    inbox_task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.inbox_task).take() {
            task.abort();
        }
    }
}

/// Why one publish attempt failed.
enum Attempt {
    /// The connection (or channel) broke: reconnect, then retry.
    Broken(lapin::Error),
    /// The broker could not route or store it; retry on the same connection.
    Refused(String),
    /// Retrying will not help.
    Fatal(RpcError),
}

fn is_permanent(err: &lapin::Error) -> bool {
    match err.kind() {
        lapin::ErrorKind::ProtocolError(e) => matches!(
            e.kind(),
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
                | AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
                | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)
        ),
        _ => false,
    }
}

/// An AMQP short string (at most 255 bytes): longer input is cut at a
/// character boundary. Names made here are validated far shorter; this only
/// guards method names and foreign `reply_to` values.
fn short(s: &str) -> ShortString {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::from(&s[..end])
}

impl Amqp {
    /// Opens the first connection, retrying until `connect_timeout`.
    pub(crate) async fn open(
        url: &str,
        options: &RpcOptions,
        pending: Arc<Pending>,
    ) -> Result<Self, RpcError> {
        url.parse::<lapin::uri::AMQPUri>()
            .map_err(|reason| RpcError::InvalidUrl {
                url: url.into(),
                reason,
            })?;
        let client = uuid::Uuid::new_v4().simple().to_string();
        let shared = Arc::new(Shared {
            url: url.into(),
            ns: options.namespace.clone(),
            connection_name: format!(
                "{} ({client})",
                options.connection_name.as_deref().unwrap_or("mica-rpc")
            ),
            client,
            reconnect_min: options.reconnect_min,
            reconnect_max: options.reconnect_max,
            queue_expiry: options.queue_expiry,
            pending,
            live: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            generations: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        shared
            .live(Some(Instant::now() + options.connect_timeout))
            .await?;
        Ok(Self { shared })
    }

    pub(crate) async fn publish(
        &self,
        dest: &Destination,
        msg: &OutMessage,
        with_reply: bool,
        deadline: Instant,
    ) -> Result<u64, RpcError> {
        self.shared
            .publish_reliably(dest, msg, with_reply, deadline)
            .await
    }

    pub(crate) async fn reply(&self, reply_to: &str, msg: &OutMessage) -> Result<(), RpcError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let live = self.shared.live(Some(deadline)).await?;
        let props = properties(msg, None);
        let confirm = async {
            live.publisher
                .basic_publish(
                    "".into(),
                    short(reply_to),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &msg.body,
                    props,
                )
                .await?
                .await
        };
        match tokio::time::timeout_at(deadline, confirm).await {
            Ok(Ok(Confirmation::Ack(None))) | Ok(Ok(Confirmation::NotRequested)) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => {
                tracing::debug!(%reply_to, "rpc: reply queue gone (caller disconnected), reply dropped");
                Ok(())
            }
            Ok(Ok(Confirmation::Nack(_))) => Err(RpcError::Unavailable("reply nacked".into())),
            Ok(Err(err)) => {
                self.shared.invalidate(live.generation);
                Err(RpcError::Unavailable(err.to_string()))
            }
            Err(_) => Err(RpcError::Unavailable("no confirm for the reply".into())),
        }
    }

    pub(crate) async fn subscribe(
        &self,
        source: Source,
        prefetch: u16,
        stop: watch::Receiver<bool>,
    ) -> Result<AmqpConsumer, RpcError> {
        let mut consumer = AmqpConsumer {
            shared: self.shared.clone(),
            tag: format!("{}-{}", self.shared.client, uuid::Uuid::new_v4().simple()),
            source,
            prefetch,
            stop,
            current: None,
        };
        consumer.establish(true).await?;
        Ok(consumer)
    }

    pub(crate) async fn take_dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, RpcError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let live = self.shared.live(Some(deadline)).await?;
        let dlq = dead_letter_queue(&self.shared.ns);
        let broken = |e: lapin::Error| RpcError::Unavailable(e.to_string());
        let channel = live.conn.create_channel().await.map_err(broken)?;
        channel
            .queue_declare(
                short(&dlq),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                self.shared.queue_args(),
            )
            .await
            .map_err(broken)?;
        let mut letters = Vec::new();
        while letters.len() < max {
            let Some(msg) = channel
                .basic_get(short(&dlq), BasicGetOptions::default())
                .await
                .map_err(broken)?
            else {
                break;
            };
            let header = |name: &str| {
                msg.delivery
                    .properties
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get(name).cloned())
                    .map(|v| match v {
                        AMQPValue::LongString(s) => s.to_string(),
                        AMQPValue::ShortString(s) => s.to_string(),
                        other => format!("{other:?}"),
                    })
                    .unwrap_or_default()
            };
            letters.push(DeadLetter {
                queue: header(QUEUE_HEADER),
                reason: header(REASON_HEADER),
                body: msg.delivery.data.clone(),
            });
            msg.delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .map_err(broken)?;
        }
        Ok(letters)
    }

    pub(crate) fn connections_made(&self) -> u64 {
        self.shared.generations.load(Ordering::SeqCst)
    }

    pub(crate) fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        if let Some(live) = lock(&self.shared.live).take() {
            close_connection(&live);
        }
    }
}

fn close_connection(live: &Live) {
    let conn = live.conn.clone();
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            let _ = conn.close(200, "closing".into()).await;
        });
    }
}

fn properties(msg: &OutMessage, reply_to: Option<&str>) -> BasicProperties {
    let mut props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(if msg.persistent() { 2 } else { 1 })
        .with_message_id(short(&msg.id))
        .with_app_id("mica".into());
    if let Some(method) = &msg.method {
        props = props.with_type(short(method));
    }
    if let Some(reply_to) = reply_to {
        props = props
            .with_reply_to(short(reply_to))
            .with_correlation_id(short(&msg.id));
    } else if msg.kind == crate::envelope::Kind::Reply {
        // The JSON carries the correlation; this is for tools that read
        // AMQP properties.
        props = props.with_correlation_id(short(&msg.id));
    }
    if let Some(expires_at) = msg.expires_at {
        let ms = expires_at
            .saturating_duration_since(Instant::now())
            .as_millis()
            .max(1);
        props = props.with_expiration(ms.to_string().into());
    }
    if !msg.headers.is_empty() {
        let mut table = FieldTable::default();
        for (k, v) in &msg.headers {
            table.insert(short(k), AMQPValue::LongString(v.as_str().into()));
        }
        props = props.with_headers(table);
    }
    props
}

impl Shared {
    fn queue_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if let Some(expiry) = self.queue_expiry {
            args.insert(
                "x-expires".into(),
                AMQPValue::LongLongInt(expiry.as_millis() as i64),
            );
        }
        args
    }

    /// The current connection, connecting (with backoff) if there is none,
    /// until `deadline` (`None`: until closed).
    async fn live(&self, deadline: Option<Instant>) -> Result<Arc<Live>, RpcError> {
        if let Some(live) = self.current() {
            return Ok(live);
        }
        let _connecting = match deadline {
            Some(d) => tokio::time::timeout_at(d, self.connecting.lock())
                .await
                .map_err(|_| RpcError::Unavailable("still reconnecting to the broker".into()))?,
            None => self.connecting.lock().await,
        };
        // Someone else may have connected while we waited.
        if let Some(live) = self.current() {
            return Ok(live);
        }
        let mut backoff = Backoff::new(self.reconnect_min, self.reconnect_max);
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return Err(RpcError::Closed);
            }
            match self.connect_once().await {
                Ok(live) => {
                    let live = Arc::new(live);
                    *lock(&self.live) = Some(live.clone());
                    tracing::info!(generation = live.generation, "rpc: connected to the broker");
                    return Ok(live);
                }
                Err((err, permanent)) => {
                    // Wrong credentials or vhost: say so at once, when it is
                    // the first connection (later, keep trying: the broker
                    // may be being reconfigured).
                    if permanent && self.generations.load(Ordering::SeqCst) == 0 {
                        return Err(RpcError::Broker(err));
                    }
                    let delay = backoff.next_delay();
                    if deadline.is_some_and(|d| Instant::now() + delay > d) {
                        return Err(RpcError::Unavailable(err));
                    }
                    tracing::warn!(%err, retry_in = ?delay, "rpc: cannot connect to the broker");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// The current connection if it is still up; forgets a broken one.
    fn current(&self) -> Option<Arc<Live>> {
        let broken = {
            let mut slot = lock(&self.live);
            match &*slot {
                Some(live) if live.conn.status().connected() => return Some(live.clone()),
                Some(_) => slot.take(),
                None => None,
            }
        };
        if let Some(live) = broken {
            self.pending.connection_lost(live.generation);
            close_connection(&live);
        }
        None
    }

    /// One connection attempt; on failure, the error and whether it is
    /// permanent (refused credentials or vhost).
    async fn connect_once(&self) -> Result<Live, (String, bool)> {
        let props = ConnectionProperties::default()
            .with_connection_name(self.connection_name.as_str().into());
        let attempt = async {
            let conn = Connection::connect(&self.url, props).await?;
            let publisher = conn.create_channel().await?;
            publisher
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, lapin::Error>((conn, publisher))
        };
        let (conn, publisher) = tokio::time::timeout(CONNECT_ATTEMPT_TIMEOUT, attempt)
            .await
            .map_err(|_| ("connection attempt timed out".to_string(), false))?
            .map_err(|e| (e.to_string(), is_permanent(&e)))?;
        Ok(Live {
            generation: self.generations.fetch_add(1, Ordering::SeqCst) + 1,
            conn: Arc::new(conn),
            publisher,
            declared: Mutex::default(),
            inbox: OnceCell::new(),
            inbox_task: Mutex::new(None),
        })
    }

    /// Connection `generation` was found broken: drop it (the next operation
    /// reconnects) and fail the calls waiting for replies on it.
    fn invalidate(&self, generation: u64) {
        self.pending.connection_lost(generation);
        let old = {
            let mut slot = lock(&self.live);
            if slot.as_ref().is_some_and(|l| l.generation == generation) {
                slot.take()
            } else {
                None
            }
        };
        if let Some(live) = old {
            tracing::warn!(
                generation,
                "rpc: connection to the broker lost; will reconnect"
            );
            close_connection(&live);
        }
    }

    async fn publish_reliably(
        self: &Arc<Self>,
        dest: &Destination,
        msg: &OutMessage,
        with_reply: bool,
        deadline: Instant,
    ) -> Result<u64, RpcError> {
        let mut backoff = Backoff::new(self.reconnect_min, self.reconnect_max);
        loop {
            let live = self.live(Some(deadline)).await?;
            let attempt =
                tokio::time::timeout_at(deadline, self.publish_once(&live, dest, msg, with_reply))
                    .await;
            let why = match attempt {
                Ok(Ok(())) => return Ok(live.generation),
                Ok(Err(Attempt::Fatal(err))) => return Err(err),
                Ok(Err(Attempt::Broken(err))) => {
                    self.invalidate(live.generation);
                    err.to_string()
                }
                Ok(Err(Attempt::Refused(why))) => why,
                Err(_) => {
                    return Err(RpcError::Unavailable(
                        "no confirm from the broker within the publish timeout".into(),
                    ));
                }
            };
            let delay = backoff.next_delay();
            if Instant::now() + delay > deadline {
                return Err(RpcError::Unavailable(why));
            }
            tracing::warn!(error = %why, retry_in = ?delay, "rpc: publish failed, retrying");
            tokio::time::sleep(delay).await;
        }
    }

    async fn publish_once(
        self: &Arc<Self>,
        live: &Arc<Live>,
        dest: &Destination,
        msg: &OutMessage,
        with_reply: bool,
    ) -> Result<(), Attempt> {
        self.declare(live, dest).await?;
        let inbox = if with_reply {
            Some(self.inbox(live).await?)
        } else {
            None
        };
        let with_inbox;
        let body = match inbox {
            Some(inbox) => {
                with_inbox = msg.body_replying_to(inbox);
                &with_inbox
            }
            None => &msg.body,
        };
        let (exchange, routing_key, mandatory) = match dest {
            Destination::Queue(q) => ("", q.as_str(), true),
            Destination::Fanout(x) => (x.as_str(), "", false),
        };
        let confirmation = live
            .publisher
            .basic_publish(
                short(exchange),
                short(routing_key),
                BasicPublishOptions {
                    mandatory,
                    ..Default::default()
                },
                body,
                properties(msg, inbox),
            )
            .await
            .map_err(Attempt::Broken)?
            .await
            .map_err(Attempt::Broken)?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => {
                // The queue is gone (deleted behind our back): declare again.
                if let Destination::Queue(q) = dest {
                    lock(&live.declared).remove(&format!("q:{q}"));
                }
                Err(Attempt::Refused(format!("{routing_key}: unroutable")))
            }
            Confirmation::Nack(_) => Err(Attempt::Refused("the broker nacked the message".into())),
            Confirmation::NotRequested => Err(Attempt::Fatal(RpcError::Broker(
                "publisher confirms are off".into(),
            ))),
        }
    }

    /// Declares a publish destination once per connection, on a channel of
    /// its own so that a refused declaration cannot close the publisher's.
    async fn declare(&self, live: &Live, dest: &Destination) -> Result<(), Attempt> {
        let key = match dest {
            Destination::Queue(q) => format!("q:{q}"),
            Destination::Fanout(x) => format!("x:{x}"),
        };
        if lock(&live.declared).contains(&key) {
            return Ok(());
        }
        let channel = live.conn.create_channel().await.map_err(Attempt::Broken)?;
        let result = match dest {
            Destination::Queue(q) => self.declare_queue(&channel, q).await,
            Destination::Fanout(x) => declare_fanout(&channel, x).await,
        };
        let _ = channel.close(200, "declared".into()).await;
        match result {
            Ok(()) => {
                lock(&live.declared).insert(key);
                Ok(())
            }
            Err(err) if is_permanent(&err) => {
                Err(Attempt::Fatal(RpcError::Broker(format!("{key}: {err}"))))
            }
            Err(err) => Err(Attempt::Broken(err)),
        }
    }

    async fn declare_queue(&self, channel: &Channel, queue: &str) -> Result<(), lapin::Error> {
        channel
            .queue_declare(
                short(queue),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                self.queue_args(),
            )
            .await
            .map(|_| ())
    }

    /// This connection's reply queue, created and consumed on first use.
    async fn inbox<'a>(self: &Arc<Self>, live: &'a Arc<Live>) -> Result<&'a str, Attempt> {
        let name = live
            .inbox
            .get_or_try_init(|| async {
                let name = reply_queue(&self.ns, &self.client, live.generation);
                let channel = live.conn.create_channel().await?;
                channel
                    .queue_declare(
                        short(&name),
                        QueueDeclareOptions {
                            exclusive: true,
                            auto_delete: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                let mut replies = channel
                    .basic_consume(
                        short(&name),
                        short(&format!("{name}-consumer")),
                        BasicConsumeOptions {
                            no_ack: true,
                            exclusive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                let shared: Weak<Shared> = Arc::downgrade(self);
                let generation = live.generation;
                let task = tokio::spawn(async move {
                    // Keeps the channel open as long as the task runs.
                    let _channel = channel;
                    while let Some(Ok(delivery)) = replies.next().await {
                        match shared.upgrade() {
                            Some(shared) => shared.pending.complete(&delivery.data),
                            None => return,
                        }
                    }
                    // The channel or the connection is gone, and with it the
                    // replies still to come.
                    if let Some(shared) = shared.upgrade() {
                        shared.invalidate(generation);
                    }
                });
                *lock(&live.inbox_task) = Some(task);
                Ok::<_, lapin::Error>(name)
            })
            .await
            .map_err(Attempt::Broken)?;
        Ok(name.as_str())
    }
}

async fn declare_fanout(channel: &Channel, exchange: &str) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            short(exchange),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}

/// A subscription that survives reconnections.
pub(crate) struct AmqpConsumer {
    shared: Arc<Shared>,
    tag: String,
    source: Source,
    prefetch: u16,
    stop: watch::Receiver<bool>,
    current: Option<Subscribed>,
}

struct Subscribed {
    generation: u64,
    channel: Channel,
    deliveries: lapin::Consumer,
}

impl AmqpConsumer {
    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Subscribes, retrying with backoff until it works or the consumer is
    /// stopped. On the `first` subscription, an error retrying cannot fix
    /// (e.g. a queue declared elsewhere with other arguments) is returned.
    async fn establish(&mut self, first: bool) -> Result<(), RpcError> {
        let mut backoff = Backoff::new(self.shared.reconnect_min, self.shared.reconnect_max);
        loop {
            if self.stopped() {
                return Err(RpcError::Closed);
            }
            let live = tokio::select! {
                live = self.shared.live(None) => live?,
                _ = self.stop.wait_for(|s| *s) => return Err(RpcError::Closed),
            };
            match self.subscribe_once(&live).await {
                Ok(subscribed) => {
                    tracing::debug!(queue = %self.source.queue(), generation = live.generation, "rpc: consuming");
                    self.current = Some(subscribed);
                    return Ok(());
                }
                Err(err) if first && is_permanent(&err) => {
                    return Err(RpcError::Broker(format!("{}: {err}", self.source.queue())));
                }
                Err(err) => {
                    if !live.conn.status().connected() {
                        self.shared.invalidate(live.generation);
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(queue = %self.source.queue(), %err, retry_in = ?delay, "rpc: cannot subscribe");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.stop.wait_for(|s| *s) => return Err(RpcError::Closed),
                    }
                }
            }
        }
    }

    async fn subscribe_once(&self, live: &Live) -> Result<Subscribed, lapin::Error> {
        let channel = live.conn.create_channel().await?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await?;
        let queue = self.source.queue();
        self.shared.declare_queue(&channel, queue).await?;
        if let Source::Fanout { exchange, queue } = &self.source {
            declare_fanout(&channel, exchange).await?;
            channel
                .queue_bind(
                    short(queue),
                    short(exchange),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        let deliveries = channel
            .basic_consume(
                short(queue),
                short(&self.tag),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Subscribed {
            generation: live.generation,
            channel,
            deliveries,
        })
    }

    /// The next message, resubscribing as often as needed; `None` once
    /// stopped.
    pub(crate) async fn next(&mut self) -> Option<Delivery> {
        loop {
            if self.current.is_none() && self.establish(false).await.is_err() {
                return None;
            }
            let current = self.current.as_mut()?;
            let item = tokio::select! {
                biased;
                _ = self.stop.wait_for(|s| *s) => return None,
                item = current.deliveries.next() => item,
            };
            match item {
                Some(Ok(d)) => {
                    return Some(Delivery {
                        reply_to: d.properties.reply_to().as_ref().map(|s| s.to_string()),
                        redelivered: d.redelivered,
                        queue: self.source.queue().to_owned(),
                        body: d.data,
                        acker: Acker::Amqp(AmqpAcker {
                            acker: d.acker,
                            shared: self.shared.clone(),
                        }),
                    });
                }
                Some(Err(err)) => {
                    tracing::warn!(queue = %self.source.queue(), generation = current.generation, %err, "rpc: consumer lost; resubscribing");
                    self.drop_current();
                }
                None => {
                    tracing::warn!(queue = %self.source.queue(), generation = current.generation, "rpc: consumer cancelled by the broker; resubscribing");
                    self.drop_current();
                }
            }
        }
    }

    /// Forgets the dead subscription; the next `establish` makes a new one
    /// (on a new connection if this one is broken: `Shared::live` checks).
    fn drop_current(&mut self) {
        self.current = None;
    }

    /// Stops new deliveries; messages already received can still be acked.
    pub(crate) async fn cancel(&mut self) {
        if let Some(current) = &self.current {
            let _ = current
                .channel
                .basic_cancel(short(&self.tag), BasicCancelOptions::default())
                .await;
        }
    }
}

/// Acks (or dead-letters) one AMQP delivery.
pub(crate) struct AmqpAcker {
    acker: lapin::Acker,
    shared: Arc<Shared>,
}

impl AmqpAcker {
    pub(crate) async fn ack(self) {
        if let Err(err) = self.acker.ack(BasicAckOptions::default()).await {
            tracing::debug!(%err, "rpc: ack failed (channel gone); the broker redelivers the message");
        }
    }

    /// Publishes the letter to the dead-letter queue (confirmed), then acks
    /// the original; if the letter cannot be published, the original goes
    /// back to its queue.
    pub(crate) async fn dead_letter(self, letter: DeadLetter) {
        let msg = OutMessage {
            body: letter.body,
            call: None,
            id: uuid::Uuid::new_v4().to_string(),
            kind: crate::envelope::Kind::Cast,
            method: None,
            expires_at: None,
            headers: vec![(REASON_HEADER, letter.reason), (QUEUE_HEADER, letter.queue)],
        };
        let dlq = Destination::Queue(dead_letter_queue(&self.shared.ns));
        let deadline = Instant::now() + Duration::from_secs(30);
        match self
            .shared
            .publish_reliably(&dlq, &msg, false, deadline)
            .await
        {
            Ok(_) => self.ack().await,
            Err(err) => {
                tracing::error!(%err, "rpc: cannot dead-letter a message; requeued");
                let _ = self
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_are_cut_at_a_char_boundary() {
        assert_eq!(short("abc").as_str(), "abc");
        let long = "é".repeat(200); // 400 bytes
        let cut = short(&long);
        assert_eq!(cut.as_str().len(), 254);
        assert!(cut.as_str().chars().all(|c| c == 'é'));
    }
}
