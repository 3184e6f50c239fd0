//! SIGHUP: what a re-read config changes in a running session.

use crate::config::Config;

/// The config sections that differ, for the reload log line.
fn changed_sections(old: &Config, new: &Config) -> Vec<&'static str> {
    [
        ("postgres", old.postgres != new.postgres),
        ("capture", old.capture != new.capture),
        ("events", old.events != new.events),
        ("tables", old.tables != new.tables),
        ("delivery", old.delivery != new.delivery),
        ("log", old.log != new.log),
        ("metrics", old.metrics != new.metrics),
        ("backfill", old.backfill != new.backfill),
    ]
    .into_iter()
    .filter_map(|(name, differs)| differs.then_some(name))
    .collect()
}

/// What a re-read config changes: the sections that differ, and the keys
/// among them that take effect only after a restart (delivery tuning,
/// table mappings and the events settings apply at once).
pub(super) struct ReloadPlan {
    pub sections: Vec<&'static str>,
    pub restart: Vec<String>,
}

impl ReloadPlan {
    pub(super) fn of(old_config: &Config, new: &Config) -> ReloadPlan {
        let sections = changed_sections(old_config, new);
        let old = &old_config.delivery;
        let d = &new.delivery;
        let mut restart: Vec<String> = ["postgres", "capture", "metrics", "backfill"]
            .into_iter()
            .filter(|s| sections.contains(s))
            .map(|s| format!("[{s}]"))
            .collect();
        for (key, same) in [
            (
                "delivery.connect_timeout",
                old.connect_timeout == d.connect_timeout,
            ),
            ("delivery.timeout", old.timeout == d.timeout),
            (
                "delivery.allow_private_targets",
                old.allow_private_targets == d.allow_private_targets,
            ),
            (
                "delivery.allowed_private_networks",
                old.allowed_private_networks == d.allowed_private_networks,
            ),
            (
                "delivery.max_in_flight_bytes",
                old.max_in_flight_bytes == d.max_in_flight_bytes,
            ),
            (
                "delivery.max_shared_in_flight",
                old.max_shared_in_flight == d.max_shared_in_flight,
            ),
            ("delivery.http_version", old.http_version == d.http_version),
            ("delivery.ca_file", old.ca_file == d.ca_file),
            (
                "delivery.client_cert_file",
                old.client_cert_file == d.client_cert_file,
            ),
            (
                "delivery.client_key_file",
                old.client_key_file == d.client_key_file,
            ),
        ] {
            if !same {
                restart.push(key.to_owned());
            }
        }
        ReloadPlan { sections, restart }
    }
}

#[cfg(test)]
mod restart_keys {
    use super::*;

    /// The README names every key a reload reports as needing a restart.
    #[test]
    fn the_readme_lists_every_restart_only_key() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("which keys\n  need a restart")
            .expect("the README's paragraph on SIGHUP");
        let paragraph: String = readme[start..]
            .split("\n- ")
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let mut changed = Config::default();
        changed.postgres.schema = "other".into();
        changed.capture.auto_add_tables = true;
        changed.metrics.listen = Some("127.0.0.1:1".parse().unwrap());
        changed.backfill.chunk_rows += 1;
        let d = &mut changed.delivery;
        d.connect_timeout *= 2;
        d.timeout *= 2;
        d.allow_private_targets = !d.allow_private_targets;
        d.allowed_private_networks = vec!["10.0.0.0/8".parse().unwrap()];
        d.max_in_flight_bytes *= 2;
        d.max_shared_in_flight *= 2;
        d.http_version = crate::config::HttpVersion::Http1;
        d.ca_file = Some("/x".into());
        d.client_cert_file = Some("/x".into());
        d.client_key_file = Some("/x".into());
        let plan = ReloadPlan::of(&Config::default(), &changed);
        assert_eq!(plan.restart.len(), 14, "{:?}", plan.restart);
        for key in &plan.restart {
            assert!(
                paragraph.contains(&format!("`{key}`")),
                "the README's restart list lacks {key}: {paragraph}"
            );
        }
    }
}
