//! The i8042 keyboard controller with an AT keyboard behind it, emulated far
//! enough for Linux's i8042 and atkbd drivers to bind, so that
//!
//! - the guest can reset the machine (command 0xFE, "pulse the reset line", which
//!   is how `reboot=k` and the kernel's fallback reboot work), and
//! - the VMM can type Ctrl-Alt-Del (the graceful reboot request), and VNC
//!   viewers can type anything ([`crate::devices::display::keymap`]).
//!
//! There is no AUX (mouse) port: its loopback and interface tests fail quickly so
//! the driver does not wait for it.

use crate::devices::display::keymap::{Key, scancodes};
use crate::devices::{BusDevice, IrqLine};
use crate::vmm::{GuestEvent, GuestEvents, ResetSource};
use std::collections::VecDeque;

/// Port offsets from 0x60.
const DATA: u64 = 0;
const COMMAND: u64 = 4;

// Status register bits.
const STATUS_OBF: u8 = 1 << 0;
const STATUS_SYS: u8 = 1 << 2;
const STATUS_CMD: u8 = 1 << 3;
const STATUS_UNLOCKED: u8 = 1 << 4;

// Controller configuration byte ("command byte") bits.
const CTR_KBD_INT: u8 = 1 << 0;
const CTR_SYS: u8 = 1 << 2;
const CTR_KBD_DISABLE: u8 = 1 << 4;
const CTR_AUX_DISABLE: u8 = 1 << 5;
const CTR_XLATE: u8 = 1 << 6;

// Controller commands.
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_INPUT: u8 = 0xc0;
const CMD_READ_OUTPUT: u8 = 0xd0;
const CMD_WRITE_OUTPUT: u8 = 0xd1;
const CMD_WRITE_KBD_OUT: u8 = 0xd2;
const CMD_WRITE_AUX_OUT: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_PULSE_RESET: u8 = 0xfe;

// Keyboard commands and answers.
const KBD_SET_LEDS: u8 = 0xed;
const KBD_ECHO: u8 = 0xee;
const KBD_SCANCODE_SET: u8 = 0xf0;
const KBD_GET_ID: u8 = 0xf2;
const KBD_SET_RATE: u8 = 0xf3;
const KBD_RESET: u8 = 0xff;
const KBD_ACK: u8 = 0xfa;
const KBD_SELF_TEST_OK: u8 = 0xaa;

/// Ctrl-Alt-Del press and release, scan code set 1 (what the guest reads when the
/// controller translates) and set 2 (when it does not).
const CAD_SET1: [u8; 8] = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];
const CAD_SET2: [u8; 11] = [
    0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
];

/// Bytes the keyboard buffers before it drops input (a viewer can paste a
/// line faster than the guest takes it).
const QUEUE_MAX: usize = 4096;

/// The controller and its keyboard.
pub struct I8042 {
    ctr: u8,
    status: u8,
    /// Bytes for the guest to read at port 0x60.
    out: VecDeque<u8>,
    /// A controller command waiting for its data byte.
    pending_cmd: Option<u8>,
    /// A keyboard command waiting for its parameter byte.
    pending_kbd: Option<u8>,
    irq: IrqLine,
    events: GuestEvents,
}

impl I8042 {
    pub fn new(irq: IrqLine, events: GuestEvents) -> Self {
        Self {
            ctr: CTR_KBD_INT | CTR_SYS | CTR_AUX_DISABLE | CTR_XLATE,
            status: STATUS_UNLOCKED | STATUS_SYS,
            out: VecDeque::new(),
            pending_cmd: None,
            pending_kbd: None,
            irq,
            events,
        }
    }

    /// Types Ctrl-Alt-Del.
    pub fn ctrl_alt_del(&mut self) {
        if self.ctr & CTR_XLATE != 0 {
            self.push_all(&CAD_SET1);
        } else {
            self.push_all(&CAD_SET2);
        }
    }

    /// Presses or releases `key`, in the scan code set the guest reads.
    pub fn key(&mut self, key: Key, down: bool) {
        let mut codes = Vec::with_capacity(3);
        scancodes(key, down, self.ctr & CTR_XLATE != 0, &mut codes);
        self.push_all(&codes);
    }

