//! The replication source: a pgoutput stream from the slot.
//!
//! pgwire-replication owns the connection: authentication, TLS, keepalive
//! replies and standby status updates, which it sends on its own timer so
//! that back-pressure here never gets the session cut by
//! `wal_sender_timeout`. This module opens a gated session, pins the output
//! settings the event stage relies on, reads the system identifier and
//! starts streaming.

use std::time::Duration;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use pgwire_replication::{
    MessageFilter, PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent, SkipReason,
    TcpSettings, TlsConfig,
};

use crate::config::{Connection, SslMode};
use crate::errors::{retryable_sqlstate, LostConnection};
use crate::pgoutput::Lsn;

/// Session settings that fix the text form of values, whatever the
/// server's defaults: `events::value` converts exactly this form.
pub const OUTPUT_SETTINGS: &[(&str, &str)] = &[
    ("DateStyle", "ISO, YMD"),
    ("TimeZone", "UTC"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "1"),
    ("bytea_output", "hex"),
    ("lc_monetary", "C"),
    ("xmloption", "content"),
];

/// What the stream delivers, in WAL order.
#[derive(Debug)]
pub enum SourceMessage {
    Begin {
        final_lsn: Lsn,
        xid: u32,
        commit_time: i64,
    },
    /// One pgoutput message other than Begin and Commit.
    Data(Bytes),
    Commit {
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: i64,
    },
    KeepAlive {
        wal_end: Lsn,
    },
    /// A `pg_logical_emit_message` message (pgoutput `'M'`; the session
    /// asks for them with the `messages` option). Transactional ones
    /// arrive between Begin and Commit, in commit order.
    Logical {
        prefix: String,
        content: Bytes,
        lsn: Lsn,
        transactional: bool,
    },
    /// A logical message read off the wire and dropped without being held:
    /// under a prefix walhook does not read (any role may emit messages,
    /// of any size), or under one it reads but too large to be what it
    /// expects there.
    SkippedLogical {
        prefix: String,
        lsn: Lsn,
        frame_bytes: usize,
        /// Under one of `message_prefixes`, but over `max_message_bytes`.
        too_large: bool,
    },
}

pub struct Source {
    client: ReplicationClient,
    slot: String,
    publications: Vec<String>,
    pub system_id: String,
}

/// Where the stream comes from.
pub struct SourceSettings<'a> {
    pub connection: &'a Connection,
    pub slot: &'a str,
    pub publications: Vec<String>,
    pub status_interval: Duration,
    /// Where to start: transactions committed before it are not sent. It is
    /// also the position first reported as flushed.
    pub start: Lsn,
    /// The `pg_logical_emit_message` prefixes whose messages walhook
    /// reads; the others are skipped without being held.
    pub message_prefixes: Vec<String>,
    /// The largest message content read under those prefixes.
    pub max_message_bytes: usize,
}

/// The shortest gap between two status updates that carry a newer
/// position: the server learns of a settled transaction within this, yet
/// a busy stream costs it at most ten small messages a second.
const CONFIRM_GAP: Duration = Duration::from_millis(100);

impl Source {
    /// Connect, pin the output settings, read IDENTIFY_SYSTEM and start
    /// streaming from `settings.start` (the server forwards a position
    /// before the slot's confirmed one to that).
    ///
    /// A position after the slot's is honoured: PostgreSQL decodes from the
    /// slot's restart_lsn as always but outputs no transaction whose commit
    /// record starts before the requested position (`CreateDecodingContext`
    /// makes it the snapshot builder's `start_decoding_at`).
    pub async fn start(settings: SourceSettings<'_>) -> anyhow::Result<Source> {
        let conn = settings.connection;
        // Connecting, authenticating and starting on a server that went
        // silent would otherwise wait for ever: the whole start gets the
        // connect timeout plus one receive timeout.
        let limit = conn.connect_timeout + conn.receive_timeout;
        match tokio::time::timeout(limit, Source::open(&settings)).await {
            Ok(source) => source,
            Err(_) => Err(anyhow::Error::new(LostConnection(anyhow!(
                "replication session: no answer from {conn:?} within {}s of connecting \
                 (postgres.connect_timeout + postgres.receive_timeout)",
                limit.as_secs()
            )))),
        }
    }

