//! The environment a child gets: CGI/1.1 variables built from the request, as websocketd 0.5
//! builds them, plus the `--passenv` variables and nothing else of wsd's own environment.

use std::ffi::OsString;

use hyper::http::request::Parts;

use crate::config::Config;

/// Where the request came from, as the children see it.
#[derive(Debug, Clone)]
pub struct Remote {
    pub addr: String,
    pub host: String,
    pub port: String,
    /// The client used https (`HTTPS=on`).
    pub https: bool,
}

impl Remote {
    /// A client on the Unix socket: websocketd reports it this way.
    pub fn unix() -> Remote {
        Remote {
            addr: "unix-socket".into(),
            host: "unix-socket".into(),
            port: String::new(),
            https: false,
        }
    }
}

/// The parts of the URL path a route resolved.
#[derive(Debug, Clone)]
pub struct ScriptPath {
    pub script_name: String,
    pub path_info: String,
}

/// Builds the child's environment, in websocketd's order.
pub fn build(
    config: &Config,
    req: &Parts,
    remote: &Remote,
    script: &ScriptPath,
    id: &str,
) -> Vec<(OsString, OsString)> {
    let host = req
        .headers
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let (server_name, server_port) = split_host_port(host, config.tls.is_some())
        .unwrap_or_else(|| (host.to_string(), String::new()));
    let path = percent_decode(req.uri.path());
    let query = req.uri.query().unwrap_or("");
    let request_uri = req
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");

    let mut env: Vec<(OsString, OsString)> =
        Vec::with_capacity(24 + config.parent_env.len() + req.headers.len());
    let mut put = |k: &str, v: &str| env.push((k.into(), clean(v).into()));
    put("SERVER_SOFTWARE", &config.server_software);
    for (k, v) in &config.parent_env {
        put(k, v);
    }
    put("REMOTE_ADDR", &remote.addr);
    put("REMOTE_HOST", &remote.host);
    put("SERVER_NAME", &server_name);
    put("SERVER_PORT", &server_port);
    put("SERVER_PROTOCOL", http_version(req.version));
    put("GATEWAY_INTERFACE", "CGI/1.1");
    put("REQUEST_METHOD", req.method.as_str());
    put("SCRIPT_NAME", &script.script_name);
    put("PATH_INFO", &script.path_info);
    put("PATH_TRANSLATED", &path);
    put("QUERY_STRING", query);
    for k in [
        "AUTH_TYPE",
        "CONTENT_LENGTH",
        "CONTENT_TYPE",
        "REMOTE_IDENT",
        "REMOTE_USER",
    ] {
        put(k, "");
    }
    put("UNIQUE_ID", id);
    put("REMOTE_PORT", &remote.port);
    put("REQUEST_URI", request_uri);
    if remote.https || config.tls.is_some() {
        put("HTTPS", "on");
    }

    // HTTP_* for every request header; repeated headers are joined with ", " as Go does.
    let mut names: Vec<&hyper::header::HeaderName> = req.headers.keys().collect();
    names.dedup();
    for name in names {
        let joined = req
            .headers
            .get_all(name)
            .iter()
            .map(|v| clean(&String::from_utf8_lossy(v.as_bytes())))
            .collect::<Vec<_>>()
            .join(", ");
        let key = format!(
            "HTTP_{}",
            name.as_str().to_ascii_uppercase().replace('-', "_")
        );
        env.push((key.into(), joined.into()));
    }
    for (k, v) in &env {
        crate::debug!(
            "env",
            "Std. variable: {}={}",
            k.to_string_lossy(),
            v.to_string_lossy()
        );
    }
    env
}

/// websocketd flattens newlines to spaces and trims every value.
fn clean(v: &str) -> String {
    if v.contains(['\n', '\r']) {
        v.replace(['\n', '\r'], " ").trim().to_string()
    } else {
        v.trim().to_string()
    }
}

fn http_version(v: hyper::Version) -> &'static str {
    match v {
        hyper::Version::HTTP_10 => "HTTP/1.0",
        hyper::Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/1.1",
    }
}

/// Splits "host:port" (or "[v6]:port"); a missing port is the scheme's default. `None` for
/// something Go's `net.SplitHostPort` would reject.
pub fn split_host_port(hostport: &str, tls: bool) -> Option<(String, String)> {
    let default_port = if tls { "443" } else { "80" };
    if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host.to_string(), default_port.to_string())),
            p => p
                .strip_prefix(':')
                .map(|p| (host.to_string(), p.to_string())),
        };
    }
    match hostport.matches(':').count() {
        0 => Some((hostport.to_string(), default_port.to_string())),
        1 => hostport
            .split_once(':')
            .map(|(h, p)| (h.to_string(), p.to_string())),
        _ => None,
    }
}

/// Decodes %XX escapes; invalid escapes are kept as written (as Go's path decoding would
/// reject them, the caller only uses this for display and lookup).
pub fn percent_decode(s: &str) -> String {
    percent_decode_where(s, |_| true)
}

/// Decodes the %XX escapes whose byte `decode` accepts; all else is kept as written.
pub fn percent_decode_where(s: &str, decode: impl Fn(u8) -> bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let b = (h * 16 + l) as u8;
                if decode(b) {
                    out.push(b);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_splits_like_go() {
        assert_eq!(
            split_host_port("example.com", false),
            Some(("example.com".into(), "80".into()))
        );
        assert_eq!(
            split_host_port("example.com", true),
            Some(("example.com".into(), "443".into()))
        );
        assert_eq!(
            split_host_port("h:8080", false),
            Some(("h".into(), "8080".into()))
        );
        assert_eq!(
            split_host_port("[::1]:9", false),
            Some(("::1".into(), "9".into()))
        );
        assert_eq!(
            split_host_port("[::1]", false),
            Some(("::1".into(), "80".into()))
        );
        assert_eq!(split_host_port("::1", false), None);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("/a%20b/%2e%2E"), "/a b/..");
        assert_eq!(percent_decode("/100%"), "/100%");
        assert_eq!(percent_decode("/%zz"), "/%zz");
    }
}
