//! `--trusted-proxy`: who the client is when wsd runs behind a reverse proxy.
//!
//! Behind nginx every connection comes from nginx, so the peer address says nothing about the
//! client. A proxy names the client in a header; wsd believes that header only when the peer
//! is a proxy it was told to trust, because any client can send it. Without `--trusted-proxy`
//! the headers are ignored.
//!
//! The headers are a chain, one entry per hop, client first: `X-Forwarded-For: client,
//! proxy1` or RFC 7239's `Forwarded: for=client, for=proxy1`. Only the entries appended by
//! trusted proxies can be believed, so the client is the **rightmost entry that is not a
//! trusted proxy**: walking from the right, past the trusted hops, the first other address is
//! the one a trusted proxy saw connect. Anything to its left was written by that client and may
//! be forged. An entry that is not an address (`unknown`, an obfuscated `_name`) ends the walk
//! at the trusted hop that wrote it.
//!
//! When a request carries both families, `X-Forwarded-*` wins: nginx, Apache, HAProxy's
//! `forwardfor`, cloud load balancers and most others append to `X-Forwarded-For` and pass a
//! client's own `Forwarded` header through untouched, so believing `Forwarded` there would let
//! a client forge its address. Behind a proxy that writes `Forwarded`, the request has no
//! `X-Forwarded-For` unless the client forged one, so a proxy that only writes `Forwarded`
//! must drop `X-Forwarded-For`.
//!
//! From the same family come the scheme (`X-Forwarded-Proto` or `proto=`, for `HTTPS=on` and
//! the default port of the origin check) and the host (`X-Forwarded-Host` or `host=`, else the
//! Host header, for `--sameorigin`).

use std::net::{IpAddr, SocketAddr};

use hyper::HeaderMap;

/// An address range, `10.0.0.0/8` or `::1` (a single address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR` or `ADDR/PREFIX` (IPv6 may be bracketed). Host bits are ignored:
    /// `10.1.2.3/8` is `10.0.0.0/8`.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr = addr.trim_start_matches('[').trim_end_matches(']');
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("'{s}' is not an IP address or CIDR range"))?;
        let ip = ip.to_canonical();
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("'{s}': the prefix length must be 0 to {max}")),
            },
        };
        Ok(Cidr {
            net: mask(ip, prefix),
            prefix,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.net.is_ipv4() && mask(ip, self.prefix) == self.net
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((bits & m).into())
        }
    }
}

/// What a trusted proxy says about the request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Forwarded {
    /// The client's address, and its port when the header gave one.
    pub client: Option<(IpAddr, Option<u16>)>,
    /// The scheme the client used, from `X-Forwarded-Proto` or `proto=`.
    pub https: bool,
    /// The host the client asked for, from `X-Forwarded-Host` or `host=`.
    pub host: Option<String>,
}

/// Records what a trusted proxy says about `req` in its extensions, for [`client`] and
/// [`origin_host`]; a request from any other peer is left alone.
pub fn annotate<B>(trusted: &[Cidr], peer: Option<SocketAddr>, req: &mut hyper::Request<B>) {
    if trusted.is_empty() {
        return;
    }
    if let Some(f) = resolve(trusted, peer, req.headers()) {
        req.extensions_mut().insert(f);
    }
}

/// The client's address and port: the forwarded ones if [`annotate`] found any, else the
/// peer's. A forwarded address without a port has none (the peer's port is the proxy's).
pub fn client<B>(req: &hyper::Request<B>, peer: SocketAddr) -> (IpAddr, Option<u16>) {
    match req.extensions().get::<Forwarded>() {
        Some(Forwarded {
            client: Some(client),
            ..
        }) => *client,
        _ => (peer.ip().to_canonical(), Some(peer.port())),
    }
}

/// Whether a trusted proxy said the client used https.
pub fn https<B>(req: &hyper::Request<B>) -> bool {
    req.extensions().get::<Forwarded>().is_some_and(|f| f.https)
}

