//! Logging in websocketd's line format, on stdout, through `tracing`.
//!
//! websocketd's users (and its test suite) read its log lines from stdout:
//!
//! ```text
//! Tue, 24 Nov 2026 18:00:00 +0000 | ACCESS | session    | url:'http://h/' id:'1' remote:'::1' | CONNECT
//! ```
//!
//! date (RFC 1123 with a numeric zone), level (padded to 6), area (padded to 10), the
//! `key:'value'` pairs of the connection, and the message. Here the pairs are the fields of the
//! enclosing `tracing` spans (one per connection, recorded as they become known), the area is
//! the event's `area` field, and websocketd's six levels map onto tracing's levels and targets:
//!
//! | websocketd | tracing                  |
//! |------------|--------------------------|
//! | debug      | TRACE                    |
//! | trace      | DEBUG                    |
//! | access     | INFO, target `access`    |
//! | info       | INFO                     |
//! | error      | ERROR                    |
//! | fatal      | ERROR, target `fatal`    |
//!
//! Use the macros of this module (`access!`, `info!`, ...) rather than tracing's directly.
//!
//! `--log-format=json` writes the same events as JSON objects instead ([`crate::log_json`]).

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::cli::{LogFormat, LogLevel};

/// Logs at websocketd's `debug` level: `debug!(area, "format", args...)`.
#[macro_export]
macro_rules! debug {
    ($area:expr, $($arg:tt)+) => { ::tracing::trace!(target: "wsd", area = $area, $($arg)+) };
}
/// Logs at websocketd's `trace` level.
#[macro_export]
macro_rules! trace {
    ($area:expr, $($arg:tt)+) => { ::tracing::debug!(target: "wsd", area = $area, $($arg)+) };
}
/// Logs at websocketd's `access` level.
#[macro_export]
macro_rules! access {
    ($area:expr, $($arg:tt)+) => { ::tracing::info!(target: "access", area = $area, $($arg)+) };
}
/// Logs at websocketd's `info` level.
#[macro_export]
macro_rules! info {
    ($area:expr, $($arg:tt)+) => { ::tracing::info!(target: "wsd", area = $area, $($arg)+) };
}
/// Logs at websocketd's `error` level.
#[macro_export]
macro_rules! error {
    ($area:expr, $($arg:tt)+) => { ::tracing::error!(target: "wsd", area = $area, $($arg)+) };
}
/// Logs at websocketd's `fatal` level.
#[macro_export]
macro_rules! fatal {
    ($area:expr, $($arg:tt)+) => { ::tracing::error!(target: "fatal", area = $area, $($arg)+) };
}

/// Installs the global subscriber for `level` and `format`, writing to stdout.
pub fn init(level: LogLevel, format: LogFormat) {
    let filter = match level {
        LogLevel::Debug => Targets::new().with_default(LevelFilter::TRACE),
        LogLevel::Trace => Targets::new().with_default(LevelFilter::DEBUG),
        LogLevel::Access => Targets::new().with_default(LevelFilter::INFO),
        LogLevel::Info => Targets::new()
            .with_default(LevelFilter::INFO)
            .with_target("access", LevelFilter::OFF),
        LogLevel::Error => Targets::new().with_default(LevelFilter::ERROR),
        LogLevel::Fatal => Targets::new()
            .with_default(LevelFilter::OFF)
            .with_target("fatal", LevelFilter::ERROR),
        LogLevel::None => Targets::new().with_default(LevelFilter::OFF),
    };
    let text = (format == LogFormat::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stdout)
            .event_format(LineFormat)
            .fmt_fields(PairFields)
            .with_filter(filter.clone())
    });
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stdout)
            .event_format(crate::log_json::JsonLine)
            .fmt_fields(crate::log_json::JsonFields)
            .with_filter(filter)
    });
    // A second initialisation (only possible in tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(text)
        .with(json)
        .try_init();
}

/// Formats span fields as websocketd's `key:'value'` pairs.
struct PairFields;

impl<'w> FormatFields<'w> for PairFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'w>,
        fields: R,
    ) -> fmt::Result {
        each_field(fields, |first, name, value| {
            let sep = if first { "" } else { " " };
            write!(writer, "{sep}{name}:'{value}'")
        })
    }
}

/// Calls `write(first, name, value)` for each of `fields`, with Debug values formatted as
/// strings, until a call fails; the first failure, if any.
pub(crate) fn each_field(
    fields: impl tracing_subscriber::field::RecordFields,
    write: impl FnMut(bool, &str, &str) -> fmt::Result,
) -> fmt::Result {
    let mut visitor = FieldVisitor {
        write,
        first: true,
        result: Ok(()),
    };
    fields.record(&mut visitor);
    visitor.result
}

struct FieldVisitor<F> {
    write: F,
    first: bool,
    result: fmt::Result,
}

impl<F: FnMut(bool, &str, &str) -> fmt::Result> Visit for FieldVisitor<F> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_ok() {
            self.result = (self.write)(std::mem::take(&mut self.first), field.name(), value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

/// An I/O error's text as Go prints it: without Rust's " (os error N)" suffix.
pub(crate) fn os_error_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.split_once(" (os error") {
        Some((head, _)) => head.to_string(),
        None => text,
    }
}

/// An event's level by websocketd's name (`access`, `fatal`, ...); see the table above.
pub(crate) fn level_name(meta: &tracing::Metadata<'_>) -> &'static str {
    match (*meta.level(), meta.target()) {
        (Level::TRACE, _) => "debug",
        (Level::DEBUG, _) => "trace",
        (Level::INFO, "access") => "access",
        (Level::INFO, _) => "info",
        (Level::ERROR, "fatal") => "fatal",
        _ => "error",
    }
}

/// Formats one event as one websocketd log line.
struct LineFormat;

/// An event's own fields: its area and its message.
#[derive(Default)]
pub(crate) struct EventFields {
    pub(crate) area: String,
    pub(crate) message: String,
}

impl Visit for EventFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "area" => self.area = value.to_string(),
            "message" => self.message = value.to_string(),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "area" => self.area = format!("{value:?}"),
            "message" => self.message = format!("{value:?}"),
            _ => {}
        }
    }
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = level_name(event.metadata()).to_ascii_uppercase();
        let mut fields = EventFields::default();
        event.record(&mut fields);

        let now = chrono::Local::now().format("%a, %d %b %Y %H:%M:%S %z");
        write!(writer, "{now} | {level:<6} | {:<10} | ", fields.area)?;
        let mut first = true;
        for_each_span_fields(ctx, |pairs| {
            if !std::mem::take(&mut first) {
                writer.write_char(' ')?;
            }
            writer.write_str(pairs)
        })?;
        writeln!(writer, " | {}", fields.message)
    }
}

/// Calls `each` with the formatted fields of every span the event is in, outermost first,
/// leaving out spans without fields.
pub(crate) fn for_each_span_fields<S, N>(
    ctx: &FmtContext<'_, S, N>,
    mut each: impl FnMut(&str) -> fmt::Result,
) -> fmt::Result
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    if let Some(scope) = ctx.event_scope() {
        for span in scope.from_root() {
            let ext = span.extensions();
            if let Some(fields) = ext.get::<FormattedFields<N>>() {
                if !fields.is_empty() {
                    each(fields)?;
                }
            }
        }
    }
    Ok(())
}
