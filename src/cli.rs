//! The command line: every flag, its help text and its default, defined once.
//!
//! websocketd parses its flags with Go's `flag` package, and users' scripts and unit files
//! already contain every spelling that package accepts: `--port=8080`, `--port 8080`,
//! `-port=8080`, `-port 8080`, and booleans bare or as `--binary=true`. [`parse_args`] accepts all
//! of them: it rewrites single-dash long flags to the double-dash form clap expects (only before
//! the COMMAND, so the command's own `-l` style arguments pass through untouched), and boolean
//! flags take an optional `=VALUE` in Go's `strconv.ParseBool` syntax.
//!
//! The help, the manual page (`man/wsd.1`) and the flag list in the README all come from this
//! one definition; a test fails when the checked-in manual page is stale.

use std::ffi::OsString;

use clap::{ArgAction, CommandFactory, Parser, ValueEnum, ValueHint};

/// Largest child-output line sent as one message, before it is split (wsd's own flag).
pub const DEFAULT_MAX_LINE_BYTES: usize = 16 << 20;
/// Largest client message accepted (websocketd 0.5's default for `--maxframesize`).
pub const DEFAULT_MAX_FRAME_SIZE: i64 = 1 << 20;
/// Concurrent child processes allowed (websocketd 0.5's default for `--maxforks`).
pub const DEFAULT_MAX_FORKS: i64 = 1024;
/// Largest request line and headers together (wsd's own flag).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 << 10;
/// hyper's smallest read buffer; a header limit below it cannot be enforced.
pub const MIN_MAX_HEADER_BYTES: usize = 8 << 10;
/// Time to send a request's headers (websocketd 0.5's slowloris limit).
pub const DEFAULT_HEADER_TIMEOUT_MS: u64 = 10_000;
/// Messages queued per broadcast subscriber.
pub const DEFAULT_SEND_QUEUE: usize = 1024;
/// Connections that have not finished a WebSocket handshake (wsd's own flag).
pub const DEFAULT_MAX_PENDING: usize = 1024;

/// Log levels, most verbose first, with websocketd's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum LogLevel {
    /// Everything, including each environment variable given to a child.
    Debug,
    /// Protocol-level events (pings, frames that were ignored).
    Trace,
    /// One line per HTTP request and per connection open and close (the default).
    Access,
    /// Server start-up and configuration.
    Info,
    /// Errors only, and the children's stderr.
    Error,
    /// Only errors that stop the server.
    Fatal,
    /// Nothing at all.
    None,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// websocketd's line format.
    Text,
    /// One JSON object per line.
    Json,
}

/// The shells `--completions` writes scripts for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

/// wsd: turn any program that reads stdin and writes stdout into a WebSocket server.
///
/// Each WebSocket connection starts COMMAND (or, with --dir, the program the URL path names)
/// as its own process. Every line the program prints on stdout is sent to the client as a
/// message, and every message the client sends is written to the program's stdin as a line.
/// When the client leaves, the program's stdin is closed and its process group is signalled
/// (SIGINT, SIGTERM, SIGKILL); when the program exits, the client gets a close frame.
///
/// Flags can be written as websocketd and Go's flag package accept them: --flag=value,
/// --flag value, -flag=value or -flag value; boolean flags bare or as --flag=true/false.
#[derive(Debug, Parser)]
#[command(
    name = "wsd",
    version,
    disable_version_flag = true,
    args_override_self = true,
    after_help = "Examples:\n  wsd --port=8080 ./count.sh\n  wsd --port=8080 --dir=./handlers\n  wsd --port=8080 --binary=true cat"
)]
pub struct Cli {
    /// TCP port to listen on [default: 80, or 443 with --ssl].
    #[arg(long, value_name = "PORT", help_heading = "Listening")]
    pub port: Option<u16>,

    /// Interface to listen on; repeat for several. IPv6 addresses may be written in brackets
    /// ([::1]). Default: all interfaces.
    #[arg(long, value_name = "ADDRESS", help_heading = "Listening")]
    pub address: Vec<String>,

    /// Also listen on this Unix domain socket. With no --port, --address or --redirport, listen
    /// only there. A stale socket file left by a crashed server is removed; a socket another
    /// running server holds is refused.
    #[arg(long, value_name = "PATH", help_heading = "Listening")]
    pub unixsocket: Option<String>,

