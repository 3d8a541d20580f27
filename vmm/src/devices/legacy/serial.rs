//! COM1: a 16550A UART (vm-superio's model) whose output goes to a size-capped
//! log file and to every client of a Unix stream socket, and whose input comes
//! from those clients (an interactive serial console).
//!
//! - [`SerialBackend`]: the destinations, shared by every boot of the process
//!   (clients stay connected across a reboot).
//! - [`SerialDevice`]: the UART on the I/O port bus (vCPU threads).
//! - [`SerialConsole`]: the socket's event handler on the device loop: accepts
//!   clients and feeds their input to the UART as its FIFO has room.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vm_superio::Serial;
use vm_superio::serial::SerialEvents;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::devices::{BusDevice, IrqLine, lock};
use crate::metrics::SerialCounters;

#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("cannot open the serial log {}", path.display())]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the serial console socket {}", path.display())]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("eventfd")]
    EventFd(#[source] std::io::Error),
}

/// The console output is written to the log file a line at a time.
const LINE_MAX: usize = 1024;

struct LogFile {
    path: PathBuf,
    file: File,
    written: u64,
    max: u64,
}

impl LogFile {
    fn open(path: &Path, max: u64) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self {
            path: path.to_path_buf(),
            file,
            written,
            max,
        })
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.written + bytes.len() as u64 > self.max && self.written > 0 {
            self.rotate()?;
        }
        self.file.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Moves the log to `<log>.1` (replacing the previous one) and starts anew.
    /// A log that is not a regular file (a FIFO, /dev/null) is never rotated.
    fn rotate(&mut self) -> std::io::Result<()> {
        if !self.file.metadata()?.is_file() {
            self.written = 0;
            return Ok(());
        }
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, &old)?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.written = 0;
        Ok(())
    }
}

struct Client {
    id: u64,
    stream: UnixStream,
}

struct Outputs {
    log: Option<LogFile>,
    line: Vec<u8>,
    clients: Vec<Client>,
}

/// Where the console goes; lives as long as the process.
pub struct SerialBackend {
    out: Mutex<Outputs>,
    listener: Option<UnixListener>,
    next_client: std::sync::atomic::AtomicU64,
    metrics: Arc<SerialCounters>,
}

impl SerialBackend {
    /// Opens the log and binds the socket. The socket path must be free (the
    /// caller removes stale sockets first).
    pub fn new(
        log: Option<&Path>,
        log_max: u64,
        socket: Option<&Path>,
        metrics: Arc<SerialCounters>,
    ) -> Result<Self, SerialError> {
        let log = log
            .map(|p| {
                LogFile::open(p, log_max).map_err(|source| SerialError::Log {
                    path: p.to_path_buf(),
                    source,
                })
            })
            .transpose()?;
        let listener = socket
            .map(|p| {
                let l = UnixListener::bind(p).map_err(|source| SerialError::Socket {
                    path: p.to_path_buf(),
                    source,
                })?;
                l.set_nonblocking(true)
                    .map_err(|source| SerialError::Socket {
                        path: p.to_path_buf(),
                        source,
                    })?;
                Ok(l)
            })
            .transpose()?;
        Ok(Self {
            out: Mutex::new(Outputs {
                log,
                line: Vec::with_capacity(LINE_MAX),
                clients: Vec::new(),
            }),
            listener,
            next_client: Default::default(),
            metrics,
        })
    }

    /// Output from the guest.
    pub fn write_bytes(&self, bytes: &[u8]) {
        self.metrics.out_bytes.add(bytes.len() as u64);
        let mut out = lock(&self.out);
        // Clients get every byte at once: it is an interactive console.
        out.clients.retain_mut(|c| match c.stream.write(bytes) {
            Ok(_) => true,
            // A client that does not keep up loses output, not the guest's time.
            Err(e) if e.kind() == ErrorKind::WouldBlock => true,
            Err(_) => false,
        });
        if out.log.is_none() {
            return;
        }
        for &b in bytes {
            out.line.push(b);
            if b == b'\n' || out.line.len() >= LINE_MAX {
                self.flush_line(&mut out);
            }
        }
    }

