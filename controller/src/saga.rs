//! Sagas: multi-step operations that survive a crash, in the spirit of
//! Omicron's (steno).
//!
//! A saga is a list of steps; each step has an **action** and, when the
//! action changes something outside the saga, an **undo**. The engine runs
//! the actions in order and writes each one's outcome (its JSON output) to
//! the database before going on. When an action fails, the saga **unwinds**:
//! the undos of the steps done so far run in reverse order, then the saga's
//! `unwound` hook decides what follows (another attempt, an ERROR state).
//!
//! ```text
//!            action ok              last action ok
//!   running ───────────► running ─────────────────► done
//!      │ action failed
//!      ▼
//!   unwinding ──(undo each done step, last first)──► unwound ──(hook)──► failed
//! ```
//!
//! Rules the steps follow (and the generic tests check, see
//! [`TestHooks`]):
//!
//! - **Actions and undos are idempotent.** A crash between an action and the
//!   record of its outcome runs it again on resume; running any action or
//!   undo twice in a row gives the same result as once.
//! - **Nondeterminism lives in its own step.** Ids (a VMM id) are made by a
//!   step whose output is recorded, so a replay asks for the same ones.
//! - **An action that fails leaves nothing behind**, including what an
//!   earlier, interrupted run of the same action did; its undo does not run.
//! - A transient error ([`StepError::Transient`]: the database or the bus is
//!   away) retries the action after a pause instead of unwinding.
//! - Undos must eventually succeed: they are retried until they do.
//!
//! # Ownership and resumption
//!
//! Every saga belongs to one conductor ([`Engine`]) at a time, for a lease
//! it renews while alive. Each record the engine writes first checks, in the
//! same transaction, that it still owns the saga. A conductor that dies
//! stops renewing; once the lease has run out any conductor (another
//! replica, or the same one restarted) adopts the saga and carries on from
//! its last recorded step. A clean shutdown releases the leases so that the
//! sagas move at once.
//!
//! # Signals
//!
//! A step can wait for something that happens elsewhere — an agent's report
//! — with [`StepCx::wait_signal`]. Reports are stored as signals
//! (`saga_signals`) by whichever conductor receives them and delivered at
//! once to waiters in the same process, and within
//! [`EngineOptions::signal_poll`] to waiters in other processes. Signals
//! outlive crashes, so a resumed saga finds the report it was waiting for.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::AnyConnection;
use tokio::sync::{oneshot, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tracing::Instrument;

use crate::db::sagas::{self as store, SagaRow, state, step_state};
use crate::db::{Db, Timestamp};
use crate::error::{Error, Kind, Result};

/// A boxed future, as steps return.
pub type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Why a step failed: kept with the saga and handed to its `unwound` hook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// The step that failed (filled in by the engine).
    #[serde(default)]
    pub step: String,
    /// For users (an instance fault's `message`).
    pub message: String,
    /// For operators (a fault's `details`).
    #[serde(default)]
    pub details: String,
    /// Whether trying again elsewhere might succeed.
    #[serde(default)]
    pub retryable: bool,
    /// Anything else the hook needs (the host that failed, …).
    #[serde(default)]
    pub data: Value,
}

impl Failure {
    /// A failure that another attempt would not fix.
    pub fn new(message: impl Into<String>, details: impl Into<String>) -> Failure {
        Failure {
            step: String::new(),
            message: message.into(),
            details: details.into(),
            retryable: false,
            data: Value::Null,
        }
    }

    /// A failure another host might not have.
    pub fn retryable(message: impl Into<String>, details: impl Into<String>) -> Failure {
        Failure {
            retryable: true,
            ..Failure::new(message, details)
        }
    }

    /// With `data` attached.
    #[must_use]
    pub fn with_data(mut self, data: Value) -> Failure {
        self.data = data;
        self
    }
}

/// What an action or undo can return instead of success.
#[derive(Debug, Clone)]
pub enum StepError {
    /// Unwind the saga.
    Fail(Failure),
    /// Try this step again after a pause (the database or the bus is away).
    Transient(String),
}

impl From<Failure> for StepError {
    fn from(f: Failure) -> StepError {
        StepError::Fail(f)
    }
}

impl From<Error> for StepError {
    fn from(e: Error) -> StepError {
        if is_transient(&e) {
            StepError::Transient(format!("{e:?}"))
        } else {
            StepError::Fail(Failure::new(e.message.clone(), format!("{e:?}")))
        }
    }
}

