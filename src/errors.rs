//! What a failure means for the daemon: start a new session, or stop and
//! tell the DBA.
//!
//! Errors are marked where they happen, by type: the store and the source
//! wrap failures of a lost or refused connection in [`LostConnection`],
//! and the store reports an invalidated slot as [`SlotLost`]. Everything
//! else needs an operator: retrying a missing slot, a refused password or a
//! row the server will not take only repeats the failure.

use std::error::Error as StdError;

/// The connection to PostgreSQL was lost or refused: a new session may
/// succeed (the server restarted, the walsender was terminated, the
/// network dropped).
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct LostConnection(pub anyhow::Error);

/// A delivery task ended in a panic (a bug): the events it held never
/// settle, so a new session reads them again rather than the daemon
/// stopping or the position waiting for ever.
#[derive(Debug, thiserror::Error)]
#[error("a delivery task failed ({0}): a new session delivers its events again")]
pub struct DeliveryTaskFailed(pub String);

/// The server invalidated the replication slot: the changes since its
/// position are gone, and walhook never re-creates it silently.
#[derive(Debug, thiserror::Error)]
#[error(
    "replication slot {slot:?} was invalidated by the server ({cause}): changes since its \
     position are gone. {fix} walhook never re-creates it silently; after checking what was \
     missed, run `walhook teardown` and `walhook setup`",
    fix = cause.fix()
)]
pub struct SlotLost {
    pub slot: String,
    pub cause: Invalidation,
}

/// The configured slot belongs to another database of the cluster: a
/// slot's name is cluster-wide, so a second walhook for another database
/// that keeps the first one's slot name cannot stream (`check` and `setup`
/// say it).
pub fn slot_of_other_database(slot: &str, other: &str, this: &str) -> String {
    let suggested = format!("walhook_{this}");
    format!(
        "replication slot {slot:?} belongs to database {other:?}, not {this:?}: a slot name is \
         shared by every database of the cluster, so each walhook instance needs its own. Set \
         postgres.slot in this config, e.g. slot = {suggested:?}, then run `walhook setup`"
    )
}

/// Why the server invalidated a slot: `invalidation_reason` (17+; 18 adds
/// `idle_timeout`), `conflicting` (16) or `wal_status lost` (15, 16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// The WAL the slot still needed was removed (`max_slot_wal_keep_size`).
    WalRemoved,
    /// A logical slot on a standby lost catalog rows its primary vacuumed.
    RowsRemoved,
    /// The primary's `wal_level` was lowered below `logical`.
    WalLevelInsufficient,
    /// Unused longer than `idle_replication_slot_timeout` (18+).
    IdleTimeout,
    /// PostgreSQL 16's `conflicting`: rows_removed or wal_level_insufficient,
    /// which 16 does not tell apart.
    RecoveryConflict,
    /// A reason this walhook does not know, as the server named it.
    Other(String),
}

impl Invalidation {
    /// The cause from `pg_replication_slots`' `wal_status`,
    /// `invalidation_reason` and `conflicting` (each absent on servers
    /// without the column); `None` for a usable slot.
    pub fn from_slot(
        wal_status: Option<&str>,
        invalidation_reason: Option<&str>,
        conflicting: Option<bool>,
    ) -> Option<Invalidation> {
        match invalidation_reason {
            Some("wal_removed") => return Some(Invalidation::WalRemoved),
            Some("rows_removed") => return Some(Invalidation::RowsRemoved),
            Some("wal_level_insufficient") => return Some(Invalidation::WalLevelInsufficient),
            Some("idle_timeout") => return Some(Invalidation::IdleTimeout),
            Some(other) => return Some(Invalidation::Other(other.to_owned())),
            None => {}
        }
        // PostgreSQL 16 sets `conflicting` for every invalidation, also for
        // removed WAL, which only `wal_status lost` tells apart.
        if wal_status == Some("lost") {
            return Some(Invalidation::WalRemoved);
        }
        (conflicting == Some(true)).then_some(Invalidation::RecoveryConflict)
    }

    /// What to change so that it does not happen again.
    pub fn fix(&self) -> String {
        match self {
            Invalidation::WalRemoved => "The server removed WAL the slot still needed because \
                 walhook fell further behind than max_slot_wal_keep_size allows (or was stopped \
                 too long): raise max_slot_wal_keep_size (-1 keeps all) and keep walhook running."
                .into(),
            Invalidation::RowsRemoved => "The slot lives on a standby whose primary removed \
                 catalog rows it still needed: on the standby set hot_standby_feedback = on and \
                 stream from the primary through a physical slot (primary_slot_name)."
                .into(),
            Invalidation::WalLevelInsufficient => "wal_level on the primary was set below \
                 logical: set wal_level = logical on the primary and restart it."
                .into(),
            Invalidation::IdleTimeout => "Nothing streamed from the slot for longer than \
                 idle_replication_slot_timeout: keep walhook running, or raise that setting \
                 (0 turns the timeout off) beyond the longest time walhook may be stopped."
                .into(),
            Invalidation::RecoveryConflict => "The slot lives on a standby and conflicted with \
                 recovery (catalog rows removed by the primary, or wal_level below logical \
                 there): set hot_standby_feedback = on with a physical slot (primary_slot_name) \
                 on the standby, and wal_level = logical on the primary."
                .into(),
            Invalidation::Other(reason) => format!(
                "The PostgreSQL documentation of pg_replication_slots.invalidation_reason says \
                 what {reason:?} means."
            ),
        }
    }
}

