//! The saga log (tables `sagas`, `saga_steps`) and the signals sagas wait
//! for (`saga_signals`). The engine that reads and writes them is
//! [`crate::saga`].
//!
//! A saga belongs to one conductor at a time (`owner`) until `lease_until`;
//! every write the engine makes on its behalf first checks, in the same
//! transaction, that it still owns the saga (the `UPDATE` of the saga row
//! takes that row's lock, so a takeover and a step write serialize). A
//! conductor that stops renewing its leases (it crashed) has its sagas
//! adopted by another, or by itself after a restart.

use sqlx::{Any, AnyConnection, Executor};

use super::{Sql, Timestamp};
use crate::error::Result;

/// The states of a saga.
pub mod state {
    /// Running its actions forward.
    pub const RUNNING: &str = "running";
    /// An action failed; undoing the steps done so far.
    pub const UNWINDING: &str = "unwinding";
    /// Every step undone; its `unwound` hook has yet to run.
    pub const UNWOUND: &str = "unwound";
    /// Every action done.
    pub const DONE: &str = "done";
    /// Unwound and its hook ran.
    pub const FAILED: &str = "failed";
    /// The states of a saga that still has work to do.
    pub const ACTIVE: [&str; 3] = [RUNNING, UNWINDING, UNWOUND];
}

/// The states of a step.
pub mod step_state {
    /// Its action began (and may have partly run).
    pub const STARTED: &str = "started";
    /// Its action finished; `output` holds what it returned.
    pub const DONE: &str = "done";
    /// Its action failed (its undo does not run).
    pub const FAILED: &str = "failed";
    /// Its undo finished.
    pub const UNDONE: &str = "undone";
}

/// A saga row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct SagaRow {
    /// Id (chosen by the creator so that creating twice is harmless).
    pub id: String,
    /// The saga definition.
    pub kind: String,
    /// What it acts on.
    pub target: Option<String>,
    /// JSON parameters.
    pub params: String,
    /// See [`state`].
    pub state: String,
    /// JSON failure that made it unwind.
    pub error: Option<String>,
    /// The conductor running it.
    pub owner: Option<String>,
    /// Until when the owner's claim holds.
    pub lease_until: Timestamp,
    /// Bumped by every change of owner.
    pub generation: i64,
    /// Created.
    pub created_at: Timestamp,
    /// Last written.
    pub updated_at: Timestamp,
}

/// A step row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StepRow {
    /// Index in the saga's list of steps.
    pub step: i64,
    /// The step's name.
    pub name: String,
    /// See [`step_state`].
    pub state: String,
    /// JSON output, once done.
    pub output: Option<String>,
    /// When its action first began.
    pub started_at: Timestamp,
}

/// Inserts a saga unless one with its id exists; true if inserted.
pub async fn insert_saga<'e>(ex: impl Executor<'e, Database = Any>, s: &SagaRow) -> Result<bool> {
    Ok(sqlx::query(
        "INSERT INTO sagas (id, kind, target, params, state, error, owner, lease_until, generation, \
         created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&s.id)
    .bind(&s.kind)
    .bind(&s.target)
    .bind(&s.params)
    .bind(&s.state)
    .bind(&s.error)
    .bind(&s.owner)
    .bind(s.lease_until)
    .bind(s.generation)
    .bind(s.created_at)
    .bind(s.updated_at)
    .execute(ex)
    .await?
    .rows_affected()
        == 1)
}

/// A saga by id.
pub async fn get_saga<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
) -> Result<Option<SagaRow>> {
    Ok(sqlx::query_as("SELECT * FROM sagas WHERE id = $1")
        .bind(id)
        .fetch_optional(ex)
        .await?)
}

/// The sagas acting on `target`, oldest first.
pub async fn sagas_of_target<'e>(
    ex: impl Executor<'e, Database = Any>,
    target: &str,
) -> Result<Vec<SagaRow>> {
    Ok(
        sqlx::query_as("SELECT * FROM sagas WHERE target = $1 ORDER BY created_at, id")
            .bind(target)
            .fetch_all(ex)
            .await?,
    )
}

/// The steps a saga reached, in order.
pub async fn saga_steps<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
) -> Result<Vec<StepRow>> {
    Ok(sqlx::query_as(
        "SELECT step, name, state, output, started_at FROM saga_steps WHERE saga_id = $1 ORDER BY step",
    )
    .bind(id)
    .fetch_all(ex)
    .await?)
}

/// Checks that `owner` still owns saga `id` and extends its lease to
/// `lease_until`, locking the saga row for the rest of the transaction.
/// False if another conductor took it over.
pub async fn touch_owned(
    conn: &mut AnyConnection,
    id: &str,
    owner: &str,
    lease_until: Timestamp,
) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE sagas SET lease_until = $1, updated_at = $2 WHERE id = $3 AND owner = $4",
    )
    .bind(lease_until)
    .bind(Timestamp::now())
    .bind(id)
    .bind(owner)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1)
}

