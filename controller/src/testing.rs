//! Support for tests and benchmarks: a throw-away database on either
//! backend, and a running controller on ephemeral ports.
//!
//! Each [`TestDb`] is its own database — a fresh PostgreSQL database
//! (`mica_test_<random>`, created through the role of
//! `MICA_TEST_POSTGRES_URL`, default `postgres://mica:mica@127.0.0.1:5432/mica`)
//! or a SQLite file in a temporary folder — and is dropped with the value, so
//! tests run in parallel without seeing each other.

use std::sync::Arc;

use crate::app::{App, ServiceKind, identity};
use crate::config::Config;
use crate::db::{Backend, Db};
use crate::server::{self, Server};

/// The PostgreSQL server tests use.
pub fn postgres_admin_url() -> String {
    std::env::var("MICA_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://mica:mica@127.0.0.1:5432/mica".to_owned())
}

/// A database that exists as long as this value.
pub struct TestDb {
    /// Its URL.
    pub url: String,
    /// Its backend.
    pub backend: Backend,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// Creates an empty database.
    pub async fn create(backend: Backend) -> TestDb {
        sqlx::any::install_default_drivers();
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temporary folder");
                let url = format!("sqlite://{}", dir.path().join("mica.db").display());
                TestDb {
                    url,
                    backend,
                    pg_name: None,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let admin = postgres_admin_url();
                let name = format!("mica_test_{}", uuid::Uuid::new_v4().simple());
                crate::db::create_postgres_database(&admin, &name)
                    .await
                    .unwrap_or_else(|e| panic!("PostgreSQL at {admin} (run `make setup`): {e:?}"));
                let (base, _) = admin.rsplit_once('/').expect("a URL with a database");
                TestDb {
                    url: format!("{base}/{name}"),
                    backend,
                    pg_name: Some(name),
                    _dir: None,
                }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        // Drop runs outside any runtime we could block on: use a thread.
        let admin = postgres_admin_url();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async {
                let _ = crate::db::drop_postgres_database(&admin, &name).await;
            });
        })
        .join();
    }
}

/// The admin password test clouds are bootstrapped with.
pub const ADMIN_PASSWORD: &str = "admin-secret";

/// A controller serving identity, compute, image, placement and network on ephemeral ports of
/// 127.0.0.1, over a fresh database, bootstrapped.
pub struct TestCloud {
    /// The app layer (for direct datastore access in tests).
    pub app: Arc<App>,
    /// The listeners.
    pub server: Option<Server>,
    /// The configuration in force.
    pub config: Arc<Config>,
    /// What bootstrap created.
    pub bootstrap: identity::BootstrapReport,
    /// Holds the image store folder.
    pub store: tempfile::TempDir,
    db: TestDb,
}

impl TestCloud {
    /// Starts a cloud; `tweak` adjusts the configuration first.
    pub async fn start(backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestCloud {
        let db = TestDb::create(backend).await;
        let store = tempfile::tempdir().expect("temporary folder");
        let mut config = Config::default();
        config.database.url = db.url.clone();
        config.database.max_connections = 8;
        config.image.store_dir = store.path().join("images").display().to_string();
        config.api.identity_listen = "127.0.0.1:0".into();
        config.api.image_listen = "127.0.0.1:0".into();
        config.api.placement_listen = "127.0.0.1:0".into();
        config.api.compute_listen = "127.0.0.1:0".into();
        config.api.network_listen = "127.0.0.1:0".into();
        for l in [
            &mut config.api.metadata_listen,
            &mut config.api.console_proxy_listen,
        ] {
            l.clear();
        }
        // A bus of its own, so parallel tests don't see each other's casts.
        config.messaging.transport_url = format!("memory://test-{}", uuid::Uuid::new_v4().simple());
        // Cheap password hashing: tests authenticate a lot.
        config.identity.argon2_memory_kib = 1024;
        config.identity.argon2_iterations = 1;
        tweak(&mut config);
        let config = Arc::new(config);
        let pool = Db::connect(&config.database).await.expect("connecting");
        pool.migrate().await.expect("migrating");
        let app = Arc::new(App::new(pool, config.clone()).expect("the app layer"));
        app.connect_rpc().await.expect("the message bus");
        let listeners = server::bind(&config).await.expect("binding");
        let server = Server::start(app.clone(), listeners).expect("serving");
        let urls: Vec<(ServiceKind, String)> = server
            .addrs
            .iter()
            .map(|(k, a)| (*k, format!("http://{a}{}", k.url_path())))
            .collect();
        let bootstrap = identity::bootstrap(&app, ADMIN_PASSWORD, &urls)
            .await
            .expect("bootstrap");
        crate::app::network::bootstrap_default_network(&app, &bootstrap.admin_project_id)
            .await
            .expect("the default network");
        TestCloud {
            app,
            server: Some(server),
            config,
            bootstrap,
            store,
            db,
        }
    }

    /// `http://127.0.0.1:<port>` of an API.
    pub fn base(&self, kind: ServiceKind) -> String {
        let addr = self
            .server
            .as_ref()
            .and_then(|s| s.addr(kind))
            .expect("the API is served");
        format!("http://{addr}")
    }

    /// The database URL.
    pub fn db_url(&self) -> &str {
        &self.db.url
    }

    /// Stops the listeners and closes the pool.
    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown(std::time::Duration::from_secs(5)).await;
        }
        self.app.db.close().await;
    }
}
