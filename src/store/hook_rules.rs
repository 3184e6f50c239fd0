//! A hook's condition and the columns it may see, in `webhook_control`
//! beside its other settings, so the daemon applies them in commit order.

use super::{SqlResult, Store};

impl Store {
    /// Set or clear hook `id`'s condition; false when there is no such hook.
    pub async fn set_condition(&self, id: i32, condition: Option<&str>) -> anyhow::Result<bool> {
        let sql = format!(
            "INSERT INTO {control} AS c (webhook_id, condition, updated) \
             SELECT webhook_id, $2, now() FROM {webhook} WHERE webhook_id = $1 \
             ON CONFLICT (webhook_id) DO UPDATE SET condition = $2, updated = now()",
            webhook = self.table("webhook"),
            control = self.table("webhook_control"),
        );
        let n = self
            .client
            .execute(&sql, &[&id, &condition])
            .await
            .sql(format!("setting the condition of webhook_id {id}"))?;
        Ok(n > 0)
    }

    /// Set hook `id`'s column lists (JSON arrays; at most one set, both
    /// `None` clears); false when there is no such hook.
    pub async fn set_columns(
        &self,
        id: i32,
        only: Option<&str>,
        except: Option<&str>,
    ) -> anyhow::Result<bool> {
        let sql = format!(
            "INSERT INTO {control} AS c (webhook_id, columns_only, columns_except, updated) \
             SELECT webhook_id, $2::text::jsonb, $3::text::jsonb, now() FROM {webhook} \
              WHERE webhook_id = $1 \
             ON CONFLICT (webhook_id) DO UPDATE SET columns_only = $2::text::jsonb, \
                 columns_except = $3::text::jsonb, updated = now()",
            webhook = self.table("webhook"),
            control = self.table("webhook_control"),
        );
        let n = self
            .client
            .execute(&sql, &[&id, &only, &except])
            .await
            .sql(format!("setting the columns of webhook_id {id}"))?;
        Ok(n > 0)
    }
}
