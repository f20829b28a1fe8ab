//! The validated configuration: built once from the command line, the program's truth after.
//!
//! Every check of a flag happens here, and every error names the flag it is about. The rest
//! of wsd never sees raw flag strings.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::header::{HeaderName, HeaderValue};

use crate::cli::{Cli, LogFormat, LogLevel};

/// A configuration error: what to print and the exit status to leave with.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    /// One line naming the flag and what is wrong with it.
    pub message: String,
    /// 2 for a bad flag (clap's convention); 1 where websocketd exits 1 (no COMMAND).
    pub exit_code: i32,
}

impl ConfigError {
    fn flag(message: impl Into<String>) -> Self {
        ConfigError {
            message: message.into(),
            exit_code: 2,
        }
    }
    fn usage(message: impl Into<String>) -> Self {
        ConfigError {
            message: message.into(),
            exit_code: 1,
        }
    }
}

/// What a WebSocket connection runs.
#[derive(Debug, Clone)]
pub enum Program {
    /// One program for every URL path.
    Command { path: PathBuf, args: Vec<OsString> },
    /// `--dir`: the URL path names a program inside this (canonical) directory.
    Dir(PathBuf),
    /// No program: only `--staticdir` / `--cgidir`; upgrades get 404.
    None,
}

/// One TCP address to listen on, as the user wrote it (host without brackets) and a port.
#[derive(Debug, Clone)]
pub struct TcpAddr {
    /// Empty for "all interfaces".
    pub host: String,
    pub port: u16,
}

/// An extra response header from `--header`, `--header-ws` or `--header-http`.
pub type ExtraHeader = (HeaderName, HeaderValue);

/// How long a shared program outlives its last client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linger {
    For(Duration),
    /// `--linger-ms=-1`.
    Forever,
}

/// Everything wsd needs to run, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub tcp: Vec<TcpAddr>,
    pub unix_socket: Option<PathBuf>,
    pub program: Program,
    pub binary: bool,
    pub pass_stderr: bool,
    /// Largest client message; `None` means unlimited.
    pub max_message: Option<usize>,
    pub max_line_bytes: usize,
    /// Variables kept from wsd's own environment for the children, in `--passenv` order.
    pub parent_env: Vec<(String, String)>,
    pub reverse_lookup: bool,
    /// Most concurrent children; `None` means unlimited.
    pub max_forks: Option<usize>,
    pub close_grace: Duration,
    pub max_header_bytes: usize,
    pub broadcast: bool,
    /// `--staticdir`, canonical.
    pub static_dir: Option<PathBuf>,
    /// `--cgidir`, canonical.
    pub cgi_dir: Option<PathBuf>,
    pub cgi_timeout: Duration,
    pub dev_console: bool,
    pub linger: Linger,
    pub send_queue: usize,
    pub replay: usize,
    pub sse: bool,
    /// Time to send a request's headers; `None` means no limit.
    pub header_timeout: Option<Duration>,
    /// Most connections without a finished handshake; `None` means no limit.
    pub max_pending: Option<usize>,
    pub ping_interval: Option<Duration>,
    pub allow_origins: Option<Vec<String>>,
    pub same_origin: bool,
    pub headers: Vec<ExtraHeader>,
    pub headers_ws: Vec<ExtraHeader>,
    pub headers_http: Vec<ExtraHeader>,
    pub log_level: LogLevel,
    /// `SERVER_SOFTWARE` for the children.
    pub server_software: String,
    /// This machine's name, used in logged URLs when listening on all interfaces.
    pub hostname: String,
    /// Operations: `--trusted-proxy`, `--metrics`, `--log-format`.
    pub trusted_proxies: Vec<crate::proxy::Cidr>,
    pub metrics: Option<TcpAddr>,
    pub log_format: LogFormat,
    /// `--ssl`: every listener speaks TLS with this certificate (reloaded on SIGHUP).
    pub tls: Option<std::sync::Arc<crate::tls::Tls>>,
    /// `--redirport`: a plain HTTP port redirecting to the main one.
    pub redirect_port: Option<u16>,
}

