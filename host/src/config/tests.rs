use super::*;

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_run_embedded() {
    let config = Config::load_from(None, vars(&[])).expect("defaults are valid");
    config
        .check_backends()
        .expect("nothing configured is embedded");
    assert_eq!(config.mode(), Mode::Embedded);
    assert_eq!(config.http.addr.to_string(), "127.0.0.1:8080");
    assert_eq!(config.kafka.dlq_topic(), "user-activity-events.dlq");
    assert_eq!(config.kafka.updates_topic, "profile-updates");
}

#[test]
fn relative_paths_are_taken_from_the_base() {
    let mut config = Config::load_from(
        None,
        vars(&[
            ("PULSEHUB_PLUGIN_DIR", "./plugins/../built"),
            ("PULSEHUB_PLUGIN_REGISTRY_DIR", "registry"),
        ]),
    )
    .expect("valid");
    config.resolve_paths(Path::new("/srv/pulsehub"));
    assert_eq!(
        config.embedded.data_dir,
        Path::new("/srv/pulsehub/pulsehub-data")
    );
    assert_eq!(
        config.plugins.dir,
        Path::new("/srv/pulsehub/plugins/../built")
    );
    assert_eq!(config.registry_dir(), Path::new("/srv/pulsehub/registry"));

    // Absolute paths stay as they are, and the registry's default
    // follows the data directory.
    let mut config =
        Config::load_from(None, vars(&[("PULSEHUB_DATA_DIR", "/var/lib/ph")])).expect("valid");
    config.resolve_paths(Path::new("/elsewhere"));
    assert_eq!(config.embedded.data_dir, Path::new("/var/lib/ph"));
    assert_eq!(
        config.registry_dir(),
        Path::new("/var/lib/ph/plugin-registry")
    );
    assert!(config.plugins.dir.is_absolute());
}

/// The variable tables of the README and of docs/contract.md §6: one
/// row per variable, in the order of [`ENV_KEYS`], each with its file key
/// and the default the code has.
#[test]
fn the_documented_variable_tables_match_the_code() {
    let defaults = serde_json::to_value(Config::default()).expect("defaults serialize");
    for doc in ["README.md", "docs/contract.md"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(doc);
        let text = std::fs::read_to_string(&path).expect("the document is readable");
        let rows: Vec<Vec<&str>> = text
            .lines()
            .map(|line| line.split('|').map(str::trim).collect::<Vec<_>>())
            .filter(|cells| cells.len() >= 5 && cells[1].starts_with("`PULSEHUB_"))
            .collect();
        let documented: Vec<(&str, &str)> = rows
            .iter()
            .map(|cells| (cells[1].trim_matches('`'), cells[2].trim_matches('`')))
            .collect();
        let known: Vec<(&str, &str)> = ENV_KEYS.iter().map(|(n, k, _)| (*n, *k)).collect();
        assert_eq!(documented, known, "the variables of {doc}");
        for cells in &rows {
            let (key, default) = (cells[2].trim_matches('`'), cells[3]);
            let value = key.split('.').fold(&defaults, |value, part| &value[part]);
            let shown = match value {
                serde_json::Value::Null => None,
                serde_json::Value::String(text) => Some(text.clone()),
                other => Some(other.to_string()),
            };
            match shown {
                // No value of its own: unset, or derived from another key.
                None => assert!(
                    default.starts_with("unset") || default.starts_with("`<"),
                    "{doc}: `{key}` has no default, the table says {default}"
                ),
                Some(shown) => assert!(
                    default.starts_with(&format!("`{shown}`")),
                    "{doc}: `{key}` defaults to {shown}, the table says {default}"
                ),
            }
        }
    }
}

#[test]
fn environment_wins_over_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("pulsehub.toml");
    std::fs::write(
        &file,
        "[kafka]\nbrokers = \"a:9092\"\ntopic = \"from-file\"\n[database]\nurl = \"postgres://x/y\"\n[redis]\nttl_secs = 5\n",
    )
    .expect("write");
    let config = Config::load_from(
        Some(&file),
        vars(&[
            ("PULSEHUB_KAFKA_TOPIC", "from-env"),
            ("PULSEHUB_REDIS_TTL_SECS", "60"),
            ("PULSEHUB_KAFKA_GROUP", "12345"),
        ]),
    )
    .expect("valid");
    config.check_backends().expect("a whole");
    assert_eq!(config.kafka.topic, "from-env");
    assert_eq!(config.redis.ttl_secs, 60);
    assert_eq!(
        config.kafka.group, "12345",
        "digits stay text for a text key"
    );
    assert_eq!(config.kafka.brokers.as_deref(), Some("a:9092"));
    assert_eq!(config.mode(), Mode::Services);
}

