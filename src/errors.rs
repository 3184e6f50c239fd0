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

/// The server invalidated the replication slot: the changes since its
/// position are gone, and walhook never re-creates it silently.
#[derive(Debug, thiserror::Error)]
#[error(
    "replication slot {slot:?} was invalidated by the server ({reason}): changes since its \
     position are gone. walhook never re-creates it silently; after checking what was missed, \
     run `walhook teardown` and `walhook setup`"
)]
pub struct SlotLost {
    pub slot: String,
    /// `wal_status lost`, or the server's `invalidation_reason`.
    pub reason: String,
}

/// What the daemon does about a failed session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Start a new session after a pause.
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
            if cause.is::<LostConnection>() {
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
            reason: "wal_removed".into(),
        })
        .context("starting");
        assert_eq!(Fault::of(&slot), Fault::SlotLost);
        assert_eq!(
            Fault::of(&anyhow::anyhow!("permission denied")),
            Fault::NeedsOperator
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
