//! The target policy: which URLs and addresses walhook posts to.
//!
//! `https://` unless `delivery.allow_http`, and only globally reachable
//! addresses unless `delivery.allow_private_targets`, or the address is in
//! one of `delivery.allowed_private_networks`. "Globally reachable"
//! follows the IANA IPv4 and IPv6 Special-Purpose Address Registries,
//! taken conservatively (a block is refused when any part of it is not
//! globally reachable), plus multicast and broadcast, which are never a
//! webhook's target. IPv6 addresses that carry an IPv4 address (mapped,
//! compatible, NAT64 and 6to4) are judged by that IPv4 address, so no
//! spelling of a private address gets through.
//!
//! Cloud metadata addresses ([`METADATA`]) hand out the machine's
//! credentials, so neither `allow_private_targets` nor a network that
//! merely contains one allows them: only an entry naming the address
//! alone does.
//!
//! The address is checked twice, with one [`AddressPolicy`]: here for IP
//! literals in the URL, and in the HTTP client's resolver for every
//! address a name resolves to (see [`super::client`]), so a name that
//! resolves to a private address is refused too.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

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
    /// `delivery.allow_private_targets` is false and no entry of
    /// `delivery.allowed_private_networks` contains it.
    NonPublic { ip: IpAddr, block: &'static str },
    /// A cloud metadata address that no entry of
    /// `delivery.allowed_private_networks` names exactly. `address` is
    /// the IPv4 address an IPv6 spelling carries, else `ip` itself.
    Metadata {
        ip: IpAddr,
        address: IpAddr,
        service: &'static str,
    },
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
                "{ip} is a non-public address ({block}; to allow it, add \"{}\" or a network \
                 containing it to delivery.allowed_private_networks, or set \
                 delivery.allow_private_targets = true)",
                single(judged_by(*ip))
            ),
            Refusal::Metadata {
                ip,
                address,
                service,
            } => {
                let spelled = if ip == address {
                    String::new()
                } else {
                    format!(" (spelled {ip})")
                };
                write!(
                    f,
                    "{address}{spelled} is a cloud metadata address ({service}), refused even \
                     with delivery.allow_private_targets = true or a network containing it; to \
                     allow it, add exactly \"{}\" to delivery.allowed_private_networks",
                    single(*address)
                )
            }
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

/// Which addresses targets may be at: the one decision both the URL
/// check and the resolver make, from `delivery.allow_private_targets` and
/// `delivery.allowed_private_networks`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    allow_private: bool,
    networks: Vec<IpNet>,
}

impl AddressPolicy {
    pub fn new(config: &DeliveryConfig) -> AddressPolicy {
        AddressPolicy {
            allow_private: config.allow_private_targets,
            networks: config.allowed_private_networks.clone(),
        }
    }

    /// Why a target at `ip` is refused; `None` when it is allowed.
    pub fn refusal(&self, ip: IpAddr) -> Option<Refusal> {
        let address = judged_by(ip);
        if let Some(service) = metadata_service(address) {
            // Only an entry that is this address alone; the switch and
            // wider networks are not enough.
            let named = self
                .networks
                .iter()
                .any(|n| n.prefix_len() == n.max_prefix_len() && n.addr() == address);
            return (!named).then_some(Refusal::Metadata {
                ip,
                address,
                service,
            });
        }
        let block = non_public_block(&address)?;
        if self.allow_private || self.networks.iter().any(|n| n.contains(&address)) {
            return None;
        }
        Some(Refusal::NonPublic { ip, block })
    }
}

