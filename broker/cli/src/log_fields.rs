//! How log lines write their fields: as tracing-subscriber's own `DefaultFields`
//! (the message first, then `name=value`), with every control character in every
//! value escaped.
//!
//! A log line carries strings clients sent: a topic or group name, a refusal's
//! reason quoting what was refused, a SASL user. tracing-subscriber escapes
//! terminal sequences in messages only, and newlines nowhere, so a Kafka client
//! whose group protocol type was `x\n[broker-1] … ERROR …` could write a line of
//! its own into the broker's log. Here a newline in a value is written `\n`, a
//! NUL `\0`, any other control character (C0, DEL, C1) `\u{…}`.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};

/// The broker's `FormatFields` (see the module documentation).
pub(crate) struct EscapedFields;

impl<'a> MakeVisitor<Writer<'a>> for EscapedFields {
    type Visitor = EscapedVisitor<'a>;

    fn make_visitor(&self, target: Writer<'a>) -> Self::Visitor {
        EscapedVisitor(DefaultVisitor::new(target, true))
    }
}

/// tracing-subscriber's visitor, handed each value wrapped in [`Escaped`].
pub(crate) struct EscapedVisitor<'a>(DefaultVisitor<'a>);

impl Visit for EscapedVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0
                .record_debug(field, &Escaped(format_args!("{value}")));
        } else {
            // Written as Rust's `Debug` of a string: quoted, controls escaped.
            self.0.record_str(field, value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .record_debug(field, &Escaped(format_args!("{value}")));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.record_debug(field, &Escaped(value));
    }
}

impl VisitOutput<fmt::Result> for EscapedVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.0.finish()
    }
}

impl VisitFmt for EscapedVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        self.0.writer()
    }
}

/// A value whose `Debug` output has its control characters escaped.
struct Escaped<T>(T);

impl<T: fmt::Debug> fmt::Debug for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(EscapeControls(f), "{:?}", self.0)
    }
}

struct EscapeControls<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl fmt::Write for EscapeControls<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (at, c) in s.char_indices().filter(|(_, c)| c.is_control()) {
            self.0.write_str(&s[plain..at])?;
            write!(self.0, "{}", c.escape_debug())?;
            plain = at + c.len_utf8();
        }
        self.0.write_str(&s[plain..])
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// The lines `log` writes through a fmt layer with [`EscapedFields`].
    fn logged(log: impl FnOnce()) -> String {
        let out = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let out = out.clone();
            move || Sink(out.clone())
        };
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_ansi(false)
                .without_time()
                .with_target(false)
                .fmt_fields(EscapedFields),
        );
        tracing::subscriber::with_default(subscriber, log);
        let out = out.lock().unwrap();
        String::from_utf8(out.clone()).unwrap()
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn control_characters_in_values_are_escaped() {
        let reason = "type `x\n[broker-1] ERROR forged`\u{1}\u{7f}\u{85}\t\0";
        let name = "orders\r\nWARN forged";
        let error = std::io::Error::other("disk\nfull");
        let out = logged(|| {
            tracing::info!(%reason, name, error = &error as &dyn std::error::Error, n = 7, "refused: {name}");
            tracing::info!(ok = %"plain", "two words");
        });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert_eq!(
            lines[0],
            r#" INFO refused: orders\r\nWARN forged reason=type `x\n[broker-1] ERROR forged`\u{1}\u{7f}\u{85}\t\0 name="orders\r\nWARN forged" error=disk\nfull n=7"#
        );
        assert_eq!(lines[1], " INFO two words ok=plain");
    }
}
