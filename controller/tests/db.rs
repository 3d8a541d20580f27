//! The datastore itself: migrations, schema parity between PostgreSQL and
//! SQLite, and the layering rule that SQL lives only under `src/db`.

mod common;

use std::path::{Path, PathBuf};

use mica_controller::config;
use mica_controller::db::{Backend, Db};
use mica_controller::testing::TestDb;

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

async fn connect(t: &TestDb) -> Db {
    let cfg = config::Database {
        url: t.url.clone(),
        ..Default::default()
    };
    Db::connect(&cfg).await.unwrap()
}

#[tokio::test]
async fn both_backends_get_the_same_schema() {
    let pg = TestDb::create(Backend::Postgres).await;
    let lite = TestDb::create(Backend::Sqlite).await;
    let (pg_db, lite_db) = (connect(&pg).await, connect(&lite).await);
    for db in [&pg_db, &lite_db] {
        assert_eq!(
            db.missing_migrations().await.unwrap().len(),
            db.known_migrations().len()
        );
        assert!(mica_controller::server::check_migrated(db).await.is_err());
        db.migrate().await.unwrap();
        // Idempotent.
        db.migrate().await.unwrap();
        assert!(db.missing_migrations().await.unwrap().is_empty());
        mica_controller::server::check_migrated(db).await.unwrap();
    }
    let a = pg_db.schema_outline().await.unwrap();
    let b = lite_db.schema_outline().await.unwrap();
    assert!(a.len() >= 15, "{a:?}");
    assert_eq!(a, b);
    pg_db.close().await;
    lite_db.close().await;
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn migration_folders_match_and_landed_migrations_are_unchanged() {
    let m = manifest().join("migrations");
    let pg = files(&m.join("postgres"));
    let lite = files(&m.join("sqlite"));
    assert_eq!(pg, lite, "every migration exists for both databases");
    // CHECKSUMS pins every landed migration: editing one fails here. A new
    // migration adds its lines (`sha256sum postgres/N_x.sql sqlite/N_x.sql`).
    let pinned = std::fs::read_to_string(m.join("CHECKSUMS")).unwrap();
    let mut pinned_files = Vec::new();
    for line in pinned.lines() {
        let (sum, file) = line.split_once("  ").unwrap();
        let data = std::fs::read(m.join(file)).unwrap();
        use sha2::Digest;
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&data)),
            sum,
            "{file} changed after landing"
        );
        pinned_files.push(file.to_owned());
    }
    for f in &pg {
        assert!(
            pinned_files.contains(&format!("postgres/{f}")),
            "postgres/{f} is not in CHECKSUMS"
        );
        assert!(
            pinned_files.contains(&format!("sqlite/{f}")),
            "sqlite/{f} is not in CHECKSUMS"
        );
    }
}

#[test]
fn sql_lives_only_in_the_datastore() {
    let src = manifest().join("src");
    let mut all = Vec::new();
    common::rust_files(&src, &mut all);
    let needles = [
        "sqlx::query",
        "query_as(",
        "query_scalar(",
        "\"SELECT ",
        "\"INSERT ",
        "\"UPDATE ",
        "\"DELETE FROM",
    ];
    let mut offenders = Vec::new();
    for f in all {
        if f.starts_with(src.join("db")) {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for n in needles {
            if text.contains(n) {
                offenders.push(format!("{} contains {n}", f.display()));
            }
        }
    }
    assert!(offenders.is_empty(), "{offenders:#?}");
}
