//! The control API: one enum of actions ([`VmmAction`]) that the controller
//! carries out on its own thread. The control socket ([`server`]) is a thin
//! HTTP frontend: it maps a request to an action, hands it over a channel and
//! writes the answer back.

pub mod http;
pub mod server;

use mica_vmm_api::{
    ActionAnswer, ErrorBody, Metrics, RebootRequest, RequestedState, ShutdownRequest, StateRequest,
    VmInfo, VmState, paths,
};

use self::http::{Request, Response};

/// Everything the VMM can be asked to do after it started. Which ones the VM's
/// current state allows is the controller's business (see `crate::vmm`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmAction {
    /// State, configuration, uptime and boot time. Any state.
    GetVm,
    /// Counters. Any state.
    GetMetrics,
    /// Pause or resume the vCPUs and the device loop. Running or paused.
    SetState(RequestedState),
    /// Press the ACPI power button; stop the VM if the guest has not powered
    /// off within the timeout. Running only.
    Shutdown(ShutdownRequest),
    /// Stop the VM now; the process exits. Any state.
    Stop,
    /// Ctrl-Alt-Del (soft) or an immediate reset (hard); either way the guest
    /// boots again in this process. Running only.
    Reboot(RebootRequest),
}

/// A successful action.
#[derive(Debug, Clone, PartialEq)]
pub enum ActionOk {
    Vm(Box<VmInfo>),
    Metrics(Box<Metrics>),
    /// Done; the VM is now in this state.
    Done(VmState),
    /// Started; it completes later (shutdown, reboot).
    Accepted(VmState),
}

/// A refused or failed action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionError {
    /// Not allowed in the VM's current state.
    Conflict(String),
    /// The VMM tried and failed.
    Failed(String),
    /// The VMM is stopping and takes no more actions.
    Unavailable,
}

pub type ActionResult = Result<ActionOk, ActionError>;

/// Maps an HTTP request to an action, or to the error answer.
pub fn route(req: &Request) -> Result<VmmAction, Response> {
    let known = [
        paths::VM,
        paths::VM_STATE,
        paths::VM_SHUTDOWN,
        paths::VM_STOP,
        paths::VM_REBOOT,
        paths::METRICS,
    ];
    let action = match (req.method.as_str(), req.path.as_str()) {
        ("GET", paths::VM) => VmmAction::GetVm,
        ("GET", paths::METRICS) => VmmAction::GetMetrics,
        ("PUT", paths::VM_STATE) => {
            let r: StateRequest = body(req, None)?;
            VmmAction::SetState(r.state)
        }
        ("POST", paths::VM_SHUTDOWN) => {
            VmmAction::Shutdown(body(req, Some(ShutdownRequest::default()))?)
        }
        ("POST", paths::VM_STOP) => VmmAction::Stop,
        ("POST", paths::VM_REBOOT) => VmmAction::Reboot(body(req, Some(RebootRequest::default()))?),
        (m, p) if known.contains(&p) => {
            return Err(error(405, format!("{m} is not allowed on {p}")));
        }
        (_, p) => return Err(error(404, format!("no such path: {p}"))),
    };
    Ok(action)
}

/// Parses a JSON body; an empty body gives `default` when there is one.
fn body<T: serde::de::DeserializeOwned>(req: &Request, default: Option<T>) -> Result<T, Response> {
    let text = std::str::from_utf8(&req.body).map_err(|_| error(400, "body is not UTF-8"))?;
    if text.trim().is_empty() {
        return default.ok_or_else(|| error(400, "a JSON body is required"));
    }
    serde_json::from_str(text).map_err(|e| error(400, format!("invalid body: {e}")))
}

pub fn error(status: u16, message: impl Into<String>) -> Response {
    Response::json(
        status,
        &ErrorBody {
            error: message.into(),
        },
    )
}

/// The HTTP answer to an action's result.
pub fn respond(result: ActionResult) -> Response {
    match result {
        Ok(ActionOk::Vm(info)) => Response::json(200, &info),
        Ok(ActionOk::Metrics(m)) => Response::json(200, &m),
        Ok(ActionOk::Done(state)) => Response::json(200, &ActionAnswer { state }),
        Ok(ActionOk::Accepted(state)) => Response::json(202, &ActionAnswer { state }),
        Err(ActionError::Conflict(m)) => error(409, m),
        Err(ActionError::Failed(m)) => error(500, m),
        Err(ActionError::Unavailable) => error(503, "the VMM is stopping"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            body: body.as_bytes().to_vec(),
            keep_alive: true,
        }
    }

    #[test]
    fn routes_every_endpoint() {
        assert_eq!(route(&req("GET", "/vm", "")), Ok(VmmAction::GetVm));
        assert_eq!(
            route(&req("GET", "/metrics", "")),
            Ok(VmmAction::GetMetrics)
        );
        assert_eq!(
            route(&req("PUT", "/vm/state", r#"{"state":"paused"}"#)),
            Ok(VmmAction::SetState(RequestedState::Paused))
        );
        assert_eq!(
            route(&req("POST", "/vm/shutdown", r#"{"timeout_s": 5}"#)),
            Ok(VmmAction::Shutdown(ShutdownRequest { timeout_s: 5 }))
        );
        assert_eq!(
            route(&req("POST", "/vm/shutdown", "")),
            Ok(VmmAction::Shutdown(ShutdownRequest { timeout_s: 30 }))
        );
        assert_eq!(route(&req("POST", "/vm/stop", "")), Ok(VmmAction::Stop));
        assert_eq!(
            route(&req("POST", "/vm/reboot", r#"{"hard": true}"#)),
            Ok(VmmAction::Reboot(RebootRequest { hard: true }))
        );
    }

    #[test]
    fn errors_have_the_right_status() {
        let status = |r: Result<VmmAction, Response>| r.unwrap_err().status;
        assert_eq!(status(route(&req("GET", "/nope", ""))), 404);
        assert_eq!(status(route(&req("DELETE", "/vm", ""))), 405);
        assert_eq!(status(route(&req("PUT", "/vm/state", ""))), 400);
        assert_eq!(
            status(route(&req("PUT", "/vm/state", r#"{"state":"asleep"}"#))),
            400
        );
        assert_eq!(
            status(route(&req(
                "PUT",
                "/vm/state",
                r#"{"state":"paused","x":1}"#
            ))),
            400
        );
        assert_eq!(status(route(&req("POST", "/vm/shutdown", "{"))), 400);
    }

    #[test]
    fn results_map_to_statuses() {
        assert_eq!(respond(Ok(ActionOk::Done(VmState::Paused))).status, 200);
        assert_eq!(
            respond(Ok(ActionOk::Accepted(VmState::ShuttingDown))).status,
            202
        );
        let r = respond(Err(ActionError::Conflict("paused".into())));
        assert_eq!(r.status, 409);
        assert_eq!(r.body, br#"{"error":"paused"}"#);
    }
}