    fn flush_line(&self, out: &mut Outputs) {
        let Outputs { log, line, .. } = out;
        if let Some(log) = log
            && !line.is_empty()
            && log.write(line).is_err()
        {
            self.metrics.errors.add(line.len() as u64);
        }
        line.clear();
    }

    /// Writes out a partial last line (at exit).
    pub fn flush(&self) {
        let mut out = lock(&self.out);
        self.flush_line(&mut out);
    }

    fn add_client(&self, stream: UnixStream) -> std::io::Result<(u64, UnixStream)> {
        stream.set_nonblocking(true)?;
        let reader = stream.try_clone()?;
        let id = self
            .next_client
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        lock(&self.out).clients.push(Client { id, stream });
        Ok((id, reader))
    }

    fn remove_client(&self, id: u64) {
        lock(&self.out).clients.retain(|c| c.id != id);
    }
}

impl Drop for SerialBackend {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The `Write` end vm-superio's UART writes to.
pub struct SerialWriter(Arc<SerialBackend>);

impl Write for SerialWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_bytes(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Tells the console handler when the guest has drained the input FIFO.
pub struct InputReady(EventFd);

impl SerialEvents for InputReady {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        let _ = self.0.write(1);
    }
}

type Uart = Serial<IrqLine, InputReady, SerialWriter>;

/// The UART at COM1.
pub struct SerialDevice {
    uart: Uart,
}

impl SerialDevice {
    /// Returns the device and the eventfd signalled when its input FIFO empties.
    pub fn new(irq: IrqLine, backend: Arc<SerialBackend>) -> Result<(Self, EventFd), SerialError> {
        let ready = EventFd::new(EFD_NONBLOCK).map_err(SerialError::EventFd)?;
        let ready2 = ready.try_clone().map_err(SerialError::EventFd)?;
        Ok((
            Self {
                uart: Serial::with_events(irq, InputReady(ready), SerialWriter(backend)),
            },
            ready2,
        ))
    }

    /// Queues input for the guest; returns how many bytes fit in the FIFO.
    pub fn enqueue(&mut self, bytes: &[u8]) -> usize {
        if self.uart.fifo_capacity() == 0 {
            return 0;
        }
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset < 8 {
            data[0] = self.uart.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 && offset < 8 {
            // An error here is the interrupt eventfd failing; the byte itself
            // was already handed to the backend.
            let _ = self.uart.write(offset as u8, data[0]);
        }
    }
}

const TOKEN_LISTENER: u32 = 0;
const TOKEN_INPUT_READY: u32 = 1;
const TOKEN_CLIENT_BASE: u32 = 2;
/// Console input buffered beyond the UART's FIFO.
const PENDING_MAX: usize = 4096;

/// The serial console socket's handler on the device loop.
pub struct SerialConsole {
    backend: Arc<SerialBackend>,
    uart: Arc<Mutex<SerialDevice>>,
    input_ready: EventFd,
    readers: Vec<(u64, UnixStream)>,
    pending: VecDeque<u8>,
}

impl SerialConsole {
    pub fn new(
        backend: Arc<SerialBackend>,
        uart: Arc<Mutex<SerialDevice>>,
        input_ready: EventFd,
    ) -> Self {
        Self {
            backend,
            uart,
            input_ready,
            readers: Vec::new(),
            pending: VecDeque::new(),
        }
    }

    fn accept(&mut self, ops: &mut EventOps) {
        let Some(listener) = &self.backend.listener else {
            return;
        };
        loop {
            match listener.accept() {
                Ok((stream, _)) => match self.backend.add_client(stream) {
                    Ok((id, reader)) => {
                        let token = TOKEN_CLIENT_BASE + id as u32;
                        let events = EventSet::IN | EventSet::EDGE_TRIGGERED;
                        if let Err(e) = ops.add(Events::with_data(&reader, token, events)) {
                            tracing::warn!("serial console: cannot watch a client: {e:?}");
                            self.backend.remove_client(id);
                            continue;
                        }
                        tracing::debug!("serial console: client {id} connected");
                        self.readers.push((id, reader));
                    }
                    Err(e) => tracing::warn!("serial console: cannot set up a client: {e}"),
                },
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!("serial console: accept: {e}");
                    break;
                }
            }
        }
    }

