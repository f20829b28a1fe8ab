//! The documentation stays true to the command line: `man/wsd.1` is generated from the clap
//! definition in `src/cli.rs` (plus the hand-written sections below), and every flag `--help`
//! lists is documented in the manual page and the README.
//!
//! After changing a flag or its help, regenerate the manual page with
//! `WSD_UPDATE_MAN=1 cargo test --test docs` and commit the result.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use clap::CommandFactory;
use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;

fn repo_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The sections clap cannot know about, in the order they appear after the options.
fn extra_sections() -> Roff {
    let mut r = Roff::new();

    r.control("SH", ["EXIT STATUS"]);
    for (status, meaning) in [
        ("0", "The server was stopped by SIGINT or SIGTERM and shut down cleanly, or --help, --version, --license or --completions was given."),
        ("1", "No COMMAND and none of --dir, --staticdir, --cgidir (or no arguments at all), COMMAND cannot be found or is not executable, or both COMMAND and --dir were given."),
        ("2", "A flag is unknown, has a bad value, or conflicts with another flag (--binary with --passstderr, --ssl without --sslcert and --sslkey, --devconsole with --staticdir or --cgidir); or --dir, --staticdir or --cgidir names no directory; or a --sslcert, --sslkey or --sslca file cannot be read or used (no certificate, no key, a key that does not belong to the certificate)."),
        ("3", "wsd cannot listen: the address (or the --metrics address) is in use or cannot be bound, the --unixsocket path is held by a running server, or a socket systemd passed is not a listening stream socket."),
    ] {
        r.control("TP", []);
        r.text([bold(status)]);
        r.text([roman(meaning)]);
    }

    r.control("SH", ["ENVIRONMENT"]);
    r.text([roman(
        "Each program starts with an empty environment plus the variables below (CGI/1.1, as websocketd sets them). \
         Of wsd's own environment only the variables named by --passenv are passed on (PATH and LD_LIBRARY_PATH by default).",
    )]);
    for (name, meaning) in [
        ("SERVER_SOFTWARE", "wsd/VERSION."),
        ("GATEWAY_INTERFACE", "CGI/1.1."),
        ("SERVER_PROTOCOL", "The request's HTTP version, normally HTTP/1.1."),
        ("SERVER_NAME, SERVER_PORT", "The host and port of the request's Host header."),
        ("REMOTE_ADDR, REMOTE_PORT", "The client's address and port (unix-socket and empty for --unixsocket clients); \
         behind a --trusted-proxy, the client it names (see REVERSE PROXIES)."),
        ("REMOTE_HOST", "The client's host name with --reverselookup, otherwise its address."),
        ("REQUEST_METHOD", "GET."),
        ("REQUEST_URI", "The path and query string as the client sent them."),
        ("SCRIPT_NAME", "/ for COMMAND; with --dir, the URL path of the program."),
        ("PATH_INFO", "The rest of the URL path after SCRIPT_NAME (all of it for COMMAND), decoded."),
        ("PATH_TRANSLATED", "The decoded URL path."),
        ("QUERY_STRING", "The query string, without the question mark."),
        ("UNIQUE_ID", "An id for the connection, also shown as id in the log."),
        ("HTTPS", "on when a --trusted-proxy says the client used https; otherwise unset."),
        ("AUTH_TYPE, CONTENT_LENGTH, CONTENT_TYPE, REMOTE_IDENT, REMOTE_USER", "Set, empty."),
        ("HTTP_*", "One per request header: HTTP_ORIGIN, HTTP_USER_AGENT, HTTP_COOKIE and so on; repeated headers are joined with a comma."),
        ("HTTPS", "on with --ssl, unset otherwise."),
    ] {
        r.control("TP", []);
        r.text([bold(name)]);
        r.text([roman(meaning)]);
    }

    r.control("SH", ["SYSTEMD"]);
    r.text([roman(
        "wsd reads these variables of its own environment (they are never passed to the programs).",
    )]);
    for (name, meaning) in [
        ("LISTEN_PID, LISTEN_FDS", "Socket activation: when LISTEN_PID is wsd's pid, wsd serves the LISTEN_FDS sockets \
         from descriptor 3 on (TCP or Unix, listening; LISTEN_FDNAMES is ignored) instead of binding --port and --address. \
         The variables are unset and the sockets closed on exec, so programs inherit neither."),
        ("NOTIFY_SOCKET", "wsd sends READY=1 once it listens and STOPPING=1 when it shuts down, as datagrams to this \
         Unix socket (an abstract one when it starts with @), for Type=notify services."),
        ("WATCHDOG_USEC, WATCHDOG_PID", "With WATCHDOG_USEC set (and WATCHDOG_PID, if set, wsd's pid), wsd sends \
         WATCHDOG=1 every half interval."),
    ] {
        r.control("TP", []);
        r.text([bold(name)]);
        r.text([roman(meaning)]);
    }
    r.control("PP", []);
    r.text([roman(
        "scripts/systemd/wsd.service and scripts/systemd/wsd.socket in wsd's source are a hardened service and its socket.",
    )]);

    r.control("SH", ["REVERSE PROXIES"]);
    r.text([roman(
        "With --trusted-proxy, a request from a peer in one of the ranges is described by its forwarding headers: \
         REMOTE_ADDR and REMOTE_PORT name the rightmost address in X-Forwarded-For that is not a trusted proxy \
         (without X-Forwarded-For, in Forwarded; the port is empty when the entry has none); HTTPS=on when \
         X-Forwarded-Proto (or proto=) is https; --origin and --sameorigin compare with X-Forwarded-Host (or host=), \
         else the Host header. From any other peer these headers are ignored.",
    )]);

    r.control("SH", ["LIMITS AND HOSTILE INPUT"]);
    r.text([roman(
        "Every buffer and every waiting connection is bounded. Each case is logged once; other connections carry on.",
    )]);
    for (what, answer) in [
        ("431", "Request line and headers over --max-header-bytes, or more than 100 header fields."),
        ("400", "A malformed request: a bad request line or header, TLS on the plain port, or plain HTTP on the TLS port."),
        ("(closed)", "No complete request headers within --header-timeout-ms of connecting or of the previous response \
         (with --ssl, no finished TLS handshake within it either, 10 s when it is 0); \
         or, beyond --max-pending connections without a finished handshake, the oldest of them."),
        ("429", "--maxforks programs are running."),
        ("503", "wsd is out of file descriptors (one is held in reserve to answer), or a program cannot be started \
         because processes or descriptors have run out; with Retry-After: 1. Service resumes by itself."),
        ("500", "The program cannot be started for another reason (missing, not executable)."),
        ("1009", "A client message over --maxframesize, decided from the frame header without reading the payload."),
        ("1002", "A protocol violation: an unmasked client frame, reserved bits or opcodes, a bad fragment sequence, \
         a fragmented or oversized control frame, a 64-bit length with its top bit set."),
        ("1007", "Invalid UTF-8 in a text message, as soon as the bad fragment arrives."),
        ("1013", "With --broadcast, a client that fell --send-queue messages behind the shared program (an event stream just ends)."),
    ] {
        r.control("TP", []);
        r.text([bold(what)]);
        r.text([roman(answer)]);
    }
    r.control("PP", []);
    r.text([roman(
        "A client that sends faster than its program reads is stalled by TCP after 8 queued messages; a program that writes \
         faster than its client reads blocks on its full pipe. At start wsd raises its soft limit on open files to the hard limit.",
    )]);

    r.control("SH", ["SIGNALS"]);
    r.control("TP", []);
    r.text([bold("SIGINT, SIGTERM")]);
    r.text([roman(
        "Graceful shutdown: wsd stops accepting connections, closes every WebSocket with 1001 (going away) \
         and ends every program as if its client had left, then exits 0.",
    )]);
    r.control("TP", []);
    r.text([bold("SIGHUP")]);
    r.text([roman(
        "With --ssl: read the --sslcert, --sslkey and --sslca files again and use them for new connections; \
         open connections keep theirs. If the files cannot be used, the previous certificate stays and the error is logged. \
         Without --ssl: logged and otherwise ignored.",
    )]);
    r.control("PP", []);
    r.text([roman(
        "Each program runs in its own process group. When its client leaves, its stdin is closed; SIGINT, SIGTERM and SIGKILL \
         then go to the whole group after 100, 250 and 500 ms more (each plus --closems), until it exits. \
         Whatever is left of the group (background grandchildren) is killed. When the program exits by itself, the client gets \
         a close frame: 1000 for exit status 0, 1011 otherwise, with the exit status as the reason.",
    )]);

    r
}

