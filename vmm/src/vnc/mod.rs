//! The RFB (VNC) server on the guest's framebuffer.
//!
//! One thread ("vnc") serves every viewer, on the display's Unix socket and
//! optional loopback TCP port, with `poll(2)`:
//!
//! - a viewer asks for an update; a full one is answered at once, an
//!   incremental one stays pending until something on screen changed;
//! - what changed comes from KVM's dirty-page log of the framebuffer's memory
//!   slot (`KVM_GET_DIRTY_LOG`), read while some viewer has a request
//!   pending, and never otherwise: no viewers, or viewers that have not asked,
//!   cost nothing. The log is read every [`HARVEST_INTERVAL`] while the screen
//!   changes, and less often (down to every [`HARVEST_INTERVAL_IDLE`]) while
//!   it does not;
//! - changed pages become changed lines, and runs of changed lines are sent as
//!   full-width rectangles, Raw or ZRLE ([`encode`]) as the viewer prefers;
//! - key events go to the i8042 ([`crate::devices::display::keymap`]);
//!   Ctrl-Alt-Del also tells the controller the reset that follows is a
//!   reboot, not an exit.
//!
//! The server and its viewers outlive a reboot: each boot attaches its VM and
//! keyboard ([`Display::attach`]) and detaches them when it ends; the new boot
//! starts on a blank screen, which every viewer is sent.

pub mod encode;
pub mod proto;
mod server;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::devices::display::Framebuffer;
use crate::devices::legacy::I8042;
use crate::devices::lock;
use crate::metrics::DisplayCounters;
use crate::vmm::VmEvent;

pub use server::{Listeners, VncServer};

/// How often the dirty log is read while an update request is pending and the
/// screen changes; each read that finds nothing doubles the interval, up to
/// [`HARVEST_INTERVAL_IDLE`].
pub const HARVEST_INTERVAL: Duration = Duration::from_millis(10);
pub const HARVEST_INTERVAL_IDLE: Duration = Duration::from_millis(40);

/// One boot's VM and keyboard, as the server sees them.
pub struct Attachment {
    pub vm: Arc<VmFd>,
    pub i8042: Arc<Mutex<I8042>>,
}

/// What the server shares with the builder and the controller.
pub struct Display {
    pub framebuffer: Arc<Framebuffer>,
    attached: Mutex<Option<Attachment>>,
    /// Set by `attach`: every line is new to every viewer.
    all_dirty: AtomicBool,
    stopping: AtomicBool,
    wake: EventFd,
    pub metrics: Arc<DisplayCounters>,
    events: Sender<VmEvent>,
}

impl Display {
    pub fn new(
        framebuffer: Framebuffer,
        metrics: Arc<DisplayCounters>,
        events: Sender<VmEvent>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            framebuffer: Arc::new(framebuffer),
            attached: Mutex::new(None),
            all_dirty: AtomicBool::new(true),
            stopping: AtomicBool::new(false),
            wake: EventFd::new(EFD_NONBLOCK)?,
            metrics,
            events,
        })
    }

    /// A new boot: its VM (with the framebuffer slot registered, dirty
    /// logging on) and keyboard.
    pub fn attach(&self, attachment: Attachment) {
        *lock(&self.attached) = Some(attachment);
        self.all_dirty.store(true, Ordering::SeqCst);
        let _ = self.wake.write(1);
    }

    /// The boot ends: the server lets go of its VM.
    pub fn detach(&self) {
        *lock(&self.attached) = None;
    }

    /// Ends the server thread.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.wake.write(1);
    }
}
