//! The device event loop: one thread running an event-manager over every
//! device's file descriptors (virtio queue eventfds, taps, the serial console
//! socket). The controller pauses it by parking the thread inside a handler of
//! its own control eventfd, so no device handler runs while paused.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::devices::lock;

/// A subscriber the loop owns.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("creating the event manager")]
    Manager(#[source] event_manager::Error),
    #[error("starting the device thread")]
    Spawn(#[source] std::io::Error),
    #[error("the device loop did not pause within {0:?}")]
    PauseTimeout(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    Running,
    Paused,
    Exit,
}

struct State {
    wanted: Wanted,
    parked: bool,
}

struct Control {
    evt: EventFd,
    state: Mutex<State>,
    cv: Condvar,
}

/// The loop's own subscriber: parks the thread while paused.
struct ControlHandler(Arc<Control>);

impl MutEventSubscriber for ControlHandler {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.0.evt, EventSet::IN)) {
            tracing::error!("device loop: cannot watch its control eventfd: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let c = &self.0;
        let _ = c.evt.read();
        let mut st = lock(&c.state);
        while st.wanted == Wanted::Paused {
            st.parked = true;
            c.cv.notify_all();
            st = c.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.parked = false;
        c.cv.notify_all();
    }
}

/// The device thread.
pub struct DeviceLoop {
    thread: Option<JoinHandle<()>>,
    control: Arc<Control>,
}

const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

impl DeviceLoop {
    pub fn start(subscribers: Vec<Subscriber>) -> Result<Self, LoopError> {
        let control = Arc::new(Control {
            evt: EventFd::new(EFD_NONBLOCK).map_err(LoopError::EventFd)?,
            state: Mutex::new(State {
                wanted: Wanted::Running,
                parked: false,
            }),
            cv: Condvar::new(),
        });
        let mut manager: EventManager<Subscriber> =
            EventManager::new().map_err(LoopError::Manager)?;
        manager.add_subscriber(Arc::new(Mutex::new(ControlHandler(control.clone()))));
        for s in subscribers {
            manager.add_subscriber(s);
        }
        let c = control.clone();
        let thread = std::thread::Builder::new()
            .name("devices".into())
            .spawn(move || {
                loop {
                    if lock(&c.state).wanted == Wanted::Exit {
                        break;
                    }
                    if let Err(e) = manager.run() {
                        tracing::error!("device loop: {e:?}");
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            })
            .map_err(LoopError::Spawn)?;
        Ok(Self {
            thread: Some(thread),
            control,
        })
    }

    fn request(&self, wanted: Wanted) {
        let mut st = lock(&self.control.state);
        st.wanted = wanted;
        self.control.cv.notify_all();
        drop(st);
        let _ = self.control.evt.write(1);
    }

    /// Stops device processing; returns once the loop is parked.
    pub fn pause(&self) -> Result<(), LoopError> {
        self.request(Wanted::Paused);
        let st = lock(&self.control.state);
        let (_st, res) = self
            .control
            .cv
            .wait_timeout_while(st, PAUSE_TIMEOUT, |s| !s.parked)
            .unwrap_or_else(|e| e.into_inner());
        if res.timed_out() {
            return Err(LoopError::PauseTimeout(PAUSE_TIMEOUT));
        }
        Ok(())
    }

    pub fn resume(&self) {
        self.request(Wanted::Running);
    }

    /// Ends the loop and waits for its thread.
    pub fn stop(&mut self) {
        self.request(Wanted::Exit);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for DeviceLoop {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    struct Counter {
        evt: EventFd,
        seen: Arc<AtomicU32>,
    }

    impl MutEventSubscriber for Counter {
        fn init(&mut self, ops: &mut EventOps) {
            ops.add(Events::new(&self.evt, EventSet::IN)).unwrap();
        }
        fn process(&mut self, _: Events, _: &mut EventOps) {
            self.seen
                .fetch_add(self.evt.read().unwrap() as u32, Ordering::SeqCst);
        }
    }

    fn wait_for(seen: &AtomicU32, n: u32) -> bool {
        for _ in 0..200 {
            if seen.load(Ordering::SeqCst) == n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn pause_stops_event_processing_until_resume() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let seen = Arc::new(AtomicU32::new(0));
        let sub: Subscriber = Arc::new(Mutex::new(Counter {
            evt: evt.try_clone().unwrap(),
            seen: seen.clone(),
        }));
        let mut dl = DeviceLoop::start(vec![sub]).unwrap();
        evt.write(1).unwrap();
        assert!(wait_for(&seen, 1));
        dl.pause().unwrap();
        evt.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(seen.load(Ordering::SeqCst), 1, "nothing runs while paused");
        dl.resume();
        assert!(wait_for(&seen, 2));
        dl.stop();
    }
}
