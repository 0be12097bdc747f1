//! The guard against webhooks aimed inside the network PulseHub runs in:
//! a destination URL must be `http` or `https`, and unless configuration
//! allows private networks (`activation.allow_private_networks`) its host
//! may resolve only to public addresses. The check is made where the
//! connection is made (a resolver that drops private addresses), so a name
//! that resolved to a public address when the destination was defined and
//! to a private one later is refused too; an address written in the URL
//! is checked before sending, and redirects are not followed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why a URL may not be a destination's; `None` when it may.
pub fn refuse(url: &Url, allow_private: bool) -> Option<String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Some(format!(
            "a destination URL is http or https, not {}",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Some("a destination URL carries no user name or password".into());
    }
    let Some(host) = url.host() else {
        return Some("a destination URL names a host".into());
    };
    if allow_private {
        return None;
    }
    let private = match host {
        url::Host::Ipv4(ip) => !is_public(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => !is_public(IpAddr::V6(ip)),
        url::Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    };
    private.then(|| {
        format!(
            "{host} is a private or loopback address; destinations reach public addresses only \
             unless `activation.allow_private_networks` \
             (PULSEHUB_ACTIVATION_ALLOW_PRIVATE_NETWORKS) is set"
        )
    })
}

/// Whether `ip` is an address of the public internet: not loopback,
/// private, link-local, shared (carrier-grade NAT), multicast, reserved,
/// documentation or unspecified.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(ip),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        // 100.64.0.0/10, shared address space.
        || (a == 100 && (b & 0xc0) == 64)
        // 192.0.0.0/24, protocol assignments.
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
        // 198.18.0.0/15, benchmarking.
        || (a == 198 && (b & 0xfe) == 18)
        // 240.0.0.0/4, reserved.
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // fc00::/7, unique local.
        || (first & 0xfe00) == 0xfc00
        // fe80::/10, link-local.
        || (first & 0xffc0) == 0xfe80
        // 2001:db8::/32, documentation.
        || (first == 0x2001 && ip.segments()[1] == 0x0db8)
        // 64:ff9b:1::/48, local-use NAT64.
        || (first == 0x0064 && ip.segments()[1] == 0xff9b && ip.segments()[2] == 1))
}

/// The resolver of the webhook client: the system's, less the private
/// addresses unless they are allowed.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    pub allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|address| allow_private || is_public(address.ip()))
                .collect();
            if allowed.is_empty() && !found.is_empty() {
                return Err(format!(
                    "{host} resolves to private or loopback addresses only; refused unless \
                     `activation.allow_private_networks` is set"
                )
                .into());
            }
            let addresses: Addrs = Box::new(allowed.into_iter());
            Ok(addresses)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).expect("url")
    }

    #[test]
    fn public_addresses_pass() {
        for ip in ["93.184.215.14", "8.8.8.8", "2606:4700::1111", "100.128.0.1"] {
            assert!(is_public(ip.parse().expect(ip)), "{ip}");
        }
    }

    #[test]
    fn inner_addresses_do_not() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "198.18.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(ip.parse().expect(ip)), "{ip}");
        }
    }

    #[test]
    fn urls_to_inner_hosts_are_refused_unless_allowed() {
        for text in [
            "http://127.0.0.1:8080/hook",
            "http://[::1]/hook",
            "https://localhost/hook",
            "https://api.localhost./hook",
            "http://169.254.169.254/latest/meta-data",
        ] {
            let why = refuse(&url(text), false).expect(text);
            assert!(why.contains("allow_private_networks"), "{text}: {why}");
            assert_eq!(refuse(&url(text), true), None, "{text}");
        }
        assert_eq!(refuse(&url("https://hooks.example.com/in"), false), None);
    }

    #[test]
    fn only_http_urls_without_credentials() {
        assert!(refuse(&url("ftp://example.com/x"), true).is_some());
        assert!(refuse(&url("https://user:pw@example.com/x"), true).is_some());
    }

    #[tokio::test]
    async fn the_resolver_drops_private_addresses() {
        let name = || -> Name { "localhost".parse().expect("name") };
        let refused = GuardedResolver {
            allow_private: false,
        }
        .resolve(name())
        .await;
        assert!(refused.is_err());
        let allowed: Vec<SocketAddr> = GuardedResolver {
            allow_private: true,
        }
        .resolve(name())
        .await
        .expect("resolves")
        .collect();
        assert!(allowed.iter().all(|address| address.ip().is_loopback()));
        assert!(!allowed.is_empty());
    }
}
