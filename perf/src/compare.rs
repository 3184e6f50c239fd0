//! `walhook-perf compare BASELINE NEW`: every figure of the baseline beside
//! the new run's, as a ratio, failing when one regressed past the tolerance.

use std::path::Path;

use anyhow::bail;

use crate::report::{Better, Report};

/// One figure's verdict.
#[derive(Debug, PartialEq)]
enum Verdict {
    Ok,
    Regressed,
    /// The baseline is 0 (no duplicates, say): no ratio to judge.
    NoRatio,
    Missing,
}

fn judge(base: f64, new: Option<f64>, better: Better, tolerance: f64) -> Verdict {
    let Some(new) = new else {
        return Verdict::Missing;
    };
    if base == 0.0 || !base.is_finite() || !new.is_finite() {
        return Verdict::NoRatio;
    }
    let ratio = new / base;
    let regressed = match better {
        Better::Higher => ratio < 1.0 - tolerance,
        Better::Lower => ratio > 1.0 + tolerance,
    };
    if regressed {
        Verdict::Regressed
    } else {
        Verdict::Ok
    }
}

pub fn compare(baseline: &Path, new: &Path, tolerance: f64) -> anyhow::Result<()> {
    if !(0.0..1.0).contains(&tolerance) {
        bail!("--tolerance must be from 0 to 1 (a fraction: 0.1 is 10%)");
    }
    let base = Report::read_json(baseline)?;
    let new_report = Report::read_json(new)?;
    println!(
        "{:<52} {:>14} {:>14} {:>8}  verdict (tolerance {:.0}%)",
        "figure",
        "baseline",
        "new",
        "ratio",
        tolerance * 100.0
    );
    let mut regressed = Vec::new();
    let mut missing = Vec::new();
    for (key, b) in &base.figures {
        let n = new_report.figures.get(key).map(|f| f.value);
        let verdict = judge(b.value, n, b.better, tolerance);
        let shown_new = n.map_or("-".to_owned(), |v| format!("{v:.1}"));
        let ratio = match n {
            Some(v) if b.value != 0.0 => format!("{:.3}", v / b.value),
            _ => "-".into(),
        };
        let word = match verdict {
            Verdict::Ok => "ok",
            Verdict::Regressed => "REGRESSED",
            Verdict::NoRatio => "no ratio (baseline 0)",
            Verdict::Missing => "not in the new run",
        };
        let direction = match b.better {
            Better::Higher => "higher is better",
            Better::Lower => "lower is better",
        };
        println!(
            "{key:<52} {:>14.1} {shown_new:>14} {ratio:>8}  {word} ({} {direction})",
            b.value, b.unit
        );
        match verdict {
            Verdict::Regressed => regressed.push(key.clone()),
            Verdict::Missing => missing.push(key.clone()),
            Verdict::Ok | Verdict::NoRatio => {}
        }
    }
    for key in new_report.figures.keys() {
        if !base.figures.contains_key(key) {
            println!(
                "{key:<52} {:>14} {:>14.1}  new figure",
                "-", new_report.figures[key].value
            );
        }
    }
    if !missing.is_empty() {
        println!(
            "{} figure(s) of the baseline were not measured by the new run (other sections or sizes?)",
            missing.len()
        );
    }
    if !regressed.is_empty() {
        bail!(
            "{} figure(s) regressed by more than {:.0}%: {}",
            regressed.len(),
            tolerance * 100.0,
            regressed.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_that_fell_past_the_tolerance_regressed() {
        assert_eq!(
            judge(100.0, Some(85.0), Better::Higher, 0.1),
            Verdict::Regressed
        );
        assert_eq!(judge(100.0, Some(95.0), Better::Higher, 0.1), Verdict::Ok);
        assert_eq!(judge(100.0, Some(150.0), Better::Higher, 0.1), Verdict::Ok);
    }

    #[test]
    fn a_latency_that_rose_past_the_tolerance_regressed() {
        assert_eq!(
            judge(4.5, Some(5.5), Better::Lower, 0.1),
            Verdict::Regressed
        );
        assert_eq!(judge(4.5, Some(4.8), Better::Lower, 0.1), Verdict::Ok);
        assert_eq!(judge(4.5, Some(1.0), Better::Lower, 0.1), Verdict::Ok);
    }

    #[test]
    fn a_zero_baseline_or_a_missing_figure_is_not_judged() {
        assert_eq!(judge(0.0, Some(0.02), Better::Lower, 0.1), Verdict::NoRatio);
        assert_eq!(judge(1.0, None, Better::Lower, 0.1), Verdict::Missing);
    }
}
