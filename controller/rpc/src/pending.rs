//! Calls waiting for their reply, keyed by correlation id.
//!
//! Each call is registered before its request is published (so a fast reply is
//! never missed), then tagged with the connection generation its request was
//! confirmed on. When a connection is lost its replies can no longer arrive,
//! so every call tagged with that generation (or an older one) fails at once
//! with [`Lost`] instead of waiting for its timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::envelope::{Envelope, Kind, Outcome};
use crate::error::Snippet;

/// The reply cannot arrive: the connection it would come on is gone.
#[derive(Debug)]
pub(crate) struct Lost;

pub(crate) type Waiter = oneshot::Receiver<Result<Outcome, Lost>>;

#[derive(Default)]
pub(crate) struct Pending {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    calls: HashMap<String, Entry>,
    /// Every connection generation up to this one is dead.
    lost_up_to: u64,
}

struct Entry {
    tx: oneshot::Sender<Result<Outcome, Lost>>,
    generation: Option<u64>,
}

/// Removes the call's entry when the call ends, however it ends (reply,
/// timeout, or the caller's future dropped).
pub(crate) struct Registration {
    pending: Arc<Pending>,
    id: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.pending.lock().calls.remove(&self.id);
    }
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every operation is a single insert or remove), so go on.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn register(self: &Arc<Self>, id: &str) -> (Registration, Waiter) {
        let (tx, rx) = oneshot::channel();
        self.lock().calls.insert(
            id.to_owned(),
            Entry {
                tx,
                generation: None,
            },
        );
        let reg = Registration {
            pending: self.clone(),
            id: id.to_owned(),
        };
        (reg, rx)
    }

    /// The call's request was confirmed on connection `generation`.
    pub(crate) fn published(&self, id: &str, generation: u64) {
        let mut state = self.lock();
        if generation <= state.lost_up_to {
            if let Some(entry) = state.calls.remove(id) {
                let _ = entry.tx.send(Err(Lost));
            }
        } else if let Some(entry) = state.calls.get_mut(id) {
            entry.generation = Some(generation);
        }
    }

    /// Connection `generation` is gone: fail the calls waiting on it.
    pub(crate) fn connection_lost(&self, generation: u64) {
        let mut state = self.lock();
        state.lost_up_to = state.lost_up_to.max(generation);
        let lost_up_to = state.lost_up_to;
        let dead: Vec<String> = state
            .calls
            .iter()
            .filter(|(_, e)| e.generation.is_some_and(|g| g <= lost_up_to))
            .map(|(id, _)| id.clone())
            .collect();
        for id in dead {
            if let Some(entry) = state.calls.remove(&id) {
                let _ = entry.tx.send(Err(Lost));
            }
        }
    }

    /// A message arrived on this client's reply queue.
    pub(crate) fn complete(&self, body: &[u8]) {
        let envelope = match Envelope::decode(body) {
            Ok(e) if e.kind == Kind::Reply => e,
            Ok(e) => {
                tracing::warn!(kind = ?e.kind, id = %e.id, "rpc: not a reply on the reply queue, dropped");
                return;
            }
            Err(err) => {
                tracing::warn!(%err, body = %Snippet(body), "rpc: unparseable reply, dropped");
                return;
            }
        };
        let Some(outcome) = envelope.result else {
            tracing::warn!(id = %envelope.id, "rpc: reply without a result, dropped");
            return;
        };
        match self.lock().calls.remove(&envelope.id) {
            Some(entry) => {
                let _ = entry.tx.send(Ok(outcome));
            }
            None => {
                tracing::debug!(id = %envelope.id, "rpc: reply to a call no longer waiting (timed out, lost or duplicate)")
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().calls.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reply(id: &str) -> Vec<u8> {
        Envelope::reply(id, Outcome::Ok(json!(42))).encode()
    }

    #[tokio::test]
    async fn reply_reaches_its_caller_and_registration_cleans_up() {
        let p = Arc::new(Pending::default());
        let (reg, rx) = p.register("a");
        p.published("a", 1);
        p.complete(&reply("b")); // someone else's: ignored
        p.complete(&reply("a"));
        assert_eq!(rx.await.unwrap().unwrap(), Outcome::Ok(json!(42)));
        drop(reg);
        assert_eq!(p.len(), 0);
        let (reg, _rx) = p.register("c");
        drop(reg);
        assert_eq!(p.len(), 0);
    }

    #[tokio::test]
    async fn lost_connection_fails_only_calls_published_on_it() {
        let p = Arc::new(Pending::default());
        let (_r1, rx1) = p.register("on-gen-1");
        let (_r2, mut rx2) = p.register("not-yet-published");
        let (_r3, mut rx3) = p.register("on-gen-2");
        p.published("on-gen-1", 1);
        p.published("on-gen-2", 2);
        p.connection_lost(1);
        assert!(rx1.await.unwrap().is_err());
        assert!(rx2.try_recv().is_err(), "still waiting");
        assert!(rx3.try_recv().is_err(), "still waiting");
        // Confirmed on a generation already known dead: fails at once.
        p.published("not-yet-published", 1);
        assert!(rx2.await.unwrap().is_err());
    }
}
