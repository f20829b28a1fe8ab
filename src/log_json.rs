//! `--log-format=json`: the events of [`crate::log`] as one JSON object per line, for log
//! collectors that would otherwise have to parse websocketd's line format.
//!
//! ```text
//! {"time":"2026-11-26T05:03:00.123+00:00","level":"access","area":"session","url":"http://localhost:8080/","id":"1795669380828395633","remote":"127.0.0.1","command":"scripts/count.sh","origin":"file:","pid":"15478","message":"CONNECT"}
//! ```
//!
//! The keys are those of the text format: `time` (RFC 3339, local time with its offset, to the
//! millisecond), `level` (websocketd's name, as `--loglevel` spells it), `area`, then the
//! connection's fields as they are known, then `message`. Every value is a string.

use std::fmt;

use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::log::{each_field, for_each_span_fields, level_name, EventFields};

/// Formats span fields as `"key":"value"` members, to be spliced into each event's object.
pub struct JsonFields;

impl<'w> FormatFields<'w> for JsonFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        each_field(fields, |first, name, value| {
            if !first {
                writer.write_char(',')?;
            }
            member(&mut writer, name, value)
        })
    }

    /// Fields recorded later (a connection's id, its pid) join the members already there.
    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut more = String::new();
        self.format_fields(Writer::new(&mut more), fields)?;
        if !more.is_empty() {
            if !current.fields.is_empty() {
                current.fields.push(',');
            }
            current.fields.push_str(&more);
        }
        Ok(())
    }
}

/// Formats one event as one JSON object on one line.
pub struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
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
        let mut fields = EventFields::default();
        event.record(&mut fields);
        let now = chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, false);
        writer.write_char('{')?;
        member(&mut writer, "time", &now)?;
        writer.write_char(',')?;
        member(&mut writer, "level", level_name(event.metadata()))?;
        writer.write_char(',')?;
        member(&mut writer, "area", &fields.area)?;
        for_each_span_fields(ctx, |members| {
            writer.write_char(',')?;
            writer.write_str(members)
        })?;
        writer.write_char(',')?;
        member(&mut writer, "message", &fields.message)?;
        writer.write_str("}\n")
    }
}

/// Writes `"key":"value"` with both strings escaped as JSON requires.
fn member(w: &mut impl fmt::Write, key: &str, value: &str) -> fmt::Result {
    string(w, key)?;
    w.write_char(':')?;
    string(w, value)
}

fn string(w: &mut impl fmt::Write, s: &str) -> fmt::Result {
    w.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => w.write_str("\\\"")?,
            '\\' => w.write_str("\\\\")?,
            '\n' => w.write_str("\\n")?,
            '\r' => w.write_str("\\r")?,
            '\t' => w.write_str("\\t")?,
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                write!(w, "\\u{:04x}", c as u32)?
            }
            c => w.write_char(c)?,
        }
    }
    w.write_char('"')
}

#[cfg(test)]
mod tests {
    use super::string;

    #[test]
    fn strings_are_escaped() {
        let mut out = String::new();
        string(&mut out, "a\"b\\c\nd\u{1}e\u{2028}é").unwrap();
        assert_eq!(out, r#""a\"b\\c\nd\u0001e\u2028é""#);
    }
}
