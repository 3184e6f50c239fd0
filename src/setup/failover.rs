//! What the server version offers for the slot, and failover slots
//! (`postgres.failover_slot`): refused before PostgreSQL 17, and `check`'s
//! account of what the primary and its standbys need so that a promoted
//! standby has walhook's slot.

use super::line::{CheckLevel, CheckLine};
use crate::config::Config;
use crate::store::slot::{PhysicalSlot, ServerFeatures};
use crate::store::Store;

/// The first version with failover slots, `invalidation_reason` and
/// `sync_replication_slots`.
pub const FAILOVER_SLOT_VERSION: i32 = 170000;

/// Why `postgres.failover_slot` cannot be honoured on this server.
pub fn failover_refusal(version_num: i32) -> Option<String> {
    (version_num < FAILOVER_SLOT_VERSION).then(|| {
        format!(
            "postgres.failover_slot = true needs PostgreSQL 17 or newer, and this server is \
             PostgreSQL {}: before 17 a logical slot exists only on the primary and no standby \
             keeps a copy. Set postgres.failover_slot = false (after a failover, run `walhook \
             setup` on the new primary; changes made in between are not sent) or upgrade",
            version_num / 10000
        )
    })
}

/// `check`'s line on the version and the slot features it has.
pub fn features_line(f: &ServerFeatures) -> String {
    let has = |yes: bool| if yes { "yes" } else { "no" };
    let idle = match &f.idle_slot_timeout {
        Some(t) if t != "0" => format!("yes, set to {t}"),
        Some(_) => "yes, off".to_owned(),
        None => "no (18+)".to_owned(),
    };
    format!(
        "PostgreSQL {}: failover slots {}, invalidation_reason {}, \
         idle_replication_slot_timeout {idle}",
        f.version,
        has(f.version_num >= FAILOVER_SLOT_VERSION),
        has(f.version_num >= FAILOVER_SLOT_VERSION),
    )
}

/// A warning when `idle_replication_slot_timeout` can invalidate the slot
/// while walhook is stopped.
pub fn idle_timeout_line(f: &ServerFeatures) -> Option<CheckLine> {
    let timeout = f.idle_slot_timeout.as_deref().filter(|t| *t != "0")?;
    Some(CheckLine {
        level: CheckLevel::Warn,
        text: format!(
            "idle_replication_slot_timeout is {timeout}: if walhook is stopped longer than that, \
             the server invalidates its slot (idle_timeout) and the changes since are lost; \
             raise it beyond the longest planned stop, or set it to 0"
        ),
    })
}

