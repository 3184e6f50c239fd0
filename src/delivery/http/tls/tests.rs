//! The TLS configuration against real handshakes, in memory: certificates
//! from a CA made here, walhook's client configuration on one side and a
//! rustls server on the other, and the words each failure comes out as.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConnection, RootCertStore, ServerConnection};

use walhook_lab::ca::Ca;

use super::*;

/// A client certificate for `name` from `ca`: (certificate PEM, key PEM).
fn client(ca: &Ca, name: &str) -> (String, String) {
    let issued = ca.client_cert(name);
    (issued.cert_pem, issued.key_pem)
}

/// Files in a temporary directory.
struct Files(tempfile::TempDir);

impl Files {
    fn new() -> Files {
        Files(tempfile::tempdir().unwrap())
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn server_config(cert_pem: &str, key_pem: &str, client_ca: Option<&Ca>) -> rustls::ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(CertificateDer::from(ca.der())).unwrap();
            builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .unwrap(),
            )
        }
    };
    builder.with_single_cert(chain, key).unwrap()
}

/// A whole handshake (and, for TLS 1.3, the server's verdict on the
/// client's certificate) between walhook's configuration for `config` and
/// `server`, connecting to `name`: the protocol agreed by ALPN, or the
/// error the client sees.
fn handshake(
    config: &DeliveryConfig,
    server: rustls::ServerConfig,
    name: &str,
) -> Result<Option<Vec<u8>>, rustls::Error> {
    let (client, _) = client_config(config).unwrap();
    let mut client = ClientConnection::new(
        Arc::new(client),
        ServerName::try_from(name.to_owned()).unwrap(),
    )
    .unwrap();
    let mut server = ServerConnection::new(Arc::new(server)).unwrap();
    for _ in 0..10 {
        let mut wire = Vec::new();
        client.write_tls(&mut wire).unwrap();
        let mut rest = &wire[..];
        while !rest.is_empty() {
            server.read_tls(&mut rest).unwrap();
            // A refusal is sent to the client as an alert, below.
            if server.process_new_packets().is_err() {
                break;
            }
        }
        let mut wire = Vec::new();
        server.write_tls(&mut wire).unwrap();
        let mut rest = &wire[..];
        while !rest.is_empty() {
            client.read_tls(&mut rest).unwrap();
            client.process_new_packets()?;
        }
        if !client.is_handshaking() && !server.is_handshaking() && !server.wants_write() {
            return Ok(client.alpn_protocol().map(<[u8]>::to_vec));
        }
    }
    panic!("the handshake did not finish");
}

fn config_with(tune: impl FnOnce(&mut DeliveryConfig)) -> DeliveryConfig {
    let mut config = DeliveryConfig::default();
    tune(&mut config);
    config
}

fn words(error: rustls::Error, config: &DeliveryConfig) -> String {
    let wrapped = io::Error::new(io::ErrorKind::InvalidData, error);
    describe_failure(&wrapped, "localhost", config).expect("a TLS failure")
}

#[test]
fn a_certificate_from_ca_file_is_trusted() {
    let ca = Ca::new("test CA");
    let (cert, key) = ca.server_cert(&["localhost", "127.0.0.1"]);
    let files = Files::new();
    let config = config_with(|c| c.ca_file = Some(files.write("ca.pem", &ca.pem())));
    handshake(&config, server_config(&cert, &key, None), "localhost").unwrap();
    handshake(&config, server_config(&cert, &key, None), "127.0.0.1").unwrap();

    let (_, trust) = client_config(&config).unwrap();
    assert_eq!(trust.ca_file.as_ref().map(|(_, n)| *n), Some(1));
    assert!(
        trust.to_string().contains("from delivery.ca_file"),
        "{trust}"
    );
}

#[test]
fn an_unknown_authority_is_named_with_the_fix() {
    let ca = Ca::new("test CA");
    let (cert, key) = ca.server_cert(&["localhost"]);
    let config = DeliveryConfig::default();
    let error = handshake(&config, server_config(&cert, &key, None), "localhost").unwrap_err();
    assert_eq!(
        words(error, &config),
        "TLS: the certificate of localhost is signed by an unknown authority (add its CA to \
         delivery.ca_file)"
    );
}

