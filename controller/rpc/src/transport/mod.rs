//! The two transports behind one small interface: byte messages, published
//! to a [`Destination`] and consumed from a [`Source`], acknowledged after
//! handling. Envelopes, correlation and dispatch live above, in the client and
//! the server, so both transports share them.

pub(crate) mod amqp;
pub(crate) mod memory;

use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::envelope::{Envelope, Kind};
use crate::pending::Pending;
use crate::topic::{Destination, Source};
use crate::{RpcError, RpcOptions};

/// A message about to be published.
#[derive(Debug, Clone)]
pub(crate) struct OutMessage {
    pub body: Vec<u8>,
    /// Calls: the envelope, encoded again with the reply queue of the
    /// connection each attempt goes out on.
    pub call: Option<Envelope>,
    pub id: String,
    pub kind: Kind,
    pub method: Option<String>,
    /// Calls: drop the request if nobody took it by then (the call's
    /// deadline; each publish attempt sends the time left).
    pub expires_at: Option<Instant>,
    /// Extra AMQP headers (dead letters).
    pub headers: Vec<(&'static str, String)>,
}

impl OutMessage {
    /// The bytes to send with `reply_to` as the reply queue.
    pub(crate) fn body_replying_to(&self, reply_to: &str) -> Vec<u8> {
        match &self.call {
            Some(envelope) => {
                let mut envelope = envelope.clone();
                envelope.reply_to = Some(reply_to.to_owned());
                envelope.encode()
            }
            None => self.body.clone(),
        }
    }

    /// Casts are the durable primitive: persistent, so they survive a broker
    /// restart. A call's request and its reply are transient: the caller is
    /// waiting and learns of a loss (see [`RpcError::ConnectionLost`]).
    pub(crate) fn persistent(&self) -> bool {
        self.kind == Kind::Cast
    }
}

/// A message that could not be handled, kept in the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The queue it was taken from.
    pub queue: String,
    /// Why it was set aside.
    pub reason: String,
    /// The message as received.
    pub body: Vec<u8>,
}

pub(crate) enum Transport {
    Memory(memory::Memory),
    Amqp(amqp::Amqp),
}

impl Transport {
    pub(crate) async fn open(
        url: &str,
        options: &RpcOptions,
        pending: Arc<Pending>,
    ) -> Result<Self, RpcError> {
        if let Some(name) = url.strip_prefix("memory://") {
            Ok(Transport::Memory(memory::Memory::open(
                name, options, pending,
            )?))
        } else if url.starts_with("amqp://") {
            Ok(Transport::Amqp(
                amqp::Amqp::open(url, options, pending).await?,
            ))
        } else {
            Err(RpcError::InvalidUrl {
                url: url.into(),
                reason: "expected amqp://… or memory://…".into(),
            })
        }
    }

    /// Publishes reliably: retried across reconnections until confirmed by
    /// the broker or `deadline`. `with_reply` asks for this client's reply
    /// queue in `reply_to`. Returns the connection generation the message
    /// was confirmed on.
    pub(crate) async fn publish(
        &self,
        dest: &Destination,
        msg: &OutMessage,
        with_reply: bool,
        deadline: Instant,
    ) -> Result<u64, RpcError> {
        match self {
            Transport::Memory(m) => m.publish(dest, msg, with_reply),
            Transport::Amqp(a) => a.publish(dest, msg, with_reply, deadline).await,
        }
    }

    /// Publishes a reply, once (no retry: a caller whose connection broke has
    /// already been told).
    pub(crate) async fn reply(&self, reply_to: &str, msg: &OutMessage) -> Result<(), RpcError> {
        match self {
            Transport::Memory(m) => m.reply(reply_to, msg),
            Transport::Amqp(a) => a.reply(reply_to, msg).await,
        }
    }

    /// Starts consuming `source`; returns once the consumer is registered
    /// (retrying the broker until then, or until `stop`).
    pub(crate) async fn subscribe(
        &self,
        source: Source,
        prefetch: u16,
        stop: watch::Receiver<bool>,
    ) -> Result<Consumer, RpcError> {
        match self {
            Transport::Memory(m) => Ok(Consumer::Memory(m.subscribe(source, stop))),
            Transport::Amqp(a) => Ok(Consumer::Amqp(Box::new(
                a.subscribe(source, prefetch, stop).await?,
            ))),
        }
    }

