//! The environment a child gets: CGI/1.1 variables built from the request, as websocketd 0.5
//! builds them, plus the `--passenv` variables and nothing else of wsd's own environment.

use std::io;

use hyper::http::request::Parts;

use crate::config::Config;

/// A program's environment, kept as `execve` takes it: `NAME=value` entries, each ending in a
/// NUL, one after another in one buffer. A connection's two dozen variables are two
/// allocations, not three per variable (a name, a value, and the C string made of them).
#[derive(Debug, Clone, Default)]
pub struct Environment {
    bytes: Vec<u8>,
    entries: Vec<Entry>,
}

/// Where one entry lies in [`Environment::bytes`].
#[derive(Debug, Clone, Copy)]
struct Entry {
    start: usize,
    name_len: usize,
    /// Just past the entry's NUL.
    end: usize,
}

impl Environment {
    /// An empty environment with room for `vars` variables of `bytes` bytes in all.
    pub fn with_capacity(vars: usize, bytes: usize) -> Environment {
        Environment {
            bytes: Vec::with_capacity(bytes),
            entries: Vec::with_capacity(vars),
        }
    }

    /// Sets `name` to `value`. Set again, a name keeps the last value.
    pub fn set(&mut self, name: &str, value: &str) {
        self.push(
            |out| out.extend_from_slice(name.as_bytes()),
            |out| out.extend_from_slice(value.as_bytes()),
        );
    }

    /// Adds the entry whose name `name` writes and whose value `value` writes.
    fn push(&mut self, name: impl FnOnce(&mut Vec<u8>), value: impl FnOnce(&mut Vec<u8>)) {
        let start = self.bytes.len();
        name(&mut self.bytes);
        let name_len = self.bytes.len() - start;
        self.bytes.push(b'=');
        value(&mut self.bytes);
        self.bytes.push(0);
        self.entries.push(Entry {
            start,
            name_len,
            end: self.bytes.len(),
        });
    }

    fn name(&self, e: &Entry) -> &[u8] {
        &self.bytes[e.start..e.start + e.name_len]
    }

    fn value(&self, e: &Entry) -> &[u8] {
        &self.bytes[e.start + e.name_len + 1..e.end - 1]
    }

    /// The value of `name` (its last, if it was set more than once).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.entries
            .iter()
            .rev()
            .find(|e| self.name(e) == name.as_bytes())
            .map(|e| self.value(e))
    }

    /// Every entry as (name, value), in the order set, repeated names included.
    fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries.iter().map(|e| (self.name(e), self.value(e)))
    }

    /// Pointers to the entries for `execve`, sorted by name, the last of a repeated name kept,
    /// and a null pointer after them: as `std::process::Command` (`env_clear().envs(env)`)
    /// passes them. They point into `self`, and are valid while it is neither changed nor
    /// dropped. An entry with a NUL byte in it is an error (`InvalidInput`).
    pub fn pointers(&self) -> io::Result<Vec<*const libc::c_char>> {
        // By name, and among equal names in the order set, so that the last is the last. A
        // name's first eight bytes as a number order most pairs with one comparison.
        let prefix = |e: &Entry| {
            let name = self.name(e);
            let mut first = [0u8; 8];
            let n = name.len().min(8);
            first[..n].copy_from_slice(&name[..n]);
            u64::from_be_bytes(first)
        };
        let mut sorted: Vec<(u64, &Entry)> = self.entries.iter().map(|e| (prefix(e), e)).collect();
        sorted.sort_unstable_by(|(pa, a), (pb, b)| {
            pa.cmp(pb)
                .then_with(|| self.name(a).cmp(self.name(b)))
                .then(a.start.cmp(&b.start))
        });
        let mut out = Vec::with_capacity(sorted.len() + 1);
        for (i, &(_, e)) in sorted.iter().enumerate() {
            if sorted
                .get(i + 1)
                .is_some_and(|(_, next)| self.name(next) == self.name(e))
            {
                continue;
            }
            if self.bytes[e.start..e.end - 1].contains(&0) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "nul byte found in provided data",
                ));
            }
            out.push(self.bytes[e.start..].as_ptr().cast::<libc::c_char>());
        }
        out.push(std::ptr::null());
        Ok(out)
    }
}

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
) -> Environment {
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

    let vars = 24 + config.parent_env.len() + req.headers.len();
    // Room for the names and the short values of a usual request, and its headers.
    let mut env = Environment::with_capacity(vars, 512 + 2 * head_bytes(req));
    let mut put = |k: &str, v: &str| {
        env.push(
            |out| out.extend_from_slice(k.as_bytes()),
            |out| push_clean(out, v),
        )
    };
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

    // HTTP_* for every request header (`keys` gives each name once); repeated headers are
    // joined with ", " as Go does.
    for name in req.headers.keys() {
        let key = |out: &mut Vec<u8>| {
            out.extend_from_slice(b"HTTP_");
            out.extend(name.as_str().bytes().map(|b| {
                if b == b'-' {
                    b'_'
                } else {
                    b.to_ascii_uppercase()
                }
            }));
        };
        env.push(key, |out| {
            for (i, v) in req.headers.get_all(name).iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                push_clean(out, &String::from_utf8_lossy(v.as_bytes()));
            }
        });
    }
    for (k, v) in env.iter() {
        crate::debug!(
            "env",
            "Std. variable: {}={}",
            String::from_utf8_lossy(k),
            String::from_utf8_lossy(v)
        );
    }
    env
}

