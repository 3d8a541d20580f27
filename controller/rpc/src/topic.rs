//! Topics (where a message goes) and the queue and exchange names they map to.
//!
//! | topic                       | AMQP                                             | consumers            |
//! |-----------------------------|--------------------------------------------------|----------------------|
//! | `Topic::conductor()`        | durable queue `<ns>.conductor`                   | every conductor, competing |
//! | `Topic::scheduler()`        | durable queue `<ns>.scheduler`                   | every scheduler, competing |
//! | `Topic::compute(host)`      | durable queue `<ns>.compute.<host>`              | the agent on `host`  |
//! | `Topic::all_computes()`     | fanout exchange `<ns>.compute_fanout`, one durable queue `<ns>.compute_fanout.<host>` per agent | every agent, each gets a copy |
//!
//! `<ns>` is the namespace from [`crate::RpcOptions::namespace`] (`mica` by
//! default); the in-process bus uses the same names. Service names are
//! `[a-z0-9-]`, so the names made with `_` (`compute_fanout`, `rpc_reply`,
//! `rpc_dead_letter`) never collide with a service's.

use std::fmt;

use crate::RpcError;

/// Where a message goes. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Topic {
    service: String,
    target: Target,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Target {
    /// One queue shared by every server of the service.
    Shared,
    /// The queue of one host's server.
    Host(String),
    /// A copy to every server subscribed to the service's fanout.
    Fanout,
}

impl Topic {
    /// `conductor`: any conductor replica.
    pub fn conductor() -> Self {
        Self::service("conductor")
    }

    /// `scheduler`: any scheduler replica.
    pub fn scheduler() -> Self {
        Self::service("scheduler")
    }

    /// `compute.<host>`: the agent on `host`.
    pub fn compute(host: impl Into<String>) -> Self {
        Self::host("compute", host)
    }

    /// The fanout to every compute agent.
    pub fn all_computes() -> Self {
        Self::fanout("compute")
    }

    /// A service's shared topic (another service than the three above).
    pub fn service(service: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            target: Target::Shared,
        }
    }

    /// A service's per-host topic: `<service>.<host>`.
    pub fn host(service: impl Into<String>, host: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            target: Target::Host(host.into()),
        }
    }

    /// A service's fanout: every subscribed server gets a copy.
    pub fn fanout(service: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            target: Target::Fanout,
        }
    }

    /// The service name (`conductor`, `compute`, …).
    pub fn service_name(&self) -> &str {
        &self.service
    }

    /// True for a fanout topic.
    pub fn is_fanout(&self) -> bool {
        self.target == Target::Fanout
    }

    pub(crate) fn validate(&self) -> Result<(), RpcError> {
        validate_service(&self.service)?;
        if let Target::Host(host) = &self.target {
            validate_member(host)?;
        }
        Ok(())
    }

    /// Where to publish this topic, under namespace `ns`.
    pub(crate) fn destination(&self, ns: &str) -> Destination {
        match &self.target {
            Target::Shared => Destination::Queue(format!("{ns}.{}", self.service)),
            Target::Host(host) => Destination::Queue(format!("{ns}.{}.{host}", self.service)),
            Target::Fanout => Destination::Fanout(fanout_exchange(ns, &self.service)),
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Shared => write!(f, "{}", self.service),
            Target::Host(host) => write!(f, "{}.{host}", self.service),
            Target::Fanout => write!(f, "{}_fanout", self.service),
        }
    }
}

/// What a server listens to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscription {
    /// A shared or per-host topic's queue. Several servers on one topic
    /// compete: each message goes to one of them.
    Topic(Topic),
    /// A service's fanout, received through `member`'s own durable queue, so
    /// fanouts sent while the member is briefly away are kept for it.
    Fanout {
        /// The service (`compute`).
        service: String,
        /// This server's name within it (the host name).
        member: String,
    },
}

impl Subscription {
    /// What a compute agent on `host` listens to: `compute.<host>` and the
    /// compute fanout.
    pub fn compute_host(host: &str) -> Vec<Subscription> {
        vec![
            Subscription::Topic(Topic::compute(host)),
            Subscription::Fanout {
                service: "compute".into(),
                member: host.into(),
            },
        ]
    }

