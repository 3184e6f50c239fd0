//! HTTPS to targets: which certificate authorities walhook trusts, the
//! client certificate it presents, and certificate failures in words.
//!
//! # Trust
//!
//! Targets are trusted the way the machine trusts: the system's store, the
//! one `update-ca-certificates` maintains (`/etc/ssl/certs`, or the files
//! `SSL_CERT_FILE` / `SSL_CERT_DIR` name). The compiled-in webpki (Mozilla)
//! roots are used *instead* only when the system has no store at all (a
//! minimal container without the `ca-certificates` package), never together
//! with it: the two lists come from the same Mozilla program, so adding the
//! compiled-in one would only bring back an authority the machine's
//! administrator removed on purpose, and walhook's trust would then differ
//! from every other program's on the machine. `delivery.ca_file` adds
//! the roots of a private CA to whichever list is used.
//!
//! # The rustls configuration
//!
//! Built here with the ring provider named explicitly, so it works whether or
//! not a process-wide default provider was installed, and handed to the
//! HTTP client ready-made, its ALPN included: the protocols offered are set here from `delivery.http_version`: h2 and
//! http/1.1 (`auto`, the target chooses), http/1.1 only (`http1`), or h2
//! only (`http2`).

use std::error::Error as _;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::{AlertDescription, CertificateError, RootCertStore};

use crate::config::{DeliveryConfig, HttpVersion};

/// Where the trusted authorities came from, for `walhook check` and the
/// log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustSummary {
    /// Authorities from the system's store; 0 when it had none and the
    /// webpki roots stood in.
    pub system: usize,
    /// Compiled-in webpki roots used because the system had none.
    pub webpki: usize,
    /// Authorities from `delivery.ca_file`.
    pub ca_file: Option<(PathBuf, usize)>,
    /// The client certificate presented to targets that ask for one.
    pub client_cert: Option<PathBuf>,
}

impl fmt::Display for TrustSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.system > 0 {
            write!(f, "{} CA(s) from the system's store", self.system)?;
        } else {
            write!(
                f,
                "{} compiled-in webpki CA(s) (the system has no CA store)",
                self.webpki
            )?;
        }
        if let Some((path, n)) = &self.ca_file {
            write!(f, " + {n} from delivery.ca_file {}", path.display())?;
        }
        match &self.client_cert {
            Some(path) => write!(
                f,
                "; client certificate {} for targets that ask for one",
                path.display()
            ),
            None => write!(f, "; no client certificate"),
        }
    }
}

/// The rustls client configuration for HTTPS targets, and what it trusts.
/// Errors name the key and the file at fault.
pub fn client_config(
    config: &DeliveryConfig,
) -> anyhow::Result<(rustls::ClientConfig, TrustSummary)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (roots, mut summary) = trust(config)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("rustls: no usable TLS protocol version")?
        .with_root_certificates(roots);
    let mut tls = match (&config.client_cert_file, &config.client_key_file) {
        (Some(cert_file), Some(key_file)) => {
            let chain = read_certificates(cert_file, "delivery.client_cert_file")?;
            let key = read_private_key(key_file)?;
            summary.client_cert = Some(cert_file.clone());
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| match e {
                    rustls::Error::InconsistentKeys(_) => anyhow::anyhow!(
                        "key delivery.client_key_file: {} is not the private key of the \
                         certificate in delivery.client_cert_file {}",
                        key_file.display(),
                        cert_file.display()
                    ),
                    e => anyhow::anyhow!(
                        "keys delivery.client_cert_file and delivery.client_key_file: {} and {} \
                         cannot be used as a client certificate: {e}",
                        cert_file.display(),
                        key_file.display()
                    ),
                })?
        }
        // Config validation refuses one without the other.
        _ => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = alpn_protocols(config.http_version);
    Ok((tls, summary))
}

