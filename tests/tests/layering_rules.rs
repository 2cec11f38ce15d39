//! The layering rules of ARCHITECTURE.md ("Layering rules"), checked by reading the
//! code: a rule broken here fails CI. No root, no daemon.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace")
        .to_path_buf()
}

/// Every `.rs` file under `dir` (relative to the workspace root), sorted.
fn rust_files(dir: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join(dir), &mut out);
    out.sort();
    out
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root()).unwrap().display().to_string()
}

/// The file's code: `//` comments dropped, so a rule is about code, not prose.
fn code(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The crates' non-test source files.
fn sources() -> Vec<PathBuf> {
    [
        "proto/src",
        "volume-core/src",
        "daemon/src",
        "fuse-overlay/src",
    ]
    .iter()
    .flat_map(|d| rust_files(d))
    .collect()
}

/// Where `text` breaks `rule`: the offending files, or nothing.
fn offenders(files: &[PathBuf], breaks: impl Fn(&Path, &str) -> bool) -> Vec<String> {
    files
        .iter()
        .filter(|f| breaks(f, &code(f)))
        .map(|f| relative(f))
        .collect()
}

#[test]
fn unsafe_code_lives_only_in_the_syscall_modules() {
    let found = offenders(&sources(), |path, code| {
        let is_sys = path.file_name().is_some_and(|n| n == "sys.rs");
        !is_sys
            && ["unsafe {", "unsafe fn", "unsafe impl", "unsafe extern"]
                .iter()
                .any(|u| code.contains(u))
    });
    assert!(
        found.is_empty(),
        "unsafe outside a sys.rs module (wrap the call once in sys.rs): {found:?}"
    );
}

#[test]
fn the_domain_crates_know_no_async_runtime_or_transport() {
    for krate in ["volume-core", "fuse-overlay"] {
        let deps = dependencies(krate);
        for forbidden in ["tokio", "tonic", "axum", "hyper", "prost"] {
            assert!(
                !deps.lines().any(|l| l.trim_start().starts_with(forbidden)),
                "{krate} depends on {forbidden}: the domain stays synchronous and \
                 transport-free; the daemon's service layer crosses to it"
            );
        }
    }
}

/// The `[dependencies]` of crate `krate` (its manifest's section, as text).
fn dependencies(krate: &str) -> String {
    let manifest = std::fs::read_to_string(root().join(krate).join("Cargo.toml")).unwrap();
    manifest
        .split("[dependencies]")
        .nth(1)
        .and_then(|d| d.split("\n[").next())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_cli_is_only_a_client_of_the_admin_service() {
    let deps = dependencies("cli");
    for forbidden in ["stowage-daemon", "fuse-overlay", "axum"] {
        assert!(
            !deps.lines().any(|l| l.trim_start().starts_with(forbidden)),
            "vol depends on {forbidden}: it speaks to the daemon only through stowage.proto"
        );
    }
}

/// The daemon's front doors: each translates its protocol onto `service::Volumes`.
const FRONT_DOORS: [&str; 7] = [
    "daemon/src/grpc/identity.rs",
    "daemon/src/grpc/controller.rs",
    "daemon/src/grpc/group.rs",
    "daemon/src/grpc/node.rs",
    "daemon/src/grpc/admin.rs",
    "daemon/src/plugin.rs",
    "daemon/src/grpc/peer.rs",
];

#[test]
fn front_doors_never_name_the_volume_manager() {
    let files: Vec<PathBuf> = FRONT_DOORS.iter().map(|f| root().join(f)).collect();
    let found = offenders(&files, |_, code| {
        code.contains("VolumeManager") || code.contains(".manager")
    });
    assert!(
        found.is_empty(),
        "a front door works on the volume manager itself (add the use case to \
         daemon/src/service/ and call it): {found:?}"
    );
}

/// Files allowed to cross to tokio's blocking pool, and why.
const BLOCKING_CROSSINGS: [(&str, &str); 6] = [
    (
        "daemon/src/service/mod.rs",
        "service::blocking, the crossing of every use case",
    ),
    (
        "daemon/src/grpc/rpc.rs",
        "rpc::blocking, for the replication scheduler",
    ),
    (
        "daemon/src/replication/sender.rs",
        "the replication sender's stream",
    ),
    (
        "daemon/src/replication/state.rs",
        "disposing of cut-off streams off the runtime",
    ),
    (
        "daemon/src/metrics.rs",
        "gauge refresh (statvfs, metadata reads)",
    ),
    (
        "daemon/src/bin/stowaged.rs",
        "opening the pool and reconciling at start",
    ),
];

#[test]
fn only_known_places_cross_to_blocking_work() {
    let allowed: Vec<&str> = BLOCKING_CROSSINGS.iter().map(|(f, _)| *f).collect();
    let found = offenders(&rust_files("daemon/src"), |path, code| {
        code.contains("spawn_blocking") && !allowed.contains(&relative(path).as_str())
    });
    assert!(
        found.is_empty(),
        "a new crossing to the blocking pool (run volume work through \
         service::Volumes::run): {found:?}"
    );
}

/// Source files still over the length limit, with the most lines each may have: the
/// list only shrinks (split one, remove its line).
const LONG_FILES: [(&str, usize); 11] = [
    ("fuse-overlay/src/fuse.rs", 706),
    ("fuse-overlay/src/layers/import.rs", 712),
    ("fuse-overlay/src/overlay/ops.rs", 649),
    ("volume-core/src/chunkdiff.rs", 808),
    ("volume-core/src/manager.rs", 991),
    ("volume-core/src/node.rs", 1269),
    ("volume-core/src/os/fake.rs", 682),
    ("volume-core/src/pool.rs", 1065),
    ("volume-core/src/replication.rs", 1385),
    ("tests/src/lib.rs", 824),
    ("tests/src/bin/bench-replication.rs", 1361),
];

const MAX_LINES: usize = 600;

#[test]
fn source_files_stay_short() {
    let mut files = sources();
    files.extend(rust_files("tests/src"));
    let mut over = Vec::new();
    for f in &files {
        let lines = std::fs::read_to_string(f).unwrap().lines().count();
        let name = relative(f);
        let limit = LONG_FILES
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(MAX_LINES, |(_, l)| *l);
        if lines > limit {
            over.push(format!("{name}: {lines} lines (limit {limit})"));
        }
    }
    assert!(over.is_empty(), "split these files: {over:?}");
}
