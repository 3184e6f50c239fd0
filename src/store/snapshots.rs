//! Registry snapshots: the hooks as they stood at a position of the
//! stream, so a restart matches replayed changes against the hooks of
//! their time, not of now.

use super::{SqlResult, Store};
use crate::events::WebhookRow;
use crate::pgoutput::Lsn;

impl Store {
    /// The hooks of the newest snapshot at or before `position` (older
    /// ones are pruned: a restart never goes back before it), or `None`
    /// when there is none.
    pub async fn snapshot_at(
        &self,
        position: Lsn,
    ) -> anyhow::Result<Option<(Lsn, Vec<WebhookRow>)>> {
        let snapshots = self.table("registry_snapshot");
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT lsn::text, hooks FROM {snapshots} \
                      WHERE lsn <= $1::text::pg_lsn ORDER BY lsn DESC LIMIT 1"
                ),
                &[&position.to_string()],
            )
            .await
            .sql("reading the registry snapshot")?;
        let Some(row) = row else {
            return Ok(None);
        };
        let lsn: String = row.get(0);
        let hooks: serde_json::Value = row.get(1);
        self.client
            .execute(
                &format!("DELETE FROM {snapshots} WHERE lsn < $1::text::pg_lsn"),
                &[&lsn],
            )
            .await
            .sql("pruning old registry snapshots")?;
        let rows = hooks
            .as_array()
            .map(|a| a.as_slice())
            .unwrap_or_default()
            .iter()
            .filter_map(|h| h.as_object())
            .map(|h| {
                WebhookRow(
                    h.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().map(str::to_owned)))
                        .collect(),
                )
            })
            .collect();
        let lsn = Lsn::parse(&lsn).map_err(|e| anyhow::anyhow!("snapshot position: {e}"))?;
        Ok(Some((lsn, rows)))
    }

    /// Record the hooks as they stand after the transaction ending at
    /// `lsn`.
    pub async fn write_snapshot(
        &self,
        lsn: Lsn,
        rows: impl IntoIterator<Item = &WebhookRow>,
    ) -> anyhow::Result<()> {
        let hooks = serde_json::Value::Array(
            rows.into_iter()
                .map(|r| serde_json::to_value(&r.0).unwrap_or_default())
                .collect(),
        );
        self.client
            .execute(
                &format!(
                    "INSERT INTO {} (lsn, hooks) VALUES ($1::text::pg_lsn, $2) \
                     ON CONFLICT (lsn) DO UPDATE SET hooks = EXCLUDED.hooks",
                    self.table("registry_snapshot")
                ),
                &[&lsn.to_string(), &hooks],
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