    /// Binary mode: stdout bytes are sent as binary messages in the chunks they are read, and
    /// client messages are written to stdin byte for byte (text messages get a newline).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = parse_go_bool, action = ArgAction::Set,
          default_value = "false", hide_default_value = true, help_heading = "Data")]
    pub binary: bool,

    /// Send the program's stderr to the client too: every message becomes JSON,
    /// {"stream":"stdout","data":"..."} or {"stream":"stderr","data":"..."}. Stderr is still
    /// logged. Not with --binary.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = parse_go_bool, action = ArgAction::Set,
          default_value = "false", hide_default_value = true, help_heading = "Data")]
    pub passstderr: bool,

    /// Largest client message in bytes; a larger one closes the connection with 1009
    /// (message too big). 0 means no limit.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_FRAME_SIZE,
          allow_negative_numbers = true, help_heading = "Data")]
    pub maxframesize: i64,

    /// Longest stdout line sent as one message. A longer line is sent in pieces of this size
    /// (with one warning in the log), so memory stays bounded and nothing is lost.
    #[arg(long = "max-line-bytes", value_name = "BYTES", default_value_t = DEFAULT_MAX_LINE_BYTES,
          value_parser = parse_positive_usize, help_heading = "Data")]
    pub max_line_bytes: usize,

    /// Serve every executable in DIR, chosen by the URL path (/foo runs DIR/foo). Not with
    /// COMMAND.
    #[arg(long, value_name = "DIR", help_heading = "Programs")]
    pub dir: Option<String>,

    /// Environment variables passed from wsd's own environment to the programs, comma
    /// separated. Every other variable of wsd's environment is withheld.
    #[arg(
        long,
        value_name = "VAR[,VAR...]",
        default_value = "PATH,LD_LIBRARY_PATH",
        help_heading = "Programs"
    )]
    pub passenv: String,

    /// Look up the client's host name (REMOTE_HOST) with reverse DNS.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = parse_go_bool, action = ArgAction::Set,
          default_value = "false", hide_default_value = true, help_heading = "Programs")]
    pub reverselookup: bool,

    /// Most programs running at once; a connection beyond it is answered 429 Too Many
    /// Requests. 0 or less means no limit.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_FORKS,
          allow_negative_numbers = true, help_heading = "Programs")]
    pub maxforks: i64,

    /// Extra grace in milliseconds before a program whose client left is signalled. Its stdin
    /// is closed at once; SIGINT, SIGTERM and SIGKILL go to its whole process group after
    /// 100, 250 and 500 ms more, each plus this value.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 0,
        help_heading = "Programs"
    )]
    pub closems: u64,

    /// Send a WebSocket ping every MS milliseconds; a client that answers nothing for two
    /// intervals is disconnected. 0 disables pings.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 0,
        help_heading = "Programs"
    )]
    pub pingms: u64,

    /// Broadcast mode: one program per route (per program and arguments), shared by all of its
    /// clients. Every output line goes to every client; client messages go to the shared
    /// stdin as whole lines. The program starts with the first client (with that client's
    /// environment) and is stopped --linger-ms after the last one leaves.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = parse_go_bool, action = ArgAction::Set,
          default_value = "false", hide_default_value = true, help_heading = "Live feeds")]
    pub broadcast: bool,

    /// With --broadcast: how long a shared program keeps running after its last client left.
    /// -1 keeps it running for good; with COMMAND it is then started when the server starts.
    #[arg(
        long = "linger-ms",
        value_name = "MS",
        default_value_t = 0,
        allow_negative_numbers = true,
        help_heading = "Live feeds"
    )]
    pub linger_ms: i64,

    /// With --broadcast: messages queued per client. A client that falls this far behind is
    /// closed with 1013 (try again later) and logged; the others carry on at full speed.
    #[arg(long = "send-queue", value_name = "N", default_value_t = DEFAULT_SEND_QUEUE,
          value_parser = parse_positive_usize, help_heading = "Live feeds")]
    pub send_queue: usize,

    /// With --broadcast: a new client first receives the last N output lines, then the live
    /// stream, with nothing lost or repeated in between.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        help_heading = "Live feeds"
    )]
    pub replay: usize,

    /// Server-Sent Events: a GET with "Accept: text/event-stream" gets the program's output
    /// as an event stream (one event per line, numbered by id:), per connection or, with
    /// --broadcast, from the shared program. Not with --binary.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = parse_go_bool, action = ArgAction::Set,
          default_value = "false", hide_default_value = true, help_heading = "Live feeds")]
    pub sse: bool,

    /// Largest request line plus headers in bytes (at least 8192); a larger request is
    /// answered 431 Request Header Fields Too Large.
    #[arg(long = "max-header-bytes", value_name = "BYTES", default_value_t = DEFAULT_MAX_HEADER_BYTES,
          value_parser = parse_max_header_bytes, help_heading = "Limits")]
    pub max_header_bytes: usize,

    /// A request's headers must arrive within MS milliseconds of the connection opening, or
    /// of the previous response on a kept-alive connection; otherwise the connection is
    /// closed. This ends slowloris attacks and idle connections that never start a
    /// handshake. 0 disables it.
    #[arg(long = "header-timeout-ms", value_name = "MS", default_value_t = DEFAULT_HEADER_TIMEOUT_MS,
          help_heading = "Limits")]
    pub header_timeout_ms: u64,

    /// Most connections at once that have not finished a WebSocket handshake (plain HTTP
    /// connections included). When one more arrives, the oldest of them is closed, so a flood
    /// of idle connections cannot lock out real clients. 0 means no limit.
    #[arg(long = "max-pending", value_name = "N", default_value_t = DEFAULT_MAX_PENDING,
          help_heading = "Limits")]
    pub max_pending: usize,

    /// Accept upgrades only from these origins ([scheme://]host[:port], comma separated); others
    /// get 403. Without a port any port matches; without a scheme both http and https do.
    #[arg(long, value_name = "ORIGINS", help_heading = "Access control")]
    pub origin: Option<String>,

    /// Accept upgrades only when the Origin header matches the Host header; others get 403.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = parse_go_bool, action = ArgAction::Set,
          default_value = "false", hide_default_value = true, help_heading = "Access control")]
    pub sameorigin: bool,

    /// Believe the forwarding headers (X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, or
    /// Forwarded) of a peer in this range (10.0.0.0/8, 127.0.0.1, fd00::/8); repeatable or comma
    /// separated. The client is then the rightmost address in the chain that is not a trusted
    /// proxy (REMOTE_ADDR, REMOTE_PORT), HTTPS is on when the proxy says https, and the origin
    /// check uses the forwarded host. Without it the headers are ignored.
    #[arg(
        long = "trusted-proxy",
        value_name = "CIDR",
        help_heading = "Access control"
    )]
    pub trusted_proxy: Vec<String>,

    /// Extra header ("Name: value") on every response; repeatable.
    #[arg(long, value_name = "HEADER", help_heading = "Headers")]
    pub header: Vec<String>,

    /// Extra header on WebSocket upgrade responses only; repeatable.
    #[arg(long = "header-ws", value_name = "HEADER", help_heading = "Headers")]
    pub header_ws: Vec<String>,

    /// Extra header on plain HTTP responses only; repeatable.
    #[arg(long = "header-http", value_name = "HEADER", help_heading = "Headers")]
    pub header_http: Vec<String>,

    /// Log line format: text (websocketd's) or json (one object per line: time in RFC 3339,
    /// level, area, the connection's fields, message).
    #[arg(long = "log-format", value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text,
          help_heading = "Logging")]
    pub log_format: LogFormat,

    /// Serve Prometheus metrics (text format) at http://ADDR:PORT/metrics, on a listener of
    /// its own; off by default. ADDR may be empty (:9100) for all interfaces.
    #[arg(long, value_name = "ADDR:PORT", help_heading = "Operations")]
    pub metrics: Option<String>,

    /// Log verbosity. Logs go to stdout in websocketd's format, one line per event.
    #[arg(long, value_name = "LEVEL", value_enum, default_value_t = LogLevel::Access,
          help_heading = "Logging")]
    pub loglevel: LogLevel,

    /// Serve the files in DIR over plain HTTP (GET and HEAD, with Content-Type, Last-Modified,
    /// conditional requests and ranges; index.html for a directory). Nothing outside DIR is
    /// reachable, through `..` or symlinks. WebSocket upgrades still go to the program; COMMAND
    /// may be left out.
    #[arg(long, value_name = "DIR", help_heading = "HTTP side")]
    pub staticdir: Option<String>,

    /// Run the CGI/1.1 scripts in DIR for plain HTTP requests to their paths: the request body
    /// streams to the script's stdin, its header block becomes the response, its output
    /// streams back. Scripts get the same environment as WebSocket programs. COMMAND may be
    /// left out.
    #[arg(long, value_name = "DIR", help_heading = "HTTP side")]
    pub cgidir: Option<String>,

    /// A CGI script that sends no output for MS milliseconds (before or after its headers) is
    /// killed; before its headers the client gets 504.
    #[arg(long = "cgi-timeout-ms", value_name = "MS", default_value_t = 30_000,
          value_parser = parse_positive_u64, help_heading = "HTTP side")]
    pub cgi_timeout_ms: u64,

    /// Answer every plain HTTP request with an interactive page for trying the WebSocket
    /// endpoint from a browser. Not with --staticdir or --cgidir.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = parse_go_bool, action = ArgAction::Set,
          default_value = "false", hide_default_value = true, help_heading = "HTTP side")]
    pub devconsole: bool,

    /// Serve TLS on every listener (wss:// and https://), with the certificate and key of
    /// --sslcert and --sslkey; TLS 1.2 and 1.3. SIGHUP reloads the files without dropping
    /// connections. The default port becomes 443.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = parse_go_bool, action = ArgAction::Set,
          default_value = "false", hide_default_value = true, help_heading = "TLS")]
    pub ssl: bool,

    /// With --ssl: the certificate chain, PEM, the server's certificate first.
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub sslcert: Option<String>,

    /// With --ssl: the private key of the certificate, PEM (PKCS#8, RSA or EC).
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub sslkey: Option<String>,

    /// With --ssl: require a client certificate signed by one of the CA certificates in FILE
    /// (PEM), mutual TLS. A client without one fails the TLS handshake.
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub sslca: Option<String>,

    /// Also listen for plain HTTP on PORT (on every --address) and answer every request with a
    /// 301 redirect to the same host and path on the main port (https:// with --ssl).
    #[arg(long, value_name = "PORT", help_heading = "TLS")]
    pub redirport: Option<u16>,

    /// Print the version and exit.
    #[arg(long, action = ArgAction::SetTrue, help_heading = "Information")]
    pub version: bool,

    /// Print the license and exit.
    #[arg(long, action = ArgAction::SetTrue, help_heading = "Information")]
    pub license: bool,

    /// Print a completion script for SHELL (bash, zsh or fish) and exit.
    #[arg(long, value_name = "SHELL", value_enum, help_heading = "Information")]
    pub completions: Option<CompletionShell>,

    /// The program to run for each connection, and its arguments.
    #[arg(value_name = "COMMAND", trailing_var_arg = true, allow_hyphen_values = true,
          num_args = 0.., value_hint = ValueHint::CommandWithArguments)]
    pub command: Vec<OsString>,
}

