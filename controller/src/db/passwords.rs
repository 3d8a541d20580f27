//! The password a guest posts once to the metadata service (see
//! `app::metadata`), read and cleared through os-server-password.

use sqlx::{Any, Executor};

use crate::error::Result;

/// The instance's password, if its guest posted one (and nobody cleared
/// it since).
pub async fn get<'e>(ex: impl Executor<'e, Database = Any>, uuid: &str) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT password FROM instance_passwords WHERE instance_uuid = $1")
            .bind(uuid)
            .fetch_optional(ex)
            .await?,
    )
}

/// Stores the password unless one is there; answers whether it stored it.
pub async fn set_once<'e>(
    ex: impl Executor<'e, Database = Any>,
    uuid: &str,
    password: &str,
) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO instance_passwords (instance_uuid, password) VALUES ($1, $2) \
         ON CONFLICT (instance_uuid) DO NOTHING",
    )
    .bind(uuid)
    .bind(password)
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Forgets the password (the guest may post a new one).
pub async fn clear<'e>(ex: impl Executor<'e, Database = Any>, uuid: &str) -> Result<()> {
    sqlx::query("DELETE FROM instance_passwords WHERE instance_uuid = $1")
        .bind(uuid)
        .execute(ex)
        .await?;
    Ok(())
}
