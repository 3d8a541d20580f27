//! PC legacy devices: the COM1 UART and the i8042 keyboard controller.

pub mod i8042;
pub mod serial;

pub use i8042::I8042;
pub use serial::{SerialBackend, SerialConsole, SerialDevice};
