//! The control socket's thread: accepts connections on the Unix socket, parses
//! HTTP requests as they arrive, hands each action to the controller and writes
//! the answer. Connections are served one request at a time, in order.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::http;
use super::{ActionError, respond, route};
use crate::vmm::VmEvent;

const TOKEN_LISTENER: u64 = 0;
const TOKEN_STOP: u64 = 1;
const TOKEN_CONN_BASE: u64 = 2;
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 32;
/// How long a request may wait for the controller.
const ACTION_TIMEOUT: Duration = Duration::from_secs(60);

struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
}

/// The control socket's thread.
pub struct ApiServer {
    thread: Option<JoinHandle<()>>,
    stop: EventFd,
}

impl ApiServer {
    pub fn start(listener: UnixListener, events: Sender<VmEvent>) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let stop2 = stop.try_clone()?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_LISTENER),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_STOP),
        )?;
        let thread = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || serve(epoll, listener, stop2, events))?;
        Ok(Self {
            thread: Some(thread),
            stop,
        })
    }

    /// Ends the thread after the request it is serving, if any.
    pub fn stop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(epoll: Epoll, listener: UnixListener, stop: EventFd, events: Sender<VmEvent>) {
    let mut conns: HashMap<u64, Conn> = HashMap::new();
    let mut next = TOKEN_CONN_BASE;
    let mut ready = vec![EpollEvent::default(); 16];
    loop {
        let n = match epoll.wait(-1, &mut ready) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("control socket: epoll: {e}");
                return;
            }
        };
        for ev in &ready[..n] {
            match ev.data() {
                TOKEN_STOP => {
                    let _ = stop.read();
                    return;
                }
                TOKEN_LISTENER => loop {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            if conns.len() >= MAX_CONNECTIONS
                                || stream.set_nonblocking(true).is_err()
                            {
                                continue;
                            }
                            let token = next;
                            next += 1;
                            if epoll
                                .ctl(
                                    ControlOperation::Add,
                                    stream.as_raw_fd(),
                                    EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, token),
                                )
                                .is_ok()
                            {
                                conns.insert(
                                    token,
                                    Conn {
                                        stream,
                                        buf: Vec::new(),
                                    },
                                );
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => {
                            tracing::warn!("control socket: accept: {e}");
                            break;
                        }
                    }
                },
                token => {
                    let keep = match conns.get_mut(&token) {
                        Some(conn) => serve_conn(conn, &events),
                        None => continue,
                    };
                    if !keep && let Some(conn) = conns.remove(&token) {
                        let _ = epoll.ctl(
                            ControlOperation::Delete,
                            conn.stream.as_raw_fd(),
                            EpollEvent::default(),
                        );
                    }
                }
            }
        }
    }
}

/// Reads what arrived and answers every complete request. `false` to close.
fn serve_conn(conn: &mut Conn, events: &Sender<VmEvent>) -> bool {
    let mut chunk = [0u8; 4096];
    let mut closed = false;
    loop {
        match conn.stream.read(&mut chunk) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => conn.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    loop {
        match http::parse(&conn.buf) {
            Ok(None) => return !closed,
            Ok(Some((req, used))) => {
                conn.buf.drain(..used);
                let response = match route(&req) {
                    Ok(action) => {
                        tracing::debug!("control socket: {} {}", req.method, req.path);
                        respond(dispatch(action, events))
                    }
                    Err(response) => response,
                };
                if write_all(&mut conn.stream, &response.to_bytes(req.keep_alive)).is_err()
                    || !req.keep_alive
                {
                    return false;
                }
            }
            Err(e) => {
                let _ = write_all(
                    &mut conn.stream,
                    &super::error(e.status(), e.to_string()).to_bytes(false),
                );
                return false;
            }
        }
    }
}

fn dispatch(action: super::VmmAction, events: &Sender<VmEvent>) -> super::ActionResult {
    let (tx, rx) = mpsc::channel();
    if events.send(VmEvent::Action(action, tx)).is_err() {
        return Err(ActionError::Unavailable);
    }
    match rx.recv_timeout(ACTION_TIMEOUT) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            Err(ActionError::Failed("the VMM did not answer in time".into()))
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(ActionError::Unavailable),
    }
}

/// Writes all of `bytes` to a non-blocking stream, waiting for room (up to a
/// few seconds) when its buffer is full.
fn write_all(stream: &mut UnixStream, mut bytes: &[u8]) -> std::io::Result<()> {
    let mut waited = 0;
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                waited += 1;
                if waited > 500 {
                    return Err(e);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
