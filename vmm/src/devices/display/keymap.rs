//! RFB key events (X11 keysyms) to AT keyboard scan codes.
//!
//! A viewer sends the keysym of the character a key makes (`A`, `!`), not the
//! key: a character that needs Shift is typed with a Shift press around it
//! when the viewer does not hold Shift itself. Scan codes come in set 1 (what
//! the guest reads when the i8042 translates, Linux's default) and set 2.

/// A key of a US 104-key keyboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub set1: u8,
    pub set2: u8,
    /// Sent with an 0xE0 prefix.
    pub extended: bool,
}

const fn k(set1: u8, set2: u8) -> Key {
    Key {
        set1,
        set2,
        extended: false,
    }
}

const fn e(set1: u8, set2: u8) -> Key {
    Key {
        set1,
        set2,
        extended: true,
    }
}

pub const LEFT_SHIFT: Key = k(0x2a, 0x12);
pub const RIGHT_SHIFT: Key = k(0x36, 0x59);
pub const LEFT_CTRL: Key = k(0x1d, 0x14);
pub const RIGHT_CTRL: Key = e(0x1d, 0x14);
pub const LEFT_ALT: Key = k(0x38, 0x11);
pub const RIGHT_ALT: Key = e(0x38, 0x11);
pub const DELETE: Key = e(0x53, 0x71);

/// Printable keys: (keysym without Shift, keysym with Shift, key).
const PRINTABLE: [(u8, u8, Key); 47] = [
    (b'1', b'!', k(0x02, 0x16)),
    (b'2', b'@', k(0x03, 0x1e)),
    (b'3', b'#', k(0x04, 0x26)),
    (b'4', b'$', k(0x05, 0x25)),
    (b'5', b'%', k(0x06, 0x2e)),
    (b'6', b'^', k(0x07, 0x36)),
    (b'7', b'&', k(0x08, 0x3d)),
    (b'8', b'*', k(0x09, 0x3e)),
    (b'9', b'(', k(0x0a, 0x46)),
    (b'0', b')', k(0x0b, 0x45)),
    (b'-', b'_', k(0x0c, 0x4e)),
    (b'=', b'+', k(0x0d, 0x55)),
    (b'q', b'Q', k(0x10, 0x15)),
    (b'w', b'W', k(0x11, 0x1d)),
    (b'e', b'E', k(0x12, 0x24)),
    (b'r', b'R', k(0x13, 0x2d)),
    (b't', b'T', k(0x14, 0x2c)),
    (b'y', b'Y', k(0x15, 0x35)),
    (b'u', b'U', k(0x16, 0x3c)),
    (b'i', b'I', k(0x17, 0x43)),
    (b'o', b'O', k(0x18, 0x44)),
    (b'p', b'P', k(0x19, 0x4d)),
    (b'[', b'{', k(0x1a, 0x54)),
    (b']', b'}', k(0x1b, 0x5b)),
    (b'a', b'A', k(0x1e, 0x1c)),
    (b's', b'S', k(0x1f, 0x1b)),
    (b'd', b'D', k(0x20, 0x23)),
    (b'f', b'F', k(0x21, 0x2b)),
    (b'g', b'G', k(0x22, 0x34)),
    (b'h', b'H', k(0x23, 0x33)),
    (b'j', b'J', k(0x24, 0x3b)),
    (b'k', b'K', k(0x25, 0x42)),
    (b'l', b'L', k(0x26, 0x4b)),
    (b';', b':', k(0x27, 0x4c)),
    (b'\'', b'"', k(0x28, 0x52)),
    (b'`', b'~', k(0x29, 0x0e)),
    (b'\\', b'|', k(0x2b, 0x5d)),
    (b'z', b'Z', k(0x2c, 0x1a)),
    (b'x', b'X', k(0x2d, 0x22)),
    (b'c', b'C', k(0x2e, 0x21)),
    (b'v', b'V', k(0x2f, 0x2a)),
    (b'b', b'B', k(0x30, 0x32)),
    (b'n', b'N', k(0x31, 0x31)),
    (b'm', b'M', k(0x32, 0x3a)),
    (b',', b'<', k(0x33, 0x41)),
    (b'.', b'>', k(0x34, 0x49)),
    (b'/', b'?', k(0x35, 0x4a)),
];

