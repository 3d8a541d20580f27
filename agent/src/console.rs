//! The console channel: how the console proxy (a controller role) reaches
//! an instance's VNC or serial console on this host without the VMM's Unix
//! sockets ever being exposed to the network.
//!
//! ```text
//!  proxy ──call console_connect {instance, vnc|serial}──► agent: instance here? socket there?
//!        ◄── {address, ticket} ─────────────────────────  mints a single-use ticket (~30 s)
//!  proxy ──TCP address: "<ticket>\n" ───────────────────► [`ConsoleChannel`]
//!        ◄── "OK\n", then the socket's bytes both ways ──  <run_dir>/vmm/<vmm id>.{vnc,serial}
//!        ◄── "ERR <reason>\n" and a close ───────────────  unknown, used or expired ticket
//! ```
//!
//! The ticket is the channel's only credential: 256 random bits, delivered
//! over the authenticated message bus, good for one connection and
//! [`ConsoleSection::ticket_ttl_s`](crate::config::ConsoleSection) seconds.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mica_rpc::compute::{ConsoleKind, ConsoleTicket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::task::JoinHandle;

/// Longest ticket line accepted (a ticket is 64 hex digits).
const MAX_LINE: usize = 128;
/// Time a connection gets to send its ticket.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("cannot listen on {listen} for consoles")]
    Bind {
        listen: String,
        #[source]
        source: std::io::Error,
    },
}

struct Ticket {
    socket: PathBuf,
    expires: Instant,
    instance_uuid: String,
    kind: ConsoleKind,
}

/// The channel's listener and its tickets. Dropping it stops the listener
/// (connections already piping go on until either side closes).
pub struct ConsoleChannel {
    address: String,
    local: SocketAddr,
    ttl: Duration,
    tickets: Arc<Mutex<HashMap<String, Ticket>>>,
    task: JoinHandle<()>,
}

impl ConsoleChannel {
    /// Listens on `listen` (`address:port`). The proxy is told to dial
    /// `advertise` when it is set, else the listener's port on `host_ip`
    /// (when `listen` is a wildcard address) or on `listen`'s address.
    pub async fn bind(
        listen: &str,
        advertise: &str,
        host_ip: &str,
        ttl: Duration,
    ) -> Result<ConsoleChannel, ConsoleError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| ConsoleError::Bind {
                listen: listen.to_owned(),
                source,
            })?;
        let local = listener.local_addr().map_err(|source| ConsoleError::Bind {
            listen: listen.to_owned(),
            source,
        })?;
        let address = advertised(local, advertise, host_ip);
        let tickets: Arc<Mutex<HashMap<String, Ticket>>> = Arc::default();
        let task = tokio::spawn(accept_loop(listener, tickets.clone()));
        tracing::info!(%local, advertised = %address, "console channel listening");
        Ok(ConsoleChannel {
            address,
            local,
            ttl,
            tickets,
            task,
        })
    }

    /// The address the proxy is told to dial.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Where the listener really is.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// A new ticket for one connection to `socket`.
    pub fn mint(&self, instance_uuid: &str, kind: ConsoleKind, socket: PathBuf) -> ConsoleTicket {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the OS random source works");
        let ticket = hex::encode(bytes);
        let now = Instant::now();
        let mut all = self.tickets.lock().expect("tickets");
        all.retain(|_, t| t.expires > now);
        all.insert(
            ticket.clone(),
            Ticket {
                socket,
                expires: now + self.ttl,
                instance_uuid: instance_uuid.to_owned(),
                kind,
            },
        );
        ConsoleTicket {
            address: self.address.clone(),
            ticket,
            ttl_s: self.ttl.as_secs().max(1),
        }
    }
}

/// The address to hand out for a listener at `local`.
fn advertised(local: SocketAddr, advertise: &str, host_ip: &str) -> String {
    if !advertise.is_empty() {
        advertise.to_owned()
    } else if local.ip().is_unspecified() && !host_ip.is_empty() {
        format!("{host_ip}:{}", local.port())
    } else if local.ip().is_unspecified() {
        format!("127.0.0.1:{}", local.port())
    } else {
        local.to_string()
    }
}