/// What the TLS handshake offers for `version`, most preferred first.
fn alpn_protocols(version: HttpVersion) -> Vec<Vec<u8>> {
    let (h2, http1) = (b"h2".to_vec(), b"http/1.1".to_vec());
    match version {
        HttpVersion::Auto => vec![h2, http1],
        HttpVersion::Http1 => vec![http1],
        HttpVersion::Http2 => vec![h2],
    }
}

/// The trusted authorities: the system's (or, without a system store, the
/// webpki roots), plus `delivery.ca_file`.
fn trust(config: &DeliveryConfig) -> anyhow::Result<(RootCertStore, TrustSummary)> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (system, _unusable) = roots.add_parsable_certificates(native.certs);
    let mut webpki = 0;
    if system == 0 {
        // A minimal container without ca-certificates: the compiled-in
        // roots stand in, and the log says so.
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        webpki = roots.len();
        let why: Vec<String> = native.errors.iter().map(|e| e.to_string()).collect();
        tracing::warn!(
            "no CA certificates in the system's store{}; trusting the {webpki} compiled-in \
             webpki roots for HTTPS targets (install ca-certificates to use the system's)",
            if why.is_empty() {
                String::new()
            } else {
                format!(" ({})", why.join("; "))
            }
        );
    }
    let ca_file = match &config.ca_file {
        Some(path) => {
            let certs = read_certificates(path, "delivery.ca_file")?;
            let count = certs.len();
            for (i, cert) in certs.into_iter().enumerate() {
                if let Err(e) = roots.add(cert) {
                    bail!(
                        "key delivery.ca_file: {}: certificate {} is not a usable CA certificate: {e}",
                        path.display(),
                        i + 1
                    );
                }
            }
            Some((path.clone(), count))
        }
        None => None,
    };
    Ok((
        roots,
        TrustSummary {
            system,
            webpki,
            ca_file,
            client_cert: None,
        },
    ))
}

/// The certificates of a PEM file (other sections, such as a key, are
/// skipped); at least one.
fn read_certificates(path: &Path, key: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let shown = path.display();
    let failed = |e: pem::Error| match e {
        pem::Error::Io(e) => anyhow::anyhow!("key {key}: cannot read {shown}: {e}"),
        e => anyhow::anyhow!("key {key}: {shown} is not valid PEM: {e}"),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(failed)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(failed)?;
    if certs.is_empty() {
        bail!("key {key}: {shown} holds no PEM certificate (-----BEGIN CERTIFICATE-----)");
    }
    Ok(certs)
}

/// The private key of `delivery.client_key_file`: PKCS#8, PKCS#1 (RSA) or
/// SEC1 (EC) PEM.
fn read_private_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let shown = path.display();
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::Io(e) => {
            anyhow::anyhow!("key delivery.client_key_file: cannot read {shown}: {e}")
        }
        pem::Error::NoItemsFound => anyhow::anyhow!(
            "key delivery.client_key_file: {shown} holds no PEM private key \
             (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)"
        ),
        e => anyhow::anyhow!("key delivery.client_key_file: {shown} is not valid PEM: {e}"),
    })
}

/// What is wrong with who may read the client key (see
/// [`crate::config::secret_file::exposure`]).
pub fn key_file_exposure(path: &Path) -> Option<String> {
    crate::config::secret_file::exposure(path, "delivery.client_key_file")
}

/// The TLS failure behind a failed request, in words a DBA can act on,
/// naming `host`; `None` when the request did not fail in TLS.
///
/// The rustls error is found by type in the error's chain: hyper and
/// tokio-rustls wrap it in an `io::Error`, whose `source()` skips the
/// wrapped error itself, so each `io::Error` is opened with `get_ref`.
pub fn describe_failure(
    error: &(dyn std::error::Error + 'static),
    host: &str,
    config: &DeliveryConfig,
) -> Option<String> {
    let tls = find_rustls_error(error)?;
    if config.http_version == HttpVersion::Http2
        && matches!(
            tls,
            rustls::Error::AlertReceived(AlertDescription::NoApplicationProtocol)
        )
    {
        // Only h2 was offered, and the target speaks none of it.
        return Some(format!(
            "TLS: {host} does not offer HTTP/2 (delivery.http_version = \"http2\"): set it to \
             \"auto\" to use HTTP/1.1 with targets that do not speak HTTP/2"
        ));
    }
    Some(describe(tls, host, config.client_cert_file.is_some()))
}

fn find_rustls_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        next = match e.downcast_ref::<std::io::Error>() {
            Some(io) => match io.get_ref() {
                Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                None => io.source(),
            },
            None => e.source(),
        };
    }
    None
}

