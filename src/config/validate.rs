//! Every value checked against what the code can honour, when the file
//! is read: the error names the key, the value and the range.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::bail;
use ipnet::IpNet;

use super::{
    Concurrency, Config, MAX_BODY_BYTES, MAX_CONCURRENCY, MAX_PARKED_BYTES, MAX_SHARED_IN_FLIGHT,
    MIN_BODY_BYTES,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
fn hours(n: u64) -> Duration {
    Duration::from_secs(n * 3600)
}

/// One `delivery.allowed_private_networks` entry: an address, "/" and a
/// prefix length. Bits set past the prefix are refused: "10.20.1.0/16"
/// would otherwise allow all of 10.20.0.0/16 where one address or a /24
/// was likely meant. The error says what is wrong; the caller names the
/// key and the entry.
pub(super) fn network_entry(text: &str) -> Result<IpNet, String> {
    let example = "write e.g. \"10.20.0.0/16\", or \"127.0.0.1/32\" for one address";
    let Some((addr, len)) = text.split_once('/') else {
        return Err(match text.parse::<IpAddr>() {
            Ok(ip) => format!(
                "has no prefix length: write \"{ip}/{}\" for this one address",
                if ip.is_ipv4() { 32 } else { 128 }
            ),
            Err(_) => format!("is not a network in CIDR notation: {example}"),
        });
    };
    let ip: IpAddr = addr.parse().map_err(|_| {
        format!(
            "is not a network in CIDR notation: {addr:?} is not an IPv4 or IPv6 address; {example}"
        )
    })?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = len
        .parse::<u8>()
        .ok()
        .filter(|n| *n <= max)
        .ok_or_else(|| format!("has prefix length {len:?}: it must be a number from 0 to {max}"))?;
    let net = IpNet::new(ip, len).map_err(|e| format!("is not a network: {e}"))?;
    if net.addr() != net.network() {
        return Err(format!(
            "has bits set past its prefix length: write \"{}\" for the network, or \"{ip}/{max}\" \
             for the one address",
            net.trunc()
        ));
    }
    Ok(net)
}

impl Config {
    pub(super) fn validate(&self) -> anyhow::Result<()> {
        if let Some(cluster) = &self.cluster {
            cluster.validate(self.delivery.max_body_bytes)?;
        }
        self.telemetry.validate()?;
        if !(1..=super::MAX_CHUNK_ROWS).contains(&self.backfill.chunk_rows) {
            bail!(
                "backfill.chunk_rows = {} is outside 1..={}",
                self.backfill.chunk_rows,
                super::MAX_CHUNK_ROWS
            );
        }
        if !(ms(100)..=hours(1)).contains(&self.backfill.statement_timeout) {
            bail!(
                "backfill.statement_timeout = {:?} is outside 100ms..1h",
                self.backfill.statement_timeout
            );
        }
        // walhook's own suffix: the insert-only publication is
        // `<publication>_keyless`, and every name must fit PostgreSQL's
        // 63-byte identifiers with it.
        let keyless_suffix = "_keyless".len();
        for (key, value, max) in [
            ("postgres.schema", &self.postgres.schema, 63),
            ("postgres.slot", &self.postgres.slot, 63),
            (
                "postgres.publication",
                &self.postgres.publication,
                63 - keyless_suffix,
            ),
        ] {
            // Slot and publication names travel inside replication commands,
            // so they are held to PostgreSQL's unquoted-identifier shape.
            if value.is_empty()
                || value.len() > max
                || !value
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                || value.starts_with(|c: char| c.is_ascii_digit())
            {
                let why = if key == "postgres.publication" {
                    " (walhook adds \"_keyless\" for a second publication, and names are at most 63 bytes)"
                } else {
                    ""
                };
                bail!(
                    "key {key}: {value:?} must be 1-{max} characters of a-z, 0-9 and _, not \
                     starting with a digit{why}"
                );
            }
        }
        if self.postgres.application_name.len() > 63 {
            bail!("key postgres.application_name: at most 63 bytes");
        }
        let d = &self.delivery;
        let p = &self.postgres;
        for (key, value, min, max) in [
            (
                "postgres.statement_timeout",
                p.statement_timeout,
                ms(1),
                hours(24),
            ),
            ("postgres.lock_timeout", p.lock_timeout, ms(1), hours(24)),
            (
                "postgres.receive_timeout",
                p.receive_timeout,
                secs(2),
                secs(3600),
            ),
            (
                "postgres.connect_timeout",
                p.connect_timeout,
                ms(100),
                secs(300),
            ),
            (
                "postgres.status_interval",
                p.status_interval,
                ms(100),
                secs(60),
            ),
            (
                "postgres.progress_interval",
                p.progress_interval,
                ms(0),
                secs(10),
            ),
            (
                "capture.auto_add_interval",
                self.capture.auto_add_interval,
                secs(1),
                hours(24),
            ),
            (
                "delivery.connect_timeout",
                d.connect_timeout,
                ms(100),
                secs(300),
            ),
            ("delivery.timeout", d.timeout, ms(100), secs(3600)),
            ("delivery.max_backoff", d.max_backoff, ms(100), hours(24)),
            (
                "delivery.shutdown_timeout",
                d.shutdown_timeout,
                ms(0),
                secs(600),
            ),
            (
                "delivery.backlog_max_age",
                d.backlog_max_age,
                secs(1),
                hours(24 * 7),
            ),
        ] {
            if value < min || value > max {
                bail!(
                    "key {key}: {} is out of range: it must be from {} to {}",
                    humantime::format_duration(value),
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                );
            }
        }
        if d.attempt_log_retention < secs(60) || d.attempt_log_retention > hours(24 * 3650) {
            bail!(
                "key delivery.attempt_log_retention: {} is out of range: it must be from 1m to 10years",
                humantime::format_duration(d.attempt_log_retention)
            );
        }
        if !(1..=100_000_000).contains(&d.attempt_log_max_rows_per_webhook) {
            bail!(
                "key delivery.attempt_log_max_rows_per_webhook: {} is out of range: it must be \
                 from 1 to 100000000",
                d.attempt_log_max_rows_per_webhook
            );
        }
        if !d.parked_retention.is_zero() && d.parked_retention < secs(60) {
            bail!(
                "key delivery.parked_retention: {} is too short: \"0s\" keeps parked events until \
                 they are delivered, otherwise at least 1m",
                humantime::format_duration(d.parked_retention)
            );
        }
        for (key, value, min, max) in [
            (
                "delivery.max_consecutive_errors",
                u64::from(d.max_consecutive_errors),
                1,
                1_000_000_000,
            ),
            (
                "delivery.concurrency_per_webhook",
                match d.concurrency_per_webhook {
                    Concurrency::Fixed(n) => n as u64,
                    Concurrency::Adaptive => 1,
                },
                1,
                MAX_CONCURRENCY as u64,
            ),
            (
                "delivery.max_concurrency_per_webhook",
                d.max_concurrency_per_webhook as u64,
                1,
                MAX_CONCURRENCY as u64,
            ),
            (
                "delivery.max_shared_in_flight",
                d.max_shared_in_flight as u64,
                1,
                MAX_SHARED_IN_FLIGHT as u64,
            ),
            (
                "delivery.backlog_limit",
                d.backlog_limit as u64,
                1,
                1_000_000_000,
            ),
            (
                "delivery.max_parked_events_per_webhook",
                d.max_parked_events_per_webhook,
                1,
                1_000_000_000,
            ),
            (
                "delivery.max_parked_bytes_per_webhook",
                d.max_parked_bytes_per_webhook,
                MIN_BODY_BYTES as u64,
                MAX_PARKED_BYTES,
            ),
            (
                "delivery.max_in_flight_bytes",
                d.max_in_flight_bytes,
                64 * 1024,
                u64::from(u32::MAX),
            ),
            (
                "delivery.max_body_bytes",
                d.max_body_bytes as u64,
                MIN_BODY_BYTES as u64,
                MAX_BODY_BYTES as u64,
            ),
        ] {
            if value < min || value > max {
                bail!("key {key}: {value} is out of range: it must be from {min} to {max}");
            }
        }
        if d.max_parked_bytes_per_webhook < d.max_body_bytes as u64 {
            bail!(
                "key delivery.max_parked_bytes_per_webhook: {} is less than \
                 delivery.max_body_bytes ({}): a hook could not park one event of the largest \
                 size; raise it, or lower delivery.max_body_bytes",
                d.max_parked_bytes_per_webhook,
                d.max_body_bytes
            );
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            bail!(
                "key log.level: {:?} is not a valid level or filter ({e}); write e.g. \"info\" \
                 or \"warn,walhook=debug\"",
                self.log.level
            );
        }
        if let Some(addr) = self.metrics.listen {
            if !addr.ip().is_loopback() {
                bail!("key metrics.listen: {addr} is not a loopback address; metrics and health are served on loopback only (127.0.0.1 or [::1])");
            }
        }
        match (
            &self.delivery.client_cert_file,
            &self.delivery.client_key_file,
        ) {
            (Some(cert), None) => bail!(
                "key delivery.client_key_file is missing: delivery.client_cert_file ({}) needs \
                 its private key; set both or neither",
                cert.display()
            ),
            (None, Some(key)) => bail!(
                "key delivery.client_cert_file is missing: delivery.client_key_file ({}) is \
                 the key of a certificate; set both or neither",
                key.display()
            ),
            _ => {}
        }
        for (name, table) in &self.tables {
            if name.split_once('.').is_none() {
                bail!("[tables.{name:?}]: the key must be \"schema.table\"");
            }
            if let Some(entity) = &table.entity {
                if entity.is_empty() || entity.contains([',', ' ', '*']) {
                    bail!("[tables.{name:?}] entity {entity:?} must be non-empty without ',', ' ' or '*'");
                }
            }
        }
        for pattern in self.capture.include.iter().chain(&self.capture.exclude) {
            if pattern.split_once('.').is_none() {
                bail!("key capture.include/exclude: pattern {pattern:?} must be \"schema.table\" (use * as a wildcard)");
            }
        }
        Ok(())
    }
}