    /// Publishes raw bytes to a destination (tools and tests).
    pub(crate) async fn publish_raw(
        &self,
        dest: &Destination,
        body: Vec<u8>,
        deadline: Instant,
    ) -> Result<(), RpcError> {
        let msg = OutMessage {
            body,
            call: None,
            id: uuid::Uuid::new_v4().to_string(),
            kind: Kind::Cast,
            method: None,
            expires_at: None,
            headers: Vec::new(),
        };
        self.publish(dest, &msg, false, deadline).await.map(|_| ())
    }

    pub(crate) async fn take_dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, RpcError> {
        match self {
            Transport::Memory(m) => Ok(m.take_dead_letters(max)),
            Transport::Amqp(a) => a.take_dead_letters(max).await,
        }
    }

    /// Connections made so far (1 + reconnections); always 1 in memory.
    pub(crate) fn connections_made(&self) -> u64 {
        match self {
            Transport::Memory(_) => 1,
            Transport::Amqp(a) => a.connections_made(),
        }
    }

    pub(crate) fn close(&self) {
        match self {
            Transport::Memory(m) => m.close(),
            Transport::Amqp(a) => a.close(),
        }
    }
}

/// A running subscription.
pub(crate) enum Consumer {
    Memory(memory::MemoryConsumer),
    Amqp(Box<amqp::AmqpConsumer>),
}

impl Consumer {
    /// The next message; `None` once stopped.
    pub(crate) async fn next(&mut self) -> Option<Delivery> {
        match self {
            Consumer::Memory(c) => c.next().await,
            Consumer::Amqp(c) => c.next().await,
        }
    }

    /// Stops taking new messages (those already taken are still acked).
    pub(crate) async fn cancel(&mut self) {
        match self {
            Consumer::Memory(_) => {}
            Consumer::Amqp(c) => c.cancel().await,
        }
    }
}

/// One received message, to be acked (or dead-lettered) after handling.
/// Dropped without either, it goes back to its queue.
pub(crate) struct Delivery {
    pub body: Vec<u8>,
    pub reply_to: Option<String>,
    pub redelivered: bool,
    pub queue: String,
    pub(crate) acker: Acker,
}

pub(crate) enum Acker {
    Memory(memory::Unacked),
    Amqp(amqp::AmqpAcker),
}

impl Delivery {
    /// Handled: remove it from the queue.
    pub(crate) async fn ack(self) {
        match self.acker {
            Acker::Memory(u) => u.ack(),
            Acker::Amqp(a) => a.ack().await,
        }
    }

    /// Cannot be handled: move it to the dead-letter queue.
    pub(crate) async fn dead_letter(self, reason: &str) {
        let letter = DeadLetter {
            queue: self.queue,
            reason: reason.into(),
            body: self.body,
        };
        match self.acker {
            Acker::Memory(u) => u.dead_letter(letter),
            Acker::Amqp(a) => a.dead_letter(letter).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Version;

    #[test]
    fn a_call_carries_the_reply_queue_of_each_attempt() {
        let envelope = Envelope::request(
            Kind::Call,
            "ping",
            Version::new(1, 0),
            None,
            serde_json::json!({}),
        );
        let msg = OutMessage {
            body: envelope.encode(),
            call: Some(envelope.clone()),
            id: envelope.id.clone(),
            kind: Kind::Call,
            method: Some("ping".into()),
            expires_at: None,
            headers: Vec::new(),
        };
        for inbox in ["ns.rpc_reply.c.1", "ns.rpc_reply.c.2"] {
            let sent = Envelope::decode(&msg.body_replying_to(inbox)).unwrap();
            assert_eq!(sent.reply_to.as_deref(), Some(inbox));
            assert_eq!(sent.id, envelope.id);
        }
        let cast = OutMessage { call: None, ..msg };
        assert_eq!(cast.body_replying_to("x"), cast.body);
    }
}
