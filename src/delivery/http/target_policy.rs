//! The target policy: which URLs and addresses walhook posts to.
//!
//! `https://` unless `delivery.allow_http`, and only globally reachable
//! addresses unless `delivery.allow_private_targets`. "Globally reachable"
//! follows the IANA IPv4 and IPv6 Special-Purpose Address Registries,
//! taken conservatively (a block is refused when any part of it is not
//! globally reachable), plus multicast and broadcast, which are never a
//! webhook's target. IPv6 addresses that carry an IPv4 address (mapped,
//! compatible, NAT64 and 6to4) are judged by that IPv4 address, so no
//! spelling of a private address gets through.
//!
//! The address is checked twice: here for IP literals in the URL, and in
//! the HTTP client's resolver for every address a name resolves to (see
//! [`super::client`]), so a name that resolves to a private address is
//! refused too.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::DeliveryConfig;
use crate::text::redacted_url;

/// Why a target is refused: every problem of the URL at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRefused {
    /// The URL with any credentials hidden.
    pub url: String,
    pub reasons: Vec<Refusal>,
}

/// One problem of a target URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `http://` while `delivery.allow_http` is false.
    PlainHttp,
    /// An address that is not globally reachable, while
    /// `delivery.allow_private_targets` is false.
    NonPublic { ip: IpAddr, block: &'static str },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::PlainHttp => write!(
                f,
                "it is plain http:// (set delivery.allow_http = true to allow it)"
            ),
            Refusal::NonPublic { ip, block } => write!(
                f,
                "{ip} is a non-public address ({block}; set delivery.allow_private_targets = true \
                 to allow it)"
            ),
        }
    }
}

impl fmt::Display for TargetRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reasons: Vec<String> = self.reasons.iter().map(|r| r.to_string()).collect();
        write!(f, "refused: {}: {}", self.url, reasons.join("; and "))
    }
}

impl std::error::Error for TargetRefused {}

/// Check a target URL against the policy.
pub fn check_target(config: &DeliveryConfig, url: &url::Url) -> Result<(), TargetRefused> {
    let mut reasons = Vec::new();
    if url.scheme() == "http" && !config.allow_http {
        reasons.push(Refusal::PlainHttp);
    }
    if !config.allow_private_targets {
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            Some(url::Host::Domain(d))
                if d.eq_ignore_ascii_case("localhost")
                    || d.to_ascii_lowercase().ends_with(".localhost") =>
            {
                Some(IpAddr::from([127, 0, 0, 1]))
            }
            _ => None,
        };
        if let Some(ip) = ip {
            if let Some(block) = non_public_block(&ip) {
                reasons.push(Refusal::NonPublic { ip, block });
            }
        }
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(TargetRefused {
            url: redacted_url(url),
            reasons,
        })
    }
}

/// Whether an address is globally reachable.
pub fn is_public(ip: &IpAddr) -> bool {
    non_public_block(ip).is_none()
}

/// IPv4 blocks that are not globally reachable: (network, prefix, name).
const V4_BLOCKS: &[(u32, u8, &str)] = &[
    (0x0000_0000, 8, "\"this network\" 0.0.0.0/8"),
    (0x0a00_0000, 8, "private-use 10.0.0.0/8"),
    (0x6440_0000, 10, "shared address space 100.64.0.0/10"),
    (0x7f00_0000, 8, "loopback 127.0.0.0/8"),
    (0xa9fe_0000, 16, "link-local 169.254.0.0/16"),
    (0xac10_0000, 12, "private-use 172.16.0.0/12"),
    (0xc000_0000, 24, "IETF protocol assignments 192.0.0.0/24"),
    (0xc000_0200, 24, "documentation 192.0.2.0/24"),
    (0xc058_6300, 24, "6to4 relay anycast 192.88.99.0/24"),
    (0xc0a8_0000, 16, "private-use 192.168.0.0/16"),
    (0xc612_0000, 15, "benchmarking 198.18.0.0/15"),
    (0xc633_6400, 24, "documentation 198.51.100.0/24"),
    (0xcb00_7100, 24, "documentation 203.0.113.0/24"),
    (0xe000_0000, 4, "multicast 224.0.0.0/4"),
    (0xf000_0000, 4, "reserved 240.0.0.0/4 and broadcast"),
];

/// IPv6 blocks that are not globally reachable: (network, prefix, name).
/// Blocks that carry an IPv4 address are handled before this table.
const V6_BLOCKS: &[(u128, u8, &str)] = &[
    (0, 128, "unspecified ::/128"),
    (1, 128, "loopback ::1/128"),
    (
        0x0064_ff9b_0001_0000_0000_0000_0000_0000,
        48,
        "local-use IPv4/IPv6 translation 64:ff9b:1::/48",
    ),
    (
        0x0100_0000_0000_0000_0000_0000_0000_0000,
        64,
        "discard-only 100::/64",
    ),
    (
        0x2001_0000_0000_0000_0000_0000_0000_0000,
        23,
        "IETF protocol assignments 2001::/23 (Teredo included)",
    ),
    (
        0x2001_0db8_0000_0000_0000_0000_0000_0000,
        32,
        "documentation 2001:db8::/32",
    ),
    (
        0x3fff_0000_0000_0000_0000_0000_0000_0000,
        20,
        "documentation 3fff::/20",
    ),
    (
        0x5f00_0000_0000_0000_0000_0000_0000_0000,
        16,
        "segment routing 5f00::/16",
    ),
    (
        0xfc00_0000_0000_0000_0000_0000_0000_0000,
        7,
        "unique local fc00::/7",
    ),
    (
        0xfe80_0000_0000_0000_0000_0000_0000_0000,
        10,
        "link-local fe80::/10",
    ),
    (
        0xfec0_0000_0000_0000_0000_0000_0000_0000,
        10,
        "site-local fec0::/10 (deprecated)",
    ),
    (
        0xff00_0000_0000_0000_0000_0000_0000_0000,
        8,
        "multicast ff00::/8",
    ),
];

