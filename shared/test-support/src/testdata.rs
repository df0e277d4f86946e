//! Files of the repository, for tests and benchmarks of any crate: the `testdata/` folder (the real
//! DCGM export and the CSV edge cases) and deployment files.

use std::path::{Path, PathBuf};

/// The real DCGM export bundled in `testdata/` (2,470 rows, 247 GPUs, 31 hosts, 10 metrics).
pub const REAL_CSV: &str = "dcgm_metrics_20250718_134233.csv";

/// A path relative to the repository root.
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}

/// A file of `testdata/`.
pub fn testdata(name: &str) -> PathBuf {
    repo_path("testdata").join(name)
}
