use std::path::Path;

use super::*;
use crate::plugin::fixtures::{QUIET_MANIFEST, QUIET_PLUGIN};
use crate::plugin::{HostLimits, Runtime};

fn package(version: &str) -> Package {
    Package {
        manifest: QUIET_MANIFEST.replace("1.2.3", version),
        component: wat::parse_str(QUIET_PLUGIN).expect("the test component assembles"),
    }
}

async fn manager(dir: &Path) -> (Arc<Chain>, Arc<PluginManager>) {
    let registry = Registry::open(&dir.join("registry")).expect("registry");
    let runtime =
        Runtime::with_cache(HostLimits::default(), &registry.compiled_dir()).expect("runtime");
    let metrics = Arc::new(Metrics::new());
    let chain = Chain::with_metrics(runtime, metrics.clone());
    let audit = Arc::new(audit::FileAudit::new(&dir.join("audit.log")));
    let manager = PluginManager::start(
        chain.clone(),
        registry,
        ManagerConfig::default(),
        audit,
        metrics,
    )
    .await
    .expect("manager starts");
    (chain, manager)
}

fn running(chain: &Chain) -> Vec<(String, String)> {
    chain
        .plugins()
        .iter()
        .map(|p| (p.name().to_owned(), p.version.clone()))
        .collect()
}

const ADMIN: Actor = Actor::Admin {
    operator: None,
    client: None,
};

#[tokio::test]
async fn install_replace_rollback_restart_and_remove() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (chain, manager) = manager(dir.path()).await;
    let (installed, view) = manager
        .install(package("1.2.3"), Some("quiet"), "api", &ADMIN)
        .await
        .expect("installs");
    assert_eq!(installed, Installed::New);
    assert_eq!(view.record.state, PluginState::Active);
    let (installed, _) = manager
        .install(package("1.2.3"), Some("quiet"), "api", &ADMIN)
        .await
        .expect("installs");
    assert_eq!(installed, Installed::Unchanged);
    let (installed, view) = manager
        .install(package("1.2.4"), None, "api", &ADMIN)
        .await
        .expect("replaces");
    assert_eq!(installed, Installed::Replaced);
    assert_eq!(view.record.previous[0].version, "1.2.3");
    assert_eq!(running(&chain), [("quiet".to_owned(), "1.2.4".to_owned())]);

    let view = manager.rollback("quiet", &ADMIN).await.expect("rolls back");
    assert_eq!(view.record.current.version, "1.2.3");
    assert!(view.record.previous.is_empty());
    assert_eq!(running(&chain), [("quiet".to_owned(), "1.2.3".to_owned())]);
    assert!(matches!(
        manager.rollback("quiet", &ADMIN).await,
        Err(ManagerError::NoPrevious(_))
    ));
    assert!(matches!(
        manager.resume("quiet", &ADMIN).await,
        Err(ManagerError::NotQuarantined(_))
    ));
    assert!(matches!(
        manager
            .install(package("1.2.5"), Some("loud"), "api", &ADMIN)
            .await,
        Err(ManagerError::NameMismatch { .. })
    ));
    drop(manager);

    // A restart brings back what ran.
    let (chain, manager) = self::manager(dir.path()).await;
    assert_eq!(running(&chain), [("quiet".to_owned(), "1.2.3".to_owned())]);
    manager.remove("quiet", &ADMIN).await.expect("removes");
    assert!(running(&chain).is_empty());
    assert!(manager.list().is_empty());
    let versions = std::fs::read_dir(dir.path().join("registry/versions"))
        .expect("versions")
        .count();
    assert_eq!(versions, 0, "versions nobody refers to are deleted");

    let audit = std::fs::read_to_string(dir.path().join("audit.log")).expect("audit");
    let actions: Vec<(String, String)> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
        .map(|l| {
            (
                l["action"].as_str().unwrap_or_default().to_owned(),
                l["outcome"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let want = [
        ("install", "ok"),
        ("install", "ok"),
        ("rollback", "ok"),
        ("rollback", "refused"),
        ("resume", "refused"),
        ("install", "refused"),
        ("remove", "ok"),
    ]
    .map(|(a, o)| (a.to_owned(), o.to_owned()));
    assert_eq!(actions, want);
}

#[tokio::test]
async fn an_oversized_or_broken_version_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (chain, manager) = manager(dir.path()).await;
    manager
        .install(package("1.0.0"), None, "api", &ADMIN)
        .await
        .expect("installs");
    let broken = Package {
        manifest: QUIET_MANIFEST.replace("1.2.3", "2.0.0"),
        component: b"\0asm\x0d\0\x01\0garbage".to_vec(),
    };
    let error = manager
        .install(broken, None, "api", &ADMIN)
        .await
        .expect_err("refused");
    assert!(
        matches!(error, ManagerError::Load(LoadError::Component { .. })),
        "{error}"
    );
    assert_eq!(running(&chain), [("quiet".to_owned(), "1.0.0".to_owned())]);
    assert_eq!(
        manager.get("quiet").expect("kept").record.current.version,
        "1.0.0"
    );
}