/// Check a target URL against the policy.
pub fn check_target(config: &DeliveryConfig, url: &url::Url) -> Result<(), TargetRefused> {
    let mut reasons = Vec::new();
    if url.scheme() == "http" && !config.allow_http {
        reasons.push(Refusal::PlainHttp);
    }
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
    if let Some(refusal) = ip.and_then(|ip| AddressPolicy::new(config).refusal(ip)) {
        reasons.push(refusal);
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

/// Cloud metadata addresses: the services there hand a process on the
/// machine its cloud credentials, so a webhook row must never be able to
/// point walhook at them. Each with where it comes from. IPv6 spellings
/// of the IPv4 ones (mapped, NAT64, ...) are caught by [`judged_by`].
pub const METADATA: &[(IpAddr, &str)] = &[
    // Instance metadata of AWS EC2, Google Cloud, Azure, OpenStack, Oracle
    // Cloud, DigitalOcean and most others.
    (
        IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
        "instance metadata of AWS, Google Cloud, Azure, OpenStack and others",
    ),
    // AWS ECS: the task metadata and task role credentials endpoint.
    (
        IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)),
        "AWS ECS task metadata and credentials",
    ),
    // AWS: the VPC's DNS server (Route 53 Resolver) as seen from instances.
    (
        IpAddr::V4(Ipv4Addr::new(169, 254, 169, 253)),
        "AWS VPC DNS server",
    ),
    // AWS EKS Pod Identity Agent: pod role credentials.
    (
        IpAddr::V4(Ipv4Addr::new(169, 254, 170, 23)),
        "AWS EKS Pod Identity credentials",
    ),
    // Alibaba Cloud ECS instance metadata.
    (
        IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
        "Alibaba Cloud instance metadata",
    ),
    // Oracle Cloud Infrastructure Classic instance metadata.
    (
        IpAddr::V4(Ipv4Addr::new(192, 0, 0, 192)),
        "Oracle Cloud instance metadata",
    ),
    // Azure WireServer: the platform's agent endpoint (extension settings,
    // certificates), a public address that is only Azure's own.
    (
        IpAddr::V4(Ipv4Addr::new(168, 63, 129, 16)),
        "Azure WireServer",
    ),
    // AWS Nitro instances over IPv6: instance metadata, EKS Pod Identity,
    // and the VPC DNS server.
    (
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
        "AWS instance metadata over IPv6",
    ),
    (
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23)),
        "AWS EKS Pod Identity credentials over IPv6",
    ),
    (
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x253)),
        "AWS VPC DNS server over IPv6",
    ),
];

/// The metadata service at `address`, if it is one of [`METADATA`].
fn metadata_service(address: IpAddr) -> Option<&'static str> {
    METADATA
        .iter()
        .find(|(ip, _)| *ip == address)
        .map(|(_, service)| *service)
}