impl std::fmt::Display for Invalidation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalidation::WalRemoved => f.write_str("wal_removed"),
            Invalidation::RowsRemoved => f.write_str("rows_removed"),
            Invalidation::WalLevelInsufficient => f.write_str("wal_level_insufficient"),
            Invalidation::IdleTimeout => f.write_str("idle_timeout"),
            Invalidation::RecoveryConflict => f.write_str("conflicting with recovery"),
            Invalidation::Other(reason) => write!(f, "invalidation_reason {reason}"),
        }
    }
}

/// What the daemon does about a failed session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Start a new session after a pause (the connection was lost, or a
    /// delivery task failed).
    LostConnection,
    /// Stop: the slot is gone (readiness reports it).
    SlotLost,
    /// Stop with the error: a DBA must fix something first.
    NeedsOperator,
}

impl Fault {
    /// The fault an error was marked with where it happened.
    pub fn of(e: &anyhow::Error) -> Fault {
        for cause in e.chain() {
            if cause.is::<SlotLost>() {
                return Fault::SlotLost;
            }
            if cause.is::<LostConnection>() || cause.is::<DeliveryTaskFailed>() {
                return Fault::LostConnection;
            }
        }
        Fault::NeedsOperator
    }
}

/// SQLSTATEs after which a new session can succeed: connection exceptions
/// (class 08), the server shutting down or starting up (57P01-57P03), a
/// slot still held by the previous walsender (55006) and too many
/// connections (53300).
pub fn retryable_sqlstate(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "55006" | "53300")
}

/// Whether an SQL session error means the connection was lost or refused,
/// decided by the error's type and SQLSTATE, never its text. TLS failures
/// (an unknown certificate, a wrong host name) need an operator.
pub fn is_lost_connection(e: &(dyn StdError + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(pg) = c.downcast_ref::<tokio_postgres::Error>() {
            if let Some(code) = pg.code() {
                return retryable_sqlstate(code.code());
            }
            if pg.is_closed() {
                return true;
            }
        }
        if c.is::<rustls::Error>() {
            return false;
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            // TLS failures arrive as io errors carrying the rustls error.
            let tls = io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>());
            return !tls;
        }
        cause = c.source();
    }
    false
}

/// Mark an SQL session error as [`LostConnection`] when it is one.
pub fn mark_sql_error(e: anyhow::Error) -> anyhow::Error {
    let lost = e.chain().any(is_lost_connection);
    if lost && !e.chain().any(|c| c.is::<LostConnection>()) {
        anyhow::Error::new(LostConnection(e))
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_found_through_context() {
        let lost =
            anyhow::Error::new(LostConnection(anyhow::anyhow!("io"))).context("reading the slot");
        assert_eq!(Fault::of(&lost), Fault::LostConnection);
        let slot = anyhow::Error::new(SlotLost {
            slot: "walhook".into(),
            cause: Invalidation::WalRemoved,
        })
        .context("starting");
        assert_eq!(Fault::of(&slot), Fault::SlotLost);
        assert_eq!(
            Fault::of(&anyhow::anyhow!("permission denied")),
            Fault::NeedsOperator
        );
    }

    #[test]
    fn every_invalidation_reason_is_named_with_its_fix() {
        let cases = [
            (
                Some("wal_removed"),
                None,
                Invalidation::WalRemoved,
                "max_slot_wal_keep_size",
            ),
            (
                Some("rows_removed"),
                None,
                Invalidation::RowsRemoved,
                "hot_standby_feedback",
            ),
            (
                Some("wal_level_insufficient"),
                None,
                Invalidation::WalLevelInsufficient,
                "wal_level = logical",
            ),
            (
                Some("idle_timeout"),
                None,
                Invalidation::IdleTimeout,
                "idle_replication_slot_timeout",
            ),
            (
                Some("something_new"),
                None,
                Invalidation::Other("something_new".into()),
                "\"something_new\"",
            ),
        ];
        for (reason, conflicting, cause, fix) in cases {
            assert_eq!(
                Invalidation::from_slot(Some("lost"), reason, conflicting),
                Some(cause.clone())
            );
            let text = SlotLost {
                slot: "walhook".into(),
                cause,
            }
            .to_string();
            assert!(text.contains(fix), "{text}");
        }
        // PostgreSQL 15 and 16 say only `wal_status lost`; 16 also sets
        // `conflicting` then, and alone for a conflict with recovery.
        assert_eq!(
            Invalidation::from_slot(Some("lost"), None, None),
            Some(Invalidation::WalRemoved)
        );
        assert_eq!(
            Invalidation::from_slot(Some("lost"), None, Some(true)),
            Some(Invalidation::WalRemoved)
        );
        assert_eq!(
            Invalidation::from_slot(Some("reserved"), None, Some(true)),
            Some(Invalidation::RecoveryConflict)
        );
        assert!(SlotLost {
            slot: "walhook".into(),
            cause: Invalidation::RecoveryConflict,
        }
        .to_string()
        .contains("hot_standby_feedback"));
        assert_eq!(
            Invalidation::from_slot(Some("reserved"), None, Some(false)),
            None
        );
        // 18 keeps wal_status of an idle slot as it was.
        assert_eq!(
            Invalidation::from_slot(Some("reserved"), Some("idle_timeout"), None),
            Some(Invalidation::IdleTimeout)
        );
    }

    #[test]
    fn sqlstates_that_a_new_session_cures() {
        for code in ["08006", "08001", "57P01", "57P03", "55006", "53300"] {
            assert!(retryable_sqlstate(code), "{code}");
        }
        for code in ["42501", "28P01", "42704", "55000", "22021", "XX000"] {
            assert!(!retryable_sqlstate(code), "{code}");
        }
    }

    #[test]
    fn io_errors_are_lost_connections_but_tls_failures_are_not() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(is_lost_connection(&refused));
        let tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(!is_lost_connection(&tls));
    }
}
