//! The signatures receivers check, written here from their specifications,
//! independently of walhook's signing code.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// SuperOffice's documented algorithm, written here independently of
/// walhook's signing code.
pub fn expected_superoffice_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    BASE64.encode(mac.finalize().into_bytes())
}

/// The Standard Webhooks verification, written from the spec.
pub fn verify_standard_webhooks(
    secret: &str,
    id: &str,
    ts: &str,
    body: &[u8],
    header: &str,
) -> bool {
    let key = match secret.strip_prefix("whsec_") {
        Some(b64) => BASE64.decode(b64).unwrap(),
        None => secret.as_bytes().to_vec(),
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
    header.split(' ').any(|sig| sig == expected)
}
