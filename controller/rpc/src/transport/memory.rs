//! `memory://<name>`: the in-process bus of the all-in-one mode.
//!
//! Every `Rpc` opened on the same `memory://<name>` in one process shares one
//! bus. It keeps the semantics that matter to callers and servers: queues
//! exist from the first publish or subscribe and keep messages until a
//! consumer takes them; competing consumers share a queue; a fanout copies to
//! every member's queue; a message taken and dropped without an ack goes back
//! to the front of its queue (marked redelivered); call requests expire with
//! their timeout; messages travel as the same JSON bytes as over AMQP, so an
//! unparseable one is dead-lettered the same way. What it cannot keep is
//! anything across a restart of the process.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::{Acker, DeadLetter, Delivery, OutMessage};
use crate::pending::Pending;
use crate::topic::{Destination, Source, reply_queue, validate_service};
use crate::{RpcError, RpcOptions};

/// At most this many dead letters are kept; older ones are dropped.
const MAX_DEAD_LETTERS: usize = 10_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a single push, pop or insert: a panic
    // elsewhere cannot leave the data half-changed.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn buses() -> &'static Mutex<HashMap<String, Arc<Bus>>> {
    static BUSES: OnceLock<Mutex<HashMap<String, Arc<Bus>>>> = OnceLock::new();
    BUSES.get_or_init(Default::default)
}

#[derive(Default)]
struct Bus {
    queues: Mutex<HashMap<String, Arc<MemQueue>>>,
    /// Fanout exchange → the queues bound to it.
    fanouts: Mutex<HashMap<String, BTreeSet<String>>>,
    /// Reply queue name → the client waiting on it.
    inboxes: Mutex<HashMap<String, Weak<Pending>>>,
    dead: Mutex<VecDeque<DeadLetter>>,
}

impl Bus {
    fn queue(&self, name: &str) -> Arc<MemQueue> {
        lock(&self.queues)
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(MemQueue {
                    name: name.to_owned(),
                    items: Mutex::default(),
                    notify: Notify::new(),
                })
            })
            .clone()
    }

    fn dead_letter(&self, letter: DeadLetter) {
        let mut dead = lock(&self.dead);
        if dead.len() >= MAX_DEAD_LETTERS {
            dead.pop_front();
            tracing::warn!("rpc: dead-letter queue full, oldest letter dropped");
        }
        dead.push_back(letter);
    }
}

struct MemQueue {
    name: String,
    items: Mutex<VecDeque<MemMessage>>,
    notify: Notify,
}

#[derive(Clone)]
struct MemMessage {
    body: Vec<u8>,
    reply_to: Option<String>,
    expires_at: Option<Instant>,
    redelivered: bool,
}

impl MemQueue {
    fn push(&self, msg: MemMessage) {
        let mut items = lock(&self.items);
        // Expired call requests at the head go now, so that a queue nobody
        // consumes (a host that is gone) does not keep them forever.
        let now = Instant::now();
        while items
            .front()
            .is_some_and(|m| m.expires_at.is_some_and(|t| t <= now))
        {
            items.pop_front();
        }
        items.push_back(msg);
        drop(items);
        self.notify.notify_one();
    }

    fn requeue(&self, msg: MemMessage) {
        lock(&self.items).push_front(msg);
        self.notify.notify_one();
    }

    /// Waits for the next unexpired message. Cancel-safe: a message is only
    /// taken in the synchronous part.
    async fn pop(&self) -> MemMessage {
        loop {
            {
                let mut items = lock(&self.items);
                while let Some(msg) = items.pop_front() {
                    if msg.expires_at.is_some_and(|t| t <= Instant::now()) {
                        tracing::debug!(queue = %self.name, "rpc: call request expired in its queue, dropped");
                        continue;
                    }
                    if !items.is_empty() {
                        // Wake another consumer for the rest: a stored
                        // notify permit covers only one.
                        self.notify.notify_one();
                    }
                    return msg;
                }
            }
            self.notify.notified().await;
        }
    }
}

pub(crate) struct Memory {
    bus: Arc<Bus>,
    inbox: String,
}

