//! The environment a program gets, through the real binary: websocketd 0.5's CGI variables,
//! HTTP_* for the request headers, and nothing of wsd's own environment but `--passenv`.
//!
//! The program is `/usr/bin/env` itself (not a shell script, which would add PWD and the like);
//! each line it prints is one message.
mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};

const ENV: &str = "/usr/bin/env";

/// The parent environment every test gives wsd (instead of the test runner's).
const PARENT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Starts wsd with `flags` and COMMAND /usr/bin/env, in an environment of exactly PATH, HOME
/// and SECRET.
fn start_env_server(flags: &[&str]) -> Wsd {
    start_env_server_with(flags, &[])
}

/// Like [`start_env_server`], with `extra` variables in wsd's environment too.
fn start_env_server_with(flags: &[&str], extra: &[(&str, &str)]) -> Wsd {
    let mut args = flags.to_vec();
    args.push(ENV);
    Wsd::start_with(&args, |cmd| {
        cmd.env_clear()
            .env("PATH", PARENT_PATH)
            .env("HOME", "/root")
            .env("SECRET", "1");
        cmd.envs(extra.iter().copied());
    })
}

/// Connects to `path` with extra request headers (repeats allowed).
async fn connect_with(wsd: &Wsd, path: &str, headers: &[(&str, &str)]) -> Client {
    let mut req = wsd.url(path).into_client_request().unwrap();
    for (name, value) in headers {
        req.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    Client::connect(req).await
}

/// Reads every line the program printed until the close frame: NAME -> value.
async fn read_env(c: &mut Client) -> BTreeMap<String, String> {
    let (lines, close) = c.read_to_close(Duration::from_secs(5)).await;
    assert_eq!(close.map(|c| c.0), Some(1000), "env should exit normally");
    let mut env = BTreeMap::new();
    for line in lines {
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a variable: {line:?}"));
        assert!(
            env.insert(k.to_string(), v.to_string()).is_none(),
            "{k} twice"
        );
    }
    env
}

/// The environment of one connection to `path` with extra headers.
async fn env_of(wsd: &Wsd, path: &str, headers: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut c = connect_with(wsd, path, headers).await;
    read_env(&mut c).await
}

fn get<'a>(env: &'a BTreeMap<String, String>, name: &str) -> &'a str {
    env.get(name)
        .unwrap_or_else(|| panic!("{name} is not set; the environment: {env:?}"))
}

/// The CGI variables websocketd 0.5 sets without --ssl, and the HTTP_* variables of the
/// headers tungstenite's client sends.
const CGI_NAMES: [&str; 21] = [
    "SERVER_SOFTWARE",
    "REMOTE_ADDR",
    "REMOTE_HOST",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "GATEWAY_INTERFACE",
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "PATH_TRANSLATED",
    "QUERY_STRING",
    "AUTH_TYPE",
    "CONTENT_LENGTH",
    "CONTENT_TYPE",
    "REMOTE_IDENT",
    "REMOTE_USER",
    "UNIQUE_ID",
    "REMOTE_PORT",
    "REQUEST_URI",
    "HTTP_HOST",
];
const CLIENT_HEADER_NAMES: [&str; 4] = [
    "HTTP_CONNECTION",
    "HTTP_UPGRADE",
    "HTTP_SEC_WEBSOCKET_VERSION",
    "HTTP_SEC_WEBSOCKET_KEY",
];

fn expected_names(extra: &[&str]) -> BTreeSet<String> {
    CGI_NAMES
        .iter()
        .chain(CLIENT_HEADER_NAMES.iter())
        .chain(extra.iter())
        .map(|s| s.to_string())
        .collect()
}

fn names(env: &BTreeMap<String, String>) -> BTreeSet<String> {
    env.keys().cloned().collect()
}

// ---- CGI variables -----------------------------------------------------------------------

