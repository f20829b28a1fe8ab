//! wsd: CGI for WebSockets.
//!
//! Every WebSocket connection runs a program; each line the program prints on stdout becomes a
//! message to the client, and each message from the client becomes a line on the program's
//! stdin. wsd is a drop-in replacement for websocketd (same flags, environment variables,
//! process lifecycle and log format) that also fails bad input with the right close codes,
//! kills whole process groups, and bounds every buffer.
//!
//! One connection, from accept to teardown: [`server`] accepts it ([`admission`] caps the
//! connections waiting for a handshake and answers 503 when descriptors run out; with `--ssl`,
//! [`tls`] runs the TLS handshake first), [`http`] routes the request ([`route`], [`origin`],
//! [`cgi_env`]) and starts the [`child`], and [`session`] bridges the two, cutting output into
//! messages with [`framing`]. [`redirect`] answers `--redirport`.
//!
//! Operations: [`systemd`] (socket activation, readiness and watchdog notifications),
//! [`proxy`] (the client behind a `--trusted-proxy`), [`metrics`] (`--metrics`, Prometheus) and
//! [`log_json`] (`--log-format=json`).

pub mod admission;
pub mod broadcast;
pub mod cgi;
pub mod cgi_env;
pub mod child;
pub mod cli;
pub mod config;
pub mod devconsole;
pub mod framing;
pub mod http;
pub mod lenient;
#[macro_use]
pub mod log;
pub mod log_json;
pub mod metrics;
pub mod origin;
pub mod proxy;
pub mod redirect;
pub mod route;
pub mod server;
pub mod session;
pub mod sse;
pub mod static_files;
pub mod systemd;
pub mod tls;

/// The text `--license` prints.
pub const LICENSE: &str = include_str!("../LICENSE");