#[test]
fn a_certificate_for_another_name_says_which() {
    let ca = Ca::new("test CA");
    let (cert, key) = ca.server_cert(&["elsewhere.example", "192.0.2.1"]);
    let files = Files::new();
    let config = config_with(|c| c.ca_file = Some(files.write("ca.pem", &ca.pem())));
    let error = handshake(&config, server_config(&cert, &key, None), "localhost").unwrap_err();
    assert_eq!(
        words(error, &config),
        "TLS: the certificate of localhost is for another name (elsewhere.example, \
         192.0.2.1): the target URL must use a name the certificate lists"
    );
}

#[test]
fn an_expired_certificate_says_when() {
    let ca = Ca::new("test CA");
    let (cert, key) = ca.expired_server_cert(&["localhost"]);
    let files = Files::new();
    let config = config_with(|c| c.ca_file = Some(files.write("ca.pem", &ca.pem())));
    let error = handshake(&config, server_config(&cert, &key, None), "localhost").unwrap_err();
    assert_eq!(
        words(error, &config),
        "TLS: the certificate of localhost expired on 2021-01-01T00:00:00Z (the target must \
         renew it)"
    );
}

#[test]
fn client_certificates_are_presented_when_asked_for() {
    let ca = Ca::new("test CA");
    let client_ca = Ca::new("client CA");
    let (cert, key) = ca.server_cert(&["localhost"]);
    let (client_cert, client_key) = client(&client_ca, "walhook");
    let files = Files::new();
    let ca_file = files.write("ca.pem", &ca.pem());

    let without = config_with(|c| c.ca_file = Some(ca_file.clone()));
    let error = handshake(
        &without,
        server_config(&cert, &key, Some(&client_ca)),
        "localhost",
    )
    .unwrap_err();
    assert_eq!(
        words(error, &without),
        "TLS: localhost requires a client certificate (set delivery.client_cert_file and \
         delivery.client_key_file)"
    );

    let with = config_with(|c| {
        c.ca_file = Some(ca_file.clone());
        c.client_cert_file = Some(files.write("client.pem", &client_cert));
        c.client_key_file = Some(files.write("client.key", &client_key));
    });
    handshake(
        &with,
        server_config(&cert, &key, Some(&client_ca)),
        "localhost",
    )
    .unwrap();
    // A server that does not ask gets none, and the connection works.
    handshake(&with, server_config(&cert, &key, None), "localhost").unwrap();

    // A certificate from a CA the server does not trust.
    let error = handshake(&with, server_config(&cert, &key, Some(&ca)), "localhost").unwrap_err();
    let text = words(error, &with);
    assert!(
        text.starts_with("TLS: localhost refused walhook's client certificate"),
        "{text}"
    );
}

