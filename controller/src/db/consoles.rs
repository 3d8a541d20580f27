//! Console tokens (`console_auth_tokens`): issued by the compute API,
//! checked by the console proxy. Rows hold the token's SHA-256 only.

use sqlx::{Any, Executor};

use super::Timestamp;
use crate::error::Result;

/// A live token with what the proxy needs of its instance.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ValidToken {
    /// The instance.
    pub instance_uuid: String,
    /// `novnc` or `serial`.
    pub console_type: String,
    /// The instance's compute host (none while it has none).
    pub host: Option<String>,
    /// When the token stops working.
    pub expires_at: Timestamp,
}

/// Stores a token.
pub async fn insert<'e>(
    ex: impl Executor<'e, Database = Any>,
    token_hash: &str,
    instance_uuid: &str,
    console_type: &str,
    created_at: Timestamp,
    expires_at: Timestamp,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO console_auth_tokens (token_hash, instance_uuid, console_type, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(token_hash)
    .bind(instance_uuid)
    .bind(console_type)
    .bind(created_at)
    .bind(expires_at)
    .execute(ex)
    .await?;
    Ok(())
}

/// The token with this hash if it has not expired at `now` and its
/// instance is not deleted.
pub async fn find_valid<'e>(
    ex: impl Executor<'e, Database = Any>,
    token_hash: &str,
    now: Timestamp,
) -> Result<Option<ValidToken>> {
    Ok(sqlx::query_as(
        "SELECT t.instance_uuid, t.console_type, i.host, t.expires_at \
         FROM console_auth_tokens t JOIN instances i ON i.uuid = t.instance_uuid \
         WHERE t.token_hash = $1 AND t.expires_at > $2 AND i.deleted = FALSE",
    )
    .bind(token_hash)
    .bind(now)
    .fetch_optional(ex)
    .await?)
}

/// Removes the tokens of one instance (it is being deleted).
pub async fn delete_for_instance<'e>(
    ex: impl Executor<'e, Database = Any>,
    instance_uuid: &str,
) -> Result<u64> {
    Ok(
        sqlx::query("DELETE FROM console_auth_tokens WHERE instance_uuid = $1")
            .bind(instance_uuid)
            .execute(ex)
            .await?
            .rows_affected(),
    )
}

/// Removes the tokens expired before `now`; returns how many.
pub async fn delete_expired<'e>(
    ex: impl Executor<'e, Database = Any>,
    now: Timestamp,
) -> Result<u64> {
    Ok(
        sqlx::query("DELETE FROM console_auth_tokens WHERE expires_at <= $1")
            .bind(now)
            .execute(ex)
            .await?
            .rows_affected(),
    )
}
