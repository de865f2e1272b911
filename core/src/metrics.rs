//! Contract 3: the metrics file. Tools write their own figures in the
//! Prometheus text format, atomically, on success and on failure;
//! `push-metric` parses these files and forwards them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("invalid metric name {0:?}: expected [a-zA-Z_:][a-zA-Z0-9_:]*")]
    BadName(String),
    #[error("invalid label name {0:?}: expected [a-zA-Z_][a-zA-Z0-9_]*")]
    BadLabel(String),
    #[error("{file}:{line}: {msg}")]
    Parse {
        file: String,
        line: usize,
        msg: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

pub fn valid_metric_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

pub fn valid_label_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        && !n.starts_with("__")
}

/// Escape a label value: backslash, double quote, newline.
pub fn escape_label_value(v: &str) -> String {
    let mut o = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}

/// Format a sample value the way Prometheus reads it.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
    Untyped,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Untyped => "untyped",
        }
    }
}

/// One sample: a name, labels (sorted), a value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// The exposition line of this sample, without newline.
    pub fn line(&self) -> String {
        let mut s = self.name.clone();
        if !self.labels.is_empty() {
            s.push('{');
            let parts: Vec<String> = self
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label_value(v)))
                .collect();
            s.push_str(&parts.join(","));
            s.push('}');
        }
        let _ = write!(s, " {}", format_value(self.value));
        s
    }
}

/// A metric family: HELP, TYPE and its samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub help: String,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