/// The manual page: clap's sections, then wsd's own.
fn render_man() -> String {
    let cmd = wsd::cli::Cli::command();
    let man = Man::new(cmd.clone());
    let mut out = Vec::new();
    // Every render_* call writes roff's preamble; keep only the first.
    let preamble = Roff::new().render();
    let mut section = |f: &dyn Fn(&mut Vec<u8>) -> std::io::Result<()>| {
        let mut buf = Vec::new();
        f(&mut buf).expect("rendering into memory");
        let text = String::from_utf8(buf).expect("roff is UTF-8");
        let body = if out.is_empty() {
            text.as_str()
        } else {
            text.strip_prefix(preamble.as_str()).unwrap_or(&text)
        };
        out.extend_from_slice(body.as_bytes());
    };
    section(&|w| {
        // Written by hand: roff drops an empty date argument, which would shift the others.
        let version = cmd.get_version().unwrap_or_default();
        writeln!(
            w,
            "{preamble}.TH WSD 1 \"\" \"wsd {version}\" \"User Commands\""
        )
    });
    section(&|w| {
        // The about line starts with "wsd: " for --help; NAME already says the name.
        let about = cmd.get_about().map(|a| a.to_string()).unwrap_or_default();
        let about = about
            .strip_prefix("wsd: ")
            .unwrap_or(&about)
            .trim_end_matches('.');
        let mut r = Roff::new();
        r.control("SH", ["NAME"]);
        r.text([roman(format!("wsd - {about}"))]);
        r.to_writer(w)
    });
    section(&|w| man.render_synopsis_section(w));
    section(&|w| man.render_description_section(w));
    section(&|w| man.render_options_section(w));
    section(&|w| {
        // clap's after_help ("Examples:" and indented command lines) as an EXAMPLES section.
        let mut r = Roff::new();
        if let Some(after) = cmd.get_after_help() {
            r.control("SH", ["EXAMPLES"]);
            for line in after
                .to_string()
                .lines()
                .filter(|l| !l.trim().is_empty() && l.trim() != "Examples:")
            {
                r.control("TP", []);
                r.text([bold(line.trim())]);
            }
        }
        r.to_writer(w)
    });
    section(&|w| extra_sections().to_writer(w));
    section(&|w| man.render_version_section(w));
    section(&|w| {
        let mut r = Roff::new();
        r.control("SH", ["SEE ALSO"]);
        r.text([bold("websocketd"), roman("(1), the program wsd replaces; README.md in wsd's source for examples and the differences from websocketd.")]);
        r.to_writer(w)
    });
    String::from_utf8(out).expect("roff is UTF-8")
}

