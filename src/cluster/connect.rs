//! One NATS connection from `[cluster]`: the servers, how walhook proves
//! who it is (a credentials file or an nkey seed file) and TLS.

use anyhow::Context;
use async_nats::{Client, ConnectOptions};

use crate::config::ClusterConfig;

/// The longest nkey seed file read: a seed is 58 characters; anything much
/// larger is not one, and is not read whole into memory.
const MAX_SEED_FILE_BYTES: u64 = 4096;

/// Connects to the servers of `cluster.nats_urls`, as instance `name`
/// (shown in the servers' connection lists). Fails, naming the URLs and
/// the key at fault, when no server answers within `connect_timeout`.
pub async fn connect(cluster: &ClusterConfig, name: &str) -> anyhow::Result<Client> {
    let mut options = match &cluster.credentials_file {
        Some(path) => ConnectOptions::with_credentials_file(path)
            .await
            .with_context(|| {
                format!(
                    "cluster.credentials_file {}: cannot read it as NATS credentials",
                    path.display()
                )
            })?,
        None => ConnectOptions::new(),
    };
    if let Some(path) = &cluster.nkey_seed_file {
        options = options.nkey(read_seed(path)?);
    }
    if let Some(ca) = &cluster.ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&cluster.client_cert_file, &cluster.client_key_file) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if cluster.requires_tls() {
        options = options.require_tls(true);
    }
    let urls = cluster.nats_urls.join(", ");
    let addrs = cluster
        .nats_urls
        .iter()
        .map(|u| u.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("cluster.nats_urls: {urls}"))?;
    options
        .name(name)
        .connection_timeout(cluster.connect_timeout)
        .connect(addrs)
        .await
        .with_context(|| {
            format!(
                "cannot connect to NATS at {urls} (cluster.nats_urls) within {:?}",
                cluster.connect_timeout
            )
        })
}

/// The seed in an nkey seed file: its first non-empty line, trimmed.
fn read_seed(path: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SEED_FILE_BYTES).read_to_string(&mut text))
        .with_context(|| format!("cluster.nkey_seed_file {}: cannot read it", path.display()))?;
    let seed = text.lines().map(str::trim).find(|l| !l.is_empty());
    match seed {
        Some(seed) if seed.starts_with("SU") => Ok(seed.to_string()),
        _ => anyhow::bail!(
            "cluster.nkey_seed_file {}: no user nkey seed in it (a line starting with \"SU\", as \
             `nk -gen user` writes it)",
            path.display()
        ),
    }
}