/// Go's `strconv.ParseBool`, which websocketd's boolean flags use.
fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err("expected true or false".to_string()),
    }
}

fn parse_positive_usize(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_positive_u64(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_max_header_bytes(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n < MIN_MAX_HEADER_BYTES => {
            Err(format!("must be at least {MIN_MAX_HEADER_BYTES}"))
        }
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// Rewrites Go-style single-dash long flags (`-port=8080`, `-binary`) to clap's `--` form.
///
/// Only arguments before COMMAND are touched: the first argument that is neither a flag nor
/// the value of the flag before it is COMMAND, and everything after it belongs to COMMAND.
///
/// An argument before COMMAND that looks like a flag but names none is an error (clap would
/// otherwise take it for COMMAND).
pub fn normalize_args<I>(args: I) -> Result<Vec<OsString>, clap::Error>
where
    I: IntoIterator<Item = OsString>,
{
    let mut cmd = Cli::command();
    // Number-of-values settings are filled in by build(); without it no flag takes a value.
    cmd.build();
    let mut out = Vec::new();
    let mut args = args.into_iter();
    if let Some(argv0) = args.next() {
        out.push(argv0);
    }
    let takes_value = |name: &str| -> Option<bool> {
        if name == "help" {
            return Some(false);
        }
        cmd.get_arguments()
            .find(|a| a.get_long() == Some(name))
            .map(|a| {
                a.get_action().takes_values()
                    && a.get_num_args().is_some_and(|n| n.min_values() > 0)
            })
    };
    let mut value_expected = false;
    for arg in args.by_ref() {
        if value_expected {
            value_expected = false;
            out.push(arg);
            continue;
        }
        let Some(s) = arg.to_str() else {
            out.push(arg);
            break;
        };
        if s == "-h" {
            out.push(arg);
            continue;
        }
        if s == "--" || !s.starts_with('-') || s == "-" {
            out.push(arg);
            break;
        }
        let body = s.trim_start_matches('-');
        let dashes = s.len() - body.len();
        if dashes > 2 {
            out.push(arg);
            continue;
        }
        let (name, has_value) = match body.split_once('=') {
            Some((n, _)) => (n, true),
            None => (body, false),
        };
        match takes_value(name) {
            Some(needs_value) => {
                out.push(OsString::from(format!("--{body}")));
                value_expected = needs_value && !has_value;
            }
            None => {
                return Err(cmd.clone().error(
                    clap::error::ErrorKind::UnknownArgument,
                    format!("unexpected argument '{s}' found"),
                ))
            }
        }
    }
    out.extend(args);
    Ok(out)
}

/// Parses the process arguments, accepting every spelling Go's flag package accepts.
pub fn parse_args<I>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = OsString>,
{
    Cli::try_parse_from(normalize_args(args)?)
}

/// Writes the completion script for `shell`, generated from the flag definitions.
pub fn write_completions(shell: CompletionShell, out: &mut dyn std::io::Write) {
    let shell = match shell {
        CompletionShell::Bash => clap_complete::Shell::Bash,
        CompletionShell::Zsh => clap_complete::Shell::Zsh,
        CompletionShell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut Cli::command(), "wsd", out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        parse_args(
            std::iter::once("wsd")
                .chain(args.iter().copied())
                .map(OsString::from),
        )
        .expect("arguments parse")
    }

    #[test]
    fn go_spellings_are_all_accepted() {
        for args in [
            &["--port=8080", "cat"][..],
            &["--port", "8080", "cat"],
            &["-port=8080", "cat"],
            &["-port", "8080", "cat"],
        ] {
            let cli = parse(args);
            assert_eq!(cli.port, Some(8080), "{args:?}");
            assert_eq!(cli.command, vec![OsString::from("cat")], "{args:?}");
        }
    }

    #[test]
    fn go_spellings_with_detached_values_chain() {
        let cli = parse(&[
            "-port", "1", "-address", "::1", "-passenv", "A,B", "-binary", "cat",
        ]);
        assert_eq!(cli.port, Some(1));
        assert_eq!(cli.address, vec!["::1"]);
        assert_eq!(cli.passenv, "A,B");
        assert!(cli.binary);
        assert_eq!(cli.command, vec![OsString::from("cat")]);
    }

    #[test]
    fn booleans_take_an_optional_attached_value() {
        assert!(parse(&["--binary", "cat"]).binary);
        assert!(parse(&["-binary", "cat"]).binary);
        assert!(parse(&["--binary=true", "cat"]).binary);
        assert!(!parse(&["--binary=false", "cat"]).binary);
        assert!(parse(&["-sameorigin=1", "cat"]).sameorigin);
        // As in Go, a detached word after a boolean flag is not its value.
        let cli = parse(&["--binary", "false"]);
        assert!(cli.binary);
        assert_eq!(cli.command, vec![OsString::from("false")]);
    }

    #[test]
    fn command_arguments_pass_through_untouched() {
        let cli = parse(&["-port=1", "ls", "-port", "--binary", "-l"]);
        assert!(!cli.binary);
        let want: Vec<OsString> = ["ls", "-port", "--binary", "-l"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(cli.command, want);
    }

    #[test]
    fn repeatable_flags_collect_and_scalars_take_the_last() {
        let cli = parse(&[
            "--address=127.0.0.1",
            "-address",
            "::1",
            "--port=1",
            "--port=2",
            "cat",
        ]);
        assert_eq!(cli.address, vec!["127.0.0.1", "::1"]);
        assert_eq!(cli.port, Some(2));
    }

    #[test]
    fn unknown_flags_before_the_command_are_errors() {
        let err = parse_args(["wsd", "--nosuch", "cat"].map(OsString::from)).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
        assert!(err.to_string().contains("--nosuch"));
    }

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
