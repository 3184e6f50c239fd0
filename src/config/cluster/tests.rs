use std::time::Duration;

use crate::config::Config;

fn cluster_error(toml: &str) -> String {
    format!("{:#}", Config::parse(toml).unwrap_err())
}

#[test]
fn an_absent_section_is_one_process() {
    assert_eq!(Config::parse("").unwrap().cluster, None);
}

#[test]
fn a_section_with_only_urls_takes_every_default() {
    let config = Config::parse(
        "[cluster]\nnats_urls = [\"nats://10.0.0.5:4222\", \"tls://nats.example:4222\"]\n",
    )
    .unwrap();
    let cluster = config.cluster.unwrap();
    assert_eq!(cluster.shards, 16);
    assert_eq!(cluster.replicas, 1);
    assert_eq!(cluster.heartbeat(), Duration::from_secs(2));
    assert!(cluster.requires_tls());
    assert_eq!(cluster.shard_subject(3), "walhook.jobs.3");
    assert_eq!(cluster.lease_bucket(), "walhook_leases");
}

/// The commented-out block of the example config parses once uncommented,
/// and names every key the section has.
#[test]
fn the_example_cluster_block_names_every_key() {
    let example = include_str!("../../../systemd/walhook.toml");
    let block = example
        .split("\n# [cluster]\n")
        .nth(1)
        .expect("systemd/walhook.toml has a commented-out [cluster] block");
    let uncommented: String = std::iter::once("[cluster]\n".to_string())
        .chain(
            block
                .lines()
                .filter_map(|l| l.strip_prefix("# "))
                .filter(|l| l.contains(" = "))
                // The example names both ways of authenticating; one at a time.
                .filter(|l| !l.starts_with("nkey_seed_file"))
                .map(|l| format!("{l}\n")),
        )
        .collect();
    let parsed = Config::parse(&uncommented).unwrap();
    let cluster = parsed.cluster.unwrap();
    assert!(cluster.credentials_file.is_some() && cluster.client_key_file.is_some());
    let keys: toml::Table = toml::from_str(&uncommented).unwrap();
    let every = toml::Value::try_from(&cluster).unwrap();
    let mut missing: Vec<&String> = every
        .as_table()
        .unwrap()
        .keys()
        .filter(|k| keys["cluster"].get(k.as_str()).is_none())
        .collect();
    missing.retain(|k| k.as_str() != "nkey_seed_file" || !block.contains("# nkey_seed_file = "));
    assert!(missing.is_empty(), "the [cluster] block lacks {missing:?}");
}

#[test]
fn bad_values_name_the_key_and_the_fix() {
    for (toml, expected) in [
        ("nats_urls = []", "cluster.nats_urls is empty"),
        ("nats_urls = [\"10.0.0.5:4222\"]", "\"10.0.0.5:4222\""),
        ("nats_urls = [\"http://10.0.0.5:4222\"]", "use nats://"),
        (
            "nats_urls = [\"nats://u:pw@10.0.0.5:4222\"]",
            "carries credentials",
        ),
        ("nats_urls = [\"nats://10.0.0.5:4222/x\"]", "path or query"),
        (
            "credentials_file = \"/a\"\nnkey_seed_file = \"/b\"",
            "both set",
        ),
        ("client_cert_file = \"/c\"", "set together"),
        ("stream = \"a.b\"", "cluster.stream = \"a.b\""),
        ("stream = \"\"", "cluster.stream"),
        ("replicas = 0", "cluster.replicas = 0 is outside 1..=5"),
        ("replicas = 7", "cluster.replicas = 7"),
        ("shards = 0", "cluster.shards = 0 is outside 1..=1024"),
        ("shards = 5000", "cluster.shards = 5000"),
        ("max_bytes = 1000", "cluster.max_bytes = 1000 is below"),
        ("max_age = \"10m\"", "cluster.max_age"),
        ("lease_ttl = \"1s\"", "cluster.lease_ttl"),
        ("lease_ttl = \"2m\"", "cluster.lease_ttl"),
        ("connect_timeout = \"1ms\"", "cluster.connect_timeout"),
        ("shard = 3", "unknown field `shard`"),
        ("replicas = -1", "replicas"),
    ] {
        let error = cluster_error(&format!("[cluster]\n{toml}\n"));
        assert!(error.contains(expected), "{toml}: {error}");
    }
}

/// The stream must hold several of the largest jobs a hook can get.
#[test]
fn max_bytes_follows_the_largest_body() {
    let error =
        cluster_error("[delivery]\nmax_body_bytes = 67108864\n[cluster]\nmax_bytes = 134217728\n");
    assert!(error.contains("4 x delivery.max_body_bytes"), "{error}");
    Config::parse("[delivery]\nmax_body_bytes = 67108864\n[cluster]\nmax_bytes = 268435456\n")
        .unwrap();
}

#[cfg(unix)]
#[test]
fn credential_files_readable_by_others_are_named() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("nats.creds");
    std::fs::write(&creds, "x").unwrap();
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = Config::parse(&format!(
        "[cluster]\ncredentials_file = {:?}\n",
        creds.display().to_string()
    ))
    .unwrap();
    let problems = config.password_file_problems();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("cluster.credentials_file")),
        "{problems:?}"
    );
}