/// What `postgres.failover_slot` needs, as far as this server can tell;
/// empty when the key is off.
pub async fn check_failover(store: &Store, config: &Config, f: &ServerFeatures) -> Vec<CheckLine> {
    if !config.postgres.failover_slot {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut push = |level, text: String| out.push(CheckLine { level, text });
    if let Some(refusal) = failover_refusal(f.version_num) {
        push(CheckLevel::Fail, refusal);
        return out;
    }
    let slot = &config.postgres.slot;
    match store.slot_facts(slot).await {
        Ok(Some(facts)) if facts.failover == Some(true) => push(
            CheckLevel::Ok,
            format!("replication slot {slot:?} is a failover slot"),
        ),
        Ok(Some(_)) => push(CheckLevel::Fail, not_a_failover_slot(slot)),
        // A missing slot is reported with the rest of the installation.
        Ok(None) => {}
        Err(e) => push(CheckLevel::Fail, format!("{e:#}")),
    }
    if f.in_recovery {
        out.extend(standby_lines(f, slot));
        return out;
    }
    match store.physical_slots().await {
        Ok(physical) => out.extend(primary_lines(f, &physical)),
        Err(e) => out.push(CheckLine {
            level: CheckLevel::Fail,
            text: format!("{e:#}"),
        }),
    }
    out.push(CheckLine {
        level: CheckLevel::Next,
        text: format!(
            "on each standby (this cannot be read from the primary): sync_replication_slots = \
             on, hot_standby_feedback = on, primary_slot_name = its physical slot here, and a \
             dbname in primary_conninfo; there, SELECT synced FROM pg_replication_slots WHERE \
             slot_name = '{slot}' must say true before a promotion (`walhook check` against the \
             standby checks these settings)"
        ),
    });
    out
}

/// The fix for an existing slot made without FAILOVER.
pub fn not_a_failover_slot(slot: &str) -> String {
    format!(
        "replication slot {slot:?} is not a failover slot (postgres.failover_slot = true): \
         it can only be changed over a replication connection, with walhook stopped: \
         psql \"dbname=<database> replication=database\" -c 'ALTER_REPLICATION_SLOT {slot} \
         (FAILOVER true)'"
    )
}

/// The primary's side: `synchronized_standby_slots` names physical slots
/// that exist, are streamed from, and carry hot standby feedback.
fn primary_lines(f: &ServerFeatures, physical: &[PhysicalSlot]) -> Vec<CheckLine> {
    let mut out = Vec::new();
    let names: Vec<&str> = f
        .synchronized_standby_slots
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        let known = physical
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        out.push(CheckLine {
            level: CheckLevel::Warn,
            text: format!(
                "synchronized_standby_slots is empty: walhook may receive and deliver changes \
                 a standby has not received yet, which a promoted standby then never had; set \
                 it to the standbys' physical slots (here: {}) and reload",
                if known.is_empty() { "none yet" } else { &known }
            ),
        });
        return out;
    }
    for name in names {
        let (level, text) = match physical.iter().find(|p| p.name == name) {
            None => (
                CheckLevel::Fail,
                format!(
                    "synchronized_standby_slots names {name:?}, which is not a physical slot \
                     here: walhook's stream waits for it for ever; create it \
                     (pg_create_physical_replication_slot) for the standby or remove the name"
                ),
            ),
            Some(p) if !p.active => (
                CheckLevel::Warn,
                format!(
                    "physical slot {name:?} (synchronized_standby_slots) has no standby \
                     streaming: walhook's stream waits until one does"
                ),
            ),
            Some(p) if !p.has_xmin => (
                CheckLevel::Warn,
                format!(
                    "the standby on physical slot {name:?} sends no hot standby feedback (the \
                     slot has no xmin): set hot_standby_feedback = on on that standby, or its \
                     copy of walhook's slot can be invalidated (rows_removed)"
                ),
            ),
            Some(_) => (
                CheckLevel::Ok,
                format!(
                    "physical slot {name:?} (synchronized_standby_slots) is streamed from, with \
                     hot standby feedback"
                ),
            ),
        };
        out.push(CheckLine { level, text });
    }
    out
}