impl Memory {
    pub(crate) fn open(
        name: &str,
        options: &RpcOptions,
        pending: Arc<Pending>,
    ) -> Result<Self, RpcError> {
        let name = if name.is_empty() { "default" } else { name };
        validate_service(name).map_err(|_| RpcError::InvalidUrl {
            url: format!("memory://{name}"),
            reason: "the bus name must be [a-z0-9-]".into(),
        })?;
        let bus = lock(buses()).entry(name.to_owned()).or_default().clone();
        let inbox = reply_queue(&options.namespace, &uuid::Uuid::new_v4().to_string(), 1);
        lock(&bus.inboxes).insert(inbox.clone(), Arc::downgrade(&pending));
        Ok(Self { bus, inbox })
    }

    pub(crate) fn publish(
        &self,
        dest: &Destination,
        msg: &OutMessage,
        with_reply: bool,
    ) -> Result<u64, RpcError> {
        let reply_to = with_reply.then(|| self.inbox.clone());
        let mem = MemMessage {
            body: match &reply_to {
                Some(inbox) => msg.body_replying_to(inbox),
                None => msg.body.clone(),
            },
            reply_to,
            expires_at: msg.expires_at,
            redelivered: false,
        };
        match dest {
            Destination::Queue(q) => self.bus.queue(q).push(mem),
            Destination::Fanout(exchange) => {
                let members: Vec<String> = lock(&self.bus.fanouts)
                    .get(exchange)
                    .map(|s| s.iter().cloned().collect())
                    .unwrap_or_default();
                if members.is_empty() {
                    tracing::debug!(%exchange, "rpc: fanout with no member");
                }
                for q in members {
                    self.bus.queue(&q).push(mem.clone());
                }
            }
        }
        // The bus never loses a connection: one generation forever.
        Ok(1)
    }

    pub(crate) fn reply(&self, reply_to: &str, msg: &OutMessage) -> Result<(), RpcError> {
        let caller = lock(&self.bus.inboxes)
            .get(reply_to)
            .and_then(Weak::upgrade);
        match caller {
            Some(pending) => pending.complete(&msg.body),
            None => tracing::debug!(%reply_to, "rpc: reply to a caller that is gone, dropped"),
        }
        Ok(())
    }

    pub(crate) fn subscribe(&self, source: Source, stop: watch::Receiver<bool>) -> MemoryConsumer {
        let queue = self.bus.queue(source.queue());
        if let Source::Fanout { exchange, queue } = &source {
            lock(&self.bus.fanouts)
                .entry(exchange.clone())
                .or_default()
                .insert(queue.clone());
        }
        MemoryConsumer {
            bus: self.bus.clone(),
            queue,
            stop,
        }
    }

    pub(crate) fn take_dead_letters(&self, max: usize) -> Vec<DeadLetter> {
        let mut dead = lock(&self.bus.dead);
        let n = max.min(dead.len());
        dead.drain(..n).collect()
    }

    pub(crate) fn close(&self) {
        lock(&self.bus.inboxes).remove(&self.inbox);
    }
}

pub(crate) struct MemoryConsumer {
    bus: Arc<Bus>,
    queue: Arc<MemQueue>,
    stop: watch::Receiver<bool>,
}

impl MemoryConsumer {
    pub(crate) async fn next(&mut self) -> Option<Delivery> {
        let msg = tokio::select! {
            biased;
            _ = self.stop.wait_for(|stop| *stop) => return None,
            msg = self.queue.pop() => msg,
        };
        Some(Delivery {
            body: msg.body.clone(),
            reply_to: msg.reply_to.clone(),
            redelivered: msg.redelivered,
            queue: self.queue.name.clone(),
            acker: Acker::Memory(Unacked {
                bus: self.bus.clone(),
                queue: self.queue.clone(),
                msg: Some(msg),
            }),
        })
    }
}

/// A taken message; back to the front of its queue if dropped unacked.
pub(crate) struct Unacked {
    bus: Arc<Bus>,
    queue: Arc<MemQueue>,
    msg: Option<MemMessage>,
}

impl Unacked {
    pub(crate) fn ack(mut self) {
        self.msg = None;
    }

    pub(crate) fn dead_letter(mut self, letter: DeadLetter) {
        self.msg = None;
        self.bus.dead_letter(letter);
    }
}

impl Drop for Unacked {
    fn drop(&mut self) {
        if let Some(mut msg) = self.msg.take() {
            msg.redelivered = true;
            self.queue.requeue(msg);
        }
    }
}
