//! Ordinary SQL sessions to PostgreSQL (the replication session is the
//! source's): application_name, timeouts and TLS as configured.
//!
//! # TLS
//!
//! `sslmode` means what it means to libpq, with rustls (ring) doing the TLS:
//!
//! | sslmode       | TLS                         | certificate checked                 |
//! |---------------|-----------------------------|-------------------------------------|
//! | `disable`     | never                       | -                                   |
//! | `prefer`      | when the server offers it   | no                                  |
//! | `require`     | always                      | no                                  |
//! | `verify-ca`   | always                      | chain, against `sslrootcert`        |
//! | `verify-full` | always                      | chain and the host name             |
//!
//! Without `sslrootcert` (or with `sslrootcert=system`) the chain is checked
//! against the webpki (Mozilla) roots, as the replication session does.
//! Unix-socket hosts never use TLS (the server does not offer it there, and
//! libpq does not try it).

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::config::SslMode as PgSslMode;

use crate::config::{Connection, SslMode};

/// An open SQL session: the client, and a handle that ends its connection
/// at once (every waiting statement then fails as on a closed connection).
pub struct SqlSession {
    pub client: tokio_postgres::Client,
    pub cut: tokio::task::AbortHandle,
}

/// Open an ordinary SQL session (application_name, timeouts, TLS as
/// configured).
pub async fn connect_sql(conn: &Connection) -> anyhow::Result<SqlSession> {
    let mut config = conn.sql_config();
    let target = || format!("{conn:?} (sslmode={})", mode_name(conn.sslmode));
    let tls = client_tls_config(conn)
        .with_context(|| format!("connecting to PostgreSQL at {}", target()))?;
    match tls {
        None => {
            config.ssl_mode(PgSslMode::Disable);
            let (client, connection) = config
                .connect(tokio_postgres::NoTls)
                .await
                .with_context(|| format!("connecting to PostgreSQL at {}", target()))?;
            let cut = spawn_connection(connection);
            Ok(SqlSession { client, cut })
        }
        Some(tls) => {
            config.ssl_mode(match conn.sslmode {
                SslMode::Prefer => PgSslMode::Prefer,
                _ => PgSslMode::Require,
            });
            let connector = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
            let (client, connection) = match config.connect(connector).await {
                Ok(pair) => pair,
                Err(e) => {
                    let hint = tls_hint(&e, conn);
                    return Err(anyhow::Error::new(e)
                        .context(format!("connecting to PostgreSQL at {}{hint}", target())));
                }
            };
            let cut = spawn_connection(connection);
            Ok(SqlSession { client, cut })
        }
    }
}

/// The rustls client configuration for `conn`, or `None` when the session
/// goes without TLS (sslmode=disable, or a Unix-socket host).
///
/// Errors name the `sslrootcert` file when it cannot be read or holds no
/// usable certificate.
pub fn client_tls_config(conn: &Connection) -> anyhow::Result<Option<rustls::ClientConfig>> {
    if conn.sslmode == SslMode::Disable || is_unix_socket(&conn.host) {
        return Ok(None);
    }
    // The process installs ring as the default provider in main; naming it
    // here keeps this usable from tests and tools that do not go through
    // main.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("rustls: no usable TLS protocol version")?;
    let verifier: Arc<dyn ServerCertVerifier> = match conn.sslmode {
        SslMode::Disable => unreachable!("handled above"),
        SslMode::Prefer | SslMode::Require => Arc::new(AcceptAnyCertificate {
            provider: Arc::clone(&provider),
        }),
        SslMode::VerifyCa => Arc::new(ChainOnly(webpki_verifier(conn, &provider)?)),
        SslMode::VerifyFull => webpki_verifier(conn, &provider)?,
    };
    Ok(Some(
        builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    ))
}

fn mode_name(mode: SslMode) -> &'static str {
    match mode {
        SslMode::Disable => "disable",
        SslMode::Prefer => "prefer",
        SslMode::Require => "require",
        SslMode::VerifyCa => "verify-ca",
        SslMode::VerifyFull => "verify-full",
    }
}

/// libpq (and tokio-postgres) treat a host starting with `/` as the
/// directory of a Unix socket.
fn is_unix_socket(host: &str) -> bool {
    host.starts_with('/')
}

fn spawn_connection<S, T>(connection: tokio_postgres::Connection<S, T>) -> tokio::task::AbortHandle
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!("SQL session ended: {e}");
        }
    })
    .abort_handle()
}

/// The trust anchors: the `sslrootcert` file, or the webpki roots when it
/// is unset or `system`.
fn root_store(conn: &Connection) -> anyhow::Result<RootCertStore> {
    let path = match &conn.sslrootcert {
        Some(p) if p.as_os_str() != "system" => p,
        _ => {
            return Ok(RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            })
        }
    };
    load_roots(path)
}

/// Read a PEM file of CA certificates. The errors are plain messages (no
/// `io::Error` in the chain): a bad file needs the operator, not a retry.
fn load_roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let shown = path.display();
    let unreadable = |e: pem::Error| match e {
        pem::Error::Io(e) => {
            anyhow::anyhow!("postgres.url: sslrootcert {shown} cannot be read: {e}")
        }
        e => anyhow::anyhow!("postgres.url: sslrootcert {shown} is not valid PEM: {e}"),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(unreadable)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(unreadable)?;
    if certs.is_empty() {
        bail!("postgres.url: sslrootcert {shown} holds no PEM certificate (-----BEGIN CERTIFICATE-----)");
    }
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        if let Err(e) = roots.add(cert) {
            bail!(
                "postgres.url: sslrootcert {shown}: certificate {} is not a usable CA certificate: {e}",
                i + 1
            );
        }
    }
    Ok(roots)
}

