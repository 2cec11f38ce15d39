//! The Helm chart (deploy/helm/stowage) rendered by the real `helm` (v4, from the Go
//! module proxy; hack/test.sh installs it) and checked against the code: `helm lint`
//! passes, both layouts render, every stowaged flag exists, the cluster controller
//! layout carries the central sidecars and the peer link, the node layout the
//! node-deployment sidecars, and bad values fail the render with a message.
//!
//! Needs no root and no cluster. The `helm` binary: $STOWAGE_HELM, else `helm` on
//! PATH, else hack/k8s/build.sh's cache.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn helm() -> PathBuf {
    if let Ok(p) = std::env::var("STOWAGE_HELM") {
        return p.into();
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("helm"))
        .find(|p| p.is_file());
    on_path
        .or_else(|| {
            let cached = PathBuf::from("/var/cache/stowage-k8s/bin/helm");
            cached.is_file().then_some(cached)
        })
        .expect("helm not found: install it (hack/test.sh does) or set STOWAGE_HELM")
}

fn chart() -> String {
    repo().join("deploy/helm/stowage").display().to_string()
}

/// `helm template` with `sets`; Ok(rendered documents) or Err(helm's stderr).
fn render(sets: &[&str]) -> Result<Vec<Value>, String> {
    let mut cmd = Command::new(helm());
    cmd.args(["template", "stowage", &chart(), "--namespace", "stowage"]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().expect("run helm");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8(out.stdout).unwrap();
    Ok(serde_yaml::Deserializer::from_str(&text)
        .map(|de| Value::deserialize(de).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect())
}

const CONTROLLER_LAYOUT: [&str; 3] = [
    "peer.nodes[0]=node-a=10.0.0.11:7420",
    "peer.nodes[1]=node-b=10.0.0.12:7420",
    "clusterSecret.value=s3cret",
];

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
}

fn containers(workload: &Value) -> Vec<&Value> {
    workload["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers")
        .iter()
        .collect()
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    containers(workload)
        .into_iter()
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn names(workload: &Value) -> Vec<String> {
    containers(workload)
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

fn args(c: &Value) -> Vec<String> {
    c["args"]
        .as_sequence()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// The long flags `stowaged --help` lists.
fn stowaged_flags() -> Vec<String> {
    let bin = stowage_tests::stowaged_bin();
    let out = Command::new(&bin)
        .arg("--help")
        .output()
        .expect("stowaged --help");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| {
            w.trim_end_matches([',', '='])
                .split('=')
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn helm_lint_passes_for_both_layouts() {
    for sets in [
        CONTROLLER_LAYOUT.join(","),
        "controller.enabled=false".to_string(),
    ] {
        let out = Command::new(helm())
            .args(["lint", "--strict", &chart(), "--set", &sets])
            .output()
            .expect("helm lint");
        assert!(
            out.status.success(),
            "helm lint --set {sets}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_controller_layout_runs_the_sidecars_centrally_over_the_peer_link() {
    let docs = render(&CONTROLLER_LAYOUT).unwrap();
    let ctl = find(&docs, "Deployment", "stowage-controller").expect("controller Deployment");
    let in_ctl = names(ctl);
    for sidecar in [
        "stowaged",
        "csi-provisioner",
        "csi-snapshotter",
        "csi-resizer",
        "csi-external-health-monitor-controller",
        "liveness-probe",
    ] {
        assert!(
            in_ctl.iter().any(|n| n == sidecar),
            "{sidecar} in {in_ctl:?}"
        );
    }
    let stowaged = args(container(ctl, "stowaged"));
    for a in [
        "--cluster-controller",
        "--peer=node-a=10.0.0.11:7420",
        "--peer=node-b=10.0.0.12:7420",
        "--cluster-secret-file=/etc/stowage/cluster/secret",
    ] {
        assert!(stowaged.iter().any(|x| x == a), "{a} in {stowaged:?}");
    }
    // Central sidecars: leader election, never node-deployment.
    for s in ["csi-provisioner", "csi-snapshotter", "csi-resizer"] {
        let a = args(container(ctl, s));
        assert!(
            a.contains(&"--leader-election=true".to_string()),
            "{s}: {a:?}"
        );
        assert!(
            !a.iter().any(|x| x.starts_with("--node-deployment")),
            "{s}: {a:?}"
        );
    }
    let prov = args(container(ctl, "csi-provisioner"));
    for a in [
        "--strict-topology=true",
        "--enable-capacity=true",
        "--capacity-ownerref-level=2",
    ] {
        assert!(prov.iter().any(|x| x == a), "{a} in {prov:?}");
    }
    // The node daemons: host network (the peer address is the node's), the peer
    // listener and the secret, and only the registrar beside them.
    let node = find(&docs, "DaemonSet", "stowage-node").expect("node DaemonSet");
    assert_eq!(
        node["spec"]["template"]["spec"]["hostNetwork"].as_bool(),
        Some(true)
    );
    assert_eq!(names(node), ["stowaged", "csi-node-driver-registrar"]);
    let d = args(container(node, "stowaged"));
    assert!(d.iter().any(|x| x == "--peer-listen=0.0.0.0:7420"), "{d:?}");
    assert!(
        d.iter().any(|x| x == "--require-controller-publish=false"),
        "{d:?}"
    );
    let secret = find(&docs, "Secret", "stowage-cluster-secret").expect("secret");
    assert_eq!(secret["stringData"]["secret"].as_str(), Some("s3cret"));
    // The sidecars' roles go to the controller's account.
    let binding = find(&docs, "ClusterRoleBinding", "stowage-external-resizer").unwrap();
    assert_eq!(
        binding["subjects"][0]["name"].as_str(),
        Some("stowage-controller")
    );
    // Provisioner v6 watches and updates the snapshots it restores from (a
    // finalizer while it does); a real cluster logged "forbidden" without this.
    let role = find(&docs, "ClusterRole", "stowage-external-provisioner").unwrap();
    let snapshots = role["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|r| {
            r["resources"]
                .as_sequence()
                .is_some_and(|rs| rs.iter().any(|x| x.as_str() == Some("volumesnapshots")))
        })
        .expect("a rule for volumesnapshots");
    let verbs: Vec<&str> = snapshots["verbs"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for v in ["get", "list", "watch", "update"] {
        assert!(
            verbs.contains(&v),
            "provisioner lacks {v} on volumesnapshots: {verbs:?}"
        );
    }
}

#[test]
fn the_node_layout_runs_the_sidecars_beside_every_daemon() {
    let docs = render(&["controller.enabled=false"]).unwrap();
    assert!(find(&docs, "Deployment", "stowage-controller").is_none());
    let node = find(&docs, "DaemonSet", "stowage-node").unwrap();
    let n = names(node);
    for s in [
        "stowaged",
        "csi-node-driver-registrar",
        "csi-provisioner",
        "csi-snapshotter",
        "csi-resizer",
    ] {
        assert!(n.iter().any(|x| x == s), "{s} in {n:?}");
    }
    assert!(
        args(container(node, "csi-provisioner")).contains(&"--node-deployment=true".to_string())
    );
    // No peering asked for: no host network, no peer listener, no secret.
    assert!(node["spec"]["template"]["spec"]["hostNetwork"].is_null());
    assert!(
        !args(container(node, "stowaged"))
            .iter()
            .any(|a| a.starts_with("--peer"))
    );
    let binding = find(&docs, "ClusterRoleBinding", "stowage-external-provisioner").unwrap();
    assert_eq!(
        binding["subjects"][0]["name"].as_str(),
        Some("stowage-node")
    );
}

#[test]
fn every_stowaged_flag_the_chart_gives_exists() {
    let flags = stowaged_flags();
    assert!(
        flags.iter().any(|f| f == "--cluster-controller"),
        "{flags:?}"
    );
    for sets in [
        &CONTROLLER_LAYOUT[..],
        &["controller.enabled=false", "peerTLS.existingSecret=tls"][..],
    ] {
        let docs = render(sets).unwrap();
        for kind in ["DaemonSet", "Deployment"] {
            for w in docs.iter().filter(|d| d["kind"].as_str() == Some(kind)) {
                let c = container(w, "stowaged");
                for a in args(c) {
                    let flag = a.split('=').next().unwrap();
                    assert!(
                        flags.iter().any(|f| f == flag),
                        "{kind} gives {a}, which stowaged lacks"
                    );
                }
            }
        }
    }
}

#[test]
fn classes_name_the_driver_and_use_the_ga_apis() {
    let docs = render(&CONTROLLER_LAYOUT).unwrap();
    for name in [
        "stowage-dir",
        "stowage-loop-ext4",
        "stowage-loop-xfs",
        "stowage-block",
    ] {
        let sc = find(&docs, "StorageClass", name).unwrap_or_else(|| panic!("{name}"));
        assert_eq!(sc["provisioner"].as_str(), Some("csi.stowage.dev"));
        assert_eq!(
            sc["volumeBindingMode"].as_str(),
            Some("WaitForFirstConsumer")
        );
    }
    let vac = find(&docs, "VolumeAttributesClass", "stowage-compressed").unwrap();
    assert_eq!(vac["apiVersion"].as_str(), Some("storage.k8s.io/v1"));
    assert_eq!(vac["driverName"].as_str(), Some("csi.stowage.dev"));
    let vsc = find(&docs, "VolumeSnapshotClass", "stowage-snapshots").unwrap();
    assert_eq!(vsc["driver"].as_str(), Some("csi.stowage.dev"));
    let driver = find(&docs, "CSIDriver", "csi.stowage.dev").unwrap();
    assert_eq!(driver["spec"]["attachRequired"].as_bool(), Some(false));
    assert_eq!(driver["spec"]["storageCapacity"].as_bool(), Some(true));
}

#[test]
fn bad_values_fail_the_render_with_a_reason() {
    let e = render(&[]).unwrap_err();
    assert!(e.contains("peer.nodes"), "{e}");
    let e = render(&["peer.nodes[0]=node-a=10.0.0.11:7420"]).unwrap_err();
    assert!(e.contains("cluster secret"), "{e}");
    let e = render(&["peer.nodes[0]=node-a", "clusterSecret.value=x"]).unwrap_err();
    assert!(e.contains("NODE_NAME=HOST:PORT"), "{e}");
}