impl Config {
    /// Validates the parsed command line.
    pub fn from_cli(cli: Cli) -> Result<Config, ConfigError> {
        if cli.linger_ms < -1 {
            return Err(ConfigError::flag(
                "--linger-ms must be -1 (forever), 0 or a number of milliseconds",
            ));
        }
        for (set, flag) in [
            (cli.linger_ms != 0, "--linger-ms"),
            (cli.replay > 0, "--replay"),
            (
                cli.send_queue != crate::cli::DEFAULT_SEND_QUEUE,
                "--send-queue",
            ),
        ] {
            if set && !cli.broadcast {
                return Err(ConfigError::flag(format!(
                    "{flag} applies to shared programs: it needs --broadcast"
                )));
            }
        }
        if cli.sse && cli.binary {
            return Err(ConfigError::flag(
                "--sse cannot be used with --binary: Server-Sent Events carry text",
            ));
        }
        if cli.binary && cli.passstderr {
            return Err(ConfigError::flag(
                "--binary and --passstderr cannot be used together: please only specify one of --binary and --passstderr",
            ));
        }

        let program =
            match (cli.command.split_first(), &cli.dir) {
                (Some(_), Some(_)) => {
                    return Err(ConfigError::usage(
                        "ambiguous: provided COMMAND and --dir argument, please only specify one",
                    ))
                }
                (Some((cmd, args)), None) => Program::Command {
                    path: resolve_command(cmd)?,
                    args: args.to_vec(),
                },
                (None, Some(dir)) => Program::Dir(resolve_dir(dir)?),
                (None, None) if cli.staticdir.is_some() || cli.cgidir.is_some() => Program::None,
                (None, None) => return Err(ConfigError::usage(
                    "Please specify COMMAND or provide --dir, --staticdir or --cgidir argument.",
                )),
            };
        if cli.devconsole && (cli.staticdir.is_some() || cli.cgidir.is_some()) {
            return Err(ConfigError::flag(
                "--devconsole cannot be used with --staticdir or --cgidir: pick one",
            ));
        }
        let static_dir = cli
            .staticdir
            .as_deref()
            .map(|d| http_dir("--staticdir", d))
            .transpose()?;
        let cgi_dir = cli
            .cgidir
            .as_deref()
            .map(|d| http_dir("--cgidir", d))
            .transpose()?;

        let unix_socket = cli.unixsocket.as_ref().map(PathBuf::from);
        if unix_socket
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(ConfigError::flag("--unixsocket: the path is empty"));
        }
        let tls = tls_files(&cli)?
            .map(|files| crate::tls::Tls::load(files).map(std::sync::Arc::new))
            .transpose()
            .map_err(ConfigError::flag)?;
        let tcp = if unix_socket.is_some()
            && cli.port.is_none()
            && cli.address.is_empty()
            && cli.redirport.is_none()
        {
            Vec::new()
        } else {
            let port = cli.port.unwrap_or(if tls.is_some() { 443 } else { 80 });
            if cli.redirport == Some(port) {
                return Err(ConfigError::flag(format!(
                    "--redirport: {port} is the main port already; pick another one"
                )));
            }
            if cli.address.is_empty() {
                vec![TcpAddr {
                    host: String::new(),
                    port,
                }]
            } else {
                cli.address
                    .iter()
                    .map(|a| {
                        let host = a.trim_start_matches('[').trim_end_matches(']').to_string();
                        if host.is_empty() {
                            Err(ConfigError::flag("--address: the address is empty"))
                        } else {
                            Ok(TcpAddr { host, port })
                        }
                    })
                    .collect::<Result<_, _>>()?
            }
        };

        let allow_origins = cli
            .origin
            .as_deref()
            .filter(|o| !o.is_empty())
            .map(|o| o.split(',').map(str::to_string).collect());

        Ok(Config {
            tcp,
            unix_socket,
            program,
            binary: cli.binary,
            pass_stderr: cli.passstderr,
            max_message: usize::try_from(cli.maxframesize).ok().filter(|&n| n > 0),
            max_line_bytes: cli.max_line_bytes,
            parent_env: parent_env(&cli.passenv),
            reverse_lookup: cli.reverselookup,
            max_forks: usize::try_from(cli.maxforks).ok().filter(|&n| n > 0),
            close_grace: Duration::from_millis(cli.closems),
            max_header_bytes: cli.max_header_bytes,
            broadcast: cli.broadcast,
            static_dir,
            cgi_dir,
            cgi_timeout: Duration::from_millis(cli.cgi_timeout_ms),
            dev_console: cli.devconsole,
            linger: match cli.linger_ms {
                -1 => Linger::Forever,
                ms => Linger::For(Duration::from_millis(ms as u64)),
            },
            send_queue: cli.send_queue,
            replay: cli.replay,
            sse: cli.sse,
            header_timeout: (cli.header_timeout_ms > 0)
                .then(|| Duration::from_millis(cli.header_timeout_ms)),
            max_pending: (cli.max_pending > 0).then_some(cli.max_pending),
            ping_interval: (cli.pingms > 0).then(|| Duration::from_millis(cli.pingms)),
            allow_origins,
            same_origin: cli.sameorigin,
            headers: parse_headers("--header", &cli.header)?,
            headers_ws: parse_headers("--header-ws", &cli.header_ws)?,
            headers_http: parse_headers("--header-http", &cli.header_http)?,
            log_level: cli.loglevel,
            server_software: format!("wsd/{}", env!("CARGO_PKG_VERSION")),
            hostname: hostname(),
            trusted_proxies: trusted_proxies(&cli.trusted_proxy)?,
            metrics: cli.metrics.as_deref().map(metrics_addr).transpose()?,
            log_format: cli.log_format,
            tls,
            redirect_port: cli.redirport,
        })
    }
}