fn webpki_verifier(
    conn: &Connection,
    provider: &Arc<CryptoProvider>,
) -> anyhow::Result<Arc<WebPkiServerVerifier>> {
    let roots = root_store(conn)?;
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .build()
        .map_err(|e| anyhow::anyhow!("postgres.url: cannot build the certificate verifier: {e}"))
}

/// sslmode=prefer and sslmode=require: libpq documents these as "encrypt,
/// but do not verify the server's identity" (without a root certificate,
/// the chain and host name are not checked). The handshake signatures are
/// still verified, so the session really is keyed to the certificate the
/// server presented.
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// sslmode=verify-ca: the chain must lead to a trusted root (and be valid
/// now), but the host name is not compared with the certificate. rustls
/// checks the name last, after the chain, so a name mismatch reaching us
/// means everything else passed.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.0.root_hint_subjects()
    }
}

/// A sentence that says what to do about a failed certificate check, or
/// "" for any other failure.
fn tls_hint(error: &tokio_postgres::Error, conn: &Connection) -> String {
    let Some(rustls_error) = find_rustls_error(error) else {
        return String::new();
    };
    let roots = || match &conn.sslrootcert {
        Some(p) if p.as_os_str() != "system" => format!("sslrootcert {}", p.display()),
        _ => "the webpki (Mozilla) roots; set sslrootcert to your CA's PEM file".to_owned(),
    };
    match rustls_error {
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            ": the server certificate does not name host {:?} (connect by a name the \
             certificate lists, or use sslmode=verify-ca to check only the chain)",
            conn.host
        ),
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
            ": the server certificate is not signed by a CA in {}",
            roots()
        ),
        rustls::Error::InvalidCertificate(e) => {
            format!(": the server certificate was rejected ({e})")
        }
        _ => String::new(),
    }
}

/// The rustls error behind a failed TLS handshake, if that is what failed.
/// tokio-rustls wraps it in an `io::Error`, whose `source()` skips the
/// wrapped error itself, so look inside with `get_ref`.
fn find_rustls_error(error: &tokio_postgres::Error) -> Option<&rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = next {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(r);
            }
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn connection(url: &str) -> Connection {
        Config::parse(&format!("[postgres]\nurl = {url:?}\n"))
            .unwrap()
            .connection()
            .unwrap()
    }

    #[test]
    fn disable_and_unix_sockets_go_without_tls() {
        let conn = connection("postgres://u@db.example/app?sslmode=disable");
        assert!(client_tls_config(&conn).unwrap().is_none());
        let conn = connection("host=/var/run/postgresql user=u sslmode=require");
        assert!(client_tls_config(&conn).unwrap().is_none());
    }

    #[test]
    fn every_tls_mode_builds_a_config() {
        for mode in ["prefer", "require", "verify-ca", "verify-full"] {
            let conn = connection(&format!("postgres://u@db.example/app?sslmode={mode}"));
            assert!(client_tls_config(&conn).unwrap().is_some(), "{mode}");
        }
        let conn = connection("postgres://u@db.example/app?sslmode=verify-full&sslrootcert=system");
        assert!(client_tls_config(&conn).unwrap().is_some());
    }

    #[test]
    fn a_bad_sslrootcert_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let conn = connection(&format!(
            "postgres://u@db.example/app?sslmode=verify-ca&sslrootcert={}",
            missing.display()
        ));
        let e = format!("{:#}", client_tls_config(&conn).unwrap_err());
        assert!(e.contains(&*missing.to_string_lossy()), "{e}");

        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let conn = connection(&format!(
            "postgres://u@db.example/app?sslmode=verify-full&sslrootcert={}",
            junk.display()
        ));
        let e = format!("{:#}", client_tls_config(&conn).unwrap_err());
        assert!(
            e.contains(&*junk.to_string_lossy()) && e.contains("no PEM certificate"),
            "{e}"
        );
    }

    /// Every certificate of a bundle is a root, other PEM sections (a key)
    /// are skipped, and a cut-off or undecodable section is refused.
    #[test]
    fn sslrootcert_bundles() {
        let ca = |name: &str| {
            let mut params = rcgen::CertificateParams::default();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let key = rcgen::KeyPair::generate().unwrap();
            (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
        };
        let (one, one_key) = ca("one");
        let (two, _) = ca("two");
        let dir = tempfile::tempdir().unwrap();

        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, format!("{one_key}{one}some text\n{two}")).unwrap();
        assert_eq!(load_roots(&bundle).unwrap().len(), 2);

        let cut = dir.path().join("cut.pem");
        std::fs::write(&cut, &one[..one.len() / 2]).unwrap();
        let e = format!("{:#}", load_roots(&cut).unwrap_err());
        assert!(e.contains("cut.pem is not valid PEM"), "{e}");

        let bad = dir.path().join("bad.pem");
        let body = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        std::fs::write(&bad, body).unwrap();
        let e = format!("{:#}", load_roots(&bad).unwrap_err());
        assert!(e.contains("bad.pem is not valid PEM"), "{e}");

        let e = format!("{:#}", load_roots(dir.path()).unwrap_err());
        assert!(e.contains("cannot be read"), "{e}");
    }
}
