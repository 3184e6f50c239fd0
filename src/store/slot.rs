//! The replication slot and the leadership lock.

use anyhow::{anyhow, bail};
use serde::Serialize;
use tokio_postgres::error::SqlState;

use super::{failed, SqlResult, Store};
use crate::errors::{Invalidation, SlotLost};
use crate::pgoutput::Lsn;

/// The slot as `setup` and `check` see it.
#[derive(Debug, Clone)]
pub struct SlotFacts {
    pub plugin: Option<String>,
    /// Why the server invalidated it.
    pub lost: Option<Invalidation>,
    pub active: bool,
    /// Whether it is a failover slot (`None` before PostgreSQL 17).
    pub failover: Option<bool>,
    /// The database a logical slot belongs to (`None` for a physical
    /// one); a slot's name is unique in the whole cluster.
    pub database: Option<String>,
    /// The database this session is connected to.
    pub this_database: String,
}

impl SlotFacts {
    /// The other database this slot belongs to, when it is not this
    /// session's: another walhook (or another program) uses the name.
    pub fn other_database(&self) -> Option<&str> {
        self.database
            .as_deref()
            .filter(|db| *db != self.this_database)
    }
}

/// The slot and the server's position, for `walhook status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SlotStatus {
    pub name: String,
    pub exists: bool,
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub wal_status: Option<String>,
    pub invalidation_reason: Option<String>,
    /// Why the server invalidated it, from every column that can say.
    #[serde(skip)]
    pub invalidation: Option<Invalidation>,
    /// A failover slot, synchronised to standbys (`None` before 17).
    pub failover: Option<bool>,
    /// Synchronised from a primary: this server is a standby (17+).
    pub synced: Option<bool>,
    pub active: bool,
    pub active_pid: Option<i32>,
    pub confirmed_flush_lsn: Option<String>,
    pub restart_lsn: Option<String>,
    pub server_lsn: Option<String>,
    pub lag_bytes: Option<i64>,
    pub retained_wal_bytes: Option<i64>,
    pub safe_wal_size: Option<i64>,
    pub inactive_since: Option<String>,
    /// The settled position walhook recorded in `slot_progress`, where it
    /// resumes when the slot is behind it.
    pub settled_lsn: Option<String>,
    /// The walsender serving the slot, from `pg_stat_replication`.
    #[serde(skip)]
    pub walsender_pid: Option<i32>,
    #[serde(skip)]
    pub walsender_state: Option<String>,
    /// `pg_stat_replication.flush_lag`, in seconds.
    #[serde(skip)]
    pub flush_lag: Option<f64>,
}

/// The slot as `teardown` sees it.
#[derive(Debug, Clone)]
pub struct SlotForTeardown {
    pub active_pid: Option<i32>,
    pub active: bool,
    pub wal_status: Option<String>,
    pub retained_bytes: Option<i64>,
}

/// The slot as its metrics report it, each `None` where the column is
/// NULL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotGauges {
    /// From `restart_lsn` to the server's position.
    pub retained_bytes: Option<i64>,
    pub wal_status: Option<String>,
    /// NULL when `max_slot_wal_keep_size` is -1 (no limit).
    pub safe_wal_size: Option<i64>,
    pub active: bool,
}

/// How dropping the slot went.
#[derive(Debug, PartialEq, Eq)]
pub enum SlotDrop {
    Dropped,
    AlreadyGone,
    InUse,
}

/// The server's version and the settings behind the slot features that
/// depend on it, each `None` where the server has no such setting.
#[derive(Debug, Clone)]
pub struct ServerFeatures {
    /// `server_version`, e.g. `17.10`.
    pub version: String,
    /// `server_version_num`, e.g. 170010.
    pub version_num: i32,
    pub in_recovery: bool,
    /// `idle_replication_slot_timeout` (18+), e.g. `0` or `1d`.
    pub idle_slot_timeout: Option<String>,
    /// `synchronized_standby_slots` (17+).
    pub synchronized_standby_slots: Option<String>,
    /// `sync_replication_slots` (17+), meaningful on a standby.
    pub sync_replication_slots: Option<String>,
    pub hot_standby_feedback: String,
    pub primary_slot_name: String,
    /// `None` when this role may not read it (pg_read_all_settings).
    pub primary_conninfo: Option<String>,
}

/// A physical slot on the primary: what a standby streams through.
#[derive(Debug, Clone)]
pub struct PhysicalSlot {
    pub name: String,
    pub active: bool,
    /// The slot holds an xmin: its standby sends hot standby feedback.
    pub has_xmin: bool,
}

/// The columns [`Invalidation::from_slot`] reads, read through `to_jsonb`
/// where a server version lacks them: `wal_status`,
/// `invalidation_reason` (17+), `conflicting` (16+).
const HEALTH_COLUMNS: &str = "s.wal_status, to_jsonb(s)->>'invalidation_reason', \
     (to_jsonb(s)->>'conflicting')::bool";

