//! Registry snapshots: the hooks as they stood at a position of the
//! stream, so a restart matches replayed changes against the hooks of
//! their time, not of now.
//!
//! `registry_snapshot` holds, by position, either a full snapshot (a JSON
//! array of rows: what `setup` seeds, and what compaction writes) or the
//! rows changed up to that position (an object `{"changed": [rows],
//! "removed": [ids]}`). Writing only what changed keeps each write in
//! proportion to the change, whatever the size of the table; compaction
//! folds the records up to the slot's confirmed position into one full
//! snapshot there, so they never pile up.

use std::collections::BTreeMap;

use super::{SqlResult, Store};
use crate::events::WebhookRow;
use crate::pgoutput::Lsn;

/// A row recorded in a snapshot, with its webhook_id.
fn as_row(value: &serde_json::Value) -> Option<(String, WebhookRow)> {
    let object = value.as_object()?;
    let row = WebhookRow(
        object
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().map(str::to_owned)))
            .collect(),
    );
    let id = row.0.get("webhook_id").cloned().flatten()?;
    Some((id, row))
}

impl Store {
    /// The hooks as they stood at `position`: the newest full snapshot at
    /// or before it, with the changes recorded after it up to `position`
    /// applied; `None` when there is none. The state found is written
    /// back as one full snapshot and older ones are pruned (a restart
    /// never goes back before it); a failure of that write is only
    /// logged: the rows recorded still give the same state.
    pub async fn snapshot_at(
        &self,
        position: Lsn,
    ) -> anyhow::Result<Option<(Lsn, Vec<WebhookRow>)>> {
        let snapshots = self.table("registry_snapshot");
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT lsn::text, hooks FROM {snapshots} \
                      WHERE lsn <= $1::text::pg_lsn \
                        AND lsn >= coalesce((SELECT max(lsn) FROM {snapshots} \
                                              WHERE lsn <= $1::text::pg_lsn \
                                                AND jsonb_typeof(hooks) = 'array'), '0/0') \
                      ORDER BY lsn"
                ),
                &[&position.to_string()],
            )
            .await
            .sql("reading the registry snapshot")?;
        let mut state: Option<(Lsn, BTreeMap<String, WebhookRow>)> = None;
        let mut deltas = 0;
        for row in rows {
            let lsn: String = row.get(0);
            let lsn = Lsn::parse(&lsn).map_err(|e| anyhow::anyhow!("snapshot position: {e}"))?;
            let hooks: serde_json::Value = row.get(1);
            match (&mut state, hooks) {
                (_, serde_json::Value::Array(full)) => {
                    state = Some((lsn, full.iter().filter_map(as_row).collect()));
                }
                (Some((at, rows)), serde_json::Value::Object(delta)) => {
                    for changed in delta
                        .get("changed")
                        .and_then(|c| c.as_array())
                        .into_iter()
                        .flatten()
                    {
                        if let Some((id, row)) = as_row(changed) {
                            rows.insert(id, row);
                        }
                    }
                    for removed in delta
                        .get("removed")
                        .and_then(|r| r.as_array())
                        .into_iter()
                        .flatten()
                    {
                        if let Some(id) = removed.as_str() {
                            rows.remove(id);
                        }
                    }
                    *at = lsn;
                    deltas += 1;
                }
                // Changes recorded before any full snapshot (none to apply
                // them to: a full one is seeded first), or a value no
                // version wrote: nothing to apply.
                _ => {}
            }
        }
        let Some((lsn, rows)) = state else {
            return Ok(None);
        };
        let rows: Vec<WebhookRow> = rows.into_values().collect();
        if let Err(e) = self.compact(lsn, &rows, deltas).await {
            tracing::warn!(
                "compacting the registry snapshots at {lsn}: {e:#}; the changes stay recorded \
                 one by one"
            );
        }
        Ok(Some((lsn, rows)))
    }

    /// Write `rows` as the full snapshot at `lsn` (when changes were
    /// folded into it) and remove every older record.
    async fn compact(&self, lsn: Lsn, rows: &[WebhookRow], deltas: usize) -> anyhow::Result<()> {
        let snapshots = self.table("registry_snapshot");
        if deltas > 0 {
            let full = serde_json::Value::Array(
                rows.iter()
                    .map(|r| serde_json::to_value(&r.0).unwrap_or_default())
                    .collect(),
            );
            self.client
                .execute(
                    &format!("UPDATE {snapshots} SET hooks = $2 WHERE lsn = $1::text::pg_lsn"),
                    &[&lsn.to_string(), &full],
                )
                .await
                .sql("writing the registry snapshot")?;
        }
        self.client
            .execute(
                &format!("DELETE FROM {snapshots} WHERE lsn < $1::text::pg_lsn"),
                &[&lsn.to_string()],
            )
            .await
            .sql("pruning old registry snapshots")?;
        Ok(())
    }

    /// Fold the changes recorded up to the slot's confirmed position into
    /// one full snapshot there, so the records cost in proportion to the
    /// changes since, not to every change ever made. Best effort: a
    /// failure is logged and the records stay as they are.
    pub async fn compact_snapshots(&self, slot: &str) {
        let confirmed = self
            .client
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots \
                  WHERE slot_name = $1 AND confirmed_flush_lsn IS NOT NULL",
                &[&slot],
            )
            .await;
        let confirmed = match confirmed {
            Ok(Some(row)) => Lsn::parse(&row.get::<_, String>(0)).ok(),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!("reading the slot's position to compact registry snapshots: {e}");
                None
            }
        };
        if let Some(confirmed) = confirmed {
            if let Err(e) = self.snapshot_at(confirmed).await {
                tracing::warn!("compacting the registry snapshots: {e:#}");
            }
        }
    }

    /// Record the rows a transaction ending at `lsn` (or several, up to
    /// it) changed: `Some` the row as it stands, `None` removed. Only the
    /// changed rows are written, whatever the size of the table.
    pub async fn write_snapshot(
        &self,
        lsn: Lsn,
        changes: impl IntoIterator<Item = (i32, Option<&WebhookRow>)>,
    ) -> anyhow::Result<()> {
        let mut changed = Vec::new();
        let mut removed = Vec::new();
        for (id, row) in changes {
            match row {
                Some(row) => changed.push(serde_json::to_value(&row.0).unwrap_or_default()),
                None => removed.push(serde_json::Value::from(id.to_string())),
            }
        }
        let delta = serde_json::json!({ "changed": changed, "removed": removed });
        self.client
            .execute(
                &format!(
                    "INSERT INTO {} (lsn, hooks) VALUES ($1::text::pg_lsn, $2) \
                     ON CONFLICT (lsn) DO UPDATE SET hooks = EXCLUDED.hooks",
                    self.table("registry_snapshot")
                ),
                &[&lsn.to_string(), &delta],
            )
            .await
            .sql("writing the registry snapshot")?;
        Ok(())
    }

    /// Forget every snapshot: they describe positions of a slot that no
    /// longer exists. A missing table (walhook not set up) is fine.
    pub async fn clear_snapshots(&self) -> anyhow::Result<()> {
        let snapshots = self.table("registry_snapshot");
        let present: bool = self
            .client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&snapshots])
            .await
            .sql(format!(
                "looking for {}",
                self.table_name("registry_snapshot")
            ))?
            .get(0);
        if present {
            self.client
                .execute(&format!("DELETE FROM {snapshots}"), &[])
                .await
                .sql(format!(
                    "clearing {} (positions of an earlier slot)",
                    self.table_name("registry_snapshot")
                ))?;
        }
        Ok(())
    }

    /// Record the hooks as they stand at the slot's position when no
    /// snapshot exists yet, so a restart can match replayed changes
    /// against them.
    pub async fn seed_snapshot(&self, slot: &str) -> anyhow::Result<()> {
        let snapshots = self.table("registry_snapshot");
        let webhook = self.table("webhook");
        let row = super::webhooks::row_as_jsonb("w");
        let sql = format!(
            "INSERT INTO {snapshots} (lsn, hooks) \
             SELECT r.confirmed_flush_lsn, \
                    coalesce((SELECT jsonb_agg({row}) FROM {webhook} w), '[]'::jsonb) \
               FROM pg_replication_slots r \
              WHERE r.slot_name = $1 AND r.confirmed_flush_lsn IS NOT NULL \
                AND NOT EXISTS (SELECT 1 FROM {snapshots}) \
             ON CONFLICT (lsn) DO NOTHING"
        );
        self.client
            .execute(&sql, &[&slot])
            .await
            .sql("recording the hooks at the slot's position")?;
        Ok(())
    }
}
