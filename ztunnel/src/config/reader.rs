//! Walks a parsed YAML tree while recording every problem with its field path, so that one
//! pass reports all errors of a file instead of the first one serde would stop at.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use serde_json::{Map, Value};

use super::errors::FieldError;

#[derive(Default)]
pub struct Reader {
    pub errors: Vec<FieldError>,
}

/// A field path under construction: `Path::root().key("workloads").index(2)`.
#[derive(Clone, Debug)]
pub struct Path(String);

impl Path {
    pub fn root() -> Self {
        Path(String::new())
    }
    pub fn key(&self, k: &str) -> Path {
        if self.0.is_empty() {
            Path(k.to_string())
        } else {
            Path(format!("{}.{}", self.0, k))
        }
    }
    pub fn index(&self, i: usize) -> Path {
        Path(format!("{}[{}]", self.0, i))
    }
    pub fn as_str(&self) -> &str {
        if self.0.is_empty() {
            "<root>"
        } else {
            &self.0
        }
    }
}

/// An object whose fields are consumed one by one; leftovers are reported as unknown.
pub struct Object<'v> {
    path: Path,
    map: &'v Map<String, Value>,
    seen: Vec<&'static str>,
}

impl Reader {
    pub fn new() -> Self {
        Self { errors: Vec::new() }
    }

    pub fn error(&mut self, path: &Path, reason: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.as_str().to_string(),
            reason: reason.into(),
        });
    }

    pub fn object<'v>(&mut self, path: Path, v: &'v Value) -> Option<Object<'v>> {
        match v {
            Value::Object(map) => Some(Object {
                path,
                map,
                seen: Vec::new(),
            }),
            other => {
                self.error(&path, format!("expected a mapping, got {}", kind(other)));
                None
            }
        }
    }

    /// Reports the fields of `obj` that were never read (typos, misplaced keys).
    pub fn finish(&mut self, obj: Object<'_>) {
        for k in obj.map.keys() {
            if !obj.seen.iter().any(|s| s == k) {
                let known = obj.seen.join(", ");
                self.error(
                    &obj.path.key(k),
                    format!("unknown field (known fields: {known})"),
                );
            }
        }
    }

    pub fn string(&mut self, path: &Path, v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            other => {
                self.error(path, format!("expected a string, got {}", kind(other)));
                None
            }
        }
    }

    pub fn non_empty(&mut self, path: &Path, v: &Value) -> Option<String> {
        let s = self.string(path, v)?;
        if s.is_empty() {
            self.error(path, "must not be empty");
            return None;
        }
        Some(s)
    }

    pub fn parsed<T: FromStr>(&mut self, path: &Path, v: &Value, what: &str) -> Option<T>
    where
        T::Err: std::fmt::Display,
    {
        let s = self.string(path, v)?;
        match s.parse::<T>() {
            Ok(t) => Some(t),
            Err(e) => {
                self.error(path, format!("{s:?} is not a valid {what}: {e}"));
                None
            }
        }
    }

    pub fn bool(&mut self, path: &Path, v: &Value) -> Option<bool> {
        match v {
            Value::Bool(b) => Some(*b),
            other => {
                self.error(path, format!("expected true or false, got {}", kind(other)));
                None
            }
        }
    }

    /// An integer, written in decimal or as a `0x` hex string (marks are usually given in hex).
    pub fn uint(&mut self, path: &Path, v: &Value, max: u64) -> Option<u64> {
        let n = match v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => s.parse().ok(),
            },
            _ => None,
        };
        match n {
            Some(n) if n <= max => Some(n),
            Some(n) => {
                self.error(path, format!("{n} is out of range (at most {max})"));
                None
            }
            None => {
                self.error(
                    path,
                    format!("expected a non-negative integer, got {}", show(v)),
                );
                None
            }
        }
    }

    pub fn port(&mut self, path: &Path, v: &Value) -> Option<u16> {
        match self.uint(path, v, u16::MAX as u64)? {
            0 => {
                self.error(path, "port 0 is not allowed");
                None
            }
            p => Some(p as u16),
        }
    }

    /// Durations as `500ms`, `90s`, `10m`, `24h` (a bare number is seconds).
    pub fn duration(&mut self, path: &Path, v: &Value) -> Option<Duration> {
        let s = self.string(path, v)?;
        match parse_duration(&s) {
            Some(d) => Some(d),
            None => {
                self.error(
                    path,
                    format!("{s:?} is not a duration (use e.g. 500ms, 90s, 10m, 24h)"),
                );
                None
            }
        }
    }

    pub fn list<'v>(&mut self, path: &Path, v: &'v Value) -> Vec<(Path, &'v Value)> {
        match v {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| (path.index(i), item))
                .collect(),
            Value::Null => Vec::new(),
            other => {
                self.error(path, format!("expected a list, got {}", kind(other)));
                Vec::new()
            }
        }
    }

    pub fn strings(&mut self, path: &Path, v: &Value) -> Vec<String> {
        self.list(path, v)
            .into_iter()
            .filter_map(|(p, item)| self.non_empty(&p, item))
            .collect()
    }

    pub fn labels(&mut self, path: Path, v: &Value) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if v.is_null() {
            return out;
        }
        if let Some(obj) = self.object(path.clone(), v) {
            for (k, val) in obj.map {
                if let Some(s) = self.string(&path.key(k), val) {
                    out.insert(k.clone(), s);
                }
            }
        }
        out
    }
}

impl<'v> Object<'v> {
    /// The field `name`, marking it as known. Absent and `null` are the same.
    pub fn get(&mut self, name: &'static str) -> Option<(Path, &'v Value)> {
        self.seen.push(name);
        match self.map.get(name) {
            None | Some(Value::Null) => None,
            Some(v) => Some((self.path.key(name), v)),
        }
    }

    /// The field `name`, reporting it as missing when absent.
    pub fn require(&mut self, r: &mut Reader, name: &'static str) -> Option<(Path, &'v Value)> {
        let got = self.get(name);
        if got.is_none() {
            r.error(&self.path.key(name), "required field is missing");
        }
        got
    }

    /// Every entry, for mappings whose keys are data (node names, ports), not field names.
    pub fn entries(&self) -> impl Iterator<Item = (&'v String, &'v Value)> {
        self.map.iter()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => kind(other).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86400)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("3d"), None);
        assert_eq!(parse_duration("h"), None);
    }
}