    async fn open(settings: &SourceSettings<'_>) -> anyhow::Result<Source> {
        let conn = settings.connection;
        let tls = match conn.sslmode {
            SslMode::Disable => TlsConfig::disabled(),
            SslMode::Prefer => TlsConfig {
                mode: pgwire_replication::SslMode::Prefer,
                ..TlsConfig::default()
            },
            SslMode::Require => TlsConfig::require(),
            SslMode::VerifyCa => TlsConfig::verify_ca(conn.sslrootcert.clone()),
            SslMode::VerifyFull => TlsConfig::verify_full(conn.sslrootcert.clone()),
        };
        let tcp = conn.tcp_settings();
        let config = ReplicationConfig::new(
            conn.host.clone(),
            conn.user.clone(),
            conn.password.clone().unwrap_or_default(),
            conn.dbname.clone(),
            settings.slot.to_owned(),
            settings.publications.clone(),
        )
        .with_port(conn.port)
        .with_tls(tls)
        .with_application_name(conn.application_name.clone())
        // A newer position goes out within CONFIRM_GAP; with nothing new to
        // say, a status update still goes out every status_interval.
        .with_status_interval(settings.status_interval.min(CONFIRM_GAP))
        .with_wakeup_interval(settings.status_interval)
        .with_start_lsn(settings.start)
        .with_buffer_size(1024)
        .with_message_filter(MessageFilter {
            prefixes: settings.message_prefixes.clone(),
            max_content_bytes: settings.max_message_bytes,
        })
        .with_receive_timeout(conn.receive_timeout)
        .with_connect_timeout(conn.connect_timeout)
        .with_tcp(TcpSettings {
            keepalive_idle: tcp.keepalive_idle,
            keepalive_interval: tcp.keepalive_interval,
            keepalive_retries: tcp.keepalive_retries,
            user_timeout: tcp.user_timeout,
        });

        let explain = |e| explain(e, Phase::Start, settings.slot, &settings.publications);
        let mut client = ReplicationClient::connect_gated(config)
            .await
            .map_err(explain)?;
        for (name, value) in OUTPUT_SETTINGS {
            client
                .simple_query(&format!("SET {name} = '{value}'"))
                .await
                .map_err(explain)
                .with_context(|| format!("setting {name} on the replication session"))?;
        }
        for (name, value) in [
            ("statement_timeout", conn.statement_timeout),
            ("lock_timeout", conn.lock_timeout),
        ] {
            client
                .simple_query(&format!("SET {name} = {}", value.as_millis()))
                .await
                .map_err(explain)?;
        }
        let system = client.identify_system().await.map_err(explain)?;
        client.start().await.map_err(explain)?;
        client.wait_started().await.map_err(explain)?;
        Ok(Source {
            client,
            slot: settings.slot.to_owned(),
            publications: settings.publications.clone(),
            system_id: system.system_id,
        })
    }

    /// The next message; `None` when the stream ended cleanly.
    pub async fn recv(&mut self) -> anyhow::Result<Option<SourceMessage>> {
        loop {
            let event = match self.client.recv().await {
                Ok(Some(e)) => e,
                Ok(None) => return Ok(None),
                Err(e) => {
                    return Err(explain(e, Phase::Stream, &self.slot, &self.publications));
                }
            };
            return Ok(Some(match event {
                ReplicationEvent::Begin {
                    final_lsn,
                    xid,
                    commit_time_micros,
                } => SourceMessage::Begin {
                    final_lsn,
                    xid,
                    commit_time: commit_time_micros,
                },
                ReplicationEvent::Commit {
                    lsn,
                    end_lsn,
                    commit_time_micros,
                } => SourceMessage::Commit {
                    commit_lsn: lsn,
                    end_lsn,
                    commit_time: commit_time_micros,
                },
                ReplicationEvent::XLogData { data, .. } => SourceMessage::Data(data),
                ReplicationEvent::KeepAlive { wal_end, .. } => SourceMessage::KeepAlive { wal_end },
                ReplicationEvent::Message {
                    transactional,
                    lsn,
                    prefix,
                    content,
                } => SourceMessage::Logical {
                    prefix,
                    content,
                    lsn,
                    transactional,
                },
                ReplicationEvent::MessageSkipped {
                    lsn,
                    prefix,
                    frame_bytes,
                    reason,
                    ..
                } => SourceMessage::SkippedLogical {
                    prefix,
                    lsn,
                    frame_bytes,
                    too_large: reason == SkipReason::TooLarge,
                },
                // The stop event is never requested.
                ReplicationEvent::StoppedAt { .. } => continue,
            }));
        }
    }

    /// Report `lsn` as flushed; sent with the next status update.
    pub fn confirm(&self, lsn: Lsn) {
        self.client.update_applied_lsn(lsn);
    }

    /// The position last sent to the server in a status update.
    pub fn reported(&self) -> Lsn {
        self.client.metrics().last_applied_lsn()
    }

    /// End the stream (CopyDone) and wait for the session to close.
    pub async fn stop(mut self) {
        if let Err(e) = self.client.shutdown().await {
            tracing::debug!("replication session ended with: {e}");
        }
    }
}

/// When a replication session error came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Connecting, authenticating, starting: the slot is looked up here.
    Start,
    /// Streaming: the publication is looked up when the first change is
    /// decoded.
    Stream,
}