/// The bytes of a request's header names and values.
fn head_bytes(req: &Parts) -> usize {
    req.headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum()
}

/// Appends `v` as websocketd passes a value: newlines flattened to spaces, then trimmed.
fn push_clean(out: &mut Vec<u8>, v: &str) {
    let b = v.as_bytes();
    if b.iter().any(|&c| c == b'\n' || c == b'\r') {
        out.extend_from_slice(v.replace(['\n', '\r'], " ").trim().as_bytes());
    } else if b.first().is_some_and(u8::is_ascii_graphic)
        && b.last().is_some_and(u8::is_ascii_graphic)
    {
        // Nothing to trim (the usual value); `trim` would look at each end char by char.
        out.extend_from_slice(b);
    } else {
        out.extend_from_slice(v.trim().as_bytes());
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

    fn env(pairs: &[(&str, &str)]) -> Environment {
        let mut env = Environment::default();
        for (k, v) in pairs {
            env.set(k, v);
        }
        env
    }

    fn strings(env: &Environment) -> io::Result<Vec<String>> {
        let pointers = env.pointers()?;
        assert!(pointers.last().is_some_and(|p| p.is_null()));
        Ok(pointers[..pointers.len() - 1]
            .iter()
            // SAFETY: each pointer is to a NUL-terminated entry of `env`, which outlives this.
            .map(|p| {
                unsafe { std::ffi::CStr::from_ptr(*p) }
                    .to_str()
                    .unwrap()
                    .to_string()
            })
            .collect())
    }

    #[test]
    fn the_environment_is_sorted_and_a_repeated_name_keeps_its_last_value() {
        let env = env(&[
            ("PATH", "/bin"),
            ("B", "1"),
            ("A", "x"),
            ("REMOTE_PORT", "1"),
            ("REMOTE_PORTAL", "2"),
            ("REMOTE", "3"),
            ("B", "2"),
        ]);
        assert_eq!(
            strings(&env).unwrap(),
            [
                "A=x",
                "B=2",
                "PATH=/bin",
                "REMOTE=3",
                "REMOTE_PORT=1",
                "REMOTE_PORTAL=2"
            ]
        );
        assert_eq!(env.get("B"), Some(&b"2"[..]));
        assert_eq!(env.get("C"), None);
    }

    #[test]
    fn a_nul_byte_in_the_environment_is_refused() {
        let e = strings(&env(&[("A", "x\0y")])).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn an_empty_environment_is_a_lone_null_pointer() {
        assert_eq!(
            strings(&Environment::default()).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn values_are_flattened_and_trimmed_as_websocketd_does() {
        let mut out = Vec::new();
        for v in ["a b", " a b ", "a\nb\r", "\u{a0}x", ""] {
            push_clean(&mut out, v);
            out.push(b'|');
        }
        assert_eq!(String::from_utf8(out).unwrap(), "a b|a b|a b|x||");
    }

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
        // Over https (--ssl, or a trusted proxy's word), the origin check's defaults.
        assert_eq!(
            split_host_port("[::1]", true),
            Some(("::1".into(), "443".into()))
        );
        assert_eq!(
            split_host_port("[::1]:8443", true),
            Some(("::1".into(), "8443".into()))
        );
        assert_eq!(
            split_host_port("h:8080", true),
            Some(("h".into(), "8080".into()))
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("/a%20b/%2e%2E"), "/a b/..");
        assert_eq!(percent_decode("/100%"), "/100%");
        assert_eq!(percent_decode("/%zz"), "/%zz");
    }
}