/// A set of metric families, written as one exposition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    families: Vec<Family>,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn families(&self) -> &[Family] {
        &self.families
    }

    fn family(&mut self, name: &str, help: &str, kind: Kind) -> Result<&mut Family, MetricsError> {
        if !valid_metric_name(name) {
            return Err(MetricsError::BadName(name.into()));
        }
        if let Some(i) = self.families.iter().position(|f| f.name == name) {
            return Ok(&mut self.families[i]);
        }
        self.families.push(Family {
            name: name.into(),
            help: help.into(),
            kind,
            samples: Vec::new(),
        });
        let last = self.families.len() - 1;
        Ok(&mut self.families[last])
    }

    /// Set a gauge without labels (replacing an earlier value).
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) -> Result<&mut Self, MetricsError> {
        self.sample(name, help, Kind::Gauge, &[], value)
    }

    /// Set a labelled gauge sample (replacing one with the same labels).
    pub fn gauge_with(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: f64,
    ) -> Result<&mut Self, MetricsError> {
        self.sample(name, help, Kind::Gauge, labels, value)
    }

    pub fn counter(
        &mut self,
        name: &str,
        help: &str,
        value: f64,
    ) -> Result<&mut Self, MetricsError> {
        self.sample(name, help, Kind::Counter, &[], value)
    }

    pub fn sample(
        &mut self,
        name: &str,
        help: &str,
        kind: Kind,
        labels: &[(&str, &str)],
        value: f64,
    ) -> Result<&mut Self, MetricsError> {
        let mut map = BTreeMap::new();
        for (k, v) in labels {
            if !valid_label_name(k) {
                return Err(MetricsError::BadLabel((*k).into()));
            }
            map.insert((*k).to_string(), (*v).to_string());
        }
        let fam = self.family(name, help, kind)?;
        let sample = Sample {
            name: name.into(),
            labels: map,
            value,
        };
        match fam.samples.iter_mut().find(|s| s.labels == sample.labels) {
            Some(s) => *s = sample,
            None => fam.samples.push(sample),
        }
        Ok(self)
    }

    /// Add every family of another set (its samples replace equal ones).
    pub fn extend(&mut self, other: &Metrics) -> Result<(), MetricsError> {
        for f in &other.families {
            for s in &f.samples {
                let labels: Vec<(&str, &str)> = s
                    .labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                self.sample(&f.name, &f.help, f.kind, &labels, s.value)?;
            }
            if f.samples.is_empty() {
                self.family(&f.name, &f.help, f.kind)?;
            }
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        self.families
            .iter()
            .find(|f| f.name == name)?
            .samples
            .first()
            .map(|s| s.value)
    }

    /// The text exposition, HELP and TYPE before each family.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.families {
            if f.samples.is_empty() {
                continue;
            }
            if !f.help.is_empty() {
                let help = f.help.replace('\\', "\\\\").replace('\n', "\\n");
                let _ = writeln!(out, "# HELP {} {help}", f.name);
            }
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.as_str());
            for s in &f.samples {
                let _ = writeln!(out, "{}", s.line());
            }
        }
        out
    }

    /// Write atomically (temp, fsync, rename): a reader sees the old file
    /// or the new one, never half of one.
    pub fn write_to(&self, path: &Path) -> Result<(), MetricsError> {
        crate::fsutil::write_atomic(path, self.render().as_bytes()).map_err(|source| {
            MetricsError::Io {
                path: path.display().to_string(),
                source,
            }
        })
    }

    /// Parse a text exposition; errors name the file and line.
    pub fn parse(text: &str, file: &str) -> Result<Metrics, MetricsError> {
        let mut m = Metrics::new();
        let mut helps: BTreeMap<String, String> = BTreeMap::new();
        let mut kinds: BTreeMap<String, Kind> = BTreeMap::new();
        for (i, raw) in text.lines().enumerate() {
            let err = |msg: String| MetricsError::Parse {
                file: file.into(),
                line: i + 1,
                msg,
            };
            let line = raw.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix('#') {
                let rest = rest.trim_start();
                if let Some(r) = rest.strip_prefix("HELP ") {
                    let (name, help) = r.split_once(' ').unwrap_or((r, ""));
                    helps.insert(name.into(), help.replace("\\n", "\n").replace("\\\\", "\\"));
                } else if let Some(r) = rest.strip_prefix("TYPE ") {
                    let (name, t) = r
                        .split_once(' ')
                        .ok_or_else(|| err("TYPE without a type".into()))?;
                    let k = match t.trim() {
                        "gauge" => Kind::Gauge,
                        "counter" => Kind::Counter,
                        "untyped" => Kind::Untyped,
                        other => return Err(err(format!("unsupported type {other:?}"))),
                    };
                    kinds.insert(name.into(), k);
                }
                continue;
            }
            let (name, labels, rest) = parse_sample_head(line).map_err(err)?;
            let mut fields = rest.split_whitespace();
            let vtext = fields.next().ok_or_else(|| err("missing value".into()))?;
            let value =
                parse_value(vtext).ok_or_else(|| err(format!("invalid value {vtext:?}")))?;
            if let Some(ts) = fields.next() {
                ts.parse::<i64>()
                    .map_err(|_| err(format!("invalid timestamp {ts:?}")))?;
            }
            if fields.next().is_some() {
                return Err(err("trailing text after the value".into()));
            }
            let help = helps.get(&name).cloned().unwrap_or_default();
            let kind = kinds.get(&name).copied().unwrap_or(Kind::Untyped);
            let lv: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            m.sample(&name, &help, kind, &lv, value)
                .map_err(|e| err(e.to_string()))?;
        }
        Ok(m)
    }

    /// Read and parse a metrics file.
    pub fn read(path: &Path) -> Result<Metrics, MetricsError> {
        let text = std::fs::read_to_string(path).map_err(|source| MetricsError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => v.parse::<f64>().ok().filter(|x| x.is_finite()),
    }
}

type Head = (String, Vec<(String, String)>, String);

