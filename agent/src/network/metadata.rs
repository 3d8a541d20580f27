//! The metadata proxy: what a guest reaches at `169.254.169.254:80`.
//!
//! One listener per network on this host, where the network's gateway
//! lives: inside an isolated network's namespace (the address on its `gw`
//! link), or on the host bound to the network's bridge (`SO_BINDTODEVICE`,
//! the address on the bridge). The listener therefore knows the network a
//! connection came from, and the connection's source address names the
//! port, hence the instance: nothing the guest sends is trusted to say who
//! it is (anti-spoofing on its tap pins the source address). The request
//! goes on to the controller's metadata service with the instance's id and
//! project, the id signed with the shared secret (`mica_rpc::metadata`);
//! the answer comes back as is. An address that is no port's on that
//! network gets 404 here and nothing is forwarded. A network's listener
//! serves at most 64 connections at once and gives a request head 10 s.
//!
//! ```text
//!   guest ──► 169.254.169.254:80 (its network's listener)
//!               │ (network, source address) → instance, project
//!               ▼
//!   [network] metadata_url  + X-Instance-ID, X-Tenant-ID,
//!                             X-Instance-ID-Signature, X-Forwarded-For
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, StatusCode};
use tokio::task::JoinHandle;

/// The address guests reach the service at.
pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// Its port.
pub const PORT: u16 = 80;
/// The largest request body forwarded (a password post is 256 bytes).
const MAX_BODY: usize = 64 * 1024;
/// Connections served at once per network; more are closed at once (a
/// guest cannot tie up the host's descriptors).
const MAX_CONNECTIONS: usize = 64;
/// How long a request's head may take to arrive.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Who asks: the instance whose port has the source address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    pub instance_uuid: String,
    pub project_id: String,
}

/// Where a network's listener lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Place {
    /// Inside this network namespace (`ip netns` name).
    Namespace(String),
    /// On the host, bound to this interface (the network's bridge).
    Device(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("metadata proxy of network {network}: {what}")]
    Listen {
        network: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
}

struct Listener {
    place: Place,
    task: JoinHandle<()>,
}

/// The proxies of this host's networks.
pub struct MetadataProxy {
    url: String,
    secret: String,
    client: reqwest::Client,
    /// Network id → guest address → instance.
    guests: Arc<RwLock<HashMap<String, HashMap<IpAddr, Requester>>>>,
    listeners: Mutex<HashMap<String, Listener>>,
}

impl MetadataProxy {
    /// A proxy forwarding to `url` (the controller's metadata service),
    /// signing with `secret`; `None` when `url` is empty (no proxy).
    pub fn new(url: &str, secret: &str) -> Option<MetadataProxy> {
        if url.is_empty() {
            return None;
        }
        Some(MetadataProxy {
            url: url.trim_end_matches('/').to_owned(),
            secret: secret.to_owned(),
            client: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .expect("an HTTP client"),
            guests: Default::default(),
            listeners: Default::default(),
        })
    }

    /// Makes network `network_id`'s listener run at `place` (started, or
    /// moved) and serve `guests`.
    pub fn serve(
        &self,
        network_id: &str,
        place: Place,
        guests: HashMap<IpAddr, Requester>,
    ) -> Result<(), ProxyError> {
        self.guests
            .write()
            .expect("guests")
            .insert(network_id.to_owned(), guests);
        let mut listeners = self.listeners.lock().expect("listeners");
        if listeners
            .get(network_id)
            .is_some_and(|l| l.place == place && !l.task.is_finished())
        {
            return Ok(());
        }
        if let Some(old) = listeners.remove(network_id) {
            old.task.abort();
        }
        let socket = bind(&place).map_err(|(what, source)| ProxyError::Listen {
            network: network_id.to_owned(),
            what,
            source,
        })?;
        let listener =
            tokio::net::TcpListener::from_std(socket).map_err(|source| ProxyError::Listen {
                network: network_id.to_owned(),
                what: "registering the listener".into(),
                source,
            })?;
        let forward = Forward {
            network: network_id.to_owned(),
            url: self.url.clone(),
            secret: self.secret.clone(),
            client: self.client.clone(),
            guests: self.guests.clone(),
        };
        tracing::info!(network = network_id, ?place, "metadata proxy listening");
        let task = tokio::spawn(accept(listener, Arc::new(forward)));
        listeners.insert(network_id.to_owned(), Listener { place, task });
        Ok(())
    }

    /// Stops network `network_id`'s listener.
    pub fn stop(&self, network_id: &str) {
        self.guests.write().expect("guests").remove(network_id);
        if let Some(l) = self.listeners.lock().expect("listeners").remove(network_id) {
            l.task.abort();
        }
    }
}