/// The slot's invalidation from the three [`HEALTH_COLUMNS`] at `first`.
fn invalidation(row: &tokio_postgres::Row, first: usize) -> Option<Invalidation> {
    Invalidation::from_slot(
        row.get::<_, Option<&str>>(first),
        row.get::<_, Option<&str>>(first + 1),
        row.get::<_, Option<bool>>(first + 2),
    )
}

impl Store {
    /// The slot's confirmed position; [`SlotLost`] when the server
    /// invalidated it, and a clear error when it is missing.
    pub async fn slot_position(&self, slot: &str) -> anyhow::Result<Lsn> {
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT s.confirmed_flush_lsn::text, {HEALTH_COLUMNS} \
                       FROM pg_replication_slots s WHERE s.slot_name = $1"
                ),
                &[&slot],
            )
            .await
            .sql("reading pg_replication_slots")?
            .ok_or_else(|| {
                anyhow!(
                    "replication slot {slot:?} does not exist: run `walhook setup` to create it"
                )
            })?;
        if let Some(cause) = invalidation(&row, 1) {
            return Err(SlotLost {
                slot: slot.to_owned(),
                cause,
            }
            .into());
        }
        let text: Option<String> = row.get(0);
        let text =
            text.ok_or_else(|| anyhow!("replication slot {slot:?} has no confirmed position"))?;
        Lsn::parse(&text).map_err(|e| anyhow!("slot {slot:?}: {e}"))
    }

    /// The slot's plugin and whether it is lost, `None` when it does not
    /// exist.
    pub async fn slot_facts(&self, slot: &str) -> anyhow::Result<Option<SlotFacts>> {
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT s.plugin::text, s.active, (to_jsonb(s)->>'failover')::bool, \
                            {HEALTH_COLUMNS}, s.database::text, current_database()::text \
                       FROM pg_replication_slots s WHERE s.slot_name = $1"
                ),
                &[&slot],
            )
            .await
            .sql("reading pg_replication_slots")?;
        Ok(row.map(|r| SlotFacts {
            plugin: r.get(0),
            active: r.get(1),
            failover: r.get(2),
            lost: invalidation(&r, 3),
            database: r.get(6),
            this_database: r.get(7),
        }))
    }

    /// The slot, the server's position and the walsender, for `status`.
    pub async fn slot_status(&self, slot: &str) -> anyhow::Result<SlotStatus> {
        let row = self
            .client
            .query_one(
                "SELECT s.slot_name IS NOT NULL, s.plugin::text, s.database::text, s.wal_status, \
                            to_jsonb(s)->>'invalidation_reason', coalesce(s.active, false), s.active_pid, \
                            s.confirmed_flush_lsn::text, s.restart_lsn::text, c.lsn::text, \
                            pg_wal_lsn_diff(c.lsn, s.confirmed_flush_lsn)::bigint, \
                            pg_wal_lsn_diff(c.lsn, s.restart_lsn)::bigint, s.safe_wal_size, \
                            to_jsonb(s)->>'inactive_since', r.pid, r.state, \
                            extract(epoch FROM r.flush_lag)::float8, \
                            (to_jsonb(s)->>'conflicting')::bool, (to_jsonb(s)->>'failover')::bool, \
                            (to_jsonb(s)->>'synced')::bool \
                       FROM (SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
                                         ELSE pg_current_wal_lsn() END AS lsn) c \
                       LEFT JOIN pg_replication_slots s ON s.slot_name = $1 \
                       LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid",
                &[&slot],
            )
            .await
            .sql(format!(
                "reading replication slot {slot:?} from pg_replication_slots"
            ))?;
        Ok(SlotStatus {
            name: slot.to_owned(),
            exists: row.get(0),
            plugin: row.get(1),
            database: row.get(2),
            wal_status: row.get(3),
            invalidation_reason: row.get(4),
            invalidation: Invalidation::from_slot(row.get(3), row.get(4), row.get(17)),
            failover: row.get(18),
            synced: row.get(19),
            active: row.get(5),
            active_pid: row.get(6),
            confirmed_flush_lsn: row.get(7),
            restart_lsn: row.get(8),
            server_lsn: row.get(9),
            lag_bytes: row.get(10),
            retained_wal_bytes: row.get(11),
            safe_wal_size: row.get(12),
            inactive_since: row.get(13),
            settled_lsn: None,
            walsender_pid: row.get(14),
            walsender_state: row.get(15),
            flush_lag: row.get(16),
        })
    }

    /// The slot as `teardown` needs it, `None` when it does not exist.
    pub async fn slot_for_teardown(&self, slot: &str) -> anyhow::Result<Option<SlotForTeardown>> {
        let row = self
            .client
            .query_opt(
                "SELECT active, active_pid, wal_status, \
                        pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
                                             ELSE pg_current_wal_lsn() END, restart_lsn)::bigint \
                   FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .sql(format!("reading replication slot {slot:?}"))?;
        Ok(row.map(|r| SlotForTeardown {
            active: r.get(0),
            active_pid: r.get(1),
            wal_status: r.get(2),
            retained_bytes: r.get(3),
        }))
    }

    /// The slot's gauges, `None` when it does not exist: one row of
    /// `pg_replication_slots`, cheap enough to read every few seconds.
    pub async fn slot_gauges(&self, slot: &str) -> anyhow::Result<Option<SlotGauges>> {
        let row = self
            .client
            .query_opt(
                "SELECT pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() \
                                             THEN pg_last_wal_receive_lsn() \
                                             ELSE pg_current_wal_lsn() END, restart_lsn)::bigint, \
                        wal_status, safe_wal_size, active \
                   FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .sql(format!("reading replication slot {slot:?} for metrics"))?;
        Ok(row.map(|r| SlotGauges {
            retained_bytes: r.get(0),
            wal_status: r.get(1),
            safe_wal_size: r.get(2),
            active: r.get(3),
        }))
    }

    pub async fn drop_slot(&self, slot: &str) -> anyhow::Result<SlotDrop> {
        match self
            .client
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await
        {
            Ok(_) => Ok(SlotDrop::Dropped),
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => Ok(SlotDrop::AlreadyGone),
            Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) => Ok(SlotDrop::InUse),
            Err(e) => Err(failed(format!("dropping replication slot {slot:?}"), e)),
        }
    }

    /// Try to become the one walhook streaming `slot`: a session-level
    /// advisory lock named after it, held until this session ends.
    pub async fn try_leadership(&self, slot: &str) -> anyhow::Result<bool> {
        Ok(self
            .client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtext('walhook slot ' || $1))",
                &[&slot],
            )
            .await
            .sql("taking the leadership lock (pg_try_advisory_lock)")?
            .get(0))
    }

    /// The server's WAL insert position now (`None` on a standby).
    pub async fn wal_insert_position(&self) -> anyhow::Result<Option<Lsn>> {
        let position: Option<String> = self
            .client
            .query_one(
                "SELECT CASE WHEN pg_is_in_recovery() THEN NULL \
                        ELSE pg_current_wal_insert_lsn()::text END",
                &[],
            )
            .await
            .sql("reading the WAL position")?
            .get(0);
        position
            .map(|p| Lsn::parse(&p).map_err(|e| anyhow!("WAL position {p:?}: {e}")))
            .transpose()
    }

    /// Refuse a slot that is lost or not walhook's, for `setup`.
    pub async fn check_slot_for_setup(&self, slot: &str) -> anyhow::Result<bool> {
        let Some(facts) = self.slot_facts(slot).await? else {
            return Ok(false);
        };
        if let Some(other) = facts.other_database() {
            bail!(
                "{}",
                crate::errors::slot_of_other_database(slot, other, &facts.this_database)
            );
        }
        if facts.plugin.as_deref() != Some("pgoutput") {
            bail!(
                "replication slot {slot:?} exists but uses plugin {:?}, not pgoutput; \
                 choose another [postgres] slot or drop it",
                facts.plugin
            );
        }
        if let Some(cause) = facts.lost {
            return Err(SlotLost {
                slot: slot.to_owned(),
                cause,
            }
            .into());
        }
        Ok(true)
    }

    /// The version and the settings `check` reports for slot features.
    pub async fn server_features(&self) -> anyhow::Result<ServerFeatures> {
        let row = self
            .client
            .query_one(
                "SELECT current_setting('server_version'), \
                        current_setting('server_version_num')::int, pg_is_in_recovery(), \
                        current_setting('idle_replication_slot_timeout', true), \
                        current_setting('synchronized_standby_slots', true), \
                        current_setting('sync_replication_slots', true), \
                        current_setting('hot_standby_feedback'), \
                        coalesce(current_setting('primary_slot_name', true), ''), \
                        CASE WHEN pg_has_role('pg_read_all_settings', 'USAGE') \
                             THEN coalesce(current_setting('primary_conninfo', true), '') END",
                &[],
            )
            .await
            .sql("reading the server's version and replication settings")?;
        Ok(ServerFeatures {
            version: row.get(0),
            version_num: row.get(1),
            in_recovery: row.get(2),
            idle_slot_timeout: row.get(3),
            synchronized_standby_slots: row.get(4),
            sync_replication_slots: row.get(5),
            hot_standby_feedback: row.get(6),
            primary_slot_name: row.get(7),
            primary_conninfo: row.get(8),
        })
    }

    /// The physical replication slots, by name.
    pub async fn physical_slots(&self) -> anyhow::Result<Vec<PhysicalSlot>> {
        let rows = self
            .client
            .query(
                "SELECT slot_name::text, active, xmin IS NOT NULL FROM pg_replication_slots \
                  WHERE slot_type = 'physical' ORDER BY slot_name",
                &[],
            )
            .await
            .sql("reading the physical replication slots")?;
        Ok(rows
            .iter()
            .map(|r| PhysicalSlot {
                name: r.get(0),
                active: r.get(1),
                has_xmin: r.get(2),
            })
            .collect())
    }
}
