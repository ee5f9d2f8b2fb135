//! Collected samples, their medians, and the JSON + markdown report with the targets.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

/// Every sample of every run under a key like `throughput/same-node HBONE/1/mesh`.
#[derive(Debug, Default)]
pub struct Samples {
    values: BTreeMap<String, Vec<f64>>,
}

impl Samples {
    pub fn add(&mut self, key: impl Into<String>, value: f64) {
        let key = key.into();
        eprintln!("  {key} = {value:.3}");
        self.values.entry(key).or_default().push(value);
    }

    pub fn median(&self, key: &str) -> Option<f64> {
        let mut v = self.values.get(key)?.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        Some(if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        })
    }
}

/// How a mesh number is judged against its direct baseline.
#[derive(Debug, Clone, Copy)]
pub enum Compare {
    /// mesh / direct must be at least this.
    RatioAtLeast(f64),
    /// mesh - direct must be at most this.
    AddedAtMost(f64),
    /// The mesh number alone must be at most this.
    AtMost(f64),
    /// Shown as mesh / direct, no target.
    Ratio,
    /// Shown as mesh - direct, no target.
    Added,
    /// No baseline.
    None,
}

/// One line of the table.
pub struct Row {
    pub scenario: String,
    pub metric: String,
    pub unit: &'static str,
    /// Key of the direct baseline; `None` for ztunnel-only numbers.
    pub direct: Option<String>,
    pub mesh: String,
    pub compare: Compare,
}

struct Evaluated<'a> {
    row: &'a Row,
    direct: Option<f64>,
    mesh: Option<f64>,
    /// The comparison value (ratio or difference) where there is one.
    versus: Option<f64>,
    target: Option<String>,
    met: Option<bool>,
}

fn evaluate<'a>(samples: &Samples, row: &'a Row) -> Evaluated<'a> {
    let direct = row.direct.as_deref().and_then(|k| samples.median(k));
    let mesh = samples.median(&row.mesh);
    let ratio = direct.zip(mesh).map(|(d, m)| m / d);
    let added = direct.zip(mesh).map(|(d, m)| m - d);
    let (versus, target, met) = match row.compare {
        Compare::RatioAtLeast(t) => (ratio, Some(format!("≥ {t:.2}×")), ratio.map(|r| r >= t)),
        Compare::AddedAtMost(t) => (added, Some(format!("≤ +{t}")), added.map(|a| a <= t)),
        Compare::AtMost(t) => (None, Some(format!("≤ {t}")), mesh.map(|m| m <= t)),
        Compare::Ratio => (ratio, None, None),
        Compare::Added => (added, None, None),
        Compare::None => (None, None, None),
    };
    Evaluated {
        row,
        direct,
        mesh,
        versus,
        target,
        met,
    }
}

fn fmt(v: Option<f64>) -> String {
    match v {
        None => "–".to_owned(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// The markdown table.
pub fn markdown(samples: &Samples, rows: &[Row]) -> String {
    let mut md = String::from(
        "| scenario | metric | direct | mesh | mesh vs direct | target | met |\n\
         | --- | --- | ---: | ---: | ---: | ---: | :---: |\n",
    );
    for row in rows {
        let e = evaluate(samples, row);
        let versus = match (e.row.compare, e.versus) {
            (Compare::RatioAtLeast(_) | Compare::Ratio, Some(r)) => format!("{r:.2}×"),
            (Compare::AddedAtMost(_) | Compare::Added, Some(a)) => format!("{a:+.1}"),
            _ => "–".to_owned(),
        };
        let met = match e.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        let _ = writeln!(
            md,
            "| {} | {} ({}) | {} | {} | {} | {} | {} |",
            e.row.scenario,
            e.row.metric,
            e.row.unit,
            fmt(e.direct),
            fmt(e.mesh),
            versus,
            e.target.as_deref().unwrap_or(""),
            met
        );
    }
    md
}

/// Writes `results.json` and `results.md` into `dir`.
pub fn write(
    dir: &Path,
    samples: &Samples,
    rows: &[Row],
    meta: serde_json::Value,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let table: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| {
            let e = evaluate(samples, row);
            serde_json::json!({
                "scenario": row.scenario,
                "metric": row.metric,
                "unit": row.unit,
                "direct": e.direct,
                "mesh": e.mesh,
                "versus_direct": e.versus,
                "target": e.target,
                "met": e.met,
            })
        })
        .collect();
    let json = serde_json::json!({
        "meta": meta,
        "results": table,
        "samples": samples.values,
    });
    let text = serde_json::to_string_pretty(&json).context("encoding the results")?;
    std::fs::write(dir.join("results.json"), text + "\n").context("writing results.json")?;
    std::fs::write(dir.join("results.md"), markdown(samples, rows))
        .context("writing results.md")?;
    Ok(())
}
