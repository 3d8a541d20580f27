//! The saga engine on both databases, with a toy saga whose actions change
//! a pretend outside world (a set of strings): runs, unwinds from every
//! step, runs every action twice, resumes after a crash in another engine,
//! retries transient errors, and hands signals across engines.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mica_controller::config::Database;
use mica_controller::db::sagas::state;
use mica_controller::db::{Backend, Db};
use mica_controller::saga::{
    BoxFut, Engine, EngineBuilder, EngineOptions, Failure, SagaKind, Step, StepCx, StepError,
    output,
};
use mica_controller::testing::TestDb;
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Default)]
struct World {
    effects: Mutex<BTreeSet<String>>,
    transient_left: AtomicU32,
    undo_blocked: std::sync::atomic::AtomicBool,
}

impl World {
    fn effects(&self) -> BTreeSet<String> {
        self.effects.lock().unwrap().clone()
    }
}

#[derive(Serialize, Deserialize)]
struct ToyParams {
    name: String,
}

struct Toy;

type Cx = StepCx<World, ToyParams>;

async fn ids(_cx: Cx) -> Result<serde_json::Value, StepError> {
    output(&uuid::Uuid::new_v4().to_string())
}

async fn reserve(cx: Cx) -> Result<serde_json::Value, StepError> {
    if cx
        .ctx
        .transient_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return Err(StepError::Transient("the world is busy".into()));
    }
    let token: String = cx.output("ids")?;
    cx.ctx
        .effects
        .lock()
        .unwrap()
        .insert(format!("reserve:{}:{token}", cx.params.name));
    output(&token)
}

async fn unreserve(cx: Cx) -> Result<(), StepError> {
    if cx.ctx.undo_blocked.load(Ordering::SeqCst) {
        return Err(StepError::Transient("the world cannot undo yet".into()));
    }
    let token: String = cx.output("reserve")?;
    cx.ctx
        .effects
        .lock()
        .unwrap()
        .remove(&format!("reserve:{}:{token}", cx.params.name));
    Ok(())
}

async fn wait(cx: Cx) -> Result<serde_json::Value, StepError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    match cx
        .wait_signal(&format!("toy:{}", cx.params.name), deadline)
        .await?
    {
        Some(v) if v["ok"] == json!(true) => output(&v),
        Some(v) => Err(Failure::retryable("the world said no", v.to_string()).into()),
        None => Err(Failure::new("no answer", "").into()),
    }
}

async fn commit(cx: Cx) -> Result<serde_json::Value, StepError> {
    cx.ctx
        .effects
        .lock()
        .unwrap()
        .insert(format!("commit:{}", cx.params.name));
    output(&())
}

async fn uncommit(cx: Cx) -> Result<(), StepError> {
    cx.ctx
        .effects
        .lock()
        .unwrap()
        .remove(&format!("commit:{}", cx.params.name));
    Ok(())
}

impl SagaKind<World> for Toy {
    const KIND: &'static str = "toy";
    type Params = ToyParams;

    fn steps() -> Vec<Step<World, ToyParams>> {
        vec![
            Step::forward("ids", |cx| Box::pin(ids(cx))),
            Step::new(
                "reserve",
                |cx| Box::pin(reserve(cx)),
                |cx| Box::pin(unreserve(cx)),
            ),
            Step::forward("wait", |cx| Box::pin(wait(cx))),
            Step::new(
                "commit",
                |cx| Box::pin(commit(cx)),
                |cx| Box::pin(uncommit(cx)),
            ),
        ]
    }

    fn target(p: &ToyParams) -> Option<String> {
        Some(p.name.clone())
    }

    fn unwound(cx: Cx, failure: Failure) -> BoxFut<Result<(), StepError>> {
        Box::pin(async move {
            cx.ctx
                .effects
                .lock()
                .unwrap()
                .insert(format!("unwound:{}:{}", cx.params.name, failure.step));
            Ok(())
        })
    }
}

const STEPS: [&str; 4] = ["ids", "reserve", "wait", "commit"];

async fn database(backend: Backend) -> (TestDb, Db) {
    let t = TestDb::create(backend).await;
    let db = Db::connect(&Database {
        url: t.url.clone(),
        max_connections: 8,
        ..Database::default()
    })
    .await
    .unwrap();
    db.migrate().await.unwrap();
    (t, db)
}