/// A standby's side, when `check` is pointed at one.
fn standby_lines(f: &ServerFeatures, slot: &str) -> Vec<CheckLine> {
    let on = |v: Option<&str>| v == Some("on");
    let wanted = [
        (
            on(f.sync_replication_slots.as_deref()),
            "sync_replication_slots = on (the standby copies failover slots)",
        ),
        (
            on(Some(&f.hot_standby_feedback)),
            "hot_standby_feedback = on (else the copy is invalidated, rows_removed)",
        ),
        (
            !f.primary_slot_name.is_empty(),
            "primary_slot_name set to the standby's physical slot on the primary",
        ),
    ];
    let conninfo = match &f.primary_conninfo {
        Some(conninfo) => (
            conninfo.contains("dbname="),
            "a dbname in primary_conninfo (slot synchronisation connects to a database)",
        ),
        None => (
            false,
            "a readable primary_conninfo: this role may not read it (GRANT pg_read_all_settings), \
             so whether it names a dbname, which slot synchronisation needs, is unknown",
        ),
    };
    let mut out = vec![CheckLine {
        level: CheckLevel::Ok,
        text: format!(
            "this server is a standby: walhook streams from the primary; after a promotion \
             point postgres.url here (slot {slot:?} must show synced = true first)"
        ),
    }];
    for (fine, what) in wanted.into_iter().chain([conninfo]) {
        out.push(CheckLine {
            level: if fine {
                CheckLevel::Ok
            } else {
                CheckLevel::Fail
            },
            text: if fine {
                format!("standby has {what}")
            } else {
                format!("standby lacks {what}: set it and reload")
            },
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(version_num: i32) -> ServerFeatures {
        ServerFeatures {
            version: format!("{}.1", version_num / 10000),
            version_num,
            in_recovery: false,
            idle_slot_timeout: (version_num >= 180000).then(|| "0".into()),
            synchronized_standby_slots: (version_num >= FAILOVER_SLOT_VERSION).then(String::new),
            sync_replication_slots: (version_num >= FAILOVER_SLOT_VERSION).then(|| "off".into()),
            hot_standby_feedback: "off".into(),
            primary_slot_name: String::new(),
            primary_conninfo: Some(String::new()),
        }
    }

    #[test]
    fn failover_slots_are_refused_before_17_with_the_reason() {
        for version in [150004, 160010] {
            let refusal = failover_refusal(version).expect("refused");
            assert!(refusal.contains("needs PostgreSQL 17"), "{refusal}");
            assert!(refusal.contains(&format!("is PostgreSQL {}", version / 10000)));
        }
        assert_eq!(failover_refusal(170000), None);
        assert_eq!(failover_refusal(180004), None);
    }

    #[test]
    fn features_follow_the_version() {
        assert_eq!(
            features_line(&features(160010)),
            "PostgreSQL 16.1: failover slots no, invalidation_reason no, \
             idle_replication_slot_timeout no (18+)"
        );
        let mut eighteen = features(180004);
        assert!(features_line(&eighteen).ends_with("idle_replication_slot_timeout yes, off"));
        assert!(idle_timeout_line(&eighteen).is_none());
        eighteen.idle_slot_timeout = Some("1d".into());
        assert!(features_line(&eighteen).ends_with("yes, set to 1d"));
        let warning = idle_timeout_line(&eighteen).expect("a warning");
        assert!(warning.text.contains("idle_timeout"), "{}", warning.text);
    }

    #[test]
    fn the_primary_must_name_live_standby_slots() {
        let mut f = features(170004);
        let standby = PhysicalSlot {
            name: "standby1".into(),
            active: true,
            has_xmin: true,
        };
        let lines = primary_lines(&f, std::slice::from_ref(&standby));
        assert_eq!(lines[0].level, CheckLevel::Warn);
        assert!(
            lines[0].text.contains("(here: standby1)"),
            "{}",
            lines[0].text
        );

        f.synchronized_standby_slots = Some("standby1, gone".into());
        let lines = primary_lines(&f, std::slice::from_ref(&standby));
        assert_eq!(lines[0].level, CheckLevel::Ok);
        assert_eq!(lines[1].level, CheckLevel::Fail);
        assert!(lines[1].text.contains("\"gone\""));

        let no_feedback = PhysicalSlot {
            has_xmin: false,
            ..standby
        };
        let lines = primary_lines(&f, &[no_feedback]);
        assert!(lines[0].text.contains("hot_standby_feedback = on"));
    }

    #[test]
    fn a_standby_lists_what_it_lacks() {
        let mut f = features(170004);
        f.in_recovery = true;
        f.sync_replication_slots = Some("on".into());
        f.primary_conninfo = Some("host=p user=r".into());
        let lines = standby_lines(&f, "walhook");
        let failed: Vec<&str> = lines
            .iter()
            .filter(|l| l.level == CheckLevel::Fail)
            .map(|l| l.text.as_str())
            .collect();
        assert_eq!(failed.len(), 3, "{failed:?}");
        assert!(failed.iter().any(|t| t.contains("hot_standby_feedback")));
        assert!(failed.iter().any(|t| t.contains("primary_slot_name")));
        assert!(failed.iter().any(|t| t.contains("dbname")));
    }
}
