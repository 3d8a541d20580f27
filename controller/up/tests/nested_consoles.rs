//! Remote consoles of a real guest, end to end: `mica up` with its compute
//! host in the nested test host, the pinned `openstack` CLI for the URLs,
//! a WebSocket client typing into the tiny guest's shell on ttyS0 through
//! the console proxy and the agent's console channel (forwarded from L1),
//! forged and expired tokens refused, and the noVNC page in headless
//! chromium: the RFB handshake comes through, refused tokens make no
//! connection to the VMM (its metrics), and the browser shows the guest's
//! console text (OCR by tesseract).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::Up;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Seconds a console token lives in this test (short, to see one expire).
const TTL: u64 = 20;

async fn ws(url: &str) -> Result<Ws, (u16, String)> {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "binary".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Ok((s, _)) => Ok(s),
        Err(tungstenite::Error::Http(resp)) => Err((
            resp.status().as_u16(),
            resp.body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        )),
        Err(e) => panic!("connecting {url}: {e}"),
    }
}

/// Reads console bytes until `done` holds for what came, or `timeout`.
async fn read_until(s: &mut Ws, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
    let mut got = Vec::new();
    let deadline = Instant::now() + timeout;
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if done(&text) {
            return text;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => got.extend_from_slice(&b),
            Ok(Some(Ok(_))) => {}
            other => panic!("the console ended or went quiet ({other:?}); so far:\n{text}"),
        }
    }
}

/// `hi-<digits>` at the start of a line: the shell's answer, not the echo
/// of the typed `echo hi-$RANDOM`.
fn answered(text: &str, marker: &str) -> Option<String> {
    text.split(['\r', '\n']).find_map(|line| {
        let rest = line.trim().strip_prefix(marker)?;
        (!rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
            .then(|| format!("{marker}{rest}"))
    })
}

/// Connections the VMMs on the compute host have accepted on their VNC
/// sockets (every VMM's `GET /metrics`, summed).
fn vnc_clients_accepted(up: &Up) -> u64 {
    let out = up.on_host(
        "for s in /run/mica/vmm/*.sock; do curl -sf --unix-socket \"$s\" http://vmm/metrics; echo; done",
    );
    assert_eq!(out.code, 0, "{out:?}");
    out.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            v["display"]["vnc_clients_accepted"]
                .as_u64()
                .unwrap_or_else(|| panic!("no VNC metrics: {l}"))
        })
        .sum()
}