fn parse_sample_head(line: &str) -> Result<Head, String> {
    let end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..end];
    if !valid_metric_name(name) {
        return Err(format!("invalid metric name {name:?}"));
    }
    let mut rest = &line[end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        let mut consumed = None;
        loop {
            while matches!(chars.peek(), Some((_, c)) if c.is_whitespace() || *c == ',') {
                chars.next();
            }
            match chars.peek() {
                Some((i, '}')) => {
                    consumed = Some(i + 1);
                    break;
                }
                None => break,
                _ => {}
            }
            let mut key = String::new();
            while let Some((_, c)) = chars.peek() {
                if *c == '=' || c.is_whitespace() {
                    break;
                }
                key.push(*c);
                chars.next();
            }
            if !valid_label_name(&key) {
                return Err(format!("invalid label name {key:?}"));
            }
            if !matches!(chars.next(), Some((_, '='))) {
                return Err(format!("label {key:?} without '='"));
            }
            if !matches!(chars.next(), Some((_, '"'))) {
                return Err(format!("label {key:?}: value must be quoted"));
            }
            let mut val = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => val.push('\n'),
                        Some((_, '\\')) => val.push('\\'),
                        Some((_, '"')) => val.push('"'),
                        _ => return Err(format!("label {key:?}: bad escape")),
                    },
                    Some((_, '"')) => break,
                    Some((_, c)) => val.push(c),
                    None => return Err(format!("label {key:?}: unterminated value")),
                }
            }
            labels.push((key, val));
        }
        let used = consumed.ok_or_else(|| "unterminated label set".to_string())?;
        rest = &r[used..];
    }
    if !rest.starts_with(char::is_whitespace) {
        return Err("expected a space before the value".into());
    }
    Ok((name.to_string(), labels, rest.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_help_type_and_escaped_labels() {
        let mut m = Metrics::new();
        m.gauge(
            "lvm_snapshot_created_total",
            "Snapshots created by this run",
            3.0,
        )
        .expect("gauge");
        m.gauge_with(
            "lvm_snapshot_newest_timestamp_seconds",
            "Newest",
            &[("origin", "a\"b\\c\nd")],
            1.5e9,
        )
        .expect("labelled");
        let text = m.render();
        assert_eq!(
            text,
            "# HELP lvm_snapshot_created_total Snapshots created by this run\n\
             # TYPE lvm_snapshot_created_total gauge\n\
             lvm_snapshot_created_total 3\n\
             # HELP lvm_snapshot_newest_timestamp_seconds Newest\n\
             # TYPE lvm_snapshot_newest_timestamp_seconds gauge\n\
             lvm_snapshot_newest_timestamp_seconds{origin=\"a\\\"b\\\\c\\nd\"} 1500000000\n"
        );
        let back = Metrics::parse(&text, "x.prom").expect("parse");
        assert_eq!(back, m);
    }

    #[test]
    fn bad_names_are_refused() {
        let mut m = Metrics::new();
        assert!(m.gauge("1bad", "", 1.0).is_err());
        assert!(m.gauge("bad-name", "", 1.0).is_err());
        assert!(m.gauge_with("ok", "", &[("bad-label", "x")], 1.0).is_err());
    }

    #[test]
    fn parse_errors_name_file_and_line() {
        let e = Metrics::parse("a 1\nb{x=\"1\" 2\n", "f.prom").expect_err("bad");
        assert!(e.to_string().starts_with("f.prom:2: "), "{e}");
        let e = Metrics::parse("a one\n", "f.prom").expect_err("bad value");
        assert_eq!(e.to_string(), "f.prom:1: invalid value \"one\"");
        let e = Metrics::parse("a 5.82542e+12 extra\n", "f.prom").expect_err("trailing");
        assert!(
            e.to_string().starts_with("f.prom:1: invalid timestamp"),
            "{e}"
        );
        let e = Metrics::parse("a 1 17 more\n", "f.prom").expect_err("trailing");
        assert!(e.to_string().contains("trailing"), "{e}");
        let m = Metrics::parse("a 5.82542e+12\nb{} 1 1700000000000\n", "f.prom").expect("ok");
        assert_eq!(m.get("a"), Some(5.82542e12));
    }

    #[test]
    fn write_is_atomic_and_complete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("m.prom");
        let mut m = Metrics::new();
        m.gauge("x", "h", 1.0).expect("gauge");
        m.write_to(&p).expect("write");
        assert_eq!(Metrics::read(&p).expect("read").get("x"), Some(1.0));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").collect();
        assert_eq!(leftovers.len(), 1, "no temp file left behind");
    }
}
