//! The boot timer: a pseudo-device the guest's init writes to once userspace is
//! up (`devmem <address> 8 1`; the VMM passes the address as
//! `mica.boot_timer=` on the command line). The first write records the time
//! since the boot started: the process start, or the reboot.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::devices::BusDevice;

/// The recorded boot time, shared with the controller.
#[derive(Debug)]
pub struct BootTimer {
    boot_started: Instant,
    reached: OnceLock<Duration>,
}

impl BootTimer {
    pub fn new(boot_started: Instant) -> Arc<Self> {
        Arc::new(Self {
            boot_started,
            reached: OnceLock::new(),
        })
    }

    /// Time from the boot's start to guest userspace, once the guest wrote.
    pub fn boot_time(&self) -> Option<Duration> {
        self.reached.get().copied()
    }
}

/// The device on the MMIO bus.
pub struct BootTimerDevice(pub Arc<BootTimer>);

impl BusDevice for BootTimerDevice {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {
        let t = &self.0;
        let elapsed = t.boot_started.elapsed();
        if t.reached.set(elapsed).is_ok() {
            tracing::info!(
                boot_time_ms = elapsed.as_secs_f64() * 1000.0,
                "guest userspace reached {:.1} ms after the boot started",
                elapsed.as_secs_f64() * 1000.0
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_write_counts() {
        let t = BootTimer::new(Instant::now());
        let mut d = BootTimerDevice(t.clone());
        assert!(t.boot_time().is_none());
        d.write(0, &[1]);
        let first = t.boot_time().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        d.write(0, &[1]);
        assert_eq!(t.boot_time(), Some(first));
    }
}