/// Whether an error is worth retrying as is: the database unreachable,
/// busy or restarting, or a lost lock race.
pub fn is_transient(e: &Error) -> bool {
    if e.kind == Kind::ServiceUnavailable || crate::db::is_retryable(e) {
        return true;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = e.source.as_deref().map(|s| s as _);
    while let Some(err) = cur {
        if let Some(sqlx_err) = err.downcast_ref::<sqlx::Error>() {
            return matches!(
                sqlx_err,
                sqlx::Error::Io(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::Protocol(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::WorkerCrashed
            ) || matches!(sqlx_err, sqlx::Error::Database(db)
                if db.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")));
        }
        cur = err.source();
    }
    false
}

/// Serializes an action's output.
pub fn output(v: &impl Serialize) -> Result<Value, StepError> {
    serde_json::to_value(v).map_err(|e| {
        StepError::Fail(Failure::new(
            "An internal error occurred.",
            format!("encoding a step output: {e}"),
        ))
    })
}

/// An action: returns its output.
pub type ActionFn<C, P> = fn(StepCx<C, P>) -> BoxFut<Result<Value, StepError>>;
/// An undo.
pub type UndoFn<C, P> = fn(StepCx<C, P>) -> BoxFut<Result<(), StepError>>;

/// One step of a saga.
pub struct Step<C, P> {
    /// Its name, unique in the saga (outputs are read by it).
    pub name: &'static str,
    /// What it does.
    pub action: ActionFn<C, P>,
    /// How to take it back, when it changes anything.
    pub undo: Option<UndoFn<C, P>>,
}

impl<C, P> Step<C, P> {
    /// A step with an undo.
    pub fn new(name: &'static str, action: ActionFn<C, P>, undo: UndoFn<C, P>) -> Self {
        Step {
            name,
            action,
            undo: Some(undo),
        }
    }

    /// A step with nothing to undo.
    pub fn forward(name: &'static str, action: ActionFn<C, P>) -> Self {
        Step {
            name,
            action,
            undo: None,
        }
    }
}

/// A kind of saga: its parameters, its steps and what follows an unwind.
pub trait SagaKind<C: Send + Sync + 'static>: 'static {
    /// The name stored with each saga.
    const KIND: &'static str;
    /// The parameters, fixed when the saga is created.
    type Params: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// The steps, in order.
    fn steps() -> Vec<Step<C, Self::Params>>;
    /// What the saga acts on (an instance UUID).
    fn target(_params: &Self::Params) -> Option<String> {
        None
    }
    /// Runs after a complete unwind; idempotent, retried until it succeeds.
    fn unwound(_cx: StepCx<C, Self::Params>, _failure: Failure) -> BoxFut<Result<(), StepError>> {
        Box::pin(async { Ok(()) })
    }
}

/// What a step sees.
pub struct StepCx<C, P> {
    /// The shared context of every saga of the engine (the conductor).
    pub ctx: Arc<C>,
    /// The saga's parameters.
    pub params: Arc<P>,
    /// The saga's id.
    pub saga_id: Arc<str>,
    /// This step's name.
    pub step: &'static str,
    /// When this step's action first began (earlier than now after a
    /// resume): deadlines count from here.
    pub started_at: Timestamp,
    outputs: Arc<BTreeMap<&'static str, Value>>,
    engine: Engine<C>,
    slot: Arc<Slot>,
}

impl<C, P> Clone for StepCx<C, P> {
    fn clone(&self) -> Self {
        StepCx {
            ctx: self.ctx.clone(),
            params: self.params.clone(),
            saga_id: self.saga_id.clone(),
            step: self.step,
            started_at: self.started_at,
            outputs: self.outputs.clone(),
            engine: self.engine.clone(),
            slot: self.slot.clone(),
        }
    }
}

/// A saga's permit to run (the engine runs at most
/// [`EngineOptions::concurrency`] sagas at once); given back while the saga
/// only waits.
struct Slot {
    sem: Arc<tokio::sync::Semaphore>,
    permit: Mutex<Option<tokio::sync::OwnedSemaphorePermit>>,
}

impl Slot {
    async fn acquire(sem: Arc<tokio::sync::Semaphore>) -> Arc<Slot> {
        let permit = sem.clone().acquire_owned().await.ok();
        Arc::new(Slot {
            sem,
            permit: Mutex::new(permit),
        })
    }

    fn release(&self) {
        lock(&self.permit).take();
    }

    async fn reacquire(&self) {
        if lock(&self.permit).is_some() {
            return;
        }
        let p = self.sem.clone().acquire_owned().await.ok();
        *lock(&self.permit) = p;
    }
}

/// A registered wait for one signal, across several timed waits (see
/// [`StepCx::waiter`]).
pub struct SignalWait<'a, C, P> {
    cx: &'a StepCx<C, P>,
    key: String,
    rx: Option<oneshot::Receiver<Value>>,
    checked: bool,
}

impl<C: Send + Sync + 'static, P> SignalWait<'_, C, P> {
    /// Waits until the signal arrives (`Some`) or `until` (`None`). The
    /// saga gives its permit back meanwhile.
    pub async fn wait(&mut self, until: tokio::time::Instant) -> Result<Option<Value>, StepError> {
        let engine = &self.cx.engine;
        if self.rx.is_none() {
            let (tx, rx) = oneshot::channel();
            lock(&engine.inner.waiters)
                .entry(self.key.clone())
                .or_default()
                .push(tx);
            self.rx = Some(rx);
        }
        if !self.checked {
            // It may have come before we listened.
            self.checked = true;
            if let Some(p) = store::get_signal(engine.inner.db.pool(), &self.key)
                .await
                .map_err(StepError::from)?
            {
                return Ok(Some(parse_signal(&self.key, &p)));
            }
        }
        self.cx.slot.release();
        let rx = self.rx.as_mut().expect("registered above");
        let got = tokio::select! {
            v = rx => {
                self.rx = None;
                match v {
                    Ok(v) => Some(v),
                    Err(_) => {
                        // Dropped unsent: listen (and look) again next time.
                        self.checked = false;
                        None
                    }
                }
            }
            _ = tokio::time::sleep_until(until) => None,
        };
        self.cx.slot.reacquire().await;
        Ok(got)
    }
}

impl<C: Send + Sync + 'static, P> StepCx<C, P> {
    /// The output of an earlier step.
    pub fn output<T: DeserializeOwned>(&self, step: &str) -> Result<T, StepError> {
        let v = self.outputs.get(step).ok_or_else(|| {
            StepError::Fail(Failure::new(
                "An internal error occurred.",
                format!(
                    "saga step {} reads the output of {step}, which has none",
                    self.step
                ),
            ))
        })?;
        serde_json::from_value(v.clone()).map_err(|e| {
            StepError::Fail(Failure::new(
                "An internal error occurred.",
                format!("decoding the output of {step}: {e}"),
            ))
        })
    }

    /// Whether an earlier step produced an output.
    pub fn has_output(&self, step: &str) -> bool {
        self.outputs.contains_key(step)
    }

    /// The engine (to create follow-up sagas, send signals).
    pub fn engine(&self) -> &Engine<C> {
        &self.engine
    }

    /// Waits for signal `key` until `until`; `None` when it did not come.
    pub async fn wait_signal(
        &self,
        key: &str,
        until: tokio::time::Instant,
    ) -> Result<Option<Value>, StepError> {
        self.waiter(key).wait(until).await
    }

    /// Starts listening for signal `key`, for waits in a loop (the database
    /// is looked at once; later arrivals are delivered).
    pub fn waiter(&self, key: &str) -> SignalWait<'_, C, P> {
        SignalWait {
            cx: self,
            key: key.to_owned(),
            rx: None,
            checked: false,
        }
    }

    /// Sleeps for `d` without holding the saga's permit.
    pub async fn idle(&self, d: Duration) {
        self.slot.release();
        tokio::time::sleep(d).await;
        self.slot.reacquire().await;
    }
}

/// Test hooks, for the generic saga tests (Omicron's): inject a failure at a
/// chosen step, or run every action and undo twice.
#[derive(Default)]
pub struct TestHooks {
    /// `(kind, step)`: fail there instead of running the action.
    pub fail_at: Mutex<Option<(String, String)>>,
    /// Run each action and each undo twice in a row.
    pub repeat: AtomicBool,
    /// Actions whose second run returned another output than the first:
    /// `kind/step: first ≠ second`.
    pub mismatches: Mutex<Vec<String>>,
    /// Every action and undo run, in order (`kind/step`, `kind/step undo`).
    pub trace: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TestHooks {
    fn injected(&self, kind: &str, step: &str) -> bool {
        lock(&self.fail_at)
            .as_ref()
            .is_some_and(|(k, s)| k == kind && s == step)
    }

    fn repeating(&self) -> bool {
        self.repeat.load(Ordering::Relaxed)
    }

    fn record(&self, what: String) {
        let mut t = lock(&self.trace);
        if t.len() < 100_000 {
            t.push(what);
        }
    }

    /// The trace so far.
    pub fn trace(&self) -> Vec<String> {
        lock(&self.trace).clone()
    }

    /// The mismatches so far.
    pub fn mismatches(&self) -> Vec<String> {
        lock(&self.mismatches).clone()
    }
}

/// How the engine behaves.
#[derive(Clone)]
pub struct EngineOptions {
    /// This conductor's name in the `owner` column (unique per process).
    pub owner: String,
    /// How long a claim on a saga holds without renewal.
    pub lease: Duration,
    /// Between two looks for sagas to adopt.
    pub adopt_interval: Duration,
    /// Between two looks for signals other processes stored.
    pub signal_poll: Duration,
    /// Sagas running at once (waiting ones not counted); the others queue.
    pub concurrency: usize,
    /// Test hooks.
    pub hooks: Arc<TestHooks>,
}

impl EngineOptions {
    /// Defaults: a fresh owner name, 20 s leases.
    pub fn new(lease: Duration) -> Self {
        EngineOptions {
            owner: format!("conductor-{}", uuid::Uuid::new_v4().simple()),
            lease,
            adopt_interval: (lease / 2).max(Duration::from_millis(100)),
            signal_poll: Duration::from_millis(200),
            concurrency: 32,
            hooks: Arc::default(),
        }
    }
}

trait Runner<C>: Send + Sync {
    fn run(&self, engine: Engine<C>, row: SagaRow) -> BoxFut<()>;
}

struct KindRunner<K>(PhantomData<fn() -> K>);

impl<C: Send + Sync + 'static, K: SagaKind<C>> Runner<C> for KindRunner<K> {
    fn run(&self, engine: Engine<C>, row: SagaRow) -> BoxFut<()> {
        Box::pin(execute::<C, K>(engine, row))
    }
}

/// Builds an [`Engine`].
pub struct EngineBuilder<C> {
    db: Db,
    ctx: Arc<C>,
    options: EngineOptions,
    kinds: HashMap<&'static str, Arc<dyn Runner<C>>>,
}

impl<C: Send + Sync + 'static> EngineBuilder<C> {
    /// An engine over `db` with `ctx` for its steps.
    pub fn new(db: Db, ctx: Arc<C>, options: EngineOptions) -> Self {
        EngineBuilder {
            db,
            ctx,
            options,
            kinds: HashMap::new(),
        }
    }

    /// Registers a kind of saga.
    #[must_use]
    pub fn register<K: SagaKind<C>>(mut self) -> Self {
        self.kinds
            .insert(K::KIND, Arc::new(KindRunner::<K>(PhantomData)));
        self
    }

    /// The engine, not started (see [`Engine::start`]).
    pub fn build(self) -> Engine<C> {
        let (stop, _) = watch::channel(false);
        let permits = Arc::new(tokio::sync::Semaphore::new(self.options.concurrency.max(1)));
        Engine {
            inner: Arc::new(Inner {
                db: self.db,
                ctx: self.ctx,
                options: self.options,
                kinds: self.kinds,
                waiters: Mutex::default(),
                running: Mutex::default(),
                tasks: Mutex::default(),
                stop,
                permits,
            }),
        }
    }
}

