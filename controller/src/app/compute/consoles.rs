//! Remote consoles: the tokens `POST /servers/{id}/remote-consoles` and the
//! `os-getVNCConsole` / `os-getSerialConsole` actions hand out, and what
//! the console proxy does with one (check it, then ask the instance's
//! compute host to open the console).
//!
//! ```text
//!  client ─remote-consoles─► API: server ACTIVE+running? ─► token (DB: sha256 only, TTL)
//!  browser/ws client ─?token=─► proxy: token live, instance not deleted? (no RPC before)
//!        proxy ─call console_connect─► agent of the instance's host ─► {address, ticket}
//!        proxy ─TCP address, ticket─► agent ─► the VMM's VNC/serial socket
//! ```
//!
//! Tokens are 256 random bits shown once; the database keeps their SHA-256,
//! so a read of the table gives no usable token. A token works any number
//! of times until it expires (noVNC reconnects with it) and dies with its
//! instance.

use mica_rpc::Topic;
use mica_rpc::compute::{ConsoleConnect, ConsoleConnectRequest, ConsoleKind, ConsoleTicket};

use super::servers::get_visible;
use super::states::{power, vm};
use crate::app::identity::token_hash;
use crate::app::{App, ServiceKind};
use crate::context::Context;
use crate::db::{Timestamp, consoles};
use crate::error::{Error, Kind, Result};

/// The consoles Mica serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleType {
    /// `vnc` / `novnc`: the framebuffer through noVNC.
    NoVnc,
    /// `serial` / `serial`: the serial port over a WebSocket.
    Serial,
}

impl ConsoleType {
    /// Nova's `type`.
    pub fn type_name(self) -> &'static str {
        match self {
            ConsoleType::NoVnc => "novnc",
            ConsoleType::Serial => "serial",
        }
    }

    /// Nova's `protocol`.
    pub fn protocol(self) -> &'static str {
        match self {
            ConsoleType::NoVnc => "vnc",
            ConsoleType::Serial => "serial",
        }
    }

    /// The agent's console.
    pub fn kind(self) -> ConsoleKind {
        match self {
            ConsoleType::NoVnc => ConsoleKind::Vnc,
            ConsoleType::Serial => ConsoleKind::Serial,
        }
    }

    fn from_type_name(s: &str) -> Option<ConsoleType> {
        match s {
            "novnc" => Some(ConsoleType::NoVnc),
            "serial" => Some(ConsoleType::Serial),
            _ => None,
        }
    }
}

/// Protocols of Nova's `remote-consoles` schema (2.6; `mks` from 2.8).
const PROTOCOLS: &[&str] = &["vnc", "spice", "rdp", "serial", "mks"];
/// Types of Nova's `remote-consoles` schema.
const TYPES: &[&str] = &[
    "novnc",
    "xvpvnc",
    "rdp-html5",
    "spice-html5",
    "serial",
    "webmks",
];

fn one_of(list: &[&str]) -> String {
    let quoted: Vec<String> = list.iter().map(|s| format!("'{s}'")).collect();
    format!("[{}]", quoted.join(", "))
}

/// Checks `remote-consoles`' `protocol` and `type` as Nova does: values
/// outside the schema, a type that is not the protocol's, and consoles
/// Mica does not serve (spice, rdp, mks, xvpvnc) are 400.
pub fn parse_remote_console(protocol: &str, type_: &str, mks: bool) -> Result<ConsoleType> {
    let protocols = if mks { PROTOCOLS } else { &PROTOCOLS[..4] };
    if !protocols.contains(&protocol) {
        return Err(Error::bad_request(format!(
            "Invalid input for field/attribute protocol. Value: {protocol}. '{protocol}' is not one of {}",
            one_of(protocols)
        )));
    }
    if !TYPES.contains(&type_) {
        return Err(Error::bad_request(format!(
            "Invalid input for field/attribute type. Value: {type_}. '{type_}' is not one of {}",
            one_of(TYPES)
        )));
    }
    let t = ConsoleType::from_type_name(type_)
        .filter(|t| t.protocol() == protocol)
        .ok_or_else(|| Error::bad_request(format!("Unavailable console type {type_}.")))?;
    Ok(t)
}