#[test]
fn man_page_matches_the_cli_definition() {
    let path = repo_file("man/wsd.1");
    let want = render_man();
    if std::env::var("WSD_UPDATE_MAN").as_deref() == Ok("1") {
        std::fs::create_dir_all(path.parent().expect("man/ has a parent")).expect("creating man/");
        std::fs::write(&path, &want).expect("writing man/wsd.1");
        // Straight to stderr, past the test harness's capture, so the update is seen.
        let _ = writeln!(
            std::io::stderr(),
            "WSD_UPDATE_MAN=1: wrote {}",
            path.display()
        );
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    if have != want {
        let first_diff = have
            .lines()
            .zip(want.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| have.lines().count().min(want.lines().count()));
        panic!(
            "man/wsd.1 is stale (first difference at line {}):\n  checked in: {:?}\n  generated:  {:?}\n\
             regenerate it with: WSD_UPDATE_MAN=1 cargo test --test docs",
            first_diff + 1,
            have.lines().nth(first_diff).unwrap_or("<end of file>"),
            want.lines().nth(first_diff).unwrap_or("<end of file>"),
        );
    }
}

/// The long flags `--help` defines: the first `--name` of each option line.
fn flags_in_help() -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_wsd"))
        .arg("--help")
        .output()
        .expect("running wsd --help");
    assert!(
        out.status.success(),
        "wsd --help exited with {}",
        out.status
    );
    let help = String::from_utf8(out.stdout).expect("help is UTF-8");
    let mut flags: Vec<String> = help
        .lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let line = line.strip_prefix("-h, ").unwrap_or(line);
            let name: String = line
                .strip_prefix("--")?
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            (!name.is_empty()).then(|| format!("--{name}"))
        })
        .collect();
    flags.dedup();
    flags
}

/// True if `text` contains `flag` as a whole flag (not as the start of a longer one), where
/// the text writes each dash as `dash`.
fn mentions(text: &str, flag: &str, dash: &str) -> bool {
    let needle = flag.replace('-', dash);
    text.match_indices(&needle).any(|(i, _)| {
        let rest = &text[i + needle.len()..];
        !(rest.starts_with(dash)
            || rest.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_'))
    })
}

#[test]
fn every_flag_in_help_is_in_the_man_page_and_readme() {
    let flags = flags_in_help();
    assert!(
        flags.len() > 20,
        "expected wsd's full flag list in --help, found {flags:?}"
    );
    // While the other test rewrites the file, check what it writes.
    let man = if std::env::var("WSD_UPDATE_MAN").as_deref() == Ok("1") {
        render_man()
    } else {
        std::fs::read_to_string(repo_file("man/wsd.1")).expect("reading man/wsd.1")
    };
    let readme = std::fs::read_to_string(repo_file("README.md")).expect("reading README.md");
    let missing_man: Vec<&String> = flags.iter().filter(|f| !mentions(&man, f, "\\-")).collect();
    let missing_readme: Vec<&String> = flags
        .iter()
        .filter(|f| !mentions(&readme, f, "-"))
        .collect();
    assert!(
        missing_man.is_empty(),
        "flags in --help but not in man/wsd.1: {missing_man:?}"
    );
    assert!(
        missing_readme.is_empty(),
        "flags in --help but not in README.md: {missing_readme:?}"
    );
}