/// The host the origin check compares with: the forwarded one, else the Host header.
pub fn origin_host<'a, B>(req: &'a hyper::Request<B>, host_header: &'a str) -> &'a str {
    req.extensions()
        .get::<Forwarded>()
        .and_then(|f| f.host.as_deref())
        .unwrap_or(host_header)
}

/// What the request's forwarding headers say, if the peer is a trusted proxy; `None` when
/// they are to be ignored (no `--trusted-proxy` matches the peer, or a Unix socket peer).
pub fn resolve(
    trusted: &[Cidr],
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
) -> Option<Forwarded> {
    let peer = peer?.ip().to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return None;
    }
    let xff = joined(headers, "x-forwarded-for");
    if xff.is_some() || !headers.contains_key("forwarded") {
        let hops: Vec<Hop> = xff
            .as_deref()
            .map(|v| v.split(',').map(|h| parse_node(h.trim())).collect())
            .unwrap_or_default();
        return Some(Forwarded {
            client: pick(&hops, is_trusted).and_then(|i| hop_addr(hops[i])),
            https: last_value(headers, "x-forwarded-proto")
                .is_some_and(|p| p.eq_ignore_ascii_case("https")),
            host: last_value(headers, "x-forwarded-host"),
        });
    }
    let elements = parse_forwarded(&joined(headers, "forwarded").unwrap_or_default());
    let hops: Vec<Hop> = elements
        .iter()
        .map(|e| e.for_.as_deref().map_or(Hop::Opaque, parse_node))
        .collect();
    let chosen = pick(&hops, is_trusted);
    // Without a client address, the scheme and host the nearest proxy saw.
    let element = &elements[chosen.unwrap_or(elements.len() - 1)];
    Some(Forwarded {
        client: chosen.and_then(|i| hop_addr(hops[i])),
        https: element
            .proto
            .as_deref()
            .is_some_and(|p| p.eq_ignore_ascii_case("https")),
        host: element.host.clone(),
    })
}

/// One entry of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop {
    Addr(IpAddr, Option<u16>),
    /// `unknown`, an obfuscated identifier, or something unreadable.
    Opaque,
}

fn hop_addr(hop: Hop) -> Option<(IpAddr, Option<u16>)> {
    match hop {
        Hop::Addr(ip, port) => Some((ip, port)),
        Hop::Opaque => None,
    }
}

/// The index of the client in a chain: the rightmost entry that is not a trusted proxy; the
/// leftmost when all are trusted. An opaque entry stops the walk: the client is then the
/// trusted hop to its right, or the peer itself (`None`) when there is none.
fn pick(hops: &[Hop], is_trusted: impl Fn(IpAddr) -> bool) -> Option<usize> {
    let mut chosen = None;
    for (i, hop) in hops.iter().enumerate().rev() {
        match *hop {
            Hop::Addr(ip, _) => {
                chosen = Some(i);
                if !is_trusted(ip) {
                    break;
                }
            }
            Hop::Opaque => break,
        }
    }
    chosen
}

/// A node: `192.0.2.1`, `192.0.2.1:80`, `[2001:db8::1]:80`, `2001:db8::1`.
fn parse_node(s: &str) -> Hop {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Hop::Addr(ip.to_canonical(), None);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Hop::Addr(sa.ip().to_canonical(), Some(sa.port()));
    }
    // A bracketed IPv6 address without a port, or with an obfuscated one (`[::1]:_p`).
    if let Some(rest) = s.strip_prefix('[') {
        if let Some((addr, _)) = rest.split_once(']') {
            if let Ok(ip) = addr.parse::<IpAddr>() {
                return Hop::Addr(ip.to_canonical(), None);
            }
        }
    }
    if let Some((addr, _)) = s.rsplit_once(':') {
        if let Ok(ip) = addr.parse::<std::net::Ipv4Addr>() {
            return Hop::Addr(IpAddr::V4(ip), None);
        }
    }
    Hop::Opaque
}