/// hyper and tokio-rustls hand the rustls error up inside an `io::Error`,
/// below other errors; it is found by type, not by its text.
#[test]
fn the_rustls_error_is_found_inside_io_errors() {
    #[derive(Debug)]
    struct Outer(io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("client error (Connect)")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    let inner = io::Error::new(
        io::ErrorKind::InvalidData,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
    );
    let outer = Outer(io::Error::other(inner));
    let config = DeliveryConfig::default();
    let text = describe_failure(&outer, "hooks.example.com", &config).unwrap();
    assert!(
        text.contains("hooks.example.com is signed by an unknown authority"),
        "{text}"
    );

    let plain = Outer(io::Error::new(io::ErrorKind::ConnectionRefused, "refused"));
    assert_eq!(describe_failure(&plain, "hooks.example.com", &config), None);
}

#[test]
fn bad_files_are_named_with_their_key() {
    let files = Files::new();
    let ca = Ca::new("test CA");
    let (cert, key) = client(&ca, "walhook");
    let (_, other_key) = client(&ca, "other");
    let error = |config: DeliveryConfig| format!("{:#}", client_config(&config).unwrap_err());

    let missing = files.0.path().join("missing.pem");
    let text = error(config_with(|c| c.ca_file = Some(missing.clone())));
    assert!(
        text.contains("key delivery.ca_file: cannot read") && text.contains("missing.pem"),
        "{text}"
    );

    let junk = files.write("junk.pem", "not a certificate\n");
    let text = error(config_with(|c| c.ca_file = Some(junk.clone())));
    assert!(
        text.contains("key delivery.ca_file") && text.contains("no PEM certificate"),
        "{text}"
    );

    let cert_file = files.write("client.pem", &cert);
    let text = error(config_with(|c| {
        c.client_cert_file = Some(cert_file.clone());
        c.client_key_file = Some(junk.clone());
    }));
    assert!(
        text.contains("key delivery.client_key_file") && text.contains("no PEM private key"),
        "{text}"
    );

    let wrong_key = files.write("other.key", &other_key);
    let text = error(config_with(|c| {
        c.client_cert_file = Some(cert_file.clone());
        c.client_key_file = Some(wrong_key.clone());
    }));
    assert!(
        text.contains("other.key is not the private key of the certificate"),
        "{text}"
    );

    let key_file = files.write("client.key", &key);
    let (_, trust) = client_config(&config_with(|c| {
        c.client_cert_file = Some(cert_file.clone());
        c.client_key_file = Some(key_file.clone());
    }))
    .unwrap();
    assert_eq!(trust.client_cert.as_deref(), Some(cert_file.as_path()));
}

/// Without delivery.ca_file, the system's store (or, on a machine without
/// one, the compiled-in roots) is what is trusted.
#[test]
fn the_default_trust_is_not_empty() {
    let (config, trust) = client_config(&DeliveryConfig::default()).unwrap();
    assert!(trust.system + trust.webpki > 0, "{trust}");
    assert!(trust.ca_file.is_none() && trust.client_cert.is_none());
    assert_eq!(
        config.alpn_protocols,
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    );
}

/// A server's ALPN protocols, most preferred first.
fn server_speaking(cert: &str, key: &str, protocols: &[&str]) -> rustls::ServerConfig {
    let mut server = server_config(cert, key, None);
    server.alpn_protocols = protocols.iter().map(|p| p.as_bytes().to_vec()).collect();
    server
}

/// `delivery.http_version` decides what the handshake offers: `auto` takes
/// h2 where the server has it and http/1.1 where it has only that, `http1`
/// never agrees to h2, `http2` agrees to nothing else.
#[test]
fn http_version_decides_the_protocols_offered() {
    let ca = Ca::new("test CA");
    let (cert, key) = ca.server_cert(&["localhost"]);
    let files = Files::new();
    let ca_file = files.write("ca.pem", &ca.pem());
    let config = |version| {
        config_with(|c| {
            c.ca_file = Some(ca_file.clone());
            c.http_version = version;
        })
    };
    let agreed = |version, protocols: &[&str]| {
        handshake(
            &config(version),
            server_speaking(&cert, &key, protocols),
            "localhost",
        )
    };
    let h2 = Ok(Some(b"h2".to_vec()));
    let http1 = Ok(Some(b"http/1.1".to_vec()));
    assert_eq!(agreed(HttpVersion::Auto, &["h2", "http/1.1"]), h2);
    assert_eq!(agreed(HttpVersion::Auto, &["http/1.1"]), http1);
    assert_eq!(agreed(HttpVersion::Http1, &["h2", "http/1.1"]), http1);
    assert_eq!(agreed(HttpVersion::Http2, &["h2", "http/1.1"]), h2);
    // A server without ALPN agrees to nothing: the client then speaks
    // what its http_version says (HTTP/1.1 for auto).
    assert_eq!(agreed(HttpVersion::Auto, &[]), Ok(None));

    let refused = agreed(HttpVersion::Http2, &["http/1.1"]).unwrap_err();
    assert_eq!(
        refused,
        rustls::Error::AlertReceived(AlertDescription::NoApplicationProtocol)
    );
    assert_eq!(
        words(refused.clone(), &config(HttpVersion::Http2)),
        "TLS: localhost does not offer HTTP/2 (delivery.http_version = \"http2\"): set it to \
         \"auto\" to use HTTP/1.1 with targets that do not speak HTTP/2"
    );
    // With h2 and http/1.1 offered the alert means neither is spoken.
    assert_eq!(
        words(refused, &config(HttpVersion::Auto)),
        "TLS: localhost ended the handshake (NoApplicationProtocol)"
    );
}

#[cfg(unix)]
#[test]
fn a_key_readable_by_others_is_a_problem() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let files = Files::new();
    let key = files.write("client.key", "key");
    let mode = |m: u32| {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(m)).unwrap();
        key_file_exposure(&key)
    };
    assert_eq!(mode(0o600), None);
    assert_eq!(mode(0o400), None);
    let text = mode(0o644).expect("a world-readable key is a problem");
    assert!(
        text.contains("client.key")
            && text.contains("every user")
            && text.contains("chmod 600")
            && text.contains("chmod 640"),
        "{text}"
    );
    assert!(mode(0o660).is_some(), "group-writable");
    let root_owned = std::fs::metadata(&key).unwrap().uid() == 0;
    // 0640 is fine when root owns the file (root:walhook), as PostgreSQL
    // allows for its own keys; otherwise the group is one too many.
    assert_eq!(mode(0o640).is_none(), root_owned);
}
