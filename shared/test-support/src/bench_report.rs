//! The JSON report every benchmark writes under `target/bench/<name>.json`, so runs can be compared
//! by script, plus the order statistics the reports use.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

/// One benchmark's results, written as `{"bench": name, "results": [...]}`.
#[derive(Debug)]
pub struct BenchReport {
    name: String,
    results: Vec<Value>,
}

impl BenchReport {
    pub fn new(name: &str) -> Self {
        BenchReport {
            name: name.to_string(),
            results: Vec::new(),
        }
    }

    /// Adds one result row and echoes it on stdout so a terminal run shows the figures.
    pub fn add(&mut self, row: Value) {
        println!("{}", row);
        self.results.push(row);
    }

    /// Writes the report and returns its path.
    pub fn write(&self) -> PathBuf {
        let dir = bench_dir();
        std::fs::create_dir_all(&dir).expect("create target/bench");
        let path = dir.join(format!("{}.json", self.name));
        let body = json!({ "bench": self.name, "results": self.results });
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(&body).expect("serialize report"),
        )
        .expect("write bench report");
        println!("wrote {}", path.display());
        path
    }
}

fn bench_dir() -> PathBuf {
    target_dir().join("bench")
}

/// The workspace's target directory (`CARGO_TARGET_DIR`, relative to the workspace root when
/// relative, or `<workspace>/target`), for benchmark reports and generated benchmark data.
pub fn target_dir() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    }
}

/// The median of `values` (mean of the middle two for an even count). Panics on an empty slice.
pub fn median(values: &[f64]) -> f64 {
    percentile(values, 50.0)
}

/// The `p`-th percentile of `values` by linear interpolation between closest ranks.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    assert!(!values.is_empty(), "percentile of no values");
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (p / 100.0) * (sorted.len() - 1) as f64;
    let low = rank.floor() as usize;
    let high = rank.ceil() as usize;
    sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
}

/// Milliseconds of a duration as f64, for reports.
pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_statistics() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 100.0), 5.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.0), 1.0);
        assert_eq!(millis(Duration::from_micros(1500)), 1.5);
    }
}