/// Checks an `os-get*Console` action's `type`.
pub fn parse_action_type(action: &str, type_: Option<&str>) -> Result<ConsoleType> {
    let (wanted, allowed): (ConsoleType, &[&str]) = match action {
        "os-getVNCConsole" => (ConsoleType::NoVnc, &["novnc", "xvpvnc"]),
        "os-getSerialConsole" => (ConsoleType::Serial, &["serial"]),
        _ => {
            return Err(Error::bad_request(format!(
                "Unavailable console type for {action}."
            )));
        }
    };
    let Some(t) = type_ else {
        return Err(Error::bad_request(format!(
            "Invalid input for field/attribute {action}. 'type' is a required property"
        )));
    };
    if !allowed.contains(&t) {
        return Err(Error::bad_request(format!(
            "Invalid input for field/attribute type. Value: {t}. '{t}' is not one of {}",
            one_of(allowed)
        )));
    }
    if t != wanted.type_name() {
        return Err(Error::bad_request(format!("Unavailable console type {t}.")));
    }
    Ok(wanted)
}

/// A console handed out: Nova's `protocol`, `type` and `url`.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteConsole {
    /// `vnc` or `serial`.
    pub protocol: &'static str,
    /// `novnc` or `serial`.
    pub type_: &'static str,
    /// Where the client goes (the token in it).
    pub url: String,
}

/// The server `id` if the caller may open its consoles: 404 when it can't
/// see it, 403 unless a member of its project or an admin (Nova's
/// `os_compute_api:os-remote-consoles`).
pub async fn authorize(
    app: &App,
    ctx: &Context,
    id: &str,
) -> Result<crate::db::instances::InstanceRow> {
    let inst = get_visible(app, ctx, id).await?;
    app.policy.enforce(
        "os_compute_api:os-remote-consoles",
        ctx,
        crate::policy::Target::project(&inst.project_id),
    )?;
    Ok(inst)
}

/// Issues a token for `kind` of server `id` and returns its URL.
pub async fn create(
    app: &App,
    ctx: &Context,
    id: &str,
    kind: ConsoleType,
) -> Result<RemoteConsole> {
    let c = &app.config.console;
    if !c.enabled {
        return Err(Error::not_implemented(format!(
            "Unable to get {} console, functionality not implemented",
            kind.protocol()
        )));
    }
    let inst = authorize(app, ctx, id).await?;
    let action = match kind {
        ConsoleType::NoVnc => "get_vnc_console",
        ConsoleType::Serial => "get_serial_console",
    };
    if inst.vm_state != vm::ACTIVE {
        return Err(Error::conflict(format!(
            "Cannot '{action}' instance {id} while it is in vm_state {}",
            inst.vm_state
        )));
    }
    if inst.host.is_none() || inst.power_state != power::RUNNING {
        return Err(Error::conflict(format!("Instance {id} is not ready.")));
    }
    let proxy = ServiceKind::ConsoleProxy.public_url(&app.config.api);
    let base = match kind {
        ConsoleType::NoVnc if !c.novnc_base_url.is_empty() => c.novnc_base_url.clone(),
        ConsoleType::Serial if !c.serial_base_url.is_empty() => c.serial_base_url.clone(),
        ConsoleType::NoVnc => match &proxy {
            Some(p) => format!("{p}/vnc_lite.html"),
            None => return Err(no_proxy(kind)),
        },
        ConsoleType::Serial => match &proxy {
            Some(p) => format!("{}/", ws_url(p)),
            None => return Err(no_proxy(kind)),
        },
    };
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    let token = hex::encode(bytes);
    let now = Timestamp::now();
    let expires = now.plus_secs(c.token_ttl_secs.max(1));
    consoles::insert(
        app.db.pool(),
        &token_hash(&token),
        &inst.uuid,
        kind.type_name(),
        now,
        expires,
    )
    .await?;
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = match kind {
        // noVNC's pages take the WebSocket's path from `path`.
        ConsoleType::NoVnc => format!("{base}{sep}path=%3Ftoken%3D{token}"),
        ConsoleType::Serial => format!("{base}{sep}token={token}"),
    };
    tracing::info!(instance = %inst.uuid, console = kind.type_name(), expires = %expires.to_db(), "console token issued");
    Ok(RemoteConsole {
        protocol: kind.protocol(),
        type_: kind.type_name(),
        url,
    })
}

fn no_proxy(kind: ConsoleType) -> Error {
    Error::not_implemented(format!(
        "Unable to get {} console: no console proxy is configured ([api] console_proxy_listen or console_proxy_public_url).",
        kind.protocol()
    ))
}

/// `http(s)://…` as `ws(s)://…`.
fn ws_url(http: &str) -> String {
    if let Some(rest) = http.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = http.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        http.to_owned()
    }
}

