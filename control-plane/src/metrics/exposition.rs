//! The Prometheus text exposition format, version 0.0.4: `# HELP` and `# TYPE`
//! once per family, then its samples, each line ending in `\n`. Label values
//! escape `\`, `"` and newlines; HELP text escapes `\` and newlines. A family
//! without samples is left out, as Prometheus's client libraries do (strict
//! parsers refuse a TYPE line without samples). A sample may carry a
//! timestamp (milliseconds since the epoch), as the kubelet's
//! `/metrics/resource` does. The one writer of the format in ORCA: the
//! metrics endpoint and the kubelet API both use it.

use std::fmt::Write as _;

/// `Content-Type` of a text exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric type, as `# TYPE` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value that goes up and down.
    Gauge,
    /// A value that only goes up (from 0 at process start).
    Counter,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        }
    }
}

/// A sample's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// An integer (counts, MHz, %, MiB).
    Int(u64),
    /// A float (watts, seconds).
    Float(f64),
}

impl Value {
    fn write(self, out: &mut String) {
        match self {
            Value::Int(v) => {
                let _ = write!(out, "{v}");
            }
            Value::Float(v) if v.is_nan() => out.push_str("NaN"),
            Value::Float(v) if v == f64::INFINITY => out.push_str("+Inf"),
            Value::Float(v) if v == f64::NEG_INFINITY => out.push_str("-Inf"),
            // Rust prints the shortest text that reads back as the same f64,
            // never with an exponent: Go's ParseFloat reads it.
            Value::Float(v) => {
                let _ = write!(out, "{v}");
            }
        }
    }
}

/// Text being written, one family at a time.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// Starts family `name` (a valid metric name); its samples follow with
    /// [`Family::sample`], before the next family. Its HELP and TYPE lines
    /// come with its first sample.
    pub fn family<'a>(&'a mut self, name: &'static str, help: &'a str, kind: Kind) -> Family<'a> {
        Family {
            out: self,
            name,
            help,
            kind,
            started: false,
        }
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// One family's samples.
#[derive(Debug)]
pub struct Family<'a> {
    out: &'a mut Exposition,
    name: &'static str,
    help: &'a str,
    kind: Kind,
    started: bool,
}

impl Family<'_> {
    /// A sample with `labels` (names are valid label names), in this order.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: Value) {
        self.write(labels, value, None);
    }

    /// A sample with a timestamp, milliseconds since the epoch.
    pub fn sample_at(&mut self, labels: &[(&str, &str)], value: Value, at_ms: i64) {
        self.write(labels, value, Some(at_ms));
    }

    fn write(&mut self, labels: &[(&str, &str)], value: Value, at_ms: Option<i64>) {
        let out = &mut self.out.out;
        if !self.started {
            self.started = true;
            out.push_str("# HELP ");
            out.push_str(self.name);
            out.push(' ');
            escape_help(self.help, out);
            out.push('\n');
            let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind.as_str());
        }
        out.push_str(self.name);
        if !labels.is_empty() {
            out.push('{');
            for (i, (name, value)) in labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(name);
                out.push_str("=\"");
                escape_label_value(value, out);
                out.push('"');
            }
            out.push('}');
        }
        out.push(' ');
        value.write(out);
        if let Some(at) = at_ms {
            let _ = write!(out, " {at}");
        }
        out.push('\n');
    }
}

/// Escapes a label value: `\` → `\\`, `"` → `\"`, newline → `\n`.
pub fn escape_label_value(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Escapes HELP text: `\` → `\\`, newline → `\n`.
fn escape_help(help: &str, out: &mut String) {
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_escape_and_keep_label_order() {
        let mut e = Exposition::default();
        let mut f = e.family("a_b", "back\\slash\nnewline \"quoted\"", Kind::Gauge);
        f.sample(&[("z", "q\"uo,te}"), ("a", "b\\s\nn")], Value::Int(7));
        f.sample(&[], Value::Float(0.5));
        let _ = e.family("empty", "Left out.", Kind::Gauge);
        let mut f = e.family("c_total", "Counted.", Kind::Counter);
        f.sample(&[("x", "")], Value::Float(f64::INFINITY));
        f.sample(&[("x", "y")], Value::Float(f64::NAN));
        let text = e.finish();
        assert_eq!(
            text,
            "# HELP a_b back\\\\slash\\nnewline \"quoted\"\n# TYPE a_b gauge\n\
             a_b{z=\"q\\\"uo,te}\",a=\"b\\\\s\\nn\"} 7\na_b 0.5\n\
             # HELP c_total Counted.\n# TYPE c_total counter\n\
             c_total{x=\"\"} +Inf\nc_total{x=\"y\"} NaN\n"
        );
        // A real parser of the format reads it back, labels in order and still
        // escaped as written.
        let scrape = prom_text_format_parser::Scrape::parse(&text).expect("valid exposition");
        let a = &scrape.metrics[0];
        assert_eq!(a.name, "a_b");
        assert_eq!(a.kind, prom_text_format_parser::Type::Gauge);
        let labels: Vec<(&str, &str)> = a.samples[0]
            .labels
            .iter()
            .map(|l| (l.key.as_str(), l.value.as_str()))
            .collect();
        assert_eq!(labels, [("z", "q\\\"uo,te}"), ("a", "b\\\\s\\nn")]);
        assert_eq!(a.samples[1].value.value.as_f64(), 0.5);
        assert_eq!(
            scrape.metrics[1].kind,
            prom_text_format_parser::Type::Counter
        );
    }
}
