//! A certificate authority made for one test, and the certificates it
//! issues: the one test CA of walhook's unit and integration tests (TLS to
//! targets, client certificates, TLS to PostgreSQL). Built only with the
//! `ca` feature, which walhook's tests turn on; the demo never needs it.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A self-signed CA with its key, kept in memory.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its private key, as PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// The certificate as DER, to compare with what a server received.
    pub der: Vec<u8>,
}

impl Ca {
    /// A new CA whose certificate's common name is `name`.
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("a CA key");
        let cert = params.self_signed(&key).expect("a self-signed CA");
        Ca { cert, key }
    }

    /// The CA's certificate as PEM (what a trust file holds).
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA's certificate as DER.
    pub fn der(&self) -> Vec<u8> {
        self.cert.der().to_vec()
    }

    /// A server certificate for `names` (DNS names or IP addresses):
    /// (certificate PEM, private key PEM).
    pub fn server_cert(&self, names: &[&str]) -> (String, String) {
        let issued = self.issue(names, ExtendedKeyUsagePurpose::ServerAuth, |_| {});
        (issued.cert_pem, issued.key_pem)
    }

    /// A server certificate for `names` valid from 2020-01-01 until it
    /// expired on 2021-01-01.
    pub fn expired_server_cert(&self, names: &[&str]) -> (String, String) {
        let issued = self.issue(names, ExtendedKeyUsagePurpose::ServerAuth, |params| {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        });
        (issued.cert_pem, issued.key_pem)
    }

    /// A client certificate for `name`.
    pub fn client_cert(&self, name: &str) -> Issued {
        self.issue(&[name], ExtendedKeyUsagePurpose::ClientAuth, |_| {})
    }

    fn issue(
        &self,
        names: &[&str],
        purpose: ExtendedKeyUsagePurpose,
        tune: impl FnOnce(&mut CertificateParams),
    ) -> Issued {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("valid certificate names");
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![purpose];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        tune(&mut params);
        let key = KeyPair::generate().expect("a certificate key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("a certificate signed by the CA");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}