fn engine(db: &Db, world: &Arc<World>, lease: Duration) -> Engine<World> {
    let mut opts = EngineOptions::new(lease);
    opts.signal_poll = Duration::from_millis(50);
    opts.adopt_interval = Duration::from_millis(100);
    let e = EngineBuilder::new(db.clone(), world.clone(), opts)
        .register::<Toy>()
        .build();
    e.start();
    e
}

async fn finished(e: &Engine<World>, id: &str) -> String {
    e.wait_finished(id, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("saga {id} did not finish"))
        .state
}

async fn runs_to_the_end(backend: Backend) {
    let (_t, db) = database(backend).await;
    let world = Arc::new(World::default());
    let e = engine(&db, &world, Duration::from_secs(10));
    assert!(
        e.create::<Toy>("s1", &ToyParams { name: "a".into() })
            .await
            .unwrap()
    );
    assert!(
        !e.create::<Toy>("s1", &ToyParams { name: "a".into() })
            .await
            .unwrap(),
        "creating twice is harmless"
    );
    e.signal("toy:a", &json!({"ok": true})).await.unwrap();
    assert_eq!(finished(&e, "s1").await, state::DONE);
    let fx = world.effects();
    assert_eq!(fx.len(), 2, "{fx:?}");
    assert!(fx.iter().any(|f| f.starts_with("reserve:a:")));
    assert!(fx.contains("commit:a"));
    assert_eq!(e.running(), 0);
    e.halt();
}

async fn a_failure_at_each_step_unwinds_everything(backend: Backend) {
    let (_t, db) = database(backend).await;
    for (n, step) in STEPS.iter().enumerate() {
        let world = Arc::new(World::default());
        let e = engine(&db, &world, Duration::from_secs(10));
        *e.hooks().fail_at.lock().unwrap() = Some(("toy".into(), step.to_string()));
        let id = format!("fail-{step}");
        let name = format!("n{n}");
        e.signal(&format!("toy:{name}"), &json!({"ok": true}))
            .await
            .unwrap();
        e.create::<Toy>(&id, &ToyParams { name: name.clone() })
            .await
            .unwrap();
        assert_eq!(finished(&e, &id).await, state::FAILED, "failing at {step}");
        assert_eq!(
            world.effects(),
            [format!("unwound:{name}:{step}")].into(),
            "failing at {step} leaves nothing but the hook's mark"
        );
        let trace = e.hooks().trace();
        let ran_reserve = trace.contains(&"toy/reserve".to_string());
        assert_eq!(ran_reserve, n > 1, "{trace:?}");
        assert_eq!(
            trace.contains(&"toy/reserve undo".to_string()),
            ran_reserve,
            "{trace:?}"
        );
        assert!(
            !trace.contains(&"toy/commit undo".to_string()),
            "a failed action is not undone"
        );
        e.halt();
    }
}

async fn each_action_twice_gives_the_same_result(backend: Backend) {
    let (_t, db) = database(backend).await;
    let world = Arc::new(World::default());
    let e = engine(&db, &world, Duration::from_secs(10));
    e.hooks().repeat.store(true, Ordering::Relaxed);
    e.signal("toy:r", &json!({"ok": true})).await.unwrap();
    e.create::<Toy>("twice", &ToyParams { name: "r".into() })
        .await
        .unwrap();
    assert_eq!(finished(&e, "twice").await, state::DONE);
    let trace = e.hooks().trace();
    for s in STEPS {
        assert_eq!(
            trace.iter().filter(|t| **t == format!("toy/{s}")).count(),
            2,
            "{s} ran twice: {trace:?}"
        );
    }
    // Only the step that makes ids may differ (that is why it is a step).
    let mismatches = e.hooks().mismatches();
    assert!(
        mismatches.iter().all(|m| m.starts_with("toy/ids:")),
        "{mismatches:?}"
    );
    let fx = world.effects();
    assert_eq!(fx.len(), 2, "running twice did not double anything: {fx:?}");

    // And unwinding with every undo run twice.
    let world = Arc::new(World::default());
    let e2 = engine(&db, &world, Duration::from_secs(10));
    e2.hooks().repeat.store(true, Ordering::Relaxed);
    e2.signal("toy:r2", &json!({"ok": false})).await.unwrap();
    e2.create::<Toy>("twice-unwind", &ToyParams { name: "r2".into() })
        .await
        .unwrap();
    assert_eq!(finished(&e2, "twice-unwind").await, state::FAILED);
    assert_eq!(world.effects(), ["unwound:r2:wait".to_string()].into());
    e.halt();
    e2.halt();
}

