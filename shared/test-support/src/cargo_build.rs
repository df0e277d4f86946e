//! Building other workspace targets from a test: `cargo test -p x` builds only x's binaries, so
//! tests that run another package's binary (or an example) build them first, with the same cargo,
//! target directory and profile as the running test, so they are never stale.
//!
//! It always builds every binary and example of the workspace. That selection resolves dependency
//! features exactly as `cargo test --workspace` does, so after `make test` has compiled the tests
//! nothing is compiled again; building single packages (`-p x`) would unify features differently
//! and put a second copy of tokio, axum and the rest into `target/`.

use std::path::{Path, PathBuf};

/// Runs `cargo build --workspace --bins --examples` for the profile and target directory of the
/// running test and returns that profile's output directory (e.g. `target/debug`; examples are in
/// its `examples/`). Panics if the build fails.
pub fn build_workspace_binaries() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in <target>/<profile>/deps")
        .to_path_buf();
    let target_dir = profile_dir.parent().expect("a target directory");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    // The variables cargo sets for a test process must not reach the inner cargo: some build
    // scripts track them (ring tracks CARGO_MANIFEST_DIR), and every run would rebuild.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let set_by_cargo = [
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_CRATE_NAME",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
            "OUT_DIR",
        ]
        .contains(&name.as_ref())
            || name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_");
        if set_by_cargo {
            build.env_remove(name.as_ref());
        }
    }
    let status = build
        .args(["build", "--quiet", "--workspace", "--bins", "--examples"])
        .args(["--profile", profile])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build");
    assert!(
        status.success(),
        "cargo build of the workspace binaries failed: {status}"
    );
    profile_dir
}
