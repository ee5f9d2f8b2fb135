//! Reading samples out of a Prometheus text exposition.

use std::collections::BTreeMap;

/// Labels of one sample.
pub type Labels = BTreeMap<String, String>;

/// Every sample of metric `name` (the full sample name, e.g. `istio_tcp_connections_opened_total`),
/// with its labels.
pub fn samples(text: &str, name: &str) -> Vec<(Labels, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(parse_line)
        .filter(|(n, _, _)| n == name)
        .map(|(_, labels, value)| (labels, value))
        .collect()
}

/// Sum of the samples of `name` whose labels include all of `labels`; `None` if none match.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = samples(text, name)
        .into_iter()
        .filter(|(have, _)| {
            labels
                .iter()
                .all(|(k, v)| have.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

/// Parses `name{k="v",...} value [timestamp]` or `name value [timestamp]`.
fn parse_line(line: &str) -> Option<(String, Labels, f64)> {
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = Labels::new();
    if let Some(body) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(body)?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name, labels, value))
}

/// Parses label pairs up to the closing `}`; returns them and the text after the brace.
fn parse_labels(mut s: &str) -> Option<(Labels, &str)> {
    let mut labels = Labels::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_owned();
        s = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.insert(key, value);
        s = &s[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP istio_tcp_connections_opened Total connections opened.
# TYPE istio_tcp_connections_opened counter
istio_tcp_connections_opened_total{reporter="destination",source_workload="a",destination_workload="c"} 3
istio_tcp_connections_opened_total{reporter="source",source_workload="a",destination_workload="c"} 2
istio_tcp_connections_opened_total{reporter="destination",source_workload="b, \"x\"",destination_workload="c"} 4
istio_build{component="ztunnel",tag="unknown"} 1
up 1 1700000000
# EOF
"#;

    #[test]
    fn sums_matching_samples() {
        let name = "istio_tcp_connections_opened_total";
        assert_eq!(sample(TEXT, name, &[]), Some(9.0));
        assert_eq!(
            sample(TEXT, name, &[("reporter", "destination")]),
            Some(7.0)
        );
        assert_eq!(
            sample(TEXT, name, &[("source_workload", "b, \"x\"")]),
            Some(4.0)
        );
        assert_eq!(sample(TEXT, name, &[("reporter", "nobody")]), None);
        assert_eq!(sample(TEXT, "up", &[]), Some(1.0));
        assert_eq!(sample(TEXT, "istio_tcp_connections_opened", &[]), None);
    }

    #[test]
    fn lists_samples_with_labels() {
        let all = samples(TEXT, "istio_build");
        assert_eq!(all.len(), 1);
        assert_eq!(
            all[0].0.get("component").map(String::as_str),
            Some("ztunnel")
        );
        assert_eq!(all[0].1, 1.0);
    }
}