    fn push_all(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.push(b);
        }
    }

    /// Queues a byte for the guest and interrupts it when the output buffer
    /// goes from empty to full.
    fn push(&mut self, byte: u8) {
        if self.out.len() >= QUEUE_MAX {
            return;
        }
        self.out.push_back(byte);
        if self.out.len() == 1 {
            self.notify();
        }
    }

    fn notify(&self) {
        if self.ctr & CTR_KBD_INT != 0 {
            let _ = self.irq.trigger();
        }
    }

    fn status(&self) -> u8 {
        let mut s = self.status;
        if !self.out.is_empty() {
            s |= STATUS_OBF;
        }
        s
    }

    fn read_data(&mut self) -> u8 {
        let byte = self.out.pop_front().unwrap_or(0);
        if !self.out.is_empty() {
            self.notify();
        }
        byte
    }

    fn command(&mut self, cmd: u8) {
        self.status |= STATUS_CMD;
        match cmd {
            CMD_READ_CTR => self.push(self.ctr),
            CMD_WRITE_CTR | CMD_WRITE_OUTPUT | CMD_WRITE_KBD_OUT | CMD_WRITE_AUX_OUT
            | CMD_WRITE_AUX => self.pending_cmd = Some(cmd),
            CMD_AUX_DISABLE => self.ctr |= CTR_AUX_DISABLE,
            CMD_AUX_ENABLE => self.ctr &= !CTR_AUX_DISABLE,
            // "Clock line stuck low": no AUX port.
            CMD_AUX_TEST => self.push(0x01),
            CMD_SELF_TEST => {
                self.status |= STATUS_SYS;
                self.push(0x55);
            }
            CMD_KBD_TEST => self.push(0x00),
            CMD_KBD_DISABLE => self.ctr |= CTR_KBD_DISABLE,
            CMD_KBD_ENABLE => self.ctr &= !CTR_KBD_DISABLE,
            CMD_READ_INPUT => self.push(0x00),
            // Reset line inactive (bit 0), A20 on (bit 1).
            CMD_READ_OUTPUT => self.push(0x03),
            CMD_PULSE_RESET => self.reset("i8042 reset line"),
            _ => {}
        }
    }

    fn data(&mut self, byte: u8) {
        self.status &= !STATUS_CMD;
        match self.pending_cmd.take() {
            Some(CMD_WRITE_CTR) => {
                self.ctr = byte;
                if byte & CTR_SYS != 0 {
                    self.status |= STATUS_SYS;
                }
            }
            Some(CMD_WRITE_OUTPUT) => {
                if byte & 1 == 0 {
                    self.reset("i8042 output port");
                }
            }
            Some(CMD_WRITE_KBD_OUT) => self.push(byte),
            // The AUX loopback answers as keyboard data, which the driver reads
            // as "no AUX port".
            Some(CMD_WRITE_AUX_OUT) => self.push(byte),
            Some(CMD_WRITE_AUX) => {}
            _ => self.keyboard(byte),
        }
    }

    fn keyboard(&mut self, byte: u8) {
        if let Some(cmd) = self.pending_kbd.take() {
            self.push(KBD_ACK);
            if cmd == KBD_SCANCODE_SET && byte == 0 {
                // "Which scan code set?": set 2.
                self.push(0x02);
            }
            return;
        }
        match byte {
            KBD_SET_LEDS | KBD_SET_RATE | KBD_SCANCODE_SET => {
                self.pending_kbd = Some(byte);
                self.push(KBD_ACK);
            }
            KBD_ECHO => self.push(KBD_ECHO),
            KBD_GET_ID => self.push_all(&[KBD_ACK, 0xab, 0x83]),
            KBD_RESET => self.push_all(&[KBD_ACK, KBD_SELF_TEST_OK]),
            _ => self.push(KBD_ACK),
        }
    }

    fn reset(&self, source: &'static str) {
        tracing::info!("guest requested a reset through the {source}");
        self.events.send(GuestEvent::Reset(ResetSource::I8042));
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            DATA => self.read_data(),
            COMMAND => self.status(),
            _ => 0xff,
        };
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&byte) = data.first() else { return };
        match offset {
            DATA => self.data(byte),
            COMMAND => self.command(byte),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::VmEvent;
    use std::sync::mpsc;
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    fn dev() -> (I8042, EventFd, mpsc::Receiver<VmEvent>) {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let (tx, rx) = GuestEvents::for_test();
        (
            I8042::new(IrqLine::new(evt.try_clone().unwrap(), 1), tx),
            evt,
            rx,
        )
    }

    fn cmd(d: &mut I8042, c: u8) {
        d.write(COMMAND, &[c]);
    }

    fn data(d: &mut I8042, b: u8) {
        d.write(DATA, &[b]);
    }

    fn read_all(d: &mut I8042) -> Vec<u8> {
        let mut v = Vec::new();
        let mut b = [0u8];
        loop {
            d.read(COMMAND, &mut b);
            if b[0] & STATUS_OBF == 0 {
                return v;
            }
            d.read(DATA, &mut b);
            v.push(b[0]);
        }
    }

    #[test]
    fn linux_probe_sequence() {
        let (mut d, irq, _) = dev();
        cmd(&mut d, CMD_SELF_TEST);
        assert_eq!(read_all(&mut d), [0x55]);
        cmd(&mut d, CMD_READ_CTR);
        let ctr = read_all(&mut d)[0];
        assert_ne!(ctr & CTR_XLATE, 0);
        cmd(&mut d, CMD_WRITE_CTR);
        data(&mut d, ctr & !CTR_KBD_DISABLE);
        // No AUX port: the loopback answers without the AUX flag, the test fails.
        cmd(&mut d, CMD_WRITE_AUX_OUT);
        data(&mut d, 0x5a);
        let mut st = [0u8];
        d.read(COMMAND, &mut st);
        assert_eq!(st[0] & (1 << 5), 0);
        assert_eq!(read_all(&mut d), [0x5a]);
        cmd(&mut d, CMD_AUX_TEST);
        assert_eq!(read_all(&mut d), [0x01]);
        // atkbd: identify, then set LEDs.
        data(&mut d, KBD_GET_ID);
        assert_eq!(read_all(&mut d), [KBD_ACK, 0xab, 0x83]);
        data(&mut d, KBD_SET_LEDS);
        data(&mut d, 0x00);
        assert_eq!(read_all(&mut d), [KBD_ACK, KBD_ACK]);
        data(&mut d, KBD_SCANCODE_SET);
        data(&mut d, 0);
        assert_eq!(read_all(&mut d), [KBD_ACK, KBD_ACK, 0x02]);
        assert!(irq.read().unwrap() > 0, "the keyboard interrupted");
    }

    #[test]
    fn ctrl_alt_del_follows_translation() {
        let (mut d, _, _) = dev();
        d.ctrl_alt_del();
        assert_eq!(read_all(&mut d), CAD_SET1);
        cmd(&mut d, CMD_WRITE_CTR);
        data(&mut d, CTR_KBD_INT);
        d.ctrl_alt_del();
        assert_eq!(read_all(&mut d), CAD_SET2);
    }

    #[test]
    fn keys_follow_translation() {
        let (mut d, _, _) = dev();
        let (up, _) = crate::devices::display::keymap::key_for(0xff52).unwrap();
        d.key(up, true);
        d.key(up, false);
        assert_eq!(read_all(&mut d), [0xe0, 0x48, 0xe0, 0xc8]);
        cmd(&mut d, CMD_WRITE_CTR);
        data(&mut d, CTR_KBD_INT);
        d.key(up, false);
        assert_eq!(read_all(&mut d), [0xe0, 0xf0, 0x75]);
    }

    #[test]
    fn reset_command_asks_the_vmm_for_a_reset() {
        let (mut d, _, rx) = dev();
        cmd(&mut d, CMD_PULSE_RESET);
        assert!(matches!(
            rx.try_recv(),
            Ok(VmEvent::Guest {
                event: GuestEvent::Reset(ResetSource::I8042),
                ..
            })
        ));
    }

    #[test]
    fn no_interrupt_when_disabled_in_the_command_byte() {
        let (mut d, irq, _) = dev();
        cmd(&mut d, CMD_WRITE_CTR);
        data(&mut d, 0);
        let _ = irq.read();
        d.ctrl_alt_del();
        assert!(irq.read().is_err(), "no interrupt expected");
    }
}