impl Drop for MetadataProxy {
    fn drop(&mut self) {
        for l in self.listeners.lock().expect("listeners").values() {
            l.task.abort();
        }
    }
}

type BindError = (String, std::io::Error);

/// A listening socket on 169.254.169.254:80 at `place`.
fn bind(place: &Place) -> Result<std::net::TcpListener, BindError> {
    match place {
        Place::Device(dev) => listen(Some(dev)),
        Place::Namespace(ns) => {
            // A socket belongs to the namespace it is made in: a thread of
            // its own enters the namespace, makes it and ends.
            let ns = ns.clone();
            std::thread::spawn(move || {
                let file = std::fs::File::open(format!("/run/netns/{ns}"))
                    .map_err(|e| (format!("opening namespace {ns}"), e))?;
                use std::os::fd::AsRawFd as _;
                // SAFETY: setns on a descriptor we own, for this thread only
                // (which ends right after).
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err((
                        format!("entering namespace {ns}"),
                        std::io::Error::last_os_error(),
                    ));
                }
                listen(None)
            })
            .join()
            .unwrap_or_else(|_| {
                Err((
                    "the namespace thread panicked".into(),
                    std::io::Error::other("panic"),
                ))
            })
        }
    }
}

fn listen(device: Option<&str>) -> Result<std::net::TcpListener, BindError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |what: &str| {
        let what = what.to_owned();
        move |e| (what, e)
    };
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
        .map_err(err("making a socket"))?;
    s.set_reuse_address(true).map_err(err("SO_REUSEADDR"))?;
    if let Some(dev) = device {
        s.bind_device(Some(dev.as_bytes()))
            .map_err(err(&format!("binding to {dev}")))?;
    }
    s.bind(&SocketAddr::from((ADDRESS, PORT)).into())
        .map_err(err("binding 169.254.169.254:80"))?;
    s.listen(256).map_err(err("listening"))?;
    s.set_nonblocking(true).map_err(err("O_NONBLOCK"))?;
    Ok(s.into())
}

/// What one network's listener needs.
struct Forward {
    network: String,
    url: String,
    secret: String,
    client: reqwest::Client,
    guests: Arc<RwLock<HashMap<String, HashMap<IpAddr, Requester>>>>,
}

async fn accept(listener: tokio::net::TcpListener, fwd: Arc<Forward>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(network = %fwd.network, error = %e, "metadata proxy: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(network = %fwd.network, %peer, "metadata proxy: too many connections, one closed");
            continue;
        };
        let fwd = fwd.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let fwd = fwd.clone();
                async move { Ok::<_, Infallible>(fwd.handle(peer.ip(), req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text.to_owned())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    r
}

impl Forward {
    fn requester(&self, ip: IpAddr) -> Option<Requester> {
        self.guests
            .read()
            .expect("guests")
            .get(&self.network)?
            .get(&ip)
            .cloned()
    }

    async fn handle(
        &self,
        from: IpAddr,
        req: Request<hyper::body::Incoming>,
    ) -> Response<Full<Bytes>> {
        let Some(who) = self.requester(from) else {
            tracing::warn!(network = %self.network, %from, "metadata request from an address that is no port's");
            return plain(StatusCode::NOT_FOUND, "No instance has this address.");
        };
        let (parts, body) = req.into_parts();
        let body = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "Request is too large."),
        };
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let method = match reqwest::Method::from_bytes(parts.method.as_str().as_bytes()) {
            Ok(m) => m,
            Err(_) => return plain(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed."),
        };
        let signature = mica_rpc::metadata::sign(&self.secret, &who.instance_uuid);
        let sent = self
            .client
            .request(method, format!("{}{path}", self.url))
            .header(mica_rpc::metadata::INSTANCE_ID, &who.instance_uuid)
            .header(mica_rpc::metadata::TENANT_ID, &who.project_id)
            .header(mica_rpc::metadata::SIGNATURE, signature)
            .header("x-forwarded-for", from.to_string())
            .body(body)
            .send()
            .await;
        let answer = match sent {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(network = %self.network, error = %e, "metadata service unreachable");
                return plain(
                    StatusCode::BAD_GATEWAY,
                    "The metadata service cannot be reached.",
                );
            }
        };
        let status =
            StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let content_type = answer.headers().get(reqwest::header::CONTENT_TYPE).cloned();
        let bytes = answer.bytes().await.unwrap_or_default();
        let mut r = Response::new(Full::new(bytes));
        *r.status_mut() = status;
        if let Some(ct) =
            content_type.and_then(|v| hyper::header::HeaderValue::from_bytes(v.as_bytes()).ok())
        {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, ct);
        }
        r
    }
}
