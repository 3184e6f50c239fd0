//! `walhook webhook condition|columns`: a hook's condition and the columns
//! it may see, validated here as the daemon will read them, and written
//! to `webhook_control` so the daemon applies them in commit order.

use super::{connect, invalid, no_such_webhook};
use crate::cli::exit;
use crate::config::Config;
use crate::registry::condition::Condition;
use crate::registry::{column_list_json, ColumnFilter, Webhook};

pub async fn condition(config: &Config, id: i32, text: Option<&str>) -> anyhow::Result<u8> {
    let parsed = text
        .map(Condition::parse)
        .transpose()
        .map_err(|e| invalid(format!("webhook_id {id}: {e}")))?;
    let store = connect(config).await?;
    if !store.set_condition(id, text).await? {
        return Err(no_such_webhook(&store, id));
    }
    match &parsed {
        Some(c) => {
            println!("webhook_id {id}: only rows where {}", c.source());
            let hook = store
                .webhook_rows()
                .await?
                .iter()
                .filter_map(|r| Webhook::from_row(r).ok())
                .find(|h| h.id == id);
            match crate::setup::published_tables(&store, config).await {
                Ok(tables) => {
                    if let Some(warning) = crate::setup::old_columns_warning(
                        id,
                        c.old_columns(),
                        hook.as_ref(),
                        &tables,
                        config,
                    ) {
                        eprintln!("warning: {warning}");
                    }
                }
                Err(e) => eprintln!("warning: the tables' REPLICA IDENTITY was not checked: {e:#}"),
            }
        }
        None => println!("webhook_id {id}: no condition"),
    }
    Ok(exit::OK)
}

pub async fn columns(
    config: &Config,
    id: i32,
    only: Option<&str>,
    except: Option<&str>,
) -> anyhow::Result<u8> {
    let list = |text: &str| {
        ColumnFilter::parse_list(text)
            .map(|names| column_list_json(&names))
            .map_err(|e| invalid(format!("webhook_id {id}: {e}")))
    };
    let only = only.map(list).transpose()?;
    let except = except.map(list).transpose()?;
    let store = connect(config).await?;
    if !store
        .set_columns(id, only.as_deref(), except.as_deref())
        .await?
    {
        return Err(no_such_webhook(&store, id));
    }
    match (&only, &except) {
        (Some(names), _) => println!("webhook_id {id}: only the columns {names} and the key's"),
        (_, Some(names)) => {
            println!("webhook_id {id}: every column but {names} (the key's always)")
        }
        _ => println!("webhook_id {id}: every column"),
    }
    Ok(exit::OK)
}
