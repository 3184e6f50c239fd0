//! The HTTP client every delivery uses: timeouts, no redirects, TLS as
//! `tls` configures it, and a resolver that enforces the target policy on
//! every resolved address.

use std::net::SocketAddr;
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::target_policy::is_public;
use super::tls;
use crate::config::{Concurrency, DeliveryConfig};

/// Builds the HTTP client used for every target. Errors name the TLS key
/// and file at fault (`delivery.ca_file`, `client_cert_file`,
/// `client_key_file`).
pub fn http_client(config: &DeliveryConfig) -> anyhow::Result<reqwest::Client> {
    let (tls, trust) = tls::client_config(config)?;
    tracing::debug!("HTTPS targets: trusting {trust}");
    if let Some(problem) = config
        .client_key_file
        .as_deref()
        .and_then(tls::key_file_exposure)
    {
        tracing::warn!("{problem}");
    }
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(config.connect_timeout)
        .timeout(config.timeout)
        // A redirect is reported as a failure, never followed: the hook's
        // URL is what the DBA configured.
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(match config.concurrency_per_webhook {
            Concurrency::Fixed(n) => n,
            Concurrency::Adaptive => config.max_concurrency_per_webhook,
        })
        .dns_resolver(Arc::new(PolicyResolver {
            allow_private: config.allow_private_targets,
        }))
        .build()?)
}

/// Resolves host names and keeps only the addresses the policy allows, so
/// the check applies to the address actually connected to (a name that
/// resolves to a private address, or re-resolves to one later, is refused).
struct PolicyResolver {
    allow_private: bool,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| allow_private || is_public(&a.ip()))
                .collect();
            if allowed.is_empty() && !addrs.is_empty() {
                let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
                return Err(format!(
                    "refused: {host} resolves only to non-public addresses ({}); set \
                     delivery.allow_private_targets = true to allow them",
                    list.join(", ")
                )
                .into());
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}