/// Every value of a header, joined with commas as one list (RFC 9110, 5.3).
fn joined(headers: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// The last entry of a list header: the one the nearest proxy wrote.
fn last_value(headers: &HeaderMap, name: &str) -> Option<String> {
    joined(headers, name)?
        .rsplit(',')
        .map(str::trim)
        .find(|v| !v.is_empty())
        .map(str::to_string)
}

/// One element of a `Forwarded` header: the parameters wsd uses.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Element {
    for_: Option<String>,
    proto: Option<String>,
    host: Option<String>,
}

/// Parses `Forwarded` (RFC 7239): elements separated by commas, `key=value` pairs by
/// semicolons, values tokens or quoted strings (which may hold commas and semicolons).
fn parse_forwarded(value: &str) -> Vec<Element> {
    let mut elements = vec![Element::default()];
    let mut chars = value.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ';' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        let mut val = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => val.extend(chars.next()),
                        c => val.push(c),
                    }
                }
                // Anything between the closing quote and the next separator is ignored.
                while chars.peek().is_some_and(|&c| c != ';' && c != ',') {
                    chars.next();
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ';' || c == ',' {
                        break;
                    }
                    val.push(c);
                    chars.next();
                }
            }
        }
        let current = elements.last_mut().expect("there is always an element");
        let val = val.trim().to_string();
        match key.trim().to_ascii_lowercase().as_str() {
            "for" => current.for_ = Some(val),
            "proto" => current.proto = Some(val),
            "host" => current.host = Some(val),
            _ => {}
        }
        match chars.next() {
            Some(',') => elements.push(Element::default()),
            Some(_) => {}
            None => break,
        }
    }
    elements
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| Cidr::parse(c).unwrap()).collect()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn peer(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_ranges_parse_and_match() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.255.1.2")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(
            c.contains(ip("::ffff:10.1.1.1")),
            "IPv4-mapped addresses match"
        );
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let v6 = Cidr::parse("[fd00::]/8").unwrap();
        assert!(v6.contains(ip("fdab::1")) && !v6.contains(ip("fe80::1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(!Cidr::parse("0.0.0.0/0").unwrap().contains(ip("::1")));
        assert_eq!(Cidr::parse("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("::/129").is_err());
        assert!(Cidr::parse("localhost").is_err());
        assert!(Cidr::parse("10.0.0.0/x").is_err());
    }

    #[test]
    fn headers_from_an_untrusted_peer_are_ignored() {
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
        ]);
        assert_eq!(resolve(&[], peer("127.0.0.1:5000"), &h), None);
        assert_eq!(
            resolve(&cidrs(&["10.0.0.0/8"]), peer("127.0.0.1:5000"), &h),
            None
        );
        assert_eq!(
            resolve(&cidrs(&["0.0.0.0/0"]), None, &h),
            None,
            "Unix socket"
        );
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop() {
        let trusted = cidrs(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.2")]);
        let f = resolve(&trusted, peer("10.0.0.1:80"), &h).unwrap();
        assert_eq!(f.client, Some((ip("198.51.100.7"), None)));
        // Repeated headers are one list.
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        let f = resolve(&trusted, peer("10.0.0.1:80"), &h).unwrap();
        assert_eq!(f.client, Some((ip("198.51.100.7"), None)));
    }

    #[test]
    fn when_every_hop_is_trusted_the_leftmost_is_the_client() {
        let h = headers(&[("x-forwarded-for", "10.1.1.1, 10.0.0.2")]);
        let f = resolve(&cidrs(&["10.0.0.0/8"]), peer("10.0.0.1:80"), &h).unwrap();
        assert_eq!(f.client, Some((ip("10.1.1.1"), None)));
    }

    #[test]
    fn an_opaque_hop_stops_the_walk_and_keeps_the_peer() {
        let h = headers(&[("x-forwarded-for", "203.0.113.1, unknown")]);
        let f = resolve(&cidrs(&["10.0.0.0/8"]), peer("10.0.0.1:80"), &h).unwrap();
        assert_eq!(f.client, None);
    }

    #[test]
    fn ports_in_x_forwarded_for_entries_are_read() {
        let trusted = cidrs(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "203.0.113.1:4711, [2001:db8::1]:99")]);
        let f = resolve(&trusted, peer("10.0.0.1:80"), &h).unwrap();
        assert_eq!(f.client, Some((ip("2001:db8::1"), Some(99))));
        let h = headers(&[("x-forwarded-for", "203.0.113.1:4711")]);
        let f = resolve(&trusted, peer("10.0.0.1:80"), &h).unwrap();
        assert_eq!(f.client, Some((ip("203.0.113.1"), Some(4711))));
    }

    #[test]
    fn proto_and_host_come_from_the_nearest_proxy() {
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-proto", "http, HTTPS"),
            ("x-forwarded-host", "example.com"),
        ]);
        let f = resolve(&cidrs(&["127.0.0.1"]), peer("127.0.0.1:80"), &h).unwrap();
        assert!(f.https);
        assert_eq!(f.host.as_deref(), Some("example.com"));
    }

    #[test]
    fn forwarded_elements_parse_with_quotes_and_ports() {
        let e = parse_forwarded(
            r#"for=192.0.2.43;proto=http, For="[2001:db8:cafe::17]:4711";host="a,b;c", for=unknown"#,
        );
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].for_.as_deref(), Some("192.0.2.43"));
        assert_eq!(e[0].proto.as_deref(), Some("http"));
        assert_eq!(e[1].for_.as_deref(), Some("[2001:db8:cafe::17]:4711"));
        assert_eq!(e[1].host.as_deref(), Some("a,b;c"));
        assert_eq!(e[2].for_.as_deref(), Some("unknown"));
        assert_eq!(
            parse_node("[2001:db8:cafe::17]:4711"),
            Hop::Addr(ip("2001:db8:cafe::17"), Some(4711))
        );
        assert_eq!(
            parse_node("[2001:db8::1]"),
            Hop::Addr(ip("2001:db8::1"), None)
        );
        assert_eq!(
            parse_node("192.0.2.1:_hidden"),
            Hop::Addr(ip("192.0.2.1"), None)
        );
        assert_eq!(parse_node("_hidden"), Hop::Opaque);
    }

    #[test]
    fn the_forwarded_header_gives_address_port_proto_and_host_of_one_element() {
        let h = headers(&[(
            "forwarded",
            r#"for=6.6.6.6;proto=http, for="198.51.100.7:4711";proto=https;host=example.com, for=10.0.0.9;proto=http;host=internal"#,
        )]);
        let f = resolve(&cidrs(&["10.0.0.0/8"]), peer("10.0.0.1:80"), &h).unwrap();
        assert_eq!(f.client, Some((ip("198.51.100.7"), Some(4711))));
        assert!(f.https);
        assert_eq!(f.host.as_deref(), Some("example.com"));
    }

    #[test]
    fn x_forwarded_for_wins_over_a_forwarded_header_the_proxy_passed_through() {
        let h = headers(&[
            ("forwarded", "for=6.6.6.6;proto=https"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        let f = resolve(&cidrs(&["127.0.0.1"]), peer("127.0.0.1:80"), &h).unwrap();
        assert_eq!(f.client, Some((ip("198.51.100.7"), None)));
        assert!(!f.https);
    }

    #[test]
    fn a_trusted_peer_without_headers_stays_the_client() {
        let f = resolve(
            &cidrs(&["127.0.0.1"]),
            peer("127.0.0.1:80"),
            &HeaderMap::new(),
        )
        .unwrap();
        assert_eq!(f, Forwarded::default());
    }
}
