//! The metadata service's HTTP side (the `metadata` role): the OpenStack
//! and EC2 trees a guest reads at 169.254.169.254, reached only through a
//! compute host's metadata proxy (see `mica_rpc::metadata`).
//!
//! Every request must carry `X-Instance-ID`, `X-Tenant-ID` and
//! `X-Instance-ID-Signature` (400 when one is missing or repeated); a
//! signature that is not the instance id's under `[metadata] shared_secret`
//! is refused (403, and logged with the claimed instance and the guest's
//! address); an instance that does not exist in that project is 404. Then:
//!
//! ```text
//! GET  /                                    EC2 versions, `latest`
//! GET  /openstack[/]                        OpenStack versions, `latest`
//! GET  /openstack/<v>[/]                    the version's files
//! GET  /openstack/<v>/meta_data.json        (and user_data, network_data.json,
//!                                            vendor_data.json, vendor_data2.json)
//! GET  /openstack/<v>/password              the posted password, or empty
//! POST /openstack/<v>/password              once (409 after)
//! GET  /<ec2 v>[/]                          meta-data/, user-data
//! GET  /<ec2 v>/meta-data/<path>            a value, or a folder's names
//! GET  /<ec2 v>/user-data                   the user data (404 if none)
//! ```
//!
//! Answers are plain text or JSON, as Nova's; errors are plain text.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use std::sync::Arc;
use std::time::Duration;

use super::State;
use crate::app::metadata::{self, Cache, InstanceView};
use crate::error::{Error, Result};

/// The metadata role's router.
pub fn router(app: State) -> Router {
    let cache = Arc::new(Cache::new(Duration::from_secs(
        app.config.metadata.cache_expiration_secs,
    )));
    Router::new().fallback(serve).with_state((app, cache))
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=UTF-8")],
        body.into(),
    )
        .into_response()
}

fn json(v: &serde_json::Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

fn error(e: &Error) -> Response {
    let status = StatusCode::from_u16(e.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_server_error() {
        tracing::error!(error = ?e, "metadata request failed");
    }
    text(status, e.message.clone())
}

/// The one value of a header; `Err` names the problem.
fn one_header<'h>(headers: &'h HeaderMap, name: &str, label: &str) -> Result<&'h str> {
    let mut all = headers.get_all(name).iter();
    let Some(first) = all.next() else {
        return Err(Error::bad_request(format!(
            "{label} header is missing from request."
        )));
    };
    if all.next().is_some() {
        return Err(Error::bad_request(format!(
            "Multiple {label} headers found within request."
        )));
    }
    first
        .to_str()
        .map_err(|_| Error::bad_request(format!("{label} header is not text.")))
}

/// The instance the proxy names, after checking its signature.
async fn requester(app: &State, cache: &Cache, headers: &HeaderMap) -> Result<Arc<InstanceView>> {
    use mica_rpc::metadata::{INSTANCE_ID, SIGNATURE, TENANT_ID};
    let instance = one_header(headers, INSTANCE_ID, "X-Instance-ID")?;
    let signature = one_header(headers, SIGNATURE, "X-Instance-ID-Signature")?;
    let tenant = one_header(headers, TENANT_ID, "X-Tenant-ID")?;
    let from = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?");
    let secret = &app.config.metadata.shared_secret;
    if secret.is_empty() || !mica_rpc::metadata::verify(secret, instance, signature) {
        tracing::warn!(
            instance,
            from,
            "metadata request refused: its X-Instance-ID-Signature is not the instance id's"
        );
        return Err(Error::forbidden("Invalid proxy request signature."));
    }
    cache.get(app, instance, tenant).await?.ok_or_else(|| {
        tracing::warn!(
            instance,
            tenant,
            from,
            "metadata request for no such instance"
        );
        Error::not_found("No such instance in that project.")
    })
}

async fn serve(
    AxState((app, cache)): AxState<(State, Arc<Cache>)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match answer(&app, &cache, &method, uri.path(), &headers, &body).await {
        Ok(r) => r,
        Err(e) => error(&e),
    }
}

fn not_found() -> Error {
    Error::not_found("The resource could not be found.")
}

async fn answer(
    app: &State,
    cache: &Cache,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response> {
    let inst = requester(app, cache, headers).await?;
    let trimmed = path.trim_matches('/');
    let parts: Vec<&str> = if trimmed.is_empty() {
        Vec::new()
    } else {
        trimmed.split('/').collect()
    };
    let is_password = parts.len() == 3 && parts[0] == "openstack" && parts[2] == "password";
    if *method == Method::POST && is_password {
        metadata::openstack_version(parts[1]).ok_or_else(not_found)?;
        metadata::post_password(app, &inst.uuid, body).await?;
        return Ok(text(StatusCode::OK, ""));
    }
    if *method != Method::GET && *method != Method::HEAD {
        return Err(Error::new(
            crate::error::Kind::MethodNotAllowed,
            format!("{method} is not allowed here."),
        ));
    }
    let listing = |items: Vec<String>| text(StatusCode::OK, items.join("\n"));
    let with_latest = |versions: &[&str]| {
        let mut v: Vec<String> = versions.iter().map(|s| (*s).to_owned()).collect();
        v.push("latest".into());
        v
    };
    Ok(match parts.as_slice() {
        [] => listing(with_latest(&metadata::EC2_VERSIONS)),
        ["openstack"] => listing(with_latest(&metadata::OPENSTACK_VERSIONS)),
        ["openstack", v, rest @ ..] => {
            let version = metadata::openstack_version(v).ok_or_else(not_found)?;
            match rest {
                [] => listing(
                    inst.openstack_files(version)
                        .into_iter()
                        .map(str::to_owned)
                        .collect(),
                ),
                [file] if inst.openstack_files(version).contains(file) => match *file {
                    "meta_data.json" => json(&inst.meta_data(version)),
                    "network_data.json" => json(&inst.network_data()),
                    "vendor_data.json" | "vendor_data2.json" => json(&serde_json::json!({})),
                    "password" => text(StatusCode::OK, metadata::password(app, &inst.uuid).await?),
                    "user_data" => (
                        [(header::CONTENT_TYPE, "application/octet-stream")],
                        inst.user_data.clone().unwrap_or_default(),
                    )
                        .into_response(),
                    _ => return Err(not_found()),
                },
                _ => return Err(not_found()),
            }
        }
        [v, rest @ ..] if metadata::ec2_version(v) => match rest {
            [] => {
                let mut items = vec!["meta-data/".to_owned()];
                if inst.user_data.is_some() {
                    items.push("user-data".into());
                }
                listing(items)
            }
            ["user-data"] => match &inst.user_data {
                Some(data) => (
                    [(header::CONTENT_TYPE, "application/octet-stream")],
                    data.clone(),
                )
                    .into_response(),
                None => return Err(not_found()),
            },
            ["meta-data", path @ ..] => {
                let tree = inst.ec2_meta_data();
                let node = tree.get(&path.join("/")).ok_or_else(not_found)?;
                text(StatusCode::OK, node.render())
            }
            _ => return Err(not_found()),
        },
        _ => return Err(not_found()),
    })
}
