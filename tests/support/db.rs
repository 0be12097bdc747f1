//! A fresh PostgreSQL database per test, on the server of
//! `PULSEHUB_TEST_DATABASE_URL` (any database on it serves to create the
//! test ones), dropped when the test is done with it.

use pulsehub::store::postgres::PgStore;
use sqlx::{Connection as _, Executor as _, PgConnection};

use super::services::{admin_database_url, unique};

/// An empty database `pulsehub_test_…` of the test's own, dropped (its
/// connections ended) when the value is. `pulsehub run` given its
/// [`url`](TestDb::url) migrates it itself.
pub struct TestDb {
    server: String,
    name: String,
    url: String,
}

impl TestDb {
    /// Creates the database.
    pub async fn create() -> TestDb {
        let server = admin_database_url();
        let name = unique("pulsehub_test");
        let mut admin = PgConnection::connect(&server)
            .await
            .expect("PostgreSQL reachable at PULSEHUB_TEST_DATABASE_URL");
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create the test database");
        admin.close().await.expect("close the admin connection");
        let url = database_url(&server, &name);
        TestDb { server, name, url }
    }

    /// The URL of the database.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop runs inside the test's runtime, which cannot be blocked on;
        // a thread with its own runtime does the cleanup. FORCE ends the
        // connections still open (a store's pool, a killed process's).
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            runtime.block_on(async move {
                let mut admin = PgConnection::connect(&server).await?;
                admin
                    .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                    .await?;
                admin.close().await
            })
        });
        if let Ok(Err(e)) = cleanup.join() {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

/// A fresh database with PulseHub's migrations applied and a [`PgStore`]
/// (4 connections) on it: for the tests of the store itself.
pub struct StoreDb {
    // Dropped first: the database goes (FORCE ends the pool's connections)
    // before the pool does.
    _db: TestDb,
    /// The store on the database.
    pub store: PgStore,
}

impl StoreDb {
    /// Creates and migrates the database.
    pub async fn new() -> StoreDb {
        let db = TestDb::create().await;
        let store = PgStore::connect(db.url(), 4).expect("valid URL");
        store.migrate().await.expect("migrations apply");
        StoreDb { _db: db, store }
    }
}

/// `server` with its database replaced by `name`.
pub fn database_url(server: &str, name: &str) -> String {
    let (base, query) = match server.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (server, None),
    };
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    let mut url = format!("{}/{name}", &base[..path]);
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    url
}