/// Turn connection, start and stream errors into messages that say what
/// to do. The hint is chosen by the server's SQLSTATE and the phase, never
/// by the message's words: a server whose `lc_messages` is not English
/// says the same things in other words.
fn explain(e: PgWireError, phase: Phase, slot: &str, publications: &[String]) -> anyhow::Error {
    let text = e.to_string();
    let hint = match (sqlstate(&text), phase) {
        // undefined_object: START_REPLICATION looks the slot up; decoding
        // looks the publication up once streaming.
        (Some("42704"), Phase::Start) => {
            format!(" (replication slot {slot:?} is missing: run `walhook setup`)")
        }
        (Some("42704"), Phase::Stream) => {
            format!(" (publication {publications:?} is missing: run `walhook setup`)")
        }
        // object_in_use
        (Some("55006"), _) => {
            format!(" (another walhook or client is streaming from slot {slot:?})")
        }
        // object_not_in_prerequisite_state: an invalidated slot, or a
        // server without wal_level = logical.
        (Some("55000"), _) => format!(
            " (the server cannot stream from slot {slot:?}: either it was invalidated, and the \
             changes since its position are lost (walhook never re-creates it silently), or \
             wal_level is not logical; `walhook check` says which)"
        ),
        // insufficient_privilege
        (Some("42501"), _) => {
            " (the role needs the REPLICATION attribute: ALTER ROLE ... REPLICATION)".to_owned()
        }
        // invalid_password, invalid_authorization_specification
        (Some("28P01" | "28000"), _) => {
            " (check the user and the password in postgres.url, postgres.password_file or \
             PGPASSWORD, and pg_hba.conf's replication lines)"
                .to_owned()
        }
        _ => String::new(),
    };
    let what = match phase {
        Phase::Start => "replication session",
        Phase::Stream => "replication stream failed",
    };
    let error = anyhow!("{what}: {}{hint}", crate::text::printable(&text));
    if is_lost_connection(&e) {
        anyhow::Error::new(LostConnection(error))
    } else {
        error
    }
}

/// Whether a replication session error means the connection was lost or
/// refused (a new session may succeed), by the error's kind and the
/// server's SQLSTATE; authentication, TLS and other refusals need an
/// operator.
fn is_lost_connection(e: &PgWireError) -> bool {
    match e {
        PgWireError::Io(_) | PgWireError::Task(_) => true,
        PgWireError::Server(text) => sqlstate(text).is_some_and(retryable_sqlstate),
        _ => false,
    }
}

/// The SQLSTATE pgwire-replication puts in a server error's text
/// (`... (SQLSTATE 57P01)`).
fn sqlstate(text: &str) -> Option<&str> {
    let at = text.rfind("SQLSTATE ")? + "SQLSTATE ".len();
    text.get(at..at + 5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_errors_by_kind_and_sqlstate() {
        let io = PgWireError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(is_lost_connection(&io));
        let terminated = PgWireError::Server(
            "terminating connection due to administrator command (SQLSTATE 57P01)".into(),
        );
        assert!(is_lost_connection(&terminated));
        let busy = PgWireError::Server(
            "replication slot \"walhook\" is active for PID 42 (SQLSTATE 55006)".into(),
        );
        assert!(is_lost_connection(&busy));
        let missing = PgWireError::Server(
            "replication slot \"walhook\" does not exist (SQLSTATE 42704)".into(),
        );
        assert!(!is_lost_connection(&missing));
        assert!(!is_lost_connection(&PgWireError::Auth("password".into())));
        assert!(!is_lost_connection(&PgWireError::Tls(
            "unknown issuer".into()
        )));
    }

    /// The hint follows the SQLSTATE (and when the error came), whatever
    /// language the server speaks.
    #[test]
    fn hints_follow_the_sqlstate_not_the_words() {
        let publications = ["walhook".to_owned()];
        let hint = |text: &str, phase| {
            format!(
                "{:#}",
                explain(
                    PgWireError::Server(text.into()),
                    phase,
                    "walhook",
                    &publications
                )
            )
        };
        let missing = "Replikations-Slot »walhook« existiert nicht (SQLSTATE 42704)";
        assert!(hint(missing, Phase::Start)
            .ends_with("(replication slot \"walhook\" is missing: run `walhook setup`)"));
        let missing = "Publikation »walhook« existiert nicht (SQLSTATE 42704)";
        assert!(hint(missing, Phase::Stream)
            .ends_with("(publication [\"walhook\"] is missing: run `walhook setup`)"));
        let busy = "Replikations-Slot »walhook« ist aktiv für PID 42 (SQLSTATE 55006)";
        assert!(hint(busy, Phase::Start).contains("another walhook or client is streaming"));
        let denied = "keine Berechtigung, um Replikation zu starten (SQLSTATE 42501)";
        assert!(hint(denied, Phase::Start).contains("ALTER ROLE ... REPLICATION"));
        let password =
            "Passwort-Authentifizierung für Benutzer »w« fehlgeschlagen (SQLSTATE 28P01)";
        assert!(hint(password, Phase::Start).contains("postgres.password_file"));
        // No SQLSTATE, no guess.
        assert_eq!(
            hint("replication slot does not exist", Phase::Start),
            "replication session: server error: replication slot does not exist"
        );
    }
}
