//! The results: the summary table's rows as the reader sees them, and the
//! figures behind them by name, which the JSON report keeps for
//! `walhook-perf compare`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Which way a figure improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure {
    pub value: f64,
    pub unit: String,
    pub better: Better,
}

/// One row of the summary table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub section: String,
    pub figure: String,
    pub value: String,
    pub reference: String,
    pub peak_rss: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// Machine, server and settings, as the table's header prints them.
    pub context: Vec<String>,
    pub knobs: serde_json::Value,
    pub rows: Vec<Row>,
    /// `section.name` -> figure.
    pub figures: BTreeMap<String, Figure>,
    /// Blocks printed whole after the table (the HOOKS modes' own tables).
    #[serde(default)]
    pub blocks: Vec<String>,
}

impl Report {
    pub fn row(&mut self, section: &str, figure: &str, value: &str, reference: &str, rss: &str) {
        self.rows.push(Row {
            section: section.into(),
            figure: figure.into(),
            value: value.into(),
            reference: reference.into(),
            peak_rss: rss.into(),
        });
    }

    pub fn figure(&mut self, key: &str, value: f64, unit: &str, better: Better) {
        self.figures.insert(
            key.into(),
            Figure {
                value,
                unit: unit.into(),
                better,
            },
        );
    }

    pub fn print_table(&self) {
        println!();
        println!("================================ walhook benchmark: summary ================================");
        for line in &self.context {
            println!("{line}");
        }
        println!(
            "{:<8} {:<44} {:<30} {:<46} peak RSS",
            "section", "figure", "value", "ceiling / reference"
        );
        for r in &self.rows {
            let line = format!(
                "{:<8} {:<44} {:<30} {:<46} {}",
                r.section, r.figure, r.value, r.reference, r.peak_rss
            );
            println!("{}", line.trim_end());
        }
        println!("============================================================================================");
        for block in &self.blocks {
            println!();
            print!("{block}");
        }
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self).context("serializing the report")?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("--json {}: cannot write the report", path.display()))
    }

    pub fn read_json(path: &Path) -> anyhow::Result<Report> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the report {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a walhook-perf report (write one with --json)",
                path.display()
            )
        })
    }
}

/// MiB from KiB, for the peak RSS column.
pub fn mib(kib: u64) -> String {
    format!("{} MiB", kib / 1024)
}

/// Per second, rounded as the table prints rates.
pub fn rate(count: f64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count / seconds
    } else {
        f64::INFINITY
    }
}

/// a / b with three decimals, "?" when b is not positive.
pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.3}", a / b)
    } else {
        "?".into()
    }
}
