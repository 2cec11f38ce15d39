//! Shared harness of the integration tests: a real `stowaged` on a temporary state
//! directory, CSI clients over its socket, and cleanup that unmounts and detaches
//! everything under that directory even when a test fails.
//!
//! These tests need root (loop devices, mounts). Without root they fail loudly; they
//! never skip.

use std::path::{Path, PathBuf};

/// The node id every test daemon runs with.
pub const NODE_ID: &str = "it-node";

/// Panics unless running as root: privileged tests must run, never skip.
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "this privileged test needs root (loop devices, mounts); run `sudo hack/test.sh`. \
             It is not skipped on purpose: a skipped privileged test hides a broken driver."
        );
    }
}

/// Writes `secret` (a cluster secret) to `dir/name` and returns the path, for
/// `--cluster-secret-file`.
pub fn secret_file(dir: &Path, name: &str, secret: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    path.display().to_string()
}

/// The stowaged binary: $STOWAGE_BIN, or the workspace's target/debug/stowaged.
pub fn stowaged_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("STOWAGE_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/stowaged");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --bins` first (hack/test.sh does)",
        p.display()
    );
    p
}

mod clients;
mod daemon;
mod data;
mod host;

pub use clients::*;
pub use daemon::*;
pub use data::*;
pub use host::*;

/// Hosts in network namespaces on a bridge.
pub mod cluster;

/// Running the `vol` command line against a test daemon.
pub mod vol {
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output, Stdio};

    use crate::Daemon;

    /// The workspace's target/debug/vol.
    pub fn bin() -> PathBuf {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/vol");
        assert!(p.exists(), "{} missing: cargo build --bins", p.display());
        p
    }

    /// Runs `vol --socket <daemon's> ARGS`.
    pub fn run(d: &Daemon, args: &[&str]) -> Output {
        Command::new(bin())
            .arg("--socket")
            .arg(d.socket())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run vol")
    }

    /// Runs `vol ARGS`, which must succeed; returns its stdout.
    pub fn ok(d: &Daemon, args: &[&str]) -> String {
        let out = run(d, args);
        assert!(
            out.status.success(),
            "vol {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `vol ARGS`, which must fail with exit status `code`, print nothing on
    /// stdout and one line starting `vol: ` on stderr; returns that line.
    pub fn fails(d: &Daemon, args: &[&str], code: i32) -> String {
        let out = run(d, args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "vol {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "nothing on stdout when failing");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.starts_with("vol: "), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one-line error: {err}");
        err
    }

    /// Parses one line of `--output json`.
    pub fn json(line: &str) -> serde_json::Value {
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// Runs `vol --output json ARGS`, which must succeed; one value per output line.
    pub fn json_lines(d: &Daemon, args: &[&str]) -> Vec<serde_json::Value> {
        let mut full = vec!["--output", "json"];
        full.extend_from_slice(args);
        ok(d, &full).lines().map(json).collect()
    }
}