/// The special-purpose block an address falls in, if it is not globally
/// reachable.
pub fn non_public_block(ip: &IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_block(*v4),
        IpAddr::V6(v6) => v6_block(*v6),
    }
}

fn v4_block(ip: Ipv4Addr) -> Option<&'static str> {
    let bits = u32::from(ip);
    V4_BLOCKS
        .iter()
        .find(|(net, len, _)| bits >> (32 - len) == net >> (32 - len))
        .map(|(_, _, name)| *name)
}

fn v6_block(ip: Ipv6Addr) -> Option<&'static str> {
    let bits = u128::from(ip);
    // Addresses that carry an IPv4 address are as public as it is.
    if let Some(v4) = embedded_v4(bits) {
        return v4_block(v4);
    }
    V6_BLOCKS
        .iter()
        .find(|(net, len, _)| bits >> (128 - len) == net >> (128 - len))
        .map(|(_, _, name)| *name)
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) or 6to4
/// (`2002:aabb:ccdd::`) address.
fn embedded_v4(bits: u128) -> Option<Ipv4Addr> {
    let low32 = Ipv4Addr::from(bits as u32);
    let top96 = bits >> 32;
    if top96 == 0xffff {
        return Some(low32); // mapped
    }
    if top96 == 0 && (bits as u32) > 1 {
        return Some(low32); // compatible (:: and ::1 are in the table)
    }
    if top96 == 0x0064_ff9b_0000_0000_0000_0000 {
        return Some(low32); // NAT64 well-known prefix
    }
    if bits >> 112 == 0x2002 {
        return Some(Ipv4Addr::from((bits >> 80) as u32)); // 6to4
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_purpose_addresses_are_not_public() {
        for (addr, public) in [
            ("8.8.8.8", true),
            ("1.1.1.1", true),
            ("192.0.1.1", true),
            ("198.20.0.1", true),
            ("100.128.0.1", true),
            ("0.1.2.3", false),
            ("10.1.2.3", false),
            ("100.64.0.1", false),
            ("100.127.255.254", false),
            ("127.0.0.1", false),
            ("127.255.1.2", false),
            ("169.254.169.254", false),
            ("172.16.0.1", false),
            ("172.31.255.255", false),
            ("172.32.0.1", true),
            ("192.0.0.1", false),
            ("192.0.2.1", false),
            ("192.88.99.1", false),
            ("192.168.1.1", false),
            ("198.18.0.1", false),
            ("198.19.255.255", false),
            ("198.51.100.7", false),
            ("203.0.113.9", false),
            ("224.0.0.1", false),
            ("239.255.255.250", false),
            ("240.0.0.1", false),
            ("255.255.255.255", false),
            ("2606:4700::1111", true),
            ("2a00:1450:4001::1", true),
            ("::", false),
            ("::1", false),
            ("::ffff:127.0.0.1", false),
            ("::ffff:10.0.0.1", false),
            ("::ffff:8.8.8.8", true),
            ("::127.0.0.1", false),
            ("::8.8.8.8", true),
            ("64:ff9b::7f00:1", false),
            ("64:ff9b::808:808", true),
            ("64:ff9b:1::1", false),
            ("2002:7f00:1::", false),
            ("2002:c0a8:101::1", false),
            ("2002:808:808::1", true),
            ("100::1", false),
            ("2001::1", false),
            ("2001:db8::1", false),
            ("3fff::1", false),
            ("5f00::1", false),
            ("fc00::1", false),
            ("fd12:3456::1", false),
            ("fe80::1", false),
            ("fec0::1", false),
            ("ff02::1", false),
        ] {
            let ip: IpAddr = addr.parse().unwrap();
            assert_eq!(is_public(&ip), public, "{addr}");
        }
    }

    #[test]
    fn every_problem_of_a_url_is_reported_at_once() {
        let strict = DeliveryConfig::default();
        let url = |s: &str| url::Url::parse(s).unwrap();
        assert!(check_target(&strict, &url("https://example.com/x")).is_ok());
        let both = check_target(&strict, &url("http://user:pw@127.0.0.1/x")).unwrap_err();
        assert_eq!(both.reasons.len(), 2);
        let text = both.to_string();
        assert!(text.contains("allow_http"), "{text}");
        assert!(text.contains("allow_private_targets"), "{text}");
        assert!(!text.contains("pw"), "credentials shown: {text}");
        assert!(check_target(&strict, &url("https://[fe80::1]/x")).is_err());
        assert!(check_target(&strict, &url("https://10.1.2.3/x")).is_err());
        assert!(check_target(&strict, &url("https://api.localhost/x")).is_err());
        let open = DeliveryConfig {
            allow_http: true,
            allow_private_targets: true,
            ..DeliveryConfig::default()
        };
        assert!(check_target(&open, &url("http://127.0.0.1:9/x")).is_ok());
    }
}
