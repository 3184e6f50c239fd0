//! Request signatures: SuperOffice's and Standard Webhooks'.
//!
//! Both are HMAC-SHA256 over bytes exactly as sent; receivers must hash the
//! raw body, never re-serialised JSON.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::registry::standard_webhooks_key;

type HmacSha256 = Hmac<Sha256>;

/// A secret's two HMAC keys, prepared once. Keying HMAC-SHA256 hashes a
/// padded key block twice; a hook's keys are prepared when its row is read
/// and copied per signature, so a signature hashes only what it signs.
#[derive(Clone)]
pub struct SigningKey {
    /// `X-SuperOffice-Signature`: keyed with the secret's UTF-8.
    superoffice: HmacSha256,
    /// `webhook-signature`: keyed with the base64 after `whsec_` when the
    /// secret has that form, else with the secret's UTF-8.
    standard: HmacSha256,
}

impl SigningKey {
    pub fn new(secret: &str) -> SigningKey {
        SigningKey {
            superoffice: keyed(secret.as_bytes()),
            standard: keyed(&standard_webhooks_key(secret)),
        }
    }

    /// `X-SuperOffice-Signature`: base64(HMAC-SHA256(secret's UTF-8, body)).
    pub fn superoffice_signature(&self, body: &[u8]) -> String {
        finish(self.superoffice.clone(), &[body])
    }

    /// `webhook-signature`: `v1,` + base64(HMAC-SHA256(key, "{id}.{ts}.{body}")).
    pub fn standard_webhooks_signature(&self, id: &str, timestamp: &str, body: &[u8]) -> String {
        let sig = finish(
            self.standard.clone(),
            &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
        );
        format!("v1,{sig}")
    }
}

fn keyed(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length")
}

fn finish(mut mac: HmacSha256, parts: &[&[u8]]) -> String {
    for part in parts {
        mac.update(part);
    }
    BASE64.encode(mac.finalize().into_bytes())
}

/// `X-SuperOffice-Signature` with a secret used once (the demo's receiver).
pub fn superoffice_signature(secret: &str, body: &[u8]) -> String {
    SigningKey::new(secret).superoffice_signature(body)
}

/// `webhook-signature` with a secret used once (the demo's receiver).
pub fn standard_webhooks_signature(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    SigningKey::new(secret).standard_webhooks_signature(id, timestamp, body)
}

/// `webhook-signature` during a secret rotation: the current secret's
/// signature, then the previous one's, space-separated as Standard
/// Webhooks allows, so a receiver holding either secret verifies it.
pub fn standard_webhooks_signatures(
    current: &SigningKey,
    previous: Option<&SigningKey>,
    id: &str,
    timestamp: &str,
    body: &[u8],
) -> String {
    let signature = current.standard_webhooks_signature(id, timestamp, body);
    match previous {
        Some(previous) => format!(
            "{signature} {}",
            previous.standard_webhooks_signature(id, timestamp, body)
        ),
        None => signature,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Vector {
        secret: String,
        body: String,
        webhook_id: String,
        webhook_timestamp: String,
        x_superoffice_signature: String,
        webhook_signature: String,
    }

    /// The reference vectors: SuperOffice's documented algorithm and the
    /// Standard Webhooks reference library.
    #[test]
    fn reproduces_reference_vectors() {
        let text = include_str!("../../../tests/fixtures/signature-vectors.json");
        let vectors: Vec<Vector> = serde_json::from_str(text).unwrap();
        assert_eq!(vectors.len(), 3);
        for v in vectors {
            assert_eq!(
                superoffice_signature(&v.secret, v.body.as_bytes()),
                v.x_superoffice_signature,
                "X-SuperOffice-Signature for secret {:?}",
                v.secret
            );
            assert_eq!(
                standard_webhooks_signature(
                    &v.secret,
                    &v.webhook_id,
                    &v.webhook_timestamp,
                    v.body.as_bytes()
                ),
                v.webhook_signature,
                "webhook-signature for secret {:?}",
                v.secret
            );
        }
    }

    /// During a rotation both signatures are in the header, each exactly
    /// what the reference library computes for its own secret.
    #[test]
    fn a_rotation_signs_with_both_secrets() {
        let text = include_str!("../../../tests/fixtures/signature-vectors.json");
        let vectors: Vec<Vector> = serde_json::from_str(text).unwrap();
        let (new, old) = (&vectors[0], &vectors[1]);
        let header = standard_webhooks_signatures(
            &SigningKey::new(&new.secret),
            Some(&SigningKey::new(&old.secret)),
            &new.webhook_id,
            &new.webhook_timestamp,
            new.body.as_bytes(),
        );
        let old_over_new_body = standard_webhooks_signature(
            &old.secret,
            &new.webhook_id,
            &new.webhook_timestamp,
            new.body.as_bytes(),
        );
        assert_eq!(
            header,
            format!("{} {old_over_new_body}", new.webhook_signature)
        );
    }
}