    pub(crate) fn validate(&self) -> Result<(), RpcError> {
        match self {
            Subscription::Topic(t) if t.is_fanout() => Err(RpcError::InvalidName(format!(
                "{t} (subscribe to a fanout with Subscription::Fanout)"
            ))),
            Subscription::Topic(t) => t.validate(),
            Subscription::Fanout { service, member } => {
                validate_service(service)?;
                validate_member(member)
            }
        }
    }

    pub(crate) fn source(&self, ns: &str) -> Source {
        match self {
            Subscription::Topic(t) => match t.destination(ns) {
                Destination::Queue(q) => Source::Queue(q),
                Destination::Fanout(_) => unreachable!("validated: not a fanout"),
            },
            Subscription::Fanout { service, member } => Source::Fanout {
                exchange: fanout_exchange(ns, service),
                queue: format!("{}.{member}", fanout_exchange(ns, service)),
            },
        }
    }
}

impl From<Topic> for Subscription {
    fn from(t: Topic) -> Self {
        Subscription::Topic(t)
    }
}

impl fmt::Display for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subscription::Topic(t) => t.fmt(f),
            Subscription::Fanout { service, member } => write!(f, "{service}_fanout[{member}]"),
        }
    }
}

/// A publish target, as names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Destination {
    /// A durable queue, published to through the default exchange.
    Queue(String),
    /// A fanout exchange.
    Fanout(String),
}

/// A consume source, as names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    Queue(String),
    Fanout { exchange: String, queue: String },
}

impl Source {
    pub(crate) fn queue(&self) -> &str {
        match self {
            Source::Queue(q) | Source::Fanout { queue: q, .. } => q,
        }
    }
}

pub(crate) fn fanout_exchange(ns: &str, service: &str) -> String {
    format!("{ns}.{service}_fanout")
}

pub(crate) fn dead_letter_queue(ns: &str) -> String {
    format!("{ns}.rpc_dead_letter")
}

pub(crate) fn reply_queue(ns: &str, client: &str, generation: u64) -> String {
    format!("{ns}.rpc_reply.{client}.{generation}")
}

/// Service and namespace names: `[a-z0-9-]{1,50}`.
pub(crate) fn validate_service(name: &str) -> Result<(), RpcError> {
    let ok = !name.is_empty()
        && name.len() <= 50
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(RpcError::InvalidName(name.into()))
    }
}

/// Host and member names: `[A-Za-z0-9._:-]{1,100}`.
pub(crate) fn validate_member(name: &str) -> Result<(), RpcError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(RpcError::InvalidName(name.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            Topic::conductor().destination("mica"),
            Destination::Queue("mica.conductor".into())
        );
        assert_eq!(
            Topic::compute("node-1.example.org").destination("mica"),
            Destination::Queue("mica.compute.node-1.example.org".into())
        );
        assert_eq!(
            Topic::all_computes().destination("mica"),
            Destination::Fanout("mica.compute_fanout".into())
        );
        let subs = Subscription::compute_host("h1");
        assert_eq!(subs[0].source("ns"), Source::Queue("ns.compute.h1".into()));
        assert_eq!(
            subs[1].source("ns"),
            Source::Fanout {
                exchange: "ns.compute_fanout".into(),
                queue: "ns.compute_fanout.h1".into()
            }
        );
        assert_eq!(Topic::compute("h1").to_string(), "compute.h1");
    }

    #[test]
    fn validation() {
        assert!(Topic::compute("h1").validate().is_ok());
        assert!(Topic::compute("").validate().is_err());
        assert!(Topic::compute("a b").validate().is_err());
        assert!(Topic::compute("x".repeat(101)).validate().is_err());
        assert!(Topic::service("Compute").validate().is_err());
        assert!(Topic::service("my_service").validate().is_err());
        assert!(
            Subscription::Topic(Topic::all_computes())
                .validate()
                .is_err()
        );
    }
}
