//! The server thread: listeners, viewers, dirty tracking, updates.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Instant;

use super::encode::{self, Zrle};
use super::proto::{
    self, ClientMessage, ENCODING_RAW, ENCODING_ZRLE, PixelFormat, ProtocolError, Session,
};
use super::{Display, HARVEST_INTERVAL, HARVEST_INTERVAL_IDLE};
use crate::devices::display::FRAMEBUFFER_SLOT;
use crate::devices::display::keymap::{KeyAction, KeyState};
use crate::devices::lock;
use crate::vmm::VmEvent;

/// Where viewers connect.
#[derive(Default)]
pub struct Listeners {
    pub unix: Option<UnixListener>,
    pub tcp: Option<TcpListener>,
}

/// The running server.
pub struct VncServer {
    display: Arc<Display>,
    thread: Option<JoinHandle<()>>,
}

impl VncServer {
    /// Starts the "vnc" thread. `name` is the desktop name viewers show.
    pub fn start(
        display: Arc<Display>,
        listeners: Listeners,
        name: String,
    ) -> std::io::Result<Self> {
        for fd in [
            listeners.unix.as_ref().map(|l| l.set_nonblocking(true)),
            listeners.tcp.as_ref().map(|l| l.set_nonblocking(true)),
        ]
        .into_iter()
        .flatten()
        {
            fd?;
        }
        let mut server = Server {
            display: display.clone(),
            listeners,
            clients: Vec::new(),
            next_id: 0,
            name,
            next_harvest: Instant::now(),
            interval: HARVEST_INTERVAL,
            pixels: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("vnc".into())
            .spawn(move || server.run())?;
        Ok(Self {
            display,
            thread: Some(thread),
        })
    }

    /// Closes every viewer and ends the thread.
    pub fn stop(&mut self) {
        self.display.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for VncServer {
    fn drop(&mut self) {
        self.stop();
    }
}

enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    fn stream(&mut self) -> &mut dyn ReadWrite {
        match self {
            Conn::Unix(s) => s,
            Conn::Tcp(s) => s,
        }
    }

    fn fd(&self) -> RawFd {
        match self {
            Conn::Unix(s) => s.as_raw_fd(),
            Conn::Tcp(s) => s.as_raw_fd(),
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// A pending FramebufferUpdateRequest, clipped to the screen.
#[derive(Debug, Clone, Copy)]
struct Request {
    incremental: bool,
    x: u32,
    y: u32,
    w: u32,
    h: u32,
}

struct Client {
    id: u64,
    conn: Conn,
    session: Session,
    input: Vec<u8>,
    out: Vec<u8>,
    sent: usize,
    pf: PixelFormat,
    zrle: Option<Zrle>,
    use_zrle: bool,
    pending: Option<Request>,
    /// Lines changed since this viewer was last sent them.
    dirty: Vec<bool>,
    keys: KeyState,
    closed: bool,
}

impl Client {
    fn has_output(&self) -> bool {
        self.sent < self.out.len()
    }
}

struct Server {
    display: Arc<Display>,
    listeners: Listeners,
    clients: Vec<Client>,
    next_id: u64,
    name: String,
    next_harvest: Instant,
    /// The current dirty-log reading interval.
    interval: std::time::Duration,
    pixels: Vec<u32>,
}

const READ_CHUNK: usize = 64 * 1024;

impl Server {
    fn run(&mut self) {
        let fb = self.display.framebuffer.clone();
        tracing::debug!(width = fb.width, height = fb.height, "VNC server started");
        let mut fds: Vec<libc::pollfd> = Vec::new();
        loop {
            fds.clear();
            let pollfd = |fd: RawFd, events: i16| libc::pollfd {
                fd,
                events,
                revents: 0,
            };
            fds.push(pollfd(self.display.wake.as_raw_fd(), libc::POLLIN));
            fds.push(pollfd(
                self.listeners.unix.as_ref().map_or(-1, |l| l.as_raw_fd()),
                libc::POLLIN,
            ));
            fds.push(pollfd(
                self.listeners.tcp.as_ref().map_or(-1, |l| l.as_raw_fd()),
                libc::POLLIN,
            ));
            for c in &self.clients {
                let mut ev = libc::POLLIN;
                if c.has_output() {
                    ev |= libc::POLLOUT;
                }
                fds.push(pollfd(c.conn.fd(), ev));
            }
            let timeout = if self.clients.iter().any(|c| c.pending.is_some()) {
                // Rounded up: a timeout of 0 for the last fraction of a
                // millisecond would spin.
                let left = self.next_harvest.saturating_duration_since(Instant::now());
                left.as_micros().div_ceil(1000).min(1000) as i32
            } else {
                -1
            };
            // SAFETY: `fds` is a valid array of `fds.len()` pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != ErrorKind::Interrupted {
                    tracing::error!("VNC server: poll: {e}");
                    return;
                }
                continue;
            }
            if fds[0].revents != 0 {
                let _ = self.display.wake.read();
            }
            if self.display.stopping.load(Ordering::SeqCst) {
                tracing::debug!("VNC server stopped");
                self.clients.clear();
                return;
            }
            if fds[1].revents != 0 {
                self.accept_unix();
            }
            if fds[2].revents != 0 {
                self.accept_tcp();
            }
            for i in 0..self.clients.len() {
                let revents = fds.get(3 + i).map_or(0, |f| f.revents);
                if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                    self.read_client(i);
                }
            }
            let now = Instant::now();
            if self.clients.iter().any(|c| c.pending.is_some()) && now >= self.next_harvest {
                self.interval = if self.harvest() {
                    HARVEST_INTERVAL
                } else {
                    (self.interval * 2).min(HARVEST_INTERVAL_IDLE)
                };
                self.next_harvest = now + self.interval;
            } else if self.display.all_dirty.swap(false, Ordering::SeqCst) {
                for c in &mut self.clients {
                    c.dirty.fill(true);
                }
            }
            for i in 0..self.clients.len() {
                self.maybe_update(i);
                self.flush(i);
            }
            let metrics = &self.display.metrics;
            self.clients.retain(|c| {
                if c.closed {
                    metrics.clients.dec();
                    tracing::debug!("VNC client {} left", c.id);
                }
                !c.closed
            });
        }
    }

    fn accept_unix(&mut self) {
        loop {
            let Some(l) = &self.listeners.unix else {
                return;
            };
            match l.accept() {
                Ok((s, _)) => self.add(Conn::Unix(s)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!("VNC: accept: {e}");
                    return;
                }
            }
        }
    }

    fn accept_tcp(&mut self) {
        loop {
            let Some(l) = &self.listeners.tcp else { return };
            match l.accept() {
                Ok((s, _)) => {
                    let _ = s.set_nodelay(true);
                    self.add(Conn::Tcp(s));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!("VNC: accept: {e}");
                    return;
                }
            }
        }
    }

    fn add(&mut self, conn: Conn) {
        let metrics = &self.display.metrics;
        metrics.clients_accepted.inc();
        let nonblocking = match &conn {
            Conn::Unix(s) => s.set_nonblocking(true),
            Conn::Tcp(s) => s.set_nonblocking(true),
        };
        if let Err(e) = nonblocking {
            tracing::warn!("VNC: cannot set up a client: {e}");
            return;
        }
        let fb = &self.display.framebuffer;
        let (session, greeting) = Session::new(fb.width as u16, fb.height as u16, &self.name);
        let id = self.next_id;
        self.next_id += 1;
        metrics.clients.inc();
        tracing::debug!("VNC client {id} connected");
        self.clients.push(Client {
            id,
            conn,
            session,
            input: Vec::new(),
            out: greeting.to_vec(),
            sent: 0,
            pf: PixelFormat::NATIVE,
            zrle: None,
            use_zrle: false,
            pending: None,
            dirty: vec![true; fb.height as usize],
            keys: KeyState::default(),
            closed: false,
        });
        let i = self.clients.len() - 1;
        self.flush(i);
    }

    fn read_client(&mut self, i: usize) {
        let mut buf = [0u8; READ_CHUNK];
        let mut messages = Vec::new();
        let c = &mut self.clients[i];
        loop {
            match c.conn.stream().read(&mut buf) {
                Ok(0) => {
                    c.closed = true;
                    break;
                }
                Ok(n) => c.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    c.closed = true;
                    return;
                }
            }
            if c.input.len() > proto::MAX_CUT_TEXT as usize + READ_CHUNK {
                break;
            }
        }
        let result = c
            .session
            .process(&c.input, &mut c.out, &mut messages)
            .map(|taken| {
                c.input.drain(..taken);
            });
        let result = result.and_then(|()| messages.into_iter().try_for_each(|m| self.handle(i, m)));
        if let Err(e) = result {
            tracing::info!("VNC client {}: {e}; closing it", self.clients[i].id);
            self.display.metrics.protocol_errors.inc();
            self.flush(i);
            self.clients[i].closed = true;
        }
    }

    fn handle(&mut self, i: usize, message: ClientMessage) -> Result<(), ProtocolError> {
        let fb = self.display.framebuffer.clone();
        let c = &mut self.clients[i];
        match message {
            ClientMessage::SetPixelFormat(pf) => {
                pf.check()?;
                c.pf = pf;
            }
            ClientMessage::SetEncodings(list) => {
                c.use_zrle = list
                    .iter()
                    .find(|&&e| e == ENCODING_ZRLE || e == ENCODING_RAW)
                    == Some(&ENCODING_ZRLE);
            }
            ClientMessage::UpdateRequest {
                incremental,
                x,
                y,
                width,
                height,
            } => {
                let (x, y) = (u32::from(x).min(fb.width), u32::from(y).min(fb.height));
                let w = u32::from(width).min(fb.width - x);
                let h = u32::from(height).min(fb.height - y);
                if !incremental {
                    c.dirty[y as usize..(y + h) as usize].fill(true);
                }
                c.pending = Some(Request {
                    incremental,
                    x,
                    y,
                    w,
                    h,
                });
            }
            ClientMessage::Key { down, keysym } => {
                // The guest will echo: look for it soon.
                self.interval = HARVEST_INTERVAL;
                self.next_harvest = self.next_harvest.min(Instant::now() + HARVEST_INTERVAL);
                let actions = c.keys.event(keysym, down);
                let attached = lock(&self.display.attached);
                for action in actions {
                    match action {
                        KeyAction::RebootRequested => {
                            tracing::info!("Ctrl-Alt-Del from VNC client {}", c.id);
                            let _ = self.display.events.send(VmEvent::ConsoleRebootRequested);
                        }
                        KeyAction::Key(key, down) => {
                            if let Some(a) = attached.as_ref() {
                                lock(&a.i8042).key(key, down);
                            }
                        }
                    }
                }
            }
            ClientMessage::Pointer { .. } | ClientMessage::CutText => {}
        }
        Ok(())
    }

    /// Reads and clears the framebuffer's dirty log; marks the lines of the
    /// dirty pages changed for every viewer. Whether anything changed.
    fn harvest(&mut self) -> bool {
        let mut changed = false;
        if self.display.all_dirty.swap(false, Ordering::SeqCst) {
            changed = true;
            for c in &mut self.clients {
                c.dirty.fill(true);
            }
        }
        let fb = &self.display.framebuffer;
        let attached = lock(&self.display.attached);
        let Some(a) = attached.as_ref() else {
            return changed;
        };
        let bitmap = match a.vm.get_dirty_log(FRAMEBUFFER_SLOT, fb.mapped_len()) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("VNC: KVM_GET_DIRTY_LOG: {e}");
                return changed;
            }
        };
        drop(attached);
        changed |= bitmap.iter().any(|&w| w != 0);
        for (w, &word) in bitmap.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let page = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if let Some((first, last)) = fb.lines_of_page(page) {
                    for c in &mut self.clients {
                        c.dirty[first as usize..=last as usize].fill(true);
                    }
                }
            }
        }
        changed
    }

    /// Answers a pending request if there is something to send and the
    /// viewer has taken the previous update.
    fn maybe_update(&mut self, i: usize) {
        let fb = self.display.framebuffer.clone();
        let c = &mut self.clients[i];
        let Some(req) = c.pending else { return };
        if c.closed || c.has_output() {
            return;
        }
        let mut runs: Vec<(u32, u32)> = Vec::new();
        if req.w > 0 {
            let mut y = req.y;
            while y < req.y + req.h {
                if c.dirty[y as usize] {
                    let start = y;
                    while y < req.y + req.h && c.dirty[y as usize] {
                        c.dirty[y as usize] = false;
                        y += 1;
                    }
                    runs.push((start, y));
                } else {
                    y += 1;
                }
            }
        }
        if runs.is_empty() && req.incremental {
            return;
        }
        c.pending = None;
        c.out.clear();
        c.sent = 0;
        proto::update_header(runs.len() as u16, &mut c.out);
        for (y0, y1) in runs {
            let (w, h) = (req.w as usize, (y1 - y0) as usize);
            self.pixels.resize(w * h, 0);
            for (row, y) in (y0..y1).enumerate() {
                fb.read_pixels(req.x, y, &mut self.pixels[row * w..(row + 1) * w]);
            }
            let encoding = if c.use_zrle {
                ENCODING_ZRLE
            } else {
                ENCODING_RAW
            };
            proto::rect_header(
                req.x as u16,
                y0 as u16,
                w as u16,
                h as u16,
                encoding,
                &mut c.out,
            );
            if c.use_zrle {
                c.zrle
                    .get_or_insert_with(Zrle::new)
                    .encode(&self.pixels, w, h, &c.pf, &mut c.out);
            } else {
                encode::raw(&self.pixels, &c.pf, &mut c.out);
            }
        }
        self.display.metrics.updates_sent.inc();
    }

    /// Writes what the socket takes now.
    fn flush(&mut self, i: usize) {
        let metrics = &self.display.metrics;
        let c = &mut self.clients[i];
        while c.has_output() {
            match c.conn.stream().write(&c.out[c.sent..]) {
                Ok(0) => {
                    c.closed = true;
                    return;
                }
                Ok(n) => {
                    c.sent += n;
                    metrics.bytes_sent.add(n as u64);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    c.closed = true;
                    return;
                }
            }
        }
        if c.sent > 0 {
            c.out.clear();
            c.sent = 0;
        }
    }
}