/// Runs sagas: see the module docs. Cheap to clone.
pub struct Engine<C> {
    inner: Arc<Inner<C>>,
}

impl<C> Clone for Engine<C> {
    fn clone(&self) -> Self {
        Engine {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<C> {
    db: Db,
    ctx: Arc<C>,
    options: EngineOptions,
    kinds: HashMap<&'static str, Arc<dyn Runner<C>>>,
    waiters: Mutex<HashMap<String, Vec<oneshot::Sender<Value>>>>,
    running: Mutex<HashMap<String, AbortHandle>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    stop: watch::Sender<bool>,
    permits: Arc<tokio::sync::Semaphore>,
}

/// Whether the engine still owns a saga after a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owned {
    Yes,
    Lost,
}

/// One record to write for a saga.
enum Write<'a> {
    Step {
        step: usize,
        name: &'a str,
        state: &'a str,
        output: Option<&'a str>,
        started_at: Timestamp,
    },
    State {
        state: &'a str,
        error: Option<&'a str>,
    },
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

impl<C: Send + Sync + 'static> Engine<C> {
    /// The owner name of this engine.
    pub fn owner(&self) -> &str {
        &self.inner.options.owner
    }

    /// The shared context.
    pub fn ctx(&self) -> &Arc<C> {
        &self.inner.ctx
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// The test hooks.
    pub fn hooks(&self) -> &Arc<TestHooks> {
        &self.inner.options.hooks
    }

    fn lease_until(&self) -> Timestamp {
        Timestamp(Timestamp::now().0 + chrono_duration(self.inner.options.lease))
    }

    fn stopping(&self) -> bool {
        *self.inner.stop.borrow()
    }

    /// Starts the background work: renewing leases, adopting sagas whose
    /// owner went away (at once, then every `adopt_interval`), and polling
    /// signals.
    pub fn start(&self) {
        let mut tasks = lock(&self.inner.tasks);
        let e = self.clone();
        tasks.push(tokio::spawn(async move { e.lease_loop().await }));
        let e = self.clone();
        tasks.push(tokio::spawn(async move { e.adopt_loop().await }));
        let e = self.clone();
        tasks.push(tokio::spawn(async move { e.signal_loop().await }));
    }

    /// Stops every saga of this engine where it is and releases their
    /// leases, so that another conductor (or the next start) carries on at
    /// once.
    pub async fn shutdown(&self) {
        self.halt();
        if let Err(e) = store::release_leases(self.inner.db.pool(), self.owner()).await {
            tracing::warn!(error = ?e, "saga leases not released; they will expire");
        }
    }

    /// Stops everything at once without releasing leases, as a crash would
    /// (for tests).
    pub fn halt(&self) {
        let _ = self.inner.stop.send(true);
        for t in lock(&self.inner.tasks).drain(..) {
            t.abort();
        }
        for (_, h) in lock(&self.inner.running).drain() {
            h.abort();
        }
    }

    /// How many sagas this engine is running now.
    pub fn running(&self) -> usize {
        lock(&self.inner.running).len()
    }

    fn row<K: SagaKind<C>>(&self, id: &str, params: &K::Params) -> Result<SagaRow> {
        let now = Timestamp::now();
        Ok(SagaRow {
            id: id.to_owned(),
            kind: K::KIND.to_owned(),
            target: K::target(params),
            params: serde_json::to_string(params)
                .map_err(|e| Error::internal("encoding saga parameters", e))?,
            state: state::RUNNING.to_owned(),
            error: None,
            owner: Some(self.owner().to_owned()),
            lease_until: self.lease_until(),
            generation: 0,
            created_at: now,
            updated_at: now,
        })
    }

    /// Creates saga `id` of kind `K` and starts it, unless a saga with this
    /// id exists (then nothing happens: creating is idempotent). True if
    /// created.
    pub async fn create<K: SagaKind<C>>(&self, id: &str, params: &K::Params) -> Result<bool> {
        let row = self.row::<K>(id, params)?;
        let created = store::insert_saga(self.inner.db.pool(), &row).await?;
        if created {
            self.spawn(row);
        }
        Ok(created)
    }

    /// Starts sagas created by [`Engine::create_many_deferred`].
    pub fn launch(&self, rows: Vec<SagaRow>) {
        for r in rows {
            self.spawn(r);
        }
    }

    /// Creates several sagas of kind `K` in one transaction without starting
    /// them; returns the new ones, for [`Engine::launch`]. Should this
    /// process die before launching them, another engine adopts them once
    /// their lease runs out.
    pub async fn create_many_deferred<K: SagaKind<C>>(
        &self,
        sagas: &[(String, K::Params)],
    ) -> Result<Vec<SagaRow>> {
        let rows = sagas
            .iter()
            .map(|(id, p)| self.row::<K>(id, p))
            .collect::<Result<Vec<_>>>()?;
        self.inner
            .db
            .retry(|| async {
                let mut tx = self.inner.db.begin().await?;
                let mut created = Vec::new();
                for r in &rows {
                    if store::insert_saga(&mut *tx, r).await? {
                        created.push(r.clone());
                    }
                }
                tx.commit().await?;
                Ok(created)
            })
            .await
    }

    fn spawn(&self, row: SagaRow) {
        if self.stopping() {
            return;
        }
        let Some(runner) = self.inner.kinds.get(row.kind.as_str()).cloned() else {
            tracing::error!(saga = %row.id, kind = %row.kind, "no such kind of saga here; not running it");
            return;
        };
        let mut running = lock(&self.inner.running);
        if running.contains_key(&row.id) {
            return;
        }
        let id = row.id.clone();
        let engine = self.clone();
        let done = self.clone();
        let done_id = id.clone();
        let handle = tokio::spawn(async move {
            runner.run(engine, row).await;
            lock(&done.inner.running).remove(&done_id);
        });
        running.insert(id, handle.abort_handle());
    }

    /// Waits until saga `id` is done or failed; returns its final row, or
    /// `None` on timeout.
    pub async fn wait_finished(&self, id: &str, timeout: Duration) -> Result<Option<SagaRow>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(row) = store::get_saga(self.inner.db.pool(), id).await?
                && (row.state == state::DONE || row.state == state::FAILED)
            {
                return Ok(Some(row));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // ---- signals ----------------------------------------------------------

    /// Stores signal `key` and wakes its waiters in this process (waiters
    /// elsewhere see it within `signal_poll`).
    pub async fn signal(&self, key: &str, payload: &Value) -> Result<()> {
        store::put_signal(self.inner.db.pool(), key, &payload.to_string()).await?;
        self.deliver(key, payload);
        Ok(())
    }

    /// Forgets signal `key` (before asking for a new report with that key).
    pub async fn clear_signal(&self, key: &str) -> Result<()> {
        store::delete_signal(self.inner.db.pool(), key).await
    }

    fn deliver(&self, key: &str, payload: &Value) {
        if let Some(waiters) = lock(&self.inner.waiters).remove(key) {
            for w in waiters {
                let _ = w.send(payload.clone());
            }
        }
    }

    async fn signal_loop(&self) {
        let every = self.inner.options.signal_poll;
        loop {
            tokio::time::sleep(every).await;
            let keys: Vec<String> = {
                let mut w = lock(&self.inner.waiters);
                w.retain(|_, senders| {
                    senders.retain(|s| !s.is_closed());
                    !senders.is_empty()
                });
                w.keys().cloned().collect()
            };
            for chunk in keys.chunks(200) {
                match store::signals(self.inner.db.pool(), chunk).await {
                    Ok(found) => {
                        for (k, p) in found {
                            self.deliver(&k, &parse_signal(&k, &p));
                        }
                    }
                    Err(e) => tracing::debug!(error = ?e, "polling saga signals failed"),
                }
            }
        }
    }

    // ---- leases -----------------------------------------------------------

    async fn lease_loop(&self) {
        let every = (self.inner.options.lease / 3).max(Duration::from_millis(50));
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) =
                store::renew_leases(self.inner.db.pool(), self.owner(), self.lease_until()).await
            {
                tracing::warn!(error = ?e, "renewing saga leases failed");
            }
        }
    }

    async fn adopt_loop(&self) {
        loop {
            if let Err(e) = self.adopt_expired().await {
                tracing::warn!(error = ?e, "looking for sagas to adopt failed");
            }
            tokio::time::sleep(self.inner.options.adopt_interval).await;
        }
    }

    /// Adopts the sagas whose owner stopped renewing its lease; returns how
    /// many.
    pub async fn adopt_expired(&self) -> Result<usize> {
        let mut adopted = 0;
        loop {
            let now = Timestamp::now();
            let expired = store::expired_sagas(self.inner.db.pool(), now, 200).await?;
            let mut taken = 0;
            for (id, generation) in &expired {
                if lock(&self.inner.running).contains_key(id) {
                    continue;
                }
                if let Some(row) = store::adopt(
                    self.inner.db.pool(),
                    id,
                    *generation,
                    self.owner(),
                    now,
                    self.lease_until(),
                )
                .await?
                {
                    tracing::info!(saga = %row.id, kind = %row.kind, state = %row.state, "adopting a saga whose owner went away");
                    self.spawn(row);
                    taken += 1;
                }
            }
            adopted += taken;
            if expired.len() < 200 || taken == 0 {
                return Ok(adopted);
            }
        }
    }

    // ---- the log ------------------------------------------------------------

    /// Writes `writes` for saga `id` in one transaction after checking that
    /// this engine still owns it; retries until written, lost, or stopped.
    async fn write(&self, id: &str, writes: &[Write<'_>]) -> Owned {
        let mut delay = BACKOFF_MIN;
        loop {
            if self.stopping() {
                return Owned::Lost;
            }
            match self.try_write(id, writes).await {
                Ok(o) => return o,
                Err(e) => {
                    tracing::warn!(saga = id, error = ?e, "writing the saga log failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    async fn try_write(&self, id: &str, writes: &[Write<'_>]) -> Result<Owned> {
        let mut tx = self.inner.db.begin().await?;
        if !store::touch_owned(&mut tx, id, self.owner(), self.lease_until()).await? {
            return Ok(Owned::Lost);
        }
        apply(&mut tx, id, writes).await?;
        tx.commit().await?;
        Ok(Owned::Yes)
    }
}

async fn apply(conn: &mut AnyConnection, id: &str, writes: &[Write<'_>]) -> Result<()> {
    for w in writes {
        match w {
            Write::Step {
                step,
                name,
                state,
                output,
                started_at,
            } => {
                store::put_step(conn, id, *step as i64, name, state, *output, *started_at).await?;
            }
            Write::State { state, error } => store::set_state(conn, id, state, *error).await?,
        }
    }
    Ok(())
}

fn parse_signal(key: &str, payload: &str) -> Value {
    serde_json::from_str(payload).unwrap_or_else(|e| {
        tracing::error!(key, error = %e, "a saga signal is not JSON");
        Value::Null
    })
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::milliseconds(d.as_millis().min(i64::MAX as u128) as i64)
}

/// Where a saga stands, from its log.
struct Progress {
    /// Per step: its recorded state and start time.
    records: Vec<Option<(String, Timestamp)>>,
    outputs: BTreeMap<&'static str, Value>,
}

async fn execute<C: Send + Sync + 'static, K: SagaKind<C>>(engine: Engine<C>, row: SagaRow) {
    let span = tracing::info_span!("saga", id = %row.id, kind = K::KIND);
    run_saga::<C, K>(engine, row).instrument(span).await
}

async fn run_saga<C: Send + Sync + 'static, K: SagaKind<C>>(engine: Engine<C>, row: SagaRow) {
    let steps = K::steps();
    let params: Arc<K::Params> = match serde_json::from_str(&row.params) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            tracing::error!(error = %e, "saga parameters unreadable; marking it failed");
            let error = serde_json::to_string(&Failure::new(
                "An internal error occurred.",
                format!("saga parameters unreadable: {e}"),
            ))
            .unwrap_or_default();
            engine
                .write(
                    &row.id,
                    &[Write::State {
                        state: state::FAILED,
                        error: Some(&error),
                    }],
                )
                .await;
            return;
        }
    };
    let slot = Slot::acquire(engine.inner.permits.clone()).await;
    let Some(mut progress) = load_progress(&engine, &row.id, &steps).await else {
        return;
    };
    let saga_id: Arc<str> = Arc::from(row.id.as_str());
    let cx = |step: &'static str,
              started_at: Timestamp,
              outputs: &BTreeMap<&'static str, Value>| StepCx {
        ctx: engine.inner.ctx.clone(),
        params: params.clone(),
        saga_id: saga_id.clone(),
        step,
        started_at,
        outputs: Arc::new(outputs.clone()),
        engine: engine.clone(),
        slot: slot.clone(),
    };
    let hooks = engine.inner.options.hooks.clone();

    let mut saga_state = row.state.clone();
    let mut failure: Option<Failure> = row
        .error
        .as_deref()
        .and_then(|e| serde_json::from_str(e).ok());

    // Forward.
    if saga_state == state::RUNNING {
        let first = progress
            .records
            .iter()
            .position(|r| r.as_ref().is_none_or(|(s, _)| s != step_state::DONE))
            .unwrap_or(steps.len());
        if first == steps.len() {
            // Every step done but the saga not marked: finish it.
            if engine
                .write(
                    &row.id,
                    &[Write::State {
                        state: state::DONE,
                        error: None,
                    }],
                )
                .await
                == Owned::Lost
            {
                return;
            }
            tracing::info!("saga done");
            return;
        }
        let mut started_at = match &progress.records[first] {
            Some((_, t)) => *t,
            None => {
                let now = Timestamp::now();
                if engine
                    .write(
                        &row.id,
                        &[Write::Step {
                            step: first,
                            name: steps[first].name,
                            state: step_state::STARTED,
                            output: None,
                            started_at: now,
                        }],
                    )
                    .await
                    == Owned::Lost
                {
                    return;
                }
                now
            }
        };
        let mut i = first;
        let mut delay = BACKOFF_MIN;
        while i < steps.len() {
            let step = &steps[i];
            let c = cx(step.name, started_at, &progress.outputs);
            let result = if hooks.injected(K::KIND, step.name) {
                Err(StepError::Fail(Failure::new(
                    "An injected failure.",
                    format!("failure injected at {}/{}", K::KIND, step.name),
                )))
            } else {
                hooks.record(format!("{}/{}", K::KIND, step.name));
                let first_run = (step.action)(c.clone()).await;
                if hooks.repeating() && first_run.is_ok() {
                    hooks.record(format!("{}/{}", K::KIND, step.name));
                    let second = (step.action)(c).await;
                    if let (Ok(a), Ok(b)) = (&first_run, &second)
                        && a != b
                    {
                        lock(&hooks.mismatches).push(format!(
                            "{}/{}: {a} ≠ {b}",
                            K::KIND,
                            step.name
                        ));
                    }
                    second
                } else {
                    first_run
                }
            };
            match result {
                Ok(out) => {
                    delay = BACKOFF_MIN;
                    let text = out.to_string();
                    let now = Timestamp::now();
                    let mut writes = vec![Write::Step {
                        step: i,
                        name: step.name,
                        state: step_state::DONE,
                        output: Some(&text),
                        started_at,
                    }];
                    if i + 1 < steps.len() {
                        writes.push(Write::Step {
                            step: i + 1,
                            name: steps[i + 1].name,
                            state: step_state::STARTED,
                            output: None,
                            started_at: now,
                        });
                    } else {
                        writes.push(Write::State {
                            state: state::DONE,
                            error: None,
                        });
                    }
                    if engine.write(&row.id, &writes).await == Owned::Lost {
                        return;
                    }
                    progress.outputs.insert(step.name, out);
                    progress.records[i] = Some((step_state::DONE.into(), started_at));
                    started_at = now;
                    i += 1;
                }
                Err(StepError::Transient(why)) => {
                    tracing::warn!(step = step.name, %why, "saga step hit a transient error; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(BACKOFF_MAX);
                    if engine.stopping() {
                        return;
                    }
                }
                Err(StepError::Fail(mut f)) => {
                    f.step = step.name.to_owned();
                    tracing::info!(step = step.name, message = %f.message, details = %f.details, "saga step failed; unwinding");
                    let error = serde_json::to_string(&f).unwrap_or_default();
                    if engine
                        .write(
                            &row.id,
                            &[
                                Write::Step {
                                    step: i,
                                    name: step.name,
                                    state: step_state::FAILED,
                                    output: None,
                                    started_at,
                                },
                                Write::State {
                                    state: state::UNWINDING,
                                    error: Some(&error),
                                },
                            ],
                        )
                        .await
                        == Owned::Lost
                    {
                        return;
                    }
                    progress.records[i] = Some((step_state::FAILED.into(), started_at));
                    failure = Some(f);
                    saga_state = state::UNWINDING.into();
                    break;
                }
            }
        }
        if saga_state == state::RUNNING {
            tracing::info!("saga done");
            return;
        }
    }

    // Backward.
    if saga_state == state::UNWINDING {
        for j in (0..steps.len()).rev() {
            let Some((s, started_at)) = progress.records[j].clone() else {
                continue;
            };
            if s != step_state::DONE {
                continue;
            }
            let step = &steps[j];
            if let Some(undo) = step.undo {
                let mut delay = BACKOFF_MIN;
                loop {
                    let c = cx(step.name, started_at, &progress.outputs);
                    hooks.record(format!("{}/{} undo", K::KIND, step.name));
                    let mut r = undo(c.clone()).await;
                    if r.is_ok() && hooks.repeating() {
                        hooks.record(format!("{}/{} undo", K::KIND, step.name));
                        r = undo(c).await;
                    }
                    match r {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(step = step.name, error = ?e, "undo failed; retrying");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(BACKOFF_MAX);
                            if engine.stopping() {
                                return;
                            }
                        }
                    }
                }
            }
            if engine
                .write(
                    &row.id,
                    &[Write::Step {
                        step: j,
                        name: step.name,
                        state: step_state::UNDONE,
                        output: None,
                        started_at,
                    }],
                )
                .await
                == Owned::Lost
            {
                return;
            }
            progress.records[j] = Some((step_state::UNDONE.into(), started_at));
        }
        if engine
            .write(
                &row.id,
                &[Write::State {
                    state: state::UNWOUND,
                    error: None,
                }],
            )
            .await
            == Owned::Lost
        {
            return;
        }
        saga_state = state::UNWOUND.into();
    }

    // The hook.
    if saga_state == state::UNWOUND {
        let f = failure.unwrap_or_else(|| Failure::new("An unknown failure.", ""));
        let mut delay = BACKOFF_MIN;
        loop {
            let c = cx("(unwound)", Timestamp::now(), &progress.outputs);
            hooks.record(format!("{}/(unwound)", K::KIND));
            match K::unwound(c, f.clone()).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = ?e, "the saga's unwound hook failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(BACKOFF_MAX);
                    if engine.stopping() {
                        return;
                    }
                }
            }
        }
        if engine
            .write(
                &row.id,
                &[Write::State {
                    state: state::FAILED,
                    error: None,
                }],
            )
            .await
            == Owned::Lost
        {
            return;
        }
        tracing::info!(step = %f.step, message = %f.message, "saga unwound");
    }
}

