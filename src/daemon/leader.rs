//! Leadership: only one walhook streams a slot, the one holding a
//! session-level advisory lock named after it. Others wait here as
//! standbys and take over when the leader's session ends (its process
//! exits or dies).

use std::time::Duration;

use tokio::sync::watch;

use crate::store::Store;

/// How often a standby tries to take over.
const STANDBY_POLL: Duration = Duration::from_secs(2);

/// Return once this process leads `slot`, or when shutdown comes.
pub(super) async fn wait_for_leadership(
    store: &Store,
    slot: &str,
    shutdown: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut announced = false;
    loop {
        if store.try_leadership(slot).await? {
            if announced {
                tracing::info!(slot, "leader gone: taking over");
            }
            return Ok(());
        }
        if !announced {
            tracing::info!(
                slot,
                "standby: another walhook streams this slot; waiting to take over"
            );
            let _ = sd_notify::notify(
                false,
                &[sd_notify::NotifyState::Status(
                    "standby: another walhook streams the slot",
                )],
            );
            announced = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(STANDBY_POLL) => {}
            _ = shutdown.changed() => return Ok(()),
        }
    }
}
