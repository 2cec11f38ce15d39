//! The layering rules of ARCHITECTURE.md ("Layering rules"), checked by reading the
//! code: a rule broken here fails CI. No root, no daemon.

use std::collections::{BTreeMap, BTreeSet};
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
        "sys/src",
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
fn unsafe_code_lives_only_in_the_syscall_crate() {
    let found = offenders(&sources(), |path, code| {
        !relative(path).starts_with("sys/src/")
            && ["unsafe {", "unsafe fn", "unsafe impl", "unsafe extern"]
                .iter()
                .any(|u| code.contains(u))
    });
    assert!(
        found.is_empty(),
        "unsafe outside the stowage-sys crate (wrap the call once in sys/src): {found:?}"
    );
}

#[test]
fn the_domain_crates_know_no_async_runtime_or_transport() {
    for krate in ["sys", "volume-core", "layer-store", "fuse-overlay"] {
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
fn the_daemon_needs_the_layer_store_not_the_overlay_filesystem() {
    assert!(
        !dependencies("daemon").contains("fuse-overlay"),
        "the daemon depends on fuse-overlay: it runs the stowage-overlay program and \
         needs only the layer-store crate"
    );
    assert!(
        !dependencies("fuse-overlay").contains("layer-store"),
        "the overlay filesystem mounts directories it is given; it needs no layer store"
    );
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

/// The daemon's front doors: each translates its protocol onto `service::Volumes`
/// (the cluster controller's carry calls to other nodes' front doors).
const FRONT_DOORS: [&str; 10] = [
    "daemon/src/grpc/identity.rs",
    "daemon/src/grpc/controller.rs",
    "daemon/src/grpc/group.rs",
    "daemon/src/grpc/node.rs",
    "daemon/src/grpc/admin.rs",
    "daemon/src/plugin.rs",
    "daemon/src/grpc/peer.rs",
    "daemon/src/cluster/controller.rs",
    "daemon/src/cluster/identity.rs",
    "daemon/src/cluster/mod.rs",
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

/// The most lines a source file may have.
const MAX_LINES: usize = 600;

#[test]
fn source_files_stay_short() {
    let mut files = sources();
    files.extend(rust_files("tests/src"));
    let over: Vec<String> = files
        .iter()
        .map(|f| {
            (
                relative(f),
                std::fs::read_to_string(f).unwrap().lines().count(),
            )
        })
        .filter(|(_, lines)| *lines > MAX_LINES)
        .map(|(name, lines)| format!("{name}: {lines} lines"))
        .collect();
    assert!(
        over.is_empty(),
        "split these files (at most {MAX_LINES} lines): {over:?}"
    );
}

/// The modules of the crate whose sources are in `src` (one per file, `a::b`), each
/// with the modules of the same crate its code names (`crate::…`, `super::…`);
/// test modules left out.
fn module_graph(src: &str) -> BTreeMap<String, BTreeSet<String>> {
    let base = root().join(src);
    let mut files = BTreeMap::new();
    for path in rust_files(src) {
        let rel = path.strip_prefix(&base).unwrap().with_extension("");
        let mut parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if parts.last().is_some_and(|p| p == "mod") {
            parts.pop();
        }
        let is_test = parts.iter().any(|p| p == "tests" || p.ends_with("_tests"));
        if parts.is_empty()
            || parts[0] == "lib"
            || parts[0] == "main"
            || parts[0] == "bin"
            || is_test
        {
            continue;
        }
        let is_mod_rs = path.file_name().is_some_and(|n| n == "mod.rs");
        files.insert(parts.join("::"), (path, is_mod_rs));
    }
    // `pub use child::{A, B}` in a module: a path to its `A` names `child`.
    let mut reexports: BTreeMap<(String, String), String> = BTreeMap::new();
    for (module, (path, _)) in &files {
        for line in code(path).lines() {
            let Some(rest) = line.trim().strip_prefix("pub use ") else {
                continue;
            };
            let Some((child, items)) = rest.split_once("::") else {
                continue;
            };
            let child_module = format!("{module}::{child}");
            if !files.contains_key(&child_module) {
                continue;
            }
            let items = items
                .trim_end_matches(';')
                .trim_matches(|c| c == '{' || c == '}');
            for item in items.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                let item = item.split("::").next().unwrap_or(item).to_string();
                reexports.insert((module.clone(), item), child_module.clone());
            }
        }
    }
    let resolve = |name: &str| -> Option<String> {
        let parts: Vec<&str> = name.split("::").collect();
        let n = (1..=parts.len())
            .rev()
            .find(|n| files.contains_key(&parts[..*n].join("::")))?;
        let module = parts[..n].join("::");
        Some(match parts.get(n) {
            Some(item) => reexports
                .get(&(module.clone(), item.to_string()))
                .cloned()
                .unwrap_or(module),
            None => module,
        })
    };
    let mut graph = BTreeMap::new();
    for (module, (path, is_mod_rs)) in &files {
        let mut text = code(path);
        if let Some(i) = text.find("#[cfg(test)]") {
            text.truncate(i);
        }
        let parent = {
            let mut p: Vec<&str> = module.split("::").collect();
            if !*is_mod_rs || p.len() > 1 {
                p.pop();
            }
            if *is_mod_rs {
                module.clone()
            } else {
                p.join("::")
            }
        };
        let mut names = Vec::new();
        for (prefix, anchor) in [("crate::", String::new()), ("super::", parent.clone())] {
            let mut rest = text.as_str();
            while let Some(i) = rest.find(prefix) {
                rest = &rest[i + prefix.len()..];
                let path: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                let path = path.trim_end_matches(':').to_string();
                let joined = |p: &str| {
                    if anchor.is_empty() {
                        p.to_string()
                    } else {
                        format!("{anchor}::{p}")
                    }
                };
                // `crate::a::{b, c::d}` names each of a::b and a::c::d.
                let after = &rest[path.len()..];
                match after.strip_prefix("::{") {
                    Some(group) => {
                        let group = &group[..group.find('}').unwrap_or(group.len())];
                        for item in group.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                            let item = item.split_whitespace().next().unwrap_or(item);
                            names.push(joined(&format!("{path}::{item}")));
                        }
                    }
                    None => names.push(joined(&path)),
                }
            }
        }
        let deps: BTreeSet<String> = names
            .iter()
            .filter_map(|n| resolve(n))
            .filter(|d| d != module && !module.starts_with(&format!("{d}::")))
            .collect();
        graph.insert(module.clone(), deps);
    }
    graph
}

/// The modules of `graph` that are part of an import cycle, grouped by cycle.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(m) = todo.pop() {
            for d in graph.get(&m).into_iter().flatten() {
                if seen.insert(d.clone()) {
                    todo.push(d.clone());
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|m| (m, reach(m))).collect();
    let mut out: Vec<BTreeSet<String>> = Vec::new();
    for (m, from_m) in &reachable {
        if !from_m.contains(*m) || out.iter().any(|c| c.contains(*m)) {
            continue;
        }
        out.push(
            from_m
                .iter()
                .filter(|o| reachable[o].contains(*m))
                .cloned()
                .collect(),
        );
    }
    out
}

#[test]
fn no_import_cycles_inside_a_crate() {
    for src in [
        "proto/src",
        "sys/src",
        "volume-core/src",
        "layer-store/src",
        "fuse-overlay/src",
        "daemon/src",
        "cli/src",
    ] {
        let found = cycles(&module_graph(src));
        assert!(found.is_empty(), "import cycles in {src}: {found:?}");
    }
}

#[test]
fn the_cycle_check_sees_a_cycle() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(m, d)| (m.to_string(), d.into_iter().map(str::to_string).collect()))
    .collect();
    let found = cycles(&graph);
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0],
        ["a", "b", "c"].iter().map(|s| s.to_string()).collect()
    );
}

#[test]
fn the_fake_host_ships_in_no_release_build() {
    let os_mod = code(&root().join("volume-core/src/os/mod.rs"));
    assert!(
        os_mod.contains("#[cfg(any(test, feature = \"fake\"))]\npub mod fake;"),
        "volume-core's os::fake must be built only for tests"
    );
    for krate in [
        "daemon",
        "cli",
        "layer-store",
        "fuse-overlay",
        "tests",
        "proto",
    ] {
        assert!(
            !dependencies(krate).contains("\"fake\""),
            "{krate} turns on volume-core's fake host in a normal (non-test) dependency"
        );
    }
}