/// A rustls error as a sentence about `host`.
fn describe(error: &rustls::Error, host: &str, has_client_cert: bool) -> String {
    let certificate = format!("TLS: the certificate of {host}");
    match error {
        rustls::Error::InvalidCertificate(e) => match e {
            CertificateError::UnknownIssuer => format!(
                "{certificate} is signed by an unknown authority (add its CA to delivery.ca_file)"
            ),
            CertificateError::NotValidForNameContext { presented, .. } => format!(
                "{certificate} is for another name ({}): the target URL must use a name the \
                 certificate lists",
                if presented.is_empty() {
                    "it names none".to_owned()
                } else {
                    presented
                        .iter()
                        .map(|name| plain_name(name))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
            CertificateError::NotValidForName => format!(
                "{certificate} is for another name: the target URL must use a name the \
                 certificate lists"
            ),
            CertificateError::ExpiredContext { not_after, .. } => format!(
                "{certificate} expired on {} (the target must renew it)",
                date(*not_after)
            ),
            CertificateError::Expired => {
                format!("{certificate} has expired (the target must renew it)")
            }
            CertificateError::NotValidYetContext { not_before, .. } => format!(
                "{certificate} is not valid until {} (check this machine's clock)",
                date(*not_before)
            ),
            CertificateError::NotValidYet => {
                format!("{certificate} is not valid yet (check this machine's clock)")
            }
            CertificateError::Revoked => format!("{certificate} has been revoked"),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                format!("{certificate} is not meant for a server (its extended key usage)")
            }
            CertificateError::BadSignature
            | CertificateError::UnsupportedSignatureAlgorithmContext { .. }
            | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
                format!("{certificate} has a signature walhook cannot verify ({e})")
            }
            e => format!("{certificate} was refused: {e}"),
        },
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => format!(
            "TLS: {host} requires a client certificate (set delivery.client_cert_file and \
             delivery.client_key_file)"
        ),
        rustls::Error::AlertReceived(
            alert @ (AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::HandshakeFailure),
        ) => {
            if has_client_cert {
                format!(
                    "TLS: {host} refused walhook's client certificate from \
                     delivery.client_cert_file ({alert:?}): it must trust the certificate's CA"
                )
            } else {
                format!(
                    "TLS: {host} refused the connection ({alert:?}); if it requires a client \
                     certificate, set delivery.client_cert_file and delivery.client_key_file"
                )
            }
        }
        rustls::Error::AlertReceived(alert) => {
            format!("TLS: {host} ended the handshake ({alert:?})")
        }
        rustls::Error::PeerIncompatible(e) => format!(
            "TLS: {host} supports no TLS version or cipher suite walhook accepts \
             (TLS 1.2 or 1.3 with modern ciphers): {e:?}"
        ),
        e => format!("TLS with {host} failed: {e}"),
    }
}

/// A name from a certificate as the DBA would write it: webpki lists them
/// as `DnsName("example.com")` and `IpAddress(192.0.2.1)`; anything else
/// is shown as it comes.
fn plain_name(presented: &str) -> &str {
    presented
        .strip_prefix("DnsName(\"")
        .and_then(|rest| rest.strip_suffix("\")"))
        .or_else(|| {
            presented
                .strip_prefix("IpAddress(")
                .and_then(|rest| rest.strip_suffix(')'))
        })
        .unwrap_or(presented)
}

/// A certificate time as an RFC 3339 date and time, UTC.
fn date(at: UnixTime) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(at.as_secs());
    humantime::format_rfc3339_seconds(time).to_string()
}

#[cfg(test)]
mod tests;