/// The address the policy judges: the IPv4 address an IPv6 address
/// carries (see [`embedded_v4`]), else the address itself.
fn judged_by(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_v4(u128::from(v6)).map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// The entry of `delivery.allowed_private_networks` for one address.
fn single(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
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

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    fn policy(allow_private_targets: bool, networks: &[&str]) -> AddressPolicy {
        AddressPolicy::new(&DeliveryConfig {
            allow_private_targets,
            allowed_private_networks: networks
                .iter()
                .map(|n| n.parse().expect("a network"))
                .collect(),
            ..DeliveryConfig::default()
        })
    }

    #[test]
    fn an_allowed_network_allows_exactly_its_range() {
        let p = policy(false, &["10.20.0.0/16", "127.0.0.1/32", "fd00::/8"]);
        for (addr, allowed) in [
            ("10.20.0.0", true),
            ("10.20.0.1", true),
            ("10.20.255.255", true),
            ("10.19.255.255", false),
            ("10.21.0.0", false),
            ("127.0.0.1", true),
            ("127.0.0.2", false),
            ("fd00::1", true),
            ("fdff:ffff::1", true),
            ("fc00::1", false),
            ("fe80::1", false),
            ("::1", false),
            ("192.168.1.1", false),
            // IPv6 spellings are judged by the IPv4 address they carry.
            ("::ffff:10.20.1.1", true),
            ("::ffff:127.0.0.1", true),
            ("::ffff:127.0.0.2", false),
            ("64:ff9b::a14:101", true),
            // Public addresses need no entry.
            ("8.8.8.8", true),
            ("2606:4700::1111", true),
        ] {
            assert_eq!(p.refusal(ip(addr)).is_none(), allowed, "{addr}");
        }
        let refused = p.refusal(ip("10.21.0.1")).expect("outside 10.20.0.0/16");
        assert_eq!(
            refused.to_string(),
            "10.21.0.1 is a non-public address (private-use 10.0.0.0/8; to allow it, add \
             \"10.21.0.1/32\" or a network containing it to delivery.allowed_private_networks, or \
             set delivery.allow_private_targets = true)"
        );
        // The blanket switch still allows every non-public address...
        assert!(policy(true, &[]).refusal(ip("10.21.0.1")).is_none());
        // ...and no entry refuses everything non-public, as before.
        assert!(policy(false, &[]).refusal(ip("127.0.0.1")).is_some());
    }

    #[test]
    fn metadata_addresses_need_an_entry_naming_them_exactly() {
        let blanket = policy(true, &[]);
        let wide = policy(false, &["169.254.0.0/16", "100.64.0.0/10", "fd00::/8"]);
        let both = policy(true, &["169.254.0.0/16", "0.0.0.0/0", "::/0"]);
        for (address, _) in METADATA {
            for p in [&blanket, &wide, &both] {
                assert!(
                    matches!(p.refusal(*address), Some(Refusal::Metadata { .. })),
                    "{address} allowed by {p:?}"
                );
            }
        }
        // The rest of the wide network is allowed.
        assert!(wide.refusal(ip("169.254.1.1")).is_none());
        assert!(wide.refusal(ip("100.100.100.201")).is_none());
        assert!(blanket.refusal(ip("169.254.169.1")).is_none());

        let text = blanket
            .refusal(ip("169.254.169.254"))
            .expect("refused")
            .to_string();
        assert_eq!(
            text,
            "169.254.169.254 is a cloud metadata address (instance metadata of AWS, Google \
             Cloud, Azure, OpenStack and others), refused even with \
             delivery.allow_private_targets = true or a network containing it; to allow it, add \
             exactly \"169.254.169.254/32\" to delivery.allowed_private_networks"
        );
        let v6 = blanket.refusal(ip("fd00:ec2::254")).expect("refused");
        assert!(
            v6.to_string()
                .contains("add exactly \"fd00:ec2::254/128\" to delivery.allowed_private_networks"),
            "{v6}"
        );

        let exact = policy(false, &["169.254.169.254/32", "fd00:ec2::254/128"]);
        assert!(exact.refusal(ip("169.254.169.254")).is_none());
        assert!(exact.refusal(ip("fd00:ec2::254")).is_none());
        // One exact entry allows that address only.
        assert!(exact.refusal(ip("169.254.170.2")).is_some());
        assert!(exact.refusal(ip("169.254.169.253")).is_some());
        assert!(exact.refusal(ip("169.254.1.1")).is_some());
    }

    #[test]
    fn ipv6_spellings_of_a_metadata_address_are_refused_as_it() {
        let blanket = policy(true, &["::/0"]);
        for spelled in [
            "::ffff:169.254.169.254",
            "::169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "::ffff:100.100.100.200",
        ] {
            let refusal = blanket.refusal(ip(spelled));
            assert!(
                matches!(refusal, Some(Refusal::Metadata { .. })),
                "{spelled}: {refusal:?}"
            );
        }
        let text = blanket
            .refusal(ip("::ffff:169.254.169.254"))
            .expect("refused")
            .to_string();
        assert!(
            text.starts_with(
                "169.254.169.254 (spelled ::ffff:169.254.169.254) is a cloud metadata address"
            ),
            "{text}"
        );
        assert!(
            text.contains("add exactly \"169.254.169.254/32\""),
            "{text}"
        );
        // The exact IPv4 entry allows its IPv6 spellings too.
        let exact = policy(false, &["169.254.169.254/32"]);
        assert!(exact.refusal(ip("::ffff:169.254.169.254")).is_none());
    }

    #[test]
    fn urls_are_judged_by_the_same_policy() {
        let url = |s: &str| url::Url::parse(s).expect("a URL");
        let config = DeliveryConfig {
            allow_private_targets: true,
            ..DeliveryConfig::default()
        };
        let refused = check_target(&config, &url("https://169.254.169.254/latest/meta-data/"))
            .expect_err("metadata");
        assert!(
            refused.to_string().contains("is a cloud metadata address"),
            "{refused}"
        );
        let refused = check_target(&config, &url("https://[::ffff:a9fe:a9fe]/x"))
            .expect_err("metadata, spelled as IPv6");
        assert!(
            refused.to_string().contains("is a cloud metadata address"),
            "{refused}"
        );
        let config = DeliveryConfig {
            allowed_private_networks: vec!["127.0.0.1/32".parse().expect("a network")],
            ..DeliveryConfig::default()
        };
        assert!(check_target(&config, &url("https://127.0.0.1:8443/x")).is_ok());
        assert!(check_target(&config, &url("https://localhost/x")).is_ok());
        let refused =
            check_target(&config, &url("https://127.0.0.2/x")).expect_err("not in the network");
        assert_eq!(
            refused.to_string(),
            "refused: https://127.0.0.2/x: 127.0.0.2 is a non-public address (loopback \
             127.0.0.0/8; to allow it, add \"127.0.0.2/32\" or a network containing it to \
             delivery.allowed_private_networks, or set delivery.allow_private_targets = true)"
        );
    }

    /// A bad `delivery.allowed_private_networks` entry is a config error
    /// naming the key, the entry and why.
    #[test]
    fn a_bad_allowed_network_is_a_config_error() {
        use crate::config::Config;
        for (entry, why) in [
            (
                "10.0.0.0/33",
                "entry \"10.0.0.0/33\" has prefix length \"33\": it must be a number from 0 to 32",
            ),
            (
                "fd00::/129",
                "entry \"fd00::/129\" has prefix length \"129\": it must be a number from 0 to 128",
            ),
            (
                "10.0.0.0/x",
                "entry \"10.0.0.0/x\" has prefix length \"x\": it must be a number from 0 to 32",
            ),
            (
                "10.0.0.256/8",
                "entry \"10.0.0.256/8\" is not a network in CIDR notation: \"10.0.0.256\" is not \
                 an IPv4 or IPv6 address",
            ),
            (
                "intranet",
                "entry \"intranet\" is not a network in CIDR notation: write e.g. \
                 \"10.20.0.0/16\", or \"127.0.0.1/32\" for one address",
            ),
            (
                "127.0.0.1",
                "entry \"127.0.0.1\" has no prefix length: write \"127.0.0.1/32\" for this one \
                 address",
            ),
            (
                "10.20.1.0/16",
                "entry \"10.20.1.0/16\" has bits set past its prefix length: write \
                 \"10.20.0.0/16\" for the network, or \"10.20.1.0/32\" for the one address",
            ),
        ] {
            let toml =
                format!("[delivery]\nallowed_private_networks = [\"127.0.0.0/8\", \"{entry}\"]\n");
            let err = format!("{:#}", Config::parse(&toml).expect_err(entry));
            assert!(
                err.contains(&format!("key delivery.allowed_private_networks: {why}")),
                "{entry}: {err}"
            );
            assert!(err.contains("line 2"), "{entry}: {err}");
        }
        let good = Config::parse(
            "[delivery]\nallowed_private_networks = [\"127.0.0.0/8\", \"10.20.0.0/16\", \
             \"fd00::/8\", \"169.254.169.254/32\"]\n",
        )
        .expect("valid networks");
        assert_eq!(good.delivery.allowed_private_networks.len(), 4);
    }
}