/// What a valid token opens.
#[derive(Debug, Clone, PartialEq)]
pub struct Opened {
    /// The instance.
    pub instance_uuid: String,
    /// The console.
    pub kind: ConsoleType,
    /// Its host's answer: where to connect and the ticket to send.
    pub ticket: ConsoleTicket,
}

/// The proxy's check of a token: it must exist, be unexpired and belong to
/// a live instance on a host. Only the database is asked; nothing is sent
/// to any compute host for a token that fails here.
pub async fn check_token(app: &App, token: &str) -> Result<consoles::ValidToken> {
    let invalid = || Error::unauthorized("The console token is invalid or has expired.");
    if token.is_empty() || token.len() > 256 {
        return Err(invalid());
    }
    let found = consoles::find_valid(app.db.pool(), &token_hash(token), Timestamp::now()).await?;
    let t = found.ok_or_else(invalid)?;
    if t.host.is_none() {
        return Err(Error::conflict(format!(
            "Instance {} is not ready.",
            t.instance_uuid
        )));
    }
    Ok(t)
}

/// Checks `token` ([`check_token`]), then asks the instance's compute host
/// to open the console.
pub async fn open(app: &App, token: &str) -> Result<Opened> {
    let t = check_token(app, token).await?;
    let kind = ConsoleType::from_type_name(&t.console_type).ok_or_else(|| {
        Error::internal(
            "reading a console token",
            format!("unknown console type {:?}", t.console_type),
        )
    })?;
    let host = t.host.clone().unwrap_or_default();
    let req = ConsoleConnectRequest {
        instance_uuid: t.instance_uuid.clone(),
        kind: kind.kind(),
    };
    let timeout = std::time::Duration::from_secs(app.config.console.connect_timeout_secs.max(1));
    match app
        .rpc()?
        .call_method::<ConsoleConnect>(Topic::compute(host.clone()), &req, timeout)
        .await
    {
        Ok(ticket) => Ok(Opened {
            instance_uuid: t.instance_uuid,
            kind,
            ticket,
        }),
        Err(mica_rpc::RpcError::Remote(e)) => {
            tracing::info!(instance = %t.instance_uuid, host = %host, error = %e.message, "console refused by its host");
            Err(Error::conflict(e.message))
        }
        Err(e) => {
            tracing::warn!(instance = %t.instance_uuid, host = %host, error = %e, "console: compute host did not answer");
            Err(Error::new(
                Kind::ServiceUnavailable,
                format!(
                    "The compute host of instance {} did not answer ({e}).",
                    t.instance_uuid
                ),
            ))
        }
    }
}

/// Removes expired tokens; returns how many.
pub async fn sweep_expired(app: &App) -> Result<u64> {
    consoles::delete_expired(app.db.pool(), Timestamp::now()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_console_validation_is_novas() {
        assert_eq!(
            parse_remote_console("vnc", "novnc", false).unwrap(),
            ConsoleType::NoVnc
        );
        assert_eq!(
            parse_remote_console("serial", "serial", false).unwrap(),
            ConsoleType::Serial
        );
        let e = parse_remote_console("telnet", "novnc", false).unwrap_err();
        assert_eq!(e.kind, Kind::BadRequest);
        assert!(
            e.message
                .contains("'telnet' is not one of ['vnc', 'spice', 'rdp', 'serial']")
        );
        let e = parse_remote_console("mks", "webmks", false).unwrap_err();
        assert!(e.message.contains("is not one of"), "{}", e.message);
        let e = parse_remote_console("mks", "webmks", true).unwrap_err();
        assert_eq!(e.message, "Unavailable console type webmks.");
        let e = parse_remote_console("vnc", "serial", false).unwrap_err();
        assert_eq!(e.message, "Unavailable console type serial.");
        let e = parse_remote_console("vnc", "bogus", false).unwrap_err();
        assert!(e.message.contains("Invalid input for field/attribute type"));
        assert_eq!(
            parse_action_type("os-getVNCConsole", Some("novnc")).unwrap(),
            ConsoleType::NoVnc
        );
        assert!(parse_action_type("os-getVNCConsole", Some("xvpvnc")).is_err());
        assert!(parse_action_type("os-getVNCConsole", None).is_err());
        assert!(parse_action_type("os-getSerialConsole", Some("novnc")).is_err());
    }

    #[test]
    fn websocket_urls_from_http_ones() {
        assert_eq!(ws_url("http://h:6080"), "ws://h:6080");
        assert_eq!(ws_url("https://h"), "wss://h");
    }
}