async fn load_progress<C: Send + Sync + 'static, P>(
    engine: &Engine<C>,
    id: &str,
    steps: &[Step<C, P>],
) -> Option<Progress> {
    let mut delay = BACKOFF_MIN;
    let rows = loop {
        match store::saga_steps(engine.inner.db.pool(), id).await {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!(error = ?e, "reading the saga log failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(BACKOFF_MAX);
                if engine.stopping() {
                    return None;
                }
            }
        }
    };
    let mut p = Progress {
        records: vec![None; steps.len()],
        outputs: BTreeMap::new(),
    };
    for r in rows {
        let Some(i) = usize::try_from(r.step).ok().filter(|i| *i < steps.len()) else {
            tracing::error!(
                step = r.step,
                "the saga log has a step this saga does not have"
            );
            continue;
        };
        if steps[i].name != r.name {
            tracing::error!(step = r.step, logged = %r.name, known = steps[i].name, "the saga log names another step");
        }
        if let Some(o) = &r.output
            && r.state != step_state::FAILED
        {
            match serde_json::from_str(o) {
                Ok(v) => {
                    p.outputs.insert(steps[i].name, v);
                }
                Err(e) => tracing::error!(step = r.step, error = %e, "a step output is not JSON"),
            }
        }
        p.records[i] = Some((r.state, r.started_at));
    }
    Some(p)
}