/// Function keys F1-F12.
const FUNCTION: [Key; 12] = [
    k(0x3b, 0x05),
    k(0x3c, 0x06),
    k(0x3d, 0x04),
    k(0x3e, 0x0c),
    k(0x3f, 0x03),
    k(0x40, 0x0b),
    k(0x41, 0x83),
    k(0x42, 0x0a),
    k(0x43, 0x01),
    k(0x44, 0x09),
    k(0x57, 0x78),
    k(0x58, 0x07),
];

/// The key that makes `keysym`, and whether it needs Shift.
pub fn key_for(keysym: u32) -> Option<(Key, bool)> {
    if keysym == 0x20 {
        return Some((k(0x39, 0x29), false));
    }
    if (0x21..0x7f).contains(&keysym) {
        let c = keysym as u8;
        return PRINTABLE.iter().find_map(|&(plain, shifted, key)| {
            if c == plain {
                Some((key, false))
            } else if c == shifted {
                Some((key, true))
            } else {
                None
            }
        });
    }
    let key = match keysym {
        0xff08 => k(0x0e, 0x66), // BackSpace
        0xff09 => k(0x0f, 0x0d), // Tab
        0xff0d => k(0x1c, 0x5a), // Return
        0xff1b => k(0x01, 0x76), // Escape
        0xffff => DELETE,
        0xff50 => e(0x47, 0x6c), // Home
        0xff51 => e(0x4b, 0x6b), // Left
        0xff52 => e(0x48, 0x75), // Up
        0xff53 => e(0x4d, 0x74), // Right
        0xff54 => e(0x50, 0x72), // Down
        0xff55 => e(0x49, 0x7d), // Page_Up
        0xff56 => e(0x51, 0x7a), // Page_Down
        0xff57 => e(0x4f, 0x69), // End
        0xff63 => e(0x52, 0x70), // Insert
        0xff8d => e(0x1c, 0x5a), // KP_Enter
        0xffbe..=0xffc9 => FUNCTION[(keysym - 0xffbe) as usize],
        0xffe1 => LEFT_SHIFT,
        0xffe2 => RIGHT_SHIFT,
        0xffe3 => LEFT_CTRL,
        0xffe4 => RIGHT_CTRL,
        0xffe5 => k(0x3a, 0x58),               // Caps_Lock
        0xffe7 | 0xffe9 => LEFT_ALT,           // Meta_L, Alt_L
        0xffe8 | 0xffea | 0xfe03 => RIGHT_ALT, // Meta_R, Alt_R, ISO_Level3_Shift
        0xffeb => e(0x5b, 0x1f),               // Super_L
        0xffec => e(0x5c, 0x27),               // Super_R
        _ => return None,
    };
    Some((key, false))
}

/// Appends the scan codes of pressing (`down`) or releasing `key`.
pub fn scancodes(key: Key, down: bool, translated: bool, out: &mut Vec<u8>) {
    if key.extended {
        out.push(0xe0);
    }
    match (translated, down) {
        (true, true) => out.push(key.set1),
        (true, false) => out.push(key.set1 | 0x80),
        (false, true) => out.push(key.set2),
        (false, false) => out.extend([0xf0, key.set2]),
    }
}

/// What a key event asks of the keyboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAction {
    Key(Key, bool),
    /// Ctrl-Alt-Del is about to be typed: the guest will reset, as asked.
    RebootRequested,
}

/// One viewer's modifier state.
#[derive(Debug, Default)]
pub struct KeyState {
    shift: [bool; 2],
    ctrl: [bool; 2],
    alt: [bool; 2],
}

