//! A hook's settings that are walhook's own (`webhook_control`): the
//! previous secret of a rotation and its expiry, the maximum rate, and
//! whether the hook is paused. Parsed from the row as the stream or the
//! start-up read gives it (text values).

use std::time::{Duration, SystemTime};

use crate::events::WebhookRow;

/// The rate and pause settings of one hook, and a rotated-out secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookSettings {
    /// The secret a rotation replaced, and when it stops signing.
    pub previous_secret: Option<PreviousSecret>,
    /// At most this many requests a minute.
    pub max_per_minute: Option<u32>,
    /// Events are parked, none sent, until this is cleared.
    pub paused: bool,
}

#[derive(Clone, PartialEq, Eq)]
pub struct PreviousSecret {
    pub secret: String,
    pub expires: SystemTime,
}

impl std::fmt::Debug for PreviousSecret {
    // Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreviousSecret")
            .field("expires", &humantime::format_rfc3339_seconds(self.expires))
            .finish_non_exhaustive()
    }
}

impl HookSettings {
    /// The settings a `webhook_control` row gives, with the webhook_id; a
    /// value that does not parse is named in the returned warnings and
    /// taken at its safe side (an old secret whose expiry cannot be read
    /// does not sign; an unreadable rate is no limit).
    pub fn from_row(row: &WebhookRow) -> Option<(i32, HookSettings, Vec<String>)> {
        let get = |name: &str| row.0.get(name).and_then(|v| v.as_deref());
        let id = get("webhook_id")?.parse::<i32>().ok()?;
        let mut warnings = Vec::new();
        let previous_secret = match (get("previous_secret"), get("previous_secret_expires")) {
            (Some(secret), Some(expires)) if !secret.is_empty() => match parse_utc(expires) {
                Some(expires) => Some(PreviousSecret {
                    secret: secret.to_owned(),
                    expires,
                }),
                None => {
                    warnings.push(format!(
                        "previous_secret_expires {expires:?} is not a time: the previous secret does not sign"
                    ));
                    None
                }
            },
            _ => None,
        };
        let max_per_minute = match get("max_per_minute") {
            None => None,
            Some(text) => match text.parse::<u32>() {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    warnings.push(format!(
                        "max_per_minute {text:?} is not a positive integer: no limit"
                    ));
                    None
                }
            },
        };
        Some((
            id,
            HookSettings {
                previous_secret,
                max_per_minute,
                paused: get("paused_at").is_some(),
            },
            warnings,
        ))
    }

    /// The previous secret while it still signs at `now`: checked at each
    /// signature, so it never outlives its expiry, whenever it was loaded.
    pub fn previous_secret_at(&self, now: SystemTime) -> Option<&str> {
        self.previous_secret
            .as_ref()
            .filter(|p| now < p.expires)
            .map(|p| p.secret.as_str())
    }

    /// The least time between two requests, when the rate is limited.
    pub fn spacing(&self) -> Option<Duration> {
        self.max_per_minute
            .map(|n| Duration::from_secs(60) / n.max(1))
    }
}

/// A timestamptz as the replication session writes it (DateStyle ISO,
/// TimeZone UTC: `2026-11-30 23:40:00.123456+00`), or as the store reads
/// it (`...Z`).
fn parse_utc(text: &str) -> Option<SystemTime> {
    let bare = text
        .strip_suffix("+00")
        .or_else(|| text.strip_suffix('Z'))?;
    humantime::parse_rfc3339_weak(bare).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: &[(&str, Option<&str>)]) -> WebhookRow {
        WebhookRow(
            values
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(str::to_owned)))
                .collect(),
        )
    }

    #[test]
    fn a_row_from_the_stream_parses() {
        let (id, settings, warnings) = HookSettings::from_row(&row(&[
            ("webhook_id", Some("7")),
            ("previous_secret", Some("whsec_old")),
            ("previous_secret_expires", Some("2030-01-02 03:04:05.5+00")),
            ("max_per_minute", Some("120")),
            ("paused_at", Some("2026-11-30 23:00:00+00")),
        ]))
        .expect("a row with a webhook_id");
        assert_eq!(id, 7);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(settings.paused);
        assert_eq!(settings.spacing(), Some(Duration::from_millis(500)));
        let expires = humantime::parse_rfc3339("2030-01-02T03:04:05.5Z").unwrap();
        let before = expires - Duration::from_millis(1);
        assert_eq!(settings.previous_secret_at(before), Some("whsec_old"));
        // Never at or after its expiry.
        assert_eq!(settings.previous_secret_at(expires), None);
    }

    #[test]
    fn unreadable_values_fall_to_the_safe_side() {
        let (_, settings, warnings) = HookSettings::from_row(&row(&[
            ("webhook_id", Some("1")),
            ("previous_secret", Some("old")),
            ("previous_secret_expires", Some("infinity")),
            ("max_per_minute", Some("-3")),
            ("paused_at", None),
        ]))
        .expect("a row with a webhook_id");
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert_eq!(settings, HookSettings::default());
        assert!(HookSettings::from_row(&row(&[("webhook_id", Some("x"))])).is_none());
    }
}