    /// Moves input from the clients to the UART while it has room.
    fn pump(&mut self, ops: &mut EventOps) {
        self.feed();
        let mut closed = Vec::new();
        let mut buf = [0u8; 512];
        for (id, reader) in &mut self.readers {
            loop {
                let room = PENDING_MAX - self.pending.len();
                if room == 0 {
                    break;
                }
                match reader.read(&mut buf[..room.min(512)]) {
                    Ok(0) => {
                        closed.push(*id);
                        break;
                    }
                    Ok(n) => {
                        self.backend.metrics.in_bytes.add(n as u64);
                        self.pending.extend(&buf[..n]);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => {
                        closed.push(*id);
                        break;
                    }
                }
            }
        }
        for id in closed {
            if let Some(pos) = self.readers.iter().position(|(i, _)| *i == id) {
                let (_, reader) = self.readers.remove(pos);
                let _ = ops.remove(Events::empty(&reader));
            }
            self.backend.remove_client(id);
            tracing::debug!("serial console: client {id} left");
        }
        self.feed();
    }

    fn feed(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let (a, _) = self.pending.as_slices();
        let n = lock(&self.uart).enqueue(a);
        self.pending.drain(..n);
    }
}

impl MutEventSubscriber for SerialConsole {
    fn init(&mut self, ops: &mut EventOps) {
        if let Some(listener) = &self.backend.listener
            && let Err(e) = ops.add(Events::with_data(listener, TOKEN_LISTENER, EventSet::IN))
        {
            tracing::warn!("serial console: cannot watch the socket: {e:?}");
        }
        if let Err(e) = ops.add(Events::with_data(
            &self.input_ready,
            TOKEN_INPUT_READY,
            EventSet::IN,
        )) {
            tracing::warn!("serial console: cannot watch the UART: {e:?}");
        }
        // Clients still connected from before a reboot.
        let clients: Vec<(u64, UnixStream)> = lock(&self.backend.out)
            .clients
            .iter()
            .filter_map(|c| c.stream.try_clone().ok().map(|s| (c.id, s)))
            .collect();
        for (id, reader) in clients {
            let token = TOKEN_CLIENT_BASE + id as u32;
            let events = EventSet::IN | EventSet::EDGE_TRIGGERED;
            if ops.add(Events::with_data(&reader, token, events)).is_ok() {
                self.readers.push((id, reader));
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TOKEN_LISTENER => self.accept(ops),
            TOKEN_INPUT_READY => {
                let _ = self.input_ready.read();
                self.pump(ops);
            }
            _ => self.pump(ops),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_is_line_buffered_and_rotated_past_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        let b = SerialBackend::new(Some(&log), 4096, None, Default::default()).unwrap();
        b.write_bytes(b"partial");
        assert_eq!(std::fs::read(&log).unwrap(), b"");
        b.write_bytes(b" line\n");
        assert_eq!(std::fs::read(&log).unwrap(), b"partial line\n");
        let big = vec![b'x'; 4070];
        b.write_bytes(&big);
        b.write_bytes(b"\n");
        // 13 + 4071 bytes fit; 15 more would pass 4096: the old content moves to .1.
        b.write_bytes(b"after rotation\n");
        let mut rotated = dir.path().join("serial.log").into_os_string();
        rotated.push(".1");
        assert!(
            std::fs::read(&rotated)
                .unwrap()
                .starts_with(b"partial line\n")
        );
        b.write_bytes(b"tail");
        b.flush();
        let now = std::fs::read_to_string(&log).unwrap();
        assert!(now.ends_with("after rotation\ntail"), "{now:?}");
    }

    #[test]
    fn clients_receive_output_and_disconnected_ones_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("console.sock");
        let b = SerialBackend::new(None, 4096, Some(&sock), Default::default()).unwrap();
        let mut c1 = UnixStream::connect(&sock).unwrap();
        let c2 = UnixStream::connect(&sock).unwrap();
        for _ in 0..2 {
            let (s, _) = b.listener.as_ref().unwrap().accept().unwrap();
            b.add_client(s).unwrap();
        }
        drop(c2);
        b.write_bytes(b"hello\n");
        b.write_bytes(b"again\n");
        let mut got = [0u8; 12];
        c1.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello\nagain\n");
        assert_eq!(lock(&b.out).clients.len(), 1);
    }
}