/// The TLS files named by `--ssl`, `--sslcert`, `--sslkey` and `--sslca`, checked together as
/// websocketd 0.5 checks them.
fn tls_files(cli: &Cli) -> Result<Option<crate::tls::TlsFiles>, ConfigError> {
    if !cli.ssl {
        if cli.sslcert.is_some() || cli.sslkey.is_some() || cli.sslca.is_some() {
            return Err(ConfigError::flag(
                "you should not be using --ssl* flags when there is no --ssl option (--sslcert, --sslkey, --sslca need --ssl)",
            ));
        }
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (&cli.sslcert, &cli.sslkey) else {
        return Err(ConfigError::flag(
            "please specify both --sslcert and --sslkey when requesting --ssl",
        ));
    };
    Ok(Some(crate::tls::TlsFiles {
        cert: PathBuf::from(cert),
        key: PathBuf::from(key),
        ca: cli.sslca.as_ref().map(PathBuf::from),
    }))
}

/// Finds COMMAND as a shell would: a name with a slash is a path, others are looked up in PATH.
fn resolve_command(cmd: &OsString) -> Result<PathBuf, ConfigError> {
    let not_found = || {
        ConfigError::usage(format!(
            "unable to locate specified COMMAND '{}' in OS path",
            cmd.to_string_lossy()
        ))
    };
    let given = Path::new(cmd);
    if given.as_os_str().is_empty() {
        return Err(not_found());
    }
    if given.components().count() > 1 || cmd.to_string_lossy().contains('/') {
        return if is_executable_file(given) {
            Ok(given.to_path_buf())
        } else {
            Err(not_found())
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(given))
        .find(|candidate| is_executable_file(candidate))
        .ok_or_else(not_found)
}

/// True for a regular file (after symlinks) with an execute bit.
pub fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn resolve_dir(dir: &str) -> Result<PathBuf, ConfigError> {
    let meta = std::fs::metadata(dir).map_err(|e| {
        ConfigError::flag(format!(
            "--dir: could not find your script dir '{dir}': {e}"
        ))
    })?;
    if !meta.is_dir() {
        return Err(ConfigError::flag(format!(
            "--dir: '{dir}' is not a directory (did you mean to give it as COMMAND?)"
        )));
    }
    std::fs::canonicalize(dir)
        .map_err(|e| ConfigError::flag(format!("--dir: cannot resolve '{dir}': {e}")))
}

/// A directory served over HTTP, made canonical (so that symlinks can be checked against it).
fn http_dir(flag: &str, dir: &str) -> Result<PathBuf, ConfigError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => std::fs::canonicalize(dir)
            .map_err(|e| ConfigError::flag(format!("{flag}: cannot resolve '{dir}': {e}"))),
        Ok(_) => Err(ConfigError::flag(format!(
            "{flag}: '{dir}' is not a directory"
        ))),
        Err(e) => Err(ConfigError::flag(format!(
            "{flag}: could not find directory '{dir}': {e}"
        ))),
    }
}

/// The `--passenv` variables that are set, with newlines flattened as websocketd does.
fn parent_env(passenv: &str) -> Vec<(String, String)> {
    passenv
        .split(',')
        .filter(|k| !k.is_empty() && *k != "HTTPS")
        .filter_map(|k| {
            let v = std::env::var(k).ok()?;
            let clean = v.replace(['\n', '\r'], " ").trim().to_string();
            (!clean.is_empty()).then(|| (k.to_string(), clean))
        })
        .collect()
}

fn parse_headers(flag: &str, raw: &[String]) -> Result<Vec<ExtraHeader>, ConfigError> {
    raw.iter()
        .map(|h| {
            let (name, value) = h.split_once(':').unwrap_or((h.as_str(), ""));
            let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
                ConfigError::flag(format!(
                    "{flag}: '{h}' is not a valid header (expected \"Name: value\")"
                ))
            })?;
            let value = HeaderValue::from_str(value.trim_start_matches(' ')).map_err(|_| {
                ConfigError::flag(format!(
                    "{flag}: '{h}' has a value that cannot be sent in a header"
                ))
            })?;
            Ok((name, value))
        })
        .collect()
}

fn trusted_proxies(raw: &[String]) -> Result<Vec<crate::proxy::Cidr>, ConfigError> {
    raw.iter()
        .flat_map(|r| r.split(','))
        .map(|c| {
            crate::proxy::Cidr::parse(c.trim())
                .map_err(|e| ConfigError::flag(format!("--trusted-proxy: {e}")))
        })
        .collect()
}

/// `ADDR:PORT`, `[V6]:PORT` or `:PORT` (all interfaces).
fn metrics_addr(raw: &str) -> Result<TcpAddr, ConfigError> {
    let bad = || {
        ConfigError::flag(format!(
            "--metrics: '{raw}' is not ADDR:PORT (127.0.0.1:9100, [::1]:9100 or :9100)"
        ))
    };
    let (host, port) = raw.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse::<u16>().map_err(|_| bad())?;
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(bad());
    }
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok(TcpAddr { host, port })
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "UNKNOWN".to_string();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