impl Drop for ConsoleChannel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, tickets: Arc<Mutex<HashMap<String, Ticket>>>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let tickets = tickets.clone();
                tokio::spawn(async move {
                    if let Err(reason) = serve(stream, &tickets).await {
                        tracing::info!(%peer, %reason, "console connection refused");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "console channel: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads the ticket line byte by byte (nothing after it is consumed).
async fn read_line(stream: &mut TcpStream) -> Result<String, String> {
    let mut line = Vec::with_capacity(80);
    loop {
        let mut b = [0u8; 1];
        match stream.read(&mut b).await {
            Ok(0) => return Err("closed before sending a ticket".into()),
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) if line.len() >= MAX_LINE => return Err("ticket line too long".into()),
            Ok(_) => line.push(b[0]),
            Err(e) => return Err(format!("reading the ticket: {e}")),
        }
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| "the ticket is not text".to_owned())
}

async fn refuse(stream: &mut TcpStream, reason: &str) -> String {
    let _ = stream.write_all(format!("ERR {reason}\n").as_bytes()).await;
    let _ = stream.shutdown().await;
    reason.to_owned()
}

async fn serve(
    mut stream: TcpStream,
    tickets: &Mutex<HashMap<String, Ticket>>,
) -> Result<(), String> {
    let line = match tokio::time::timeout(HELLO_TIMEOUT, read_line(&mut stream)).await {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => return Err(refuse(&mut stream, &e).await),
        Err(_) => return Err(refuse(&mut stream, "no ticket in time").await),
    };
    // Taken out whatever happens next: a ticket is good for one try.
    let ticket = tickets.lock().expect("tickets").remove(line.trim());
    let Some(ticket) = ticket else {
        return Err(refuse(&mut stream, "unknown or already used ticket").await);
    };
    if ticket.expires <= Instant::now() {
        return Err(refuse(&mut stream, "expired ticket").await);
    }
    let mut console = match UnixStream::connect(&ticket.socket).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(instance = %ticket.instance_uuid, socket = %ticket.socket.display(), error = %e, "console socket unreachable");
            return Err(refuse(&mut stream, "the console is not available").await);
        }
    };
    stream
        .write_all(b"OK\n")
        .await
        .map_err(|e| format!("answering: {e}"))?;
    let _ = stream.set_nodelay(true);
    tracing::info!(instance = %ticket.instance_uuid, kind = ticket.kind.name(), "console connected");
    let result = tokio::io::copy_bidirectional(&mut stream, &mut console).await;
    tracing::info!(instance = %ticket.instance_uuid, kind = ticket.kind.name(), ?result, "console closed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn hello(addr: &str, line: &str) -> (String, TcpStream) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(line.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        loop {
            let mut b = [0u8; 1];
            if s.read(&mut b).await.unwrap() == 0 || b[0] == b'\n' {
                break;
            }
            answer.push(b[0]);
        }
        (String::from_utf8(answer).unwrap(), s)
    }

    /// A Unix listener standing in for a VMM's console socket: it echoes
    /// what it gets, upper-cased.
    fn fake_console(dir: &std::path::Path) -> PathBuf {
        let path = dir.join("i.serial");
        let l = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 256];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let up = buf[..n].to_ascii_uppercase();
                        if s.write_all(&up).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        path
    }

    #[tokio::test]
    async fn a_valid_ticket_pipes_to_the_socket_once() {
        let dir = tempfile::tempdir().unwrap();
        let sock = fake_console(dir.path());
        let ch = ConsoleChannel::bind("127.0.0.1:0", "", "", Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(ch.address(), ch.local_addr().to_string());
        let t = ch.mint("i-1", ConsoleKind::Serial, sock);
        assert_eq!(t.ticket.len(), 64);
        let (answer, mut s) = hello(ch.address(), &format!("{}\n", t.ticket)).await;
        assert_eq!(answer, "OK");
        s.write_all(b"echo hi\r").await.unwrap();
        let mut got = Vec::new();
        while got.len() < 8 {
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"ECHO HI\r");
        // The same ticket again: refused (single use).
        let (answer, _) = hello(ch.address(), &format!("{}\n", t.ticket)).await;
        assert_eq!(answer, "ERR unknown or already used ticket");
    }

    #[tokio::test]
    async fn wrong_and_expired_tickets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sock = fake_console(dir.path());
        let ch = ConsoleChannel::bind("127.0.0.1:0", "", "", Duration::from_millis(200))
            .await
            .unwrap();
        let t = ch.mint("i-1", ConsoleKind::Serial, sock.clone());
        let (answer, _) = hello(ch.address(), &format!("{}\n", "0".repeat(64))).await;
        assert_eq!(answer, "ERR unknown or already used ticket");
        let (answer, _) = hello(ch.address(), &format!("{}\n", "x".repeat(500))).await;
        assert_eq!(answer, "ERR ticket line too long");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (answer, _) = hello(ch.address(), &format!("{}\n", t.ticket)).await;
        assert_eq!(answer, "ERR expired ticket");
        // A ticket whose socket is gone.
        let t = ch.mint("i-1", ConsoleKind::Vnc, dir.path().join("missing.vnc"));
        let (answer, _) = hello(ch.address(), &format!("{}\n", t.ticket)).await;
        assert_eq!(answer, "ERR the console is not available");
    }

    #[test]
    fn the_advertised_address_wins() {
        let any: SocketAddr = "0.0.0.0:6090".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:6091".parse().unwrap();
        assert_eq!(advertised(lo, "192.0.2.7:16090", ""), "192.0.2.7:16090");
        assert_eq!(advertised(any, "", "192.0.2.8"), "192.0.2.8:6090");
        assert_eq!(advertised(any, "", ""), "127.0.0.1:6090");
        assert_eq!(advertised(lo, "", "192.0.2.8"), "127.0.0.1:6091");
    }
}