async fn a_crashed_engines_sagas_are_adopted_and_finish(backend: Backend) {
    let (_t, db) = database(backend).await;
    let world = Arc::new(World::default());
    let a = engine(&db, &world, Duration::from_millis(800));
    a.create::<Toy>("crash", &ToyParams { name: "c".into() })
        .await
        .unwrap();
    // Wait until it waits for its signal, then crash.
    for _ in 0..200 {
        if a.hooks().trace().contains(&"toy/wait".to_string()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = world.effects();
    assert_eq!(before.len(), 1, "reserved before the crash: {before:?}");
    a.halt();
    let b = engine(&db, &world, Duration::from_millis(800));
    assert_ne!(a.owner(), b.owner());
    b.signal("toy:c", &json!({"ok": true})).await.unwrap();
    assert_eq!(finished(&b, "crash").await, state::DONE);
    let after = world.effects();
    assert!(
        after.is_superset(&before),
        "the same reservation (the id step was not run again): {after:?}"
    );
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(
        !b.hooks().trace().contains(&"toy/ids".to_string()),
        "ids come from the log"
    );
    b.halt();
}

async fn a_crash_while_unwinding_finishes_the_unwind(backend: Backend) {
    let (_t, db) = database(backend).await;
    let world = Arc::new(World::default());
    world.undo_blocked.store(true, Ordering::SeqCst);
    let a = engine(&db, &world, Duration::from_millis(800));
    a.signal("toy:u", &json!({"ok": false})).await.unwrap();
    a.create::<Toy>("unw", &ToyParams { name: "u".into() })
        .await
        .unwrap();
    // The undo of `reserve` cannot run yet: the saga sits in `unwinding`.
    for _ in 0..500 {
        if a.hooks().trace().contains(&"toy/reserve undo".to_string()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let row = mica_controller::db::sagas::get_saga(db.pool(), "unw")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.state, state::UNWINDING);
    a.halt();
    assert_eq!(world.effects().len(), 1, "still reserved");
    world.undo_blocked.store(false, Ordering::SeqCst);
    let b = engine(&db, &world, Duration::from_millis(800));
    assert_eq!(finished(&b, "unw").await, state::FAILED);
    assert_eq!(world.effects(), ["unwound:u:wait".to_string()].into());
    b.halt();
}

async fn transient_errors_retry_the_step(backend: Backend) {
    let (_t, db) = database(backend).await;
    let world = Arc::new(World::default());
    world.transient_left.store(2, Ordering::SeqCst);
    let e = engine(&db, &world, Duration::from_secs(10));
    e.signal("toy:t", &json!({"ok": true})).await.unwrap();
    e.create::<Toy>("transient", &ToyParams { name: "t".into() })
        .await
        .unwrap();
    assert_eq!(finished(&e, "transient").await, state::DONE);
    let runs = e
        .hooks()
        .trace()
        .iter()
        .filter(|t| *t == "toy/reserve")
        .count();
    assert_eq!(runs, 3, "two transient errors, then success");
    e.halt();
}

async fn signals_reach_waiters_in_other_engines(backend: Backend) {
    let (_t, db) = database(backend).await;
    let world = Arc::new(World::default());
    let waiter = engine(&db, &world, Duration::from_secs(10));
    let other = engine(&db, &world, Duration::from_secs(10));
    waiter
        .create::<Toy>("remote", &ToyParams { name: "x".into() })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    other.signal("toy:x", &json!({"ok": true})).await.unwrap();
    assert_eq!(finished(&waiter, "remote").await, state::DONE);
    waiter.halt();
    other.halt();
}

async fn a_clean_shutdown_hands_sagas_over_at_once(backend: Backend) {
    let (_t, db) = database(backend).await;
    let world = Arc::new(World::default());
    let a = engine(&db, &world, Duration::from_secs(3600));
    a.create::<Toy>("handover", &ToyParams { name: "h".into() })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.shutdown().await;
    let b = engine(&db, &world, Duration::from_secs(3600));
    b.signal("toy:h", &json!({"ok": true})).await.unwrap();
    assert_eq!(
        finished(&b, "handover").await,
        state::DONE,
        "adopted without waiting an hour for the lease"
    );
    b.halt();
}

both_databases!(
    runs_to_the_end,
    a_failure_at_each_step_unwinds_everything,
    each_action_twice_gives_the_same_result,
    a_crashed_engines_sagas_are_adopted_and_finish,
    a_crash_while_unwinding_finishes_the_unwind,
    transient_errors_retry_the_step,
    signals_reach_waiters_in_other_engines,
    a_clean_shutdown_hands_sagas_over_at_once,
);