impl KeyState {
    /// Turns a viewer's key event into keyboard actions (none for an unknown
    /// keysym).
    pub fn event(&mut self, keysym: u32, down: bool) -> Vec<KeyAction> {
        let Some((key, needs_shift)) = key_for(keysym) else {
            return Vec::new();
        };
        for (state, left, right) in [
            (&mut self.shift, LEFT_SHIFT, RIGHT_SHIFT),
            (&mut self.ctrl, LEFT_CTRL, RIGHT_CTRL),
            (&mut self.alt, LEFT_ALT, RIGHT_ALT),
        ] {
            if key == left {
                state[0] = down;
            } else if key == right {
                state[1] = down;
            }
        }
        let shifted = self.shift.iter().any(|&s| s);
        let mut actions = Vec::new();
        if key == DELETE && down && self.ctrl.iter().any(|&c| c) && self.alt.iter().any(|&a| a) {
            actions.push(KeyAction::RebootRequested);
        }
        if needs_shift && !shifted && down {
            actions.push(KeyAction::Key(LEFT_SHIFT, true));
            actions.push(KeyAction::Key(key, true));
            actions.push(KeyAction::Key(LEFT_SHIFT, false));
        } else {
            actions.push(KeyAction::Key(key, down));
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(actions: &[KeyAction], translated: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for a in actions {
            if let KeyAction::Key(key, down) = a {
                scancodes(*key, *down, translated, &mut out);
            }
        }
        out
    }

    #[test]
    fn letters_digits_and_shifted_punctuation() {
        let mut s = KeyState::default();
        assert_eq!(codes(&s.event(u32::from(b'a'), true), true), [0x1e]);
        assert_eq!(codes(&s.event(u32::from(b'a'), false), true), [0x9e]);
        assert_eq!(codes(&s.event(u32::from(b'a'), true), false), [0x1c]);
        assert_eq!(codes(&s.event(u32::from(b'a'), false), false), [0xf0, 0x1c]);
        // '>' without Shift held: Shift around the '.' key.
        assert_eq!(
            codes(&s.event(u32::from(b'>'), true), true),
            [0x2a, 0x34, 0xaa]
        );
        assert_eq!(codes(&s.event(u32::from(b'>'), false), true), [0xb4]);
        // With Shift held by the viewer: just the key.
        s.event(0xffe1, true);
        assert_eq!(codes(&s.event(u32::from(b'A'), true), true), [0x1e]);
        s.event(0xffe1, false);
        assert_eq!(codes(&s.event(u32::from(b'0'), true), true), [0x0b]);
        assert_eq!(codes(&s.event(0xff0d, true), true), [0x1c]);
        assert_eq!(codes(&s.event(0xffc9, true), false), [0x07]);
        assert_eq!(codes(&s.event(0xff52, false), false), [0xe0, 0xf0, 0x75]);
        assert!(s.event(0x1234_5678, true).is_empty());
    }

    #[test]
    fn every_printable_ascii_character_has_a_key() {
        for c in 0x20u32..0x7f {
            assert!(key_for(c).is_some(), "{:?}", c as u8 as char);
        }
    }

    #[test]
    fn ctrl_alt_del_asks_for_a_reboot_and_matches_the_i8042_sequence() {
        let mut s = KeyState::default();
        let mut all = Vec::new();
        for (sym, down) in [
            (0xffe3, true),
            (0xffe9, true),
            (0xffff, true),
            (0xffff, false),
            (0xffe9, false),
            (0xffe3, false),
        ] {
            all.extend(s.event(sym, down));
        }
        assert_eq!(
            all.iter()
                .filter(|a| **a == KeyAction::RebootRequested)
                .count(),
            1
        );
        assert_eq!(
            codes(&all, true),
            [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d]
        );
        // Delete alone is no reboot.
        assert!(!s.event(0xffff, true).contains(&KeyAction::RebootRequested));
    }
}
