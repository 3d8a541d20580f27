//! The metadata proxy on this machine, in two network namespaces of the
//! test's own (a guest and its network's gateway, `mica_tests::netns`): a
//! request from a port's address reaches the upstream service with that
//! instance's id, project and signature, whatever headers the guest sent;
//! an address that is no port's gets 404 and nothing goes upstream; a
//! 65th connection at once is closed; a stopped proxy is gone. Needs root (namespaces).

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use mica_agent::network::metadata::{MetadataProxy, Place, Requester};
use mica_tests::netns::{GUESTS, NetnsPair};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const SECRET: &str = "proxy-test-secret";
const UUID: &str = "5c2e0d3a-1b2c-4d5e-8f90-123456789abc";

/// An upstream that answers each request with the request's head.
async fn echo_upstream() -> (String, Arc<Mutex<Vec<String>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_lowercase();
                log.lock().unwrap().push(head.clone());
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{head}",
                    head.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    (url, seen)
}

/// A GET of `path` from the guest namespace, from address `from`:
/// (status, body), or the connection error.
fn guest_get(
    ns: &str,
    from: &'static str,
    path: &'static str,
    extra: &'static str,
) -> Result<(u16, String), String> {
    NetnsPair::within(ns, move || {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(|e| e.to_string())?;
        s.bind(&SocketAddr::new(from.parse().unwrap(), 0).into())
            .map_err(|e| e.to_string())?;
        s.connect_timeout(
            &SocketAddr::from(([169, 254, 169, 254], 80)).into(),
            std::time::Duration::from_secs(5),
        )
        .map_err(|e| e.to_string())?;
        let mut s: std::net::TcpStream = s.into();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\n{extra}Connection: close\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        let status = out
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    })
    .map_err(|e| e.to_string())?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_names_the_port_owner_and_nobody_else() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let pair = NetnsPair::new(&format!("mica-mdp-{}", std::process::id())).unwrap();
    let (url, seen) = echo_upstream().await;
    let proxy = MetadataProxy::new(&url, SECRET).unwrap();
    let guests = HashMap::from([(
        GUESTS[0].parse::<IpAddr>().unwrap(),
        Requester {
            instance_uuid: UUID.into(),
            project_id: "proj-1".into(),
        },
    )]);
    proxy
        .serve("net-1", Place::Namespace(pair.gateway.clone()), guests)
        .unwrap();

    // The port's address: forwarded, named and signed; the guest's own
    // claims are not passed on.
    let guest = pair.guest.clone();
    let (status, body) = tokio::task::spawn_blocking(move || {
        guest_get(
            &guest,
            GUESTS[0],
            "/openstack/latest/meta_data.json?x=1",
            "X-Instance-ID: 00000000-0000-0000-0000-000000000000\r\nX-Instance-ID-Signature: forged\r\n",
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("get /openstack/latest/meta_data.json?x=1 http/1.1"),
        "{body}"
    );
    let signature = mica_rpc::metadata::sign(SECRET, UUID);
    for line in [
        format!("x-instance-id: {UUID}"),
        "x-tenant-id: proj-1".to_owned(),
        format!("x-instance-id-signature: {signature}"),
        format!("x-forwarded-for: {}", GUESTS[0]),
    ] {
        assert!(body.lines().any(|l| l.trim() == line), "{line} in\n{body}");
    }
    assert!(
        !body.contains("forged") && !body.contains("00000000-0000"),
        "{body}"
    );
    assert_eq!(seen.lock().unwrap().len(), 1);

    // Another address on the same network: no port's, nothing forwarded.
    let guest = pair.guest.clone();
    let (status, body) = tokio::task::spawn_blocking(move || guest_get(&guest, GUESTS[1], "/", ""))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "an unknown address was forwarded"
    );

    // At most 64 connections at once: the 65th is closed unanswered; once
    // they go, requests are served again.
    let guest = pair.guest.clone();
    let crowd = tokio::task::spawn_blocking(move || {
        NetnsPair::within(&guest, || {
            let held: Vec<std::net::TcpStream> = (0..64)
                .map(|_| std::net::TcpStream::connect(("169.254.169.254", 80)).unwrap())
                .collect();
            std::thread::sleep(std::time::Duration::from_millis(300));
            let mut extra = std::net::TcpStream::connect(("169.254.169.254", 80)).unwrap();
            extra
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let _ = extra.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
            let mut buf = [0u8; 64];
            let got = extra.read(&mut buf).map_err(|e| e.kind());
            drop(held);
            got
        })
        .unwrap()
    })
    .await
    .unwrap();
    assert!(
        matches!(crowd, Ok(0) | Err(std::io::ErrorKind::ConnectionReset)),
        "the 65th connection was served: {crowd:?}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let guest = pair.guest.clone();
    let (status, _) = tokio::task::spawn_blocking(move || guest_get(&guest, GUESTS[0], "/", ""))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);

    // Stopped: nothing listens.
    proxy.stop("net-1");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let guest = pair.guest.clone();
    let gone = tokio::task::spawn_blocking(move || guest_get(&guest, GUESTS[0], "/", ""))
        .await
        .unwrap();
    assert!(gone.is_err(), "{gone:?}");
}
