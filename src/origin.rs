//! `--origin` and `--sameorigin`: which pages may open a WebSocket, decided as websocketd 0.5
//! decides it.

use crate::cgi_env::split_host_port;
use crate::config::Config;

/// Why an upgrade was refused (logged; the client gets 403).
#[derive(Debug, PartialEq, Eq)]
pub struct Refused(pub String);

/// The Origin as logged: the header, or `file:` when there is none.
pub fn effective_origin<'a>(header: Option<&'a str>, config: &Config) -> &'a str {
    match header {
        None | Some("") => "file:",
        Some("null") if config.allow_origins.is_none() => "file:",
        Some(o) => o,
    }
}

/// Checks an upgrade's Origin against the configuration. `host` is the host the client asked
/// for (the Host header, or what a trusted proxy forwarded); `https` says whether the client
/// came over https (`--ssl`, or a trusted proxy said so), which gives a host without a port
/// port 443.
pub fn check(origin: &str, host: &str, https: bool, config: &Config) -> Result<(), Refused> {
    let (scheme, origin_host) =
        parse_origin(origin).ok_or_else(|| Refused(format!("Origin parsing error: '{origin}'")))?;
    if !config.same_origin && config.allow_origins.is_none() {
        return Ok(());
    }
    let (o_server, o_port) = split_host_port(origin_host, scheme.eq_ignore_ascii_case("https"))
        .ok_or_else(|| Refused(format!("Origin hostname parsing error: '{origin_host}'")))?;
    if config.same_origin {
        let (l_server, l_port) = split_host_port(host, https)
            .ok_or_else(|| Refused(format!("Request hostname parsing error: '{host}'")))?;
        if o_server != l_server || o_port != l_port {
            return Err(Refused("Same origin policy mismatch".into()));
        }
    }
    if let Some(allowed) = &config.allow_origins {
        if !matches_any(&o_server, &o_port, scheme, allowed) {
            return Err(Refused("Origin is not listed in allowed list".into()));
        }
    }
    Ok(())
}

/// Splits an Origin into scheme and host[:port], as Go's `url.ParseRequestURI` would accept it:
/// an absolute URI (`scheme:...`) or an absolute path (no scheme, no host).
fn parse_origin(origin: &str) -> Option<(&str, &str)> {
    if origin.starts_with('/') {
        return Some(("", ""));
    }
    let (scheme, rest) = origin.split_once(':')?;
    let mut chars = scheme.chars();
    let valid_scheme = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid_scheme {
        return None;
    }
    let host = match rest.strip_prefix("//") {
        Some(authority) => {
            let end = authority.find(['/', '?', '#']).unwrap_or(authority.len());
            let authority = &authority[..end];
            authority.rsplit_once('@').map_or(authority, |(_, h)| h)
        }
        None => "",
    };
    Some((scheme, host))
}

fn matches_any(o_server: &str, o_port: &str, o_scheme: &str, allowed: &[String]) -> bool {
    allowed.iter().any(|entry| {
        let mut entry = entry.as_str();
        if let Some(pos) = entry.find("://").filter(|&p| p > 0) {
            if !entry[..pos].eq_ignore_ascii_case(o_scheme) {
                return false;
            }
            entry = &entry[pos + 3..];
        }
        let Some((a_server, a_port)) = split_host_port(entry, false) else {
            return false;
        };
        // No port written: any port matches.
        if a_port == "80" && !entry.ends_with(":80") {
            a_server == o_server
        } else {
            a_server == o_server && a_port == o_port
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse_like_go() {
        assert_eq!(
            parse_origin("http://a.com:3000"),
            Some(("http", "a.com:3000"))
        );
        assert_eq!(parse_origin("file:"), Some(("file", "")));
        assert_eq!(parse_origin("null"), None);
        assert_eq!(parse_origin("https://u@h/x"), Some(("https", "h")));
    }

    #[test]
    fn allow_list_matching() {
        let list = vec!["trusted.com".to_string(), "https://b.com:8443".to_string()];
        assert!(matches_any("trusted.com", "4000", "http", &list));
        assert!(!matches_any("untrusted.com", "80", "http", &list));
        assert!(matches_any("b.com", "8443", "https", &list));
        assert!(!matches_any("b.com", "8443", "http", &list));
        let with_port = vec!["trusted.com:3000".to_string()];
        assert!(matches_any("trusted.com", "3000", "http", &with_port));
        assert!(!matches_any("trusted.com", "4000", "http", &with_port));
    }
}