#[tokio::test]
async fn server_variables_name_wsd_cgi_1_1_and_the_requested_host_and_port() {
    let wsd = start_env_server(&[]);
    let env = env_of(&wsd, "/", &[]).await;
    assert_eq!(
        get(&env, "SERVER_SOFTWARE"),
        format!("wsd/{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(get(&env, "GATEWAY_INTERFACE"), "CGI/1.1");
    assert_eq!(get(&env, "SERVER_PROTOCOL"), "HTTP/1.1");
    assert_eq!(get(&env, "SERVER_NAME"), "127.0.0.1");
    assert_eq!(get(&env, "SERVER_PORT"), wsd.port.to_string());
    assert_eq!(get(&env, "REQUEST_METHOD"), "GET");
}

#[tokio::test]
async fn path_variables_describe_the_url_as_websocketd_does() {
    let wsd = start_env_server(&[]);
    let env = env_of(&wsd, "/some%20dir/x.y?a=1&b=$(x)", &[]).await;
    assert_eq!(get(&env, "SCRIPT_NAME"), "/");
    assert_eq!(get(&env, "PATH_INFO"), "/some dir/x.y");
    assert_eq!(get(&env, "PATH_TRANSLATED"), "/some dir/x.y");
    assert_eq!(get(&env, "QUERY_STRING"), "a=1&b=$(x)");
    assert_eq!(get(&env, "REQUEST_URI"), "/some%20dir/x.y?a=1&b=$(x)");
}

#[tokio::test]
async fn an_empty_query_string_is_present_and_empty() {
    let wsd = start_env_server(&[]);
    let env = env_of(&wsd, "/plain", &[]).await;
    assert_eq!(get(&env, "QUERY_STRING"), "");
    assert_eq!(get(&env, "REQUEST_URI"), "/plain");
}

#[tokio::test]
async fn remote_variables_describe_the_client_socket() {
    let wsd = start_env_server(&[]);
    let mut c = connect_with(&wsd, "/", &[]).await;
    let local_port = match c.ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(s) => s.local_addr().unwrap().port(),
        _ => unreachable!("plain TCP"),
    };
    let env = read_env(&mut c).await;
    assert_eq!(get(&env, "REMOTE_ADDR"), "127.0.0.1");
    assert_eq!(get(&env, "REMOTE_HOST"), "127.0.0.1");
    assert_eq!(get(&env, "REMOTE_PORT"), local_port.to_string());
}

#[tokio::test]
async fn unique_id_differs_between_two_connections() {
    let wsd = start_env_server(&[]);
    let first = env_of(&wsd, "/", &[]).await;
    let second = env_of(&wsd, "/", &[]).await;
    let (a, b) = (get(&first, "UNIQUE_ID"), get(&second, "UNIQUE_ID"));
    assert!(!a.is_empty() && !b.is_empty());
    assert_ne!(a, b);
}

#[tokio::test]
async fn unsupported_cgi_variables_are_present_and_empty() {
    let wsd = start_env_server(&[]);
    let env = env_of(&wsd, "/", &[]).await;
    for name in [
        "AUTH_TYPE",
        "CONTENT_LENGTH",
        "CONTENT_TYPE",
        "REMOTE_IDENT",
        "REMOTE_USER",
    ] {
        assert_eq!(get(&env, name), "", "{name}");
    }
}

#[tokio::test]
async fn there_is_no_https_variable_without_tls_even_when_passenv_names_it() {
    let wsd = start_env_server_with(&["--passenv=PATH,HTTPS"], &[("HTTPS", "on")]);
    let env = env_of(&wsd, "/", &[]).await;
    assert_eq!(env.get("HTTPS"), None);
}

#[tokio::test]
async fn a_request_header_becomes_an_http_variable() {
    let wsd = start_env_server(&[]);
    let env = env_of(&wsd, "/", &[("X-Custom-Test", "hello there")]).await;
    assert_eq!(get(&env, "HTTP_X_CUSTOM_TEST"), "hello there");
    assert_eq!(get(&env, "HTTP_HOST"), format!("127.0.0.1:{}", wsd.port));
    assert_eq!(get(&env, "HTTP_UPGRADE"), "websocket");
}

#[tokio::test]
async fn a_repeated_request_header_is_joined_with_comma_space() {
    let wsd = start_env_server(&[]);
    let env = env_of(
        &wsd,
        "/",
        &[("X-Rep", "a"), ("X-Rep", "b c"), ("X-Rep", "d")],
    )
    .await;
    assert_eq!(get(&env, "HTTP_X_REP"), "a, b c, d");
}

// ---- nothing of wsd's own environment leaks ----------------------------------------------

#[tokio::test]
async fn by_default_the_program_sees_the_cgi_variables_and_path_only() {
    let wsd = start_env_server(&[]);
    let env = env_of(&wsd, "/", &[]).await;
    assert_eq!(names(&env), expected_names(&["PATH"]));
    assert_eq!(get(&env, "PATH"), PARENT_PATH);
}

#[tokio::test]
async fn passenv_passes_the_listed_variables_and_no_others() {
    let wsd = start_env_server(&["--passenv=SECRET"]);
    let env = env_of(&wsd, "/", &[]).await;
    assert_eq!(names(&env), expected_names(&["SECRET"]));
    assert_eq!(get(&env, "SECRET"), "1");
}

#[tokio::test]
async fn passenv_with_several_names_passes_each_that_is_set() {
    let wsd = start_env_server(&["--passenv=SECRET,PATH,NOT_SET_ANYWHERE"]);
    let env = env_of(&wsd, "/", &[]).await;
    assert_eq!(names(&env), expected_names(&["SECRET", "PATH"]));
}

// ---- --reverselookup ---------------------------------------------------------------------

/// The name `getent hosts 127.0.0.1` gives, if any.
fn loopback_name() -> Option<String> {
    let out = Command::new("getent")
        .args(["hosts", "127.0.0.1"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .map(str::to_string)
}

#[tokio::test]
async fn reverselookup_makes_remote_host_the_name_of_the_client_address() {
    let Some(name) = loopback_name() else {
        println!("skipped: this machine has no name for 127.0.0.1 (getent hosts 127.0.0.1)");
        return;
    };
    let wsd = start_env_server(&["--reverselookup"]);
    let env = env_of(&wsd, "/", &[]).await;
    assert_eq!(get(&env, "REMOTE_HOST"), name);
    assert_eq!(get(&env, "REMOTE_ADDR"), "127.0.0.1");
}
