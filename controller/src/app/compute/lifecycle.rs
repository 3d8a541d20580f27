//! The ends of an instance's life that the API and the conductor share.

use crate::app::App;
use crate::db::instances::{self, Expect};
use crate::db::network;
use crate::error::Result;

/// Finishes deleting an instance (once nothing runs for it any more):
/// releases its ports (those made for it are deleted, the others unbound),
/// ends its server group membership and security groups, and soft-deletes
/// it — all in one transaction, and only if it still meets `expect`.
/// Returns false when it was already gone or did not meet `expect`. The
/// caller frees its placement allocation.
pub async fn finish_delete(app: &App, uuid: &str, expect: &Expect) -> Result<bool> {
    app.db
        .retry(|| async {
            let mut tx = app.db.begin().await?;
            if !instances::mark_deleted(&mut tx, uuid, expect).await? {
                return Ok(false);
            }
            network::release_device_ports(&mut tx, uuid).await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
}