#[test]
fn nested_consoles() {
    if !common::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let ttl = format!("console.token_ttl_secs={TTL}");
    let up = Up::start(&state, &["--set", &ttl]);
    eprintln!("mica up ready in {:?}", up.started_in);
    let demo = up.cli("mica-demo");
    let created = demo.json(&[
        "server", "create", "--flavor", "m1.nano", "--image", "tiny", "--wait", "c1",
    ]);
    assert_eq!(created["status"], "ACTIVE", "{created}");
    // The guest's shell is up once its banner is in the log.
    let deadline = Instant::now() + Duration::from_secs(90);
    while !demo
        .ok(&["console", "log", "show", "c1"])
        .contains("=== Mica tiny guest")
    {
        assert!(Instant::now() < deadline, "c1 did not boot");
        std::thread::sleep(Duration::from_millis(500));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // The serial console: type a command, read its answer.
    let serial = demo.json(&["console", "url", "show", "--serial", "c1"]);
    let url = serial["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with("ws://127.0.0.1:6080/?token="), "{serial}");
    let started = Instant::now();
    let marker = format!("hi-{}-", std::process::id());
    let echoed = rt.block_on(async {
        let mut s = ws(&url).await.expect("the serial console");
        s.send(Message::binary(b"\r".to_vec())).await.unwrap();
        let cmd = format!("echo {marker}$RANDOM\r");
        s.send(Message::binary(cmd.into_bytes())).await.unwrap();
        let text = read_until(&mut s, Duration::from_secs(60), |t| {
            answered(t, &marker).is_some()
        })
        .await;
        let _ = s.close(None).await;
        answered(&text, &marker).unwrap()
    });
    eprintln!(
        "serial console answered {echoed} in {:?}",
        started.elapsed()
    );

    // Forged and expired tokens: refused before the upgrade, and nothing
    // reaches the VMM's VNC server (its metrics count every connection it
    // accepts).
    let accepted = vnc_clients_accepted(&up);
    let (proxy, _) = url.split_once("/?token=").unwrap();
    let forged = rt.block_on(ws(&format!("{proxy}/?token={}", "ab".repeat(32))));
    assert_eq!(forged.err().map(|e| e.0), Some(401), "a forged token");
    let later = demo.json(&["console", "url", "show", "--serial", "c1"]);
    let later = later["url"].as_str().unwrap().to_owned();
    let later_vnc = demo.json(&["console", "url", "show", "--novnc", "c1"]);
    let later_vnc = later_vnc["url"].as_str().unwrap().to_owned();
    let later_vnc = later_vnc.rsplit_once("token%3D").unwrap().1.to_owned();
    std::thread::sleep(Duration::from_secs(TTL + 1));
    let expired = rt.block_on(ws(&later));
    assert_eq!(expired.err().map(|e| e.0), Some(401), "an expired token");
    let expired = rt.block_on(ws(&format!("{proxy}/?token={later_vnc}")));
    assert_eq!(
        expired.err().map(|e| e.0),
        Some(401),
        "an expired VNC token"
    );
    assert_eq!(
        vnc_clients_accepted(&up),
        accepted,
        "a refused token made a connection to the VMM"
    );

    // VNC through the proxy: the VMM's RFB greeting comes through.
    let novnc = demo.json(&["console", "url", "show", "--novnc", "c1"]);
    let page = novnc["url"].as_str().unwrap().to_owned();
    assert!(
        page.starts_with("http://127.0.0.1:6080/vnc_lite.html?path=%3Ftoken%3D"),
        "{novnc}"
    );
    let token = page.rsplit_once("token%3D").unwrap().1.to_owned();
    let banner = rt.block_on(async {
        let mut s = ws(&format!("{proxy}/?token={token}"))
            .await
            .expect("the VNC console");
        let banner = read_until(&mut s, Duration::from_secs(30), |t| t.len() >= 12).await;
        let _ = s.close(None).await;
        banner
    });
    assert!(banner.starts_with("RFB 003.008\n"), "{banner:?}");
    assert_eq!(vnc_clients_accepted(&up), accepted + 1);

    // The noVNC page in headless chromium, with a token of its own. The
    // guest's first virtual terminal (its screen) first gets a line to read
    // back, written through the serial console.
    let screen_marker = "MICA CONSOLE OCR";
    {
        let serial = demo.json(&["console", "url", "show", "--serial", "c1"]);
        let url = serial["url"].as_str().unwrap().to_owned();
        rt.block_on(async {
            let mut s = ws(&url).await.expect("the serial console");
            let cmd =
                format!("clear > /dev/tty1; echo '{screen_marker}' > /dev/tty1; echo tty1-$?\r");
            s.send(Message::binary(cmd.into_bytes())).await.unwrap();
            let text = read_until(&mut s, Duration::from_secs(30), |t| {
                answered(t, "tty1-").is_some()
            })
            .await;
            assert_eq!(
                answered(&text, "tty1-").as_deref(),
                Some("tty1-0"),
                "{text}"
            );
            let _ = s.close(None).await;
        });
    }
    if mica_tests::require(
        "chromium, playwright-core and noVNC",
        mica_tests::browser::novnc_dir().map(|_| ()),
    ) {
        let novnc = demo.json(&["console", "url", "show", "--novnc", "c1"]);
        let page = novnc["url"].as_str().unwrap();
        let shot = dir.path().join("console.png");
        let result = mica_tests::browser::open_console(page, &shot, 15_000);
        eprintln!("browser: {result}");
        assert_eq!(result["rfb"], true, "noVNC loaded: {result}");
        assert!(std::fs::metadata(&shot).unwrap().len() > 1000);
        assert_eq!(result["state"], "connected", "{result}");
        assert!(
            result["canvas"]["nonBlack"].as_u64().unwrap_or(0) > 0,
            "{result}"
        );
        // The guest's screen shows the line: text tesseract reads.
        let out = Command::new("tesseract")
            .arg(&shot)
            .arg("-")
            .output()
            .expect("tesseract (make setup)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("CONSOLE OCR"),
            "{screen_marker:?} is not on the guest's screen; tesseract read: {text}"
        );
        // Keep the screenshot where a person can look at it.
        let keep = mica_tests::browser::keep_artifact(&shot, "novnc-page-nested-guest.png");
        eprintln!("screenshot: {}", keep.display());
    }
}