#[test]
fn errors_name_the_key() {
    let error = |pairs: &[(&str, &str)]| {
        Config::load_from(None, vars(pairs))
            .and_then(|config| config.check_backends())
            .expect_err("must be refused")
            .to_string()
    };
    assert!(error(&[("PULSEHUB_HTTP_ADDR", "nowhere")]).contains("http.addr"));
    assert!(error(&[("PULSEHUB_REDIS_TTL_SECS", "soon")]).contains("redis.ttl_secs"));
    assert!(error(&[("PULSEHUB_KAFKA_BROKERS", "k:9092")]).contains("database.url"));
    assert!(
        error(&[
            ("PULSEHUB_KAFKA_BROKERS", "k:9092"),
            ("PULSEHUB_DATABASE_URL", "mysql://x")
        ])
        .contains("database.url")
    );
    assert!(error(&[("PULSEHUB_KAFKA_BROKER", "k:9092")]).contains("PULSEHUB_KAFKA_BROKER"));
    assert!(
        error(&[("PULSEHUB_KAFKA_UPDATES_TOPIC", "user-activity-events")])
            .contains("kafka.updates_topic")
    );
    // Migrating needs the database only.
    let migrate_only = vars(&[("PULSEHUB_DATABASE_URL", "postgres://x/y")]);
    let config = Config::load_from(None, migrate_only).expect("loads");
    assert!(config.check_backends().is_err());
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[http]\nadress = \"x\"\n").expect("write");
    let message = Config::load_from(Some(&file), vars(&[]))
        .expect_err("unknown key")
        .to_string();
    assert!(message.contains("adress"), "{message}");
}

#[test]
fn group_membership_keys() {
    let config = Config::load_from(None, vars(&[])).expect("defaults are valid");
    assert_eq!(config.kafka.session_timeout_ms, 10_000);
    assert_eq!(config.kafka.group_instance_id("enrich"), None, "dynamic");

    let config = Config::load_from(
        None,
        vars(&[
            ("PULSEHUB_KAFKA_SESSION_TIMEOUT_MS", "6000"),
            ("PULSEHUB_KAFKA_INSTANCE_ID", "pulsehub-enrich-0"),
        ]),
    )
    .expect("valid");
    assert_eq!(config.kafka.session_timeout_ms, 6_000);
    // One process's consumers are distinct members, one per role.
    assert_eq!(
        config.kafka.group_instance_id("enrich").as_deref(),
        Some("pulsehub-enrich-0-enrich")
    );
    assert_eq!(
        config.kafka.group_instance_id("archive").as_deref(),
        Some("pulsehub-enrich-0-archive")
    );

    let error = |pairs: &[(&str, &str)]| {
        Config::load_from(None, vars(pairs))
            .expect_err("must be refused")
            .to_string()
    };
    for timeout in ["999", "1800001", "0"] {
        let message = error(&[("PULSEHUB_KAFKA_SESSION_TIMEOUT_MS", timeout)]);
        assert!(
            message.contains("kafka.session_timeout_ms") && message.contains("between 1000 and"),
            "{timeout}: {message}"
        );
    }
    for id in ["pod 1", "pod/1", "pödchen", &"p".repeat(242)] {
        let message = error(&[("PULSEHUB_KAFKA_INSTANCE_ID", id)]);
        assert!(message.contains("kafka.instance_id"), "{id}: {message}");
    }
    let longest = "p".repeat(241);
    Config::load_from(None, vars(&[("PULSEHUB_KAFKA_INSTANCE_ID", &longest)]))
        .expect("241 characters leave room for `-archive`");
}

/// The `[identity]` example of docs/contract.md §6 loads; a type without
/// its property is refused, naming the key.
#[test]
fn identity_types_come_from_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("identity.toml");
    std::fs::write(
        &file,
        "[identity]\nmax_merges = 50\n[identity.types.email]\nproperty = \"email\"\nhashed = true\nlimit = 3\nunique = true\n",
    )
    .expect("write");
    let config = Config::load_from(Some(&file), vars(&[])).expect("valid");
    assert_eq!(config.identity.max_merges, 50);
    assert_eq!(config.identity.types["email"].limit, 3);
    crate::model::identity::Rules::new(&config.identity).expect("usable rules");

    std::fs::write(&file, "[identity.types.email]\nlimit = 3\n").expect("write");
    let message = Config::load_from(Some(&file), vars(&[]))
        .expect_err("no property")
        .to_string();
    assert!(
        message.contains("identity.types.email.property"),
        "{message}"
    );
}
