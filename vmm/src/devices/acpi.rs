//! The two devices of Mica's hardware-reduced ACPI platform (see
//! `arch::x86_64::acpi` for the tables that describe them):
//!
//! - [`PmPort`]: I/O port 0x3c0, the FADT's sleep control, sleep status and reset
//!   register. Writing S5 powers the VM off; writing the reset value resets it.
//! - [`Ged`]: the Generic Event Device. The VMM sets an event bit and pulses the
//!   GED's interrupt; the DSDT's `_EVT` reads (and so clears) the bits and
//!   notifies the power button, and the guest shuts down.

use crate::arch::{ACPI_RESET_VALUE, acpi::GED_EVENT_POWER_BUTTON};
use crate::devices::{BusDevice, IrqLine};
use crate::vmm::{GuestEvent, GuestEvents, ResetSource};

/// SLP_EN in the sleep control register.
const SLP_EN: u8 = 1 << 5;
/// The sleep type Mica's `\_S5` package names.
const SLP_TYP_S5: u8 = 5;

/// The sleep control/status and reset register.
pub struct PmPort {
    events: GuestEvents,
}

impl PmPort {
    pub fn new(events: GuestEvents) -> Self {
        Self { events }
    }
}

impl BusDevice for PmPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status: never "woken".
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (0, Some(&value)) = (offset, data.first()) else {
            return;
        };
        if value & SLP_EN != 0 {
            let slp_typ = (value >> 2) & 0x7;
            if slp_typ == SLP_TYP_S5 {
                tracing::info!("guest powered off (ACPI S5)");
                self.events.send(GuestEvent::PowerOff);
            } else {
                tracing::warn!(
                    "guest asked for sleep state type {slp_typ}, which Mica does not offer"
                );
            }
        } else if value == ACPI_RESET_VALUE {
            tracing::info!("guest requested a reset through the ACPI reset register");
            self.events.send(GuestEvent::Reset(ResetSource::Acpi));
        }
    }
}

/// The Generic Event Device's event register.
pub struct Ged {
    pending: u32,
    irq: IrqLine,
}

impl Ged {
    pub fn new(irq: IrqLine) -> Self {
        Self { pending: 0, irq }
    }

    /// Presses the power button.
    pub fn press_power_button(&mut self) -> std::io::Result<()> {
        self.pending |= GED_EVENT_POWER_BUTTON;
        self.irq.trigger()
    }
}

impl BusDevice for Ged {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = if offset == 0 {
            std::mem::take(&mut self.pending)
        } else {
            0
        };
        let bytes = value.to_le_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = bytes.get(i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::ACPI_S5_VALUE;
    use crate::vmm::VmEvent;
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    #[test]
    fn s5_powers_off_and_the_reset_value_resets() {
        let (tx, rx) = GuestEvents::for_test();
        let mut pm = PmPort::new(tx);
        pm.write(0, &[ACPI_S5_VALUE]);
        assert!(matches!(
            rx.try_recv(),
            Ok(VmEvent::Guest {
                event: GuestEvent::PowerOff,
                ..
            })
        ));
        pm.write(0, &[(3 << 2) | SLP_EN]);
        assert!(rx.try_recv().is_err(), "S3 is not offered");
        pm.write(0, &[ACPI_RESET_VALUE]);
        assert!(matches!(
            rx.try_recv(),
            Ok(VmEvent::Guest {
                event: GuestEvent::Reset(ResetSource::Acpi),
                ..
            })
        ));
    }

    #[test]
    fn ged_events_are_read_once() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut ged = Ged::new(IrqLine::new(evt.try_clone().unwrap(), 5));
        ged.press_power_button().unwrap();
        assert_eq!(evt.read().unwrap(), 1);
        let mut d = [0u8; 4];
        ged.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), GED_EVENT_POWER_BUTTON);
        ged.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0);
    }
}