/// Writes the record of one step.
pub async fn put_step(
    conn: &mut AnyConnection,
    saga_id: &str,
    step: i64,
    name: &str,
    state: &str,
    output: Option<&str>,
    started_at: Timestamp,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO saga_steps (saga_id, step, name, state, output, started_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (saga_id, step) DO UPDATE SET \
         state = excluded.state, output = COALESCE(excluded.output, saga_steps.output), \
         updated_at = excluded.updated_at",
    )
    .bind(saga_id)
    .bind(step)
    .bind(name)
    .bind(state)
    .bind(output)
    .bind(started_at)
    .bind(Timestamp::now())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Sets a saga's state (and error), in the owner's transaction.
pub async fn set_state(
    conn: &mut AnyConnection,
    id: &str,
    state: &str,
    error: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "UPDATE sagas SET state = $1, error = COALESCE($2, error), updated_at = $3 WHERE id = $4",
    )
    .bind(state)
    .bind(error)
    .bind(Timestamp::now())
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Extends the leases of every active saga of `owner`; returns how many.
pub async fn renew_leases<'e>(
    ex: impl Executor<'e, Database = Any>,
    owner: &str,
    lease_until: Timestamp,
) -> Result<u64> {
    let mut q = Sql::new("UPDATE sagas SET lease_until = ");
    q.bind(lease_until)
        .push(" WHERE owner = ")
        .bind(owner.to_owned())
        .push(" AND state IN (")
        .bind_list(state::ACTIVE.iter().map(|s| s.to_string()))
        .push(")");
    q.execute(ex).await
}

/// Ends the leases of `owner` now (a clean shutdown), so that another
/// conductor adopts its sagas at once.
pub async fn release_leases<'e>(ex: impl Executor<'e, Database = Any>, owner: &str) -> Result<u64> {
    let mut q = Sql::new("UPDATE sagas SET lease_until = ");
    q.bind(Timestamp::now().plus_secs(-1))
        .push(" WHERE owner = ")
        .bind(owner.to_owned())
        .push(" AND state IN (")
        .bind_list(state::ACTIVE.iter().map(|s| s.to_string()))
        .push(")");
    q.execute(ex).await
}

/// Active sagas whose lease ran out before `now`: (id, generation).
pub async fn expired_sagas<'e>(
    ex: impl Executor<'e, Database = Any>,
    now: Timestamp,
    limit: i64,
) -> Result<Vec<(String, i64)>> {
    let mut q = Sql::new("SELECT id, generation FROM sagas WHERE state IN (");
    q.bind_list(state::ACTIVE.iter().map(|s| s.to_string()))
        .push(") AND lease_until < ")
        .bind(now)
        .push(" ORDER BY lease_until LIMIT ")
        .bind(limit);
    q.fetch_all(ex).await
}

/// Takes over saga `id` if it still has `generation` and an expired lease;
/// returns the row if taken.
pub async fn adopt<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
    generation: i64,
    owner: &str,
    now: Timestamp,
    lease_until: Timestamp,
) -> Result<Option<SagaRow>> {
    Ok(sqlx::query_as(
        "UPDATE sagas SET owner = $1, lease_until = $2, generation = generation + 1, updated_at = $3 \
         WHERE id = $4 AND generation = $5 AND lease_until < $3 RETURNING *",
    )
    .bind(owner)
    .bind(lease_until)
    .bind(now)
    .bind(id)
    .bind(generation)
    .fetch_optional(ex)
    .await?)
}

/// Deletes finished sagas (done or failed) last written before `before`.
pub async fn delete_finished_before<'e>(
    ex: impl Executor<'e, Database = Any>,
    before: Timestamp,
) -> Result<u64> {
    Ok(
        sqlx::query("DELETE FROM sagas WHERE state IN ('done', 'failed') AND updated_at < $1")
            .bind(before)
            .execute(ex)
            .await?
            .rows_affected(),
    )
}

/// Counts sagas per state (for tests and operators).
pub async fn count_by_state<'e>(
    ex: impl Executor<'e, Database = Any>,
) -> Result<Vec<(String, i64)>> {
    Ok(
        sqlx::query_as("SELECT state, COUNT(*) FROM sagas GROUP BY state ORDER BY state")
            .fetch_all(ex)
            .await?,
    )
}

// ---- signals ------------------------------------------------------------------

/// Records a signal (an agent's report); a second one with the same key
/// replaces the first.
pub async fn put_signal<'e>(
    ex: impl Executor<'e, Database = Any>,
    key: &str,
    payload: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO saga_signals (key, payload, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (key) DO UPDATE SET payload = excluded.payload, created_at = excluded.created_at",
    )
    .bind(key)
    .bind(payload)
    .bind(Timestamp::now())
    .execute(ex)
    .await?;
    Ok(())
}

/// The payload of one signal.
pub async fn get_signal<'e>(
    ex: impl Executor<'e, Database = Any>,
    key: &str,
) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT payload FROM saga_signals WHERE key = $1")
            .bind(key)
            .fetch_optional(ex)
            .await?,
    )
}

/// The signals among `keys` that arrived: (key, payload).
pub async fn signals<'e>(
    ex: impl Executor<'e, Database = Any>,
    keys: &[String],
) -> Result<Vec<(String, String)>> {
    let mut q = Sql::new("SELECT key, payload FROM saga_signals WHERE key IN (");
    q.bind_list(keys.to_vec()).push(")");
    q.fetch_all(ex).await
}

/// Deletes one signal.
pub async fn delete_signal<'e>(ex: impl Executor<'e, Database = Any>, key: &str) -> Result<()> {
    sqlx::query("DELETE FROM saga_signals WHERE key = $1")
        .bind(key)
        .execute(ex)
        .await?;
    Ok(())
}

/// Deletes signals older than `before`.
pub async fn delete_signals_before<'e>(
    ex: impl Executor<'e, Database = Any>,
    before: Timestamp,
) -> Result<u64> {
    Ok(
        sqlx::query("DELETE FROM saga_signals WHERE created_at < $1")
            .bind(before)
            .execute(ex)
            .await?
            .rows_affected(),
    )
}
