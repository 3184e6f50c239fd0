//! Several walhook instances on one host (walhook@.service, one per
//! database): which one `check` and `status` speak for, and what two of
//! them cannot share. A slot's name is cluster-wide (that check is in
//! [`check`](super::check), where the slot is read); the metrics port is
//! host-wide.

use std::path::PathBuf;

use super::line::{CheckLevel, CheckLine};
use crate::config::Config;

/// Set by walhook@.service to the instance's name (`%i`).
pub const INSTANCE_VAR: &str = "WALHOOK_INSTANCE";

/// The instance named by WALHOOK_INSTANCE, if it is set.
pub fn instance_from_env() -> anyhow::Result<Option<String>> {
    std::env::var_os(INSTANCE_VAR)
        .map(instance_name)
        .transpose()
}

/// The instance's name from WALHOOK_INSTANCE's value, refused when it
/// cannot name a file under /etc/walhook.
fn instance_name(value: std::ffi::OsString) -> anyhow::Result<String> {
    let name = value.into_string().map_err(|_| {
        anyhow::anyhow!(
            "{INSTANCE_VAR} is not valid UTF-8: set it to the instance's name, e.g. crm"
        )
    })?;
    // The name becomes a file name under /etc/walhook.
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        anyhow::bail!(
            "{INSTANCE_VAR}={name:?} is not an instance name: set it to the name of \
             walhook@NAME.service (e.g. crm, for /etc/walhook/crm.toml), or unset it"
        );
    }
    Ok(name)
}

/// The config file of instance `name`, as walhook@.service reads it.
pub fn instance_config(name: &str) -> PathBuf {
    PathBuf::from(format!("/etc/walhook/{name}.toml"))
}

/// The first line of `check` and `status` for an instance.
pub fn instance_line(name: &str, config_path: Option<&std::path::Path>) -> String {
    match config_path {
        Some(path) => format!("instance {name} ({})", path.display()),
        None => format!("instance {name}"),
    }
}

/// Whether metrics.listen is free, so the daemon can bind it. Taken by
/// another process, it is most likely another instance's port: the daemon
/// would refuse to start. `daemon_running` (this config's slot is being
/// streamed) means this instance's own daemon holds it, which is fine.
pub fn check_metrics_listen(config: &Config, daemon_running: bool) -> Option<CheckLine> {
    let addr = config.metrics.listen?;
    let line = |level, text| Some(CheckLine { level, text });
    match std::net::TcpListener::bind(addr) {
        Ok(_) => line(CheckLevel::Ok, format!("metrics.listen {addr} is free")),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && daemon_running => line(
            CheckLevel::Ok,
            format!("metrics.listen {addr} is in use, by this config's running daemon"),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => line(
            CheckLevel::Warn,
            format!(
                "metrics.listen {addr} is already in use by another process (another walhook \
                 instance?) while this config's daemon is not running: it would fail to start. \
                 Give each instance its own port (e.g. 127.0.0.1:{}) or leave metrics.listen \
                 unset",
                addr.port().checked_add(1).unwrap_or(9188)
            ),
        ),
        Err(e) => line(
            CheckLevel::Warn,
            format!("metrics.listen {addr}: cannot listen there: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_name_is_a_file_name_under_etc_walhook() {
        let name = instance_name("crm".into()).unwrap();
        assert_eq!(
            instance_config(&name),
            PathBuf::from("/etc/walhook/crm.toml")
        );
        assert_eq!(
            instance_line(&name, Some(&instance_config(&name))),
            "instance crm (/etc/walhook/crm.toml)"
        );
        for bad in ["", "../etc/shadow", "a/b", ".hidden"] {
            let e = instance_name(bad.into()).unwrap_err().to_string();
            assert!(
                e.contains("WALHOOK_INSTANCE") && e.contains("e.g. crm"),
                "{e}"
            );
        }
    }
}
