//! `os-server-password`: the password a server's guest posted to the
//! metadata service (encrypted with its key pair's key), read by the
//! project's readers and cleared by its members, as Nova's defaults.

use super::servers::get_visible;
use crate::app::App;
use crate::context::Context;
use crate::db::passwords;
use crate::error::Result;
use crate::policy::Target;

/// The server's posted password, `""` when none.
pub async fn show(app: &App, ctx: &Context, id: &str) -> Result<String> {
    let inst = get_visible(app, ctx, id).await?;
    app.policy.enforce(
        "os_compute_api:os-server-password:show",
        ctx,
        Target::project(&inst.project_id),
    )?;
    Ok(passwords::get(app.db.pool(), &inst.uuid)
        .await?
        .unwrap_or_default())
}

/// Forgets it: the guest may post a new one.
pub async fn clear(app: &App, ctx: &Context, id: &str) -> Result<()> {
    let inst = get_visible(app, ctx, id).await?;
    app.policy.enforce(
        "os_compute_api:os-server-password:clear",
        ctx,
        Target::project(&inst.project_id),
    )?;
    passwords::clear(app.db.pool(), &inst.uuid).await
}
