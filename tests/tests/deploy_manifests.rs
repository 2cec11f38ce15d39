//! The deployment files under `deploy/` checked against the code they deploy: the
//! CSIDriver fields against the capabilities the services advertise, StorageClass and
//! VolumeAttributesClass parameters against the parsers that will judge them, every
//! flag given to `stowaged` against its clap `Args`, the socket path as each sidecar,
//! kubelet and Nomad see it, ports, image pins, RBAC for the sidecars, and the Nomad job.
//!
//! Needs no root and no cluster: it reads files and calls library functions.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;
use stowage_daemon::{DRIVER_NAME, TOPOLOGY_KEY};
use stowage_proto::csi::v1 as csi;
use volume_core::os::fake::FakeHost;
use volume_core::{Pool, PoolConfig, VolumeKind, VolumeParams};

// ------------------------------------------------------------------ files

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn read(rel: &str) -> String {
    let path = repo_path(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// File names of `deploy/kubernetes/*.yaml`, sorted.
fn manifest_files() -> Vec<String> {
    let dir = repo_path("deploy/kubernetes");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    names.sort();
    names
}

/// One YAML document and the file it came from.
#[derive(Debug)]
struct Doc {
    file: String,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        str_at(&self.value, &["kind"]).unwrap_or("")
    }
    fn name(&self) -> &str {
        str_at(&self.value, &["metadata", "name"]).unwrap_or("")
    }
    fn namespace(&self) -> Option<&str> {
        str_at(&self.value, &["metadata", "namespace"])
    }
}

fn parse_file(file: &str) -> Vec<Doc> {
    let text = read(&format!("deploy/kubernetes/{file}"));
    serde_yaml::Deserializer::from_str(&text)
        .enumerate()
        .filter_map(|(i, de)| {
            let value = Value::deserialize(de)
                .unwrap_or_else(|e| panic!("{file}: document {}: {e}", i + 1));
            // A leading `---` or a file of comments yields an empty document.
            (!value.is_null()).then(|| Doc {
                file: file.to_string(),
                value,
            })
        })
        .collect()
}

/// Every document of every manifest except the kustomization.
fn all_docs() -> Vec<Doc> {
    manifest_files()
        .iter()
        .filter(|f| f.as_str() != "kustomization.yaml")
        .flat_map(|f| parse_file(f))
        .collect()
}

fn find<'a>(docs: &'a [Doc], kind: &str, name: &str) -> &'a Doc {
    docs.iter()
        .find(|d| d.kind() == kind && d.name() == name)
        .unwrap_or_else(|| panic!("no {kind} {name:?} in deploy/kubernetes"))
}

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(v, path).and_then(Value::as_str)
}

fn seq_at<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    at(v, path)
        .and_then(Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn string_map(v: Option<&Value>) -> HashMap<String, String> {
    v.and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let k = k.as_str().expect("string key").to_string();
                    let v = match v {
                        Value::String(s) => s.clone(),
                        Value::Bool(b) => b.to_string(),
                        Value::Number(n) => n.to_string(),
                        other => panic!("parameter {k}: not a scalar: {other:?}"),
                    };
                    (k, v)
                })
                .collect()
        })
        .unwrap_or_default()
}

// ------------------------------------------------------------------ the code's facts

/// The `Type::X` names listed in the body of `fn <function>` in `file` (up to the
/// next `async fn`).
fn advertised(file: &str, function: &str) -> BTreeSet<String> {
    let src = read(file);
    let start = src
        .find(&format!("fn {function}("))
        .unwrap_or_else(|| panic!("{file}: no fn {function}"));
    let body = &src[start + 1..];
    let body = &body[..body.find("async fn ").unwrap_or(body.len())];
    let mut found = BTreeSet::new();
    for (i, _) in body.match_indices("Type::") {
        let name: String = body[i + 6..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        found.insert(name);
    }
    found
}

fn controller_caps() -> BTreeSet<String> {
    advertised("daemon/src/grpc/controller.rs", "capabilities")
}

fn plugin_caps() -> BTreeSet<String> {
    advertised("daemon/src/grpc/identity.rs", "plugin_capabilities")
}

fn node_caps() -> BTreeSet<String> {
    advertised("daemon/src/grpc/node.rs", "node_get_capabilities")
}

/// One `#[arg(long)]` field of `stowaged`'s `Args`: its long flag and its attributes.
struct StowagedArg {
    flag: String,
    attrs: String,
}

/// Long flags of `stowaged` (`--kebab-case` of each `#[arg(long)]` field of `Args`).
fn stowaged_flags() -> BTreeSet<String> {
    let flags: BTreeSet<String> = stowaged_args().into_iter().map(|a| a.flag).collect();
    assert!(
        flags.contains("endpoint"),
        "found no flags in stowaged.rs: {flags:?}"
    );
    flags
}

/// The `#[arg(long)]` fields of `stowaged`'s `Args`, in order.
fn stowaged_args() -> Vec<StowagedArg> {
    let src = read("daemon/src/bin/stowaged.rs");
    let start = src.find("struct Args {").expect("stowaged.rs: struct Args");
    let body = &src[start..];
    let body = &body[..body.find("\n}").expect("end of struct Args")];
    assert!(
        !body.contains("flatten") && !body.contains("subcommand"),
        "struct Args flattens or nests arguments: teach stowaged_flags() to follow them"
    );
    let mut args = Vec::new();
    let mut attrs = String::new();
    for line in body.lines().skip(1) {
        let line = line.trim();
        if line.starts_with("///") || line.starts_with("//") {
            continue;
        }
        let ident: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let rest = line[ident.len()..].trim_start();
        let is_field = !ident.is_empty()
            && rest.starts_with(':')
            && !rest.starts_with("::")
            && attrs.matches('(').count() == attrs.matches(')').count();
        if !is_field {
            attrs.push_str(line);
            attrs.push('\n');
            continue;
        }
        let ident = ident.strip_prefix("r#").unwrap_or(&ident);
        let flag = if let Some(explicit) = explicit_long(&attrs) {
            Some(explicit)
        } else if has_word(&attrs, "long") {
            Some(ident.replace('_', "-"))
        } else {
            None
        };
        if let Some(flag) = flag {
            args.push(StowagedArg {
                flag,
                attrs: std::mem::take(&mut attrs),
            });
        }
        attrs.clear();
    }
    args
}

/// `long = "name"` in an attribute.
fn explicit_long(attrs: &str) -> Option<String> {
    let i = attrs.find("long =")?;
    let rest = &attrs[i + "long =".len()..];
    let rest = rest.trim_start().strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}

fn has_word(text: &str, word: &str) -> bool {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .any(|w| w == word)
}

/// The value of `key = value` in an attribute (`default_value_t = true`,
/// `env = "X"`), quotes removed.
fn attr_value<'a>(attrs: &'a str, key: &str) -> Option<&'a str> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    attrs.match_indices(key).find_map(|(i, _)| {
        if attrs[..i].chars().next_back().is_some_and(is_ident) {
            return None;
        }
        let rest = attrs[i + key.len()..].trim_start().strip_prefix('=')?;
        if rest.starts_with(['=', '>']) {
            return None;
        }
        let rest = rest.trim_start();
        if let Some(quoted) = rest.strip_prefix('"') {
            return Some(&quoted[..quoted.find('"')?]);
        }
        Some(rest[..rest.find([',', ')', '\n']).unwrap_or(rest.len())].trim())
    })
}

/// The flag whose value decides whether NodeStage demands a prior ControllerPublish.
const REQUIRE_PUBLISH: &str = "require-controller-publish";

/// `stowaged --require-controller-publish` as stowaged.rs declares it.
struct RequirePublishArg {
    /// Its environment variable, if it has one.
    env: Option<String>,
    /// Its value when neither the flag nor the variable is given.
    default: bool,
}

fn require_publish_arg() -> RequirePublishArg {
    let arg = stowaged_args()
        .into_iter()
        .find(|a| a.flag == REQUIRE_PUBLISH)
        .unwrap_or_else(|| panic!("stowaged.rs has no --{REQUIRE_PUBLISH}"));
    // A bool flag with clap's default action (SetTrue) takes no value: `=false` would
    // be a usage error and the daemon would not start.
    assert!(
        attr_value(&arg.attrs, "action").is_some_and(|a| a.ends_with("ArgAction::Set")),
        "--{REQUIRE_PUBLISH} must take a value (action = clap::ArgAction::Set)"
    );
    let default = attr_value(&arg.attrs, "default_value_t")
        .unwrap_or_else(|| panic!("--{REQUIRE_PUBLISH}: no default_value_t in stowaged.rs"));
    RequirePublishArg {
        env: attr_value(&arg.attrs, "env").map(str::to_string),
        default: parse_bool(default, &format!("--{REQUIRE_PUBLISH} default")),
    }
}

impl RequirePublishArg {
    /// The value stowaged ends up with, as clap decides it: the flag (`Some(None)`
    /// for a bare `--flag`), else the environment variable, else the default.
    fn effective(&self, flag: Option<Option<&str>>, env: Option<&str>, who: &str) -> bool {
        match (flag, env) {
            (Some(None), _) => panic!("{who}: --{REQUIRE_PUBLISH} needs a value (=true|=false)"),
            (Some(Some(v)), _) => parse_bool(v, &format!("{who}: --{REQUIRE_PUBLISH}")),
            (None, Some(v)) => parse_bool(v, &format!("{who}: ${}", self.env.as_deref().unwrap())),
            (None, None) => self.default,
        }
    }
}

/// A bool as clap's `bool` value parser takes it.
fn parse_bool(v: &str, what: &str) -> bool {
    match v {
        "true" => true,
        "false" => false,
        other => panic!("{what}: {other:?} is neither true nor false"),
    }
}

/// `Some(value)` of `--name[=value]` in `args` (`Some(None)` when bare), `None` when
/// absent.
fn raw_flag<'a>(args: impl IntoIterator<Item = &'a str>, name: &str) -> Option<Option<&'a str>> {
    args.into_iter().find_map(|a| {
        let rest = a.strip_prefix("--")?.strip_prefix(name)?;
        if rest.is_empty() {
            Some(None)
        } else {
            rest.strip_prefix('=').map(Some)
        }
    })
}

// ------------------------------------------------------------------ the pod

/// `--flag=value` (or a bare `--flag`) arguments of a container.
fn flags_of(container: &Value) -> Vec<(String, Option<String>)> {
    seq_at(container, &["args"])
        .iter()
        .map(|a| {
            let a = a.as_str().expect("args are strings");
            let f = a
                .strip_prefix("--")
                .unwrap_or_else(|| panic!("argument {a:?}: expected --flag[=value]"));
            match f.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (f.to_string(), None),
            }
        })
        .collect()
}

fn flag<'a>(flags: &'a [(String, Option<String>)], name: &str) -> Option<&'a str> {
    flags
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_deref().unwrap_or("true"))
}

fn container_name(c: &Value) -> &str {
    str_at(c, &["name"]).unwrap_or("?")
}

fn image_repo(c: &Value) -> &str {
    let image = str_at(c, &["image"]).unwrap_or("");
    match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => &image[..i],
        _ => image,
    }
}

struct Pod<'a> {
    spec: &'a Value,
}

impl<'a> Pod<'a> {
    fn containers(&self) -> &'a [Value] {
        seq_at(self.spec, &["containers"])
    }

    fn container(&self, name: &str) -> &'a Value {
        self.containers()
            .iter()
            .find(|c| container_name(c) == name)
            .unwrap_or_else(|| panic!("no container {name:?}"))
    }

    /// The container whose image is `registry.k8s.io/sig-storage/<sidecar>`.
    fn sidecar(&self, sidecar: &str) -> Option<&'a Value> {
        let repo = format!("registry.k8s.io/sig-storage/{sidecar}");
        self.containers().iter().find(|c| image_repo(c) == repo)
    }

    fn volume(&self, name: &str) -> &'a Value {
        seq_at(self.spec, &["volumes"])
            .iter()
            .find(|v| str_at(v, &["name"]) == Some(name))
            .unwrap_or_else(|| panic!("no volume {name:?} in the pod"))
    }

    /// The host path that `path` inside `container` is, through its hostPath mounts.
    fn host_path(&self, container: &Value, path: &str) -> Option<PathBuf> {
        let path = Path::new(path);
        let mount = seq_at(container, &["volumeMounts"])
            .iter()
            .filter(|m| path.starts_with(str_at(m, &["mountPath"]).unwrap_or("\0")))
            .max_by_key(|m| str_at(m, &["mountPath"]).unwrap_or("").len())?;
        let mount_path = str_at(mount, &["mountPath"]).unwrap();
        let volume = self.volume(str_at(mount, &["name"]).unwrap());
        let host = str_at(volume, &["hostPath", "path"])?;
        Some(Path::new(host).join(path.strip_prefix(mount_path).unwrap()))
    }

    /// The mount of `container` covering `path`.
    fn mount_for(&self, container: &'a Value, path: &str) -> Option<&'a Value> {
        seq_at(container, &["volumeMounts"])
            .iter()
            .filter(|m| Path::new(path).starts_with(str_at(m, &["mountPath"]).unwrap_or("\0")))
            .max_by_key(|m| str_at(m, &["mountPath"]).unwrap_or("").len())
    }

    /// A container's port number, by number or by name.
    fn port(&self, container: &Value, port: &Value) -> u16 {
        if let Some(n) = port.as_u64() {
            return u16::try_from(n).expect("port number");
        }
        let name = port.as_str().expect("port is a number or a name");
        seq_at(container, &["ports"])
            .iter()
            .find(|p| str_at(p, &["name"]) == Some(name))
            .and_then(|p| at(p, &["containerPort"])?.as_u64())
            .map(|n| u16::try_from(n).unwrap())
            .unwrap_or_else(|| panic!("{}: no port named {name:?}", container_name(container)))
    }
}

/// The `fieldPath` an env var of `container` takes, if it is a downward-API field.
fn env_field<'a>(container: &'a Value, var: &str) -> Option<&'a str> {
    seq_at(container, &["env"])
        .iter()
        .find(|e| str_at(e, &["name"]) == Some(var))
        .and_then(|e| str_at(e, &["valueFrom", "fieldRef", "fieldPath"]))
}

fn node_daemonset(docs: &[Doc]) -> &Doc {
    find(docs, "DaemonSet", "stowage-node")
}

fn pod_of(ds: &Doc) -> Pod<'_> {
    Pod {
        spec: at(&ds.value, &["spec", "template", "spec"]).expect("DaemonSet pod spec"),
    }
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr:?}: no port"))
}

/// The stowaged socket on the host: where kubelet and the sidecars must find it.
fn stowaged_socket_on_host(pod: &Pod) -> PathBuf {
    let stowaged = pod.container("stowaged");
    let flags = flags_of(stowaged);
    let endpoint = flag(&flags, "endpoint").expect("stowaged --endpoint");
    let socket = stowage_daemon::endpoint::socket_path(endpoint).expect("--endpoint is unix://");
    pod.host_path(stowaged, socket.to_str().unwrap())
        .unwrap_or_else(|| panic!("stowaged's socket {socket:?} is not on a hostPath volume"))
}

// ------------------------------------------------------------------ tests: structure

#[test]
fn every_manifest_parses_and_objects_are_unique_named_and_namespaced() {
    let docs = all_docs();
    assert!(!docs.is_empty());
    let cluster_scoped = [
        "Namespace",
        "CSIDriver",
        "StorageClass",
        "VolumeAttributesClass",
        "VolumeSnapshotClass",
        "ClusterRole",
        "ClusterRoleBinding",
    ];
    let namespaces: BTreeSet<&str> = docs
        .iter()
        .filter(|d| d.kind() == "Namespace")
        .map(|d| d.name())
        .collect();
    let mut seen = BTreeSet::new();
    for d in &docs {
        assert!(
            str_at(&d.value, &["apiVersion"]).is_some_and(|a| !a.is_empty()),
            "{}: a document without apiVersion",
            d.file
        );
        assert!(!d.kind().is_empty(), "{}: a document without kind", d.file);
        assert!(
            !d.name().is_empty(),
            "{}: {} without a name",
            d.file,
            d.kind()
        );
        if cluster_scoped.contains(&d.kind()) {
            assert_eq!(
                d.namespace(),
                None,
                "{}: {} {} is cluster-scoped",
                d.file,
                d.kind(),
                d.name()
            );
        } else {
            let ns = d.namespace().unwrap_or_else(|| {
                panic!("{}: {} {} has no namespace", d.file, d.kind(), d.name())
            });
            assert!(
                namespaces.contains(ns),
                "{}: {} {} is in namespace {ns:?}, which no manifest creates",
                d.file,
                d.kind(),
                d.name()
            );
        }
        assert!(
            seen.insert((d.kind().to_string(), d.namespace(), d.name().to_string())),
            "{}: {} {} is defined twice",
            d.file,
            d.kind(),
            d.name()
        );
    }
}

#[test]
fn kustomization_lists_every_manifest_but_the_image_class() {
    let k = parse_file("kustomization.yaml");
    assert_eq!(k.len(), 1);
    let listed: BTreeSet<String> = seq_at(&k[0].value, &["resources"])
        .iter()
        .map(|r| r.as_str().expect("resource is a path").to_string())
        .collect();
    let expected: BTreeSet<String> = manifest_files()
        .into_iter()
        .filter(|f| f != "kustomization.yaml" && f != "storageclass-image.yaml")
        .collect();
    assert_eq!(listed, expected, "kustomization.yaml resources");
}

#[test]
fn bindings_name_existing_roles_and_the_pod_runs_as_a_bound_account() {
    let docs = all_docs();
    for b in docs
        .iter()
        .filter(|d| d.kind() == "ClusterRoleBinding" || d.kind() == "RoleBinding")
    {
        let role_kind = str_at(&b.value, &["roleRef", "kind"]).unwrap_or("");
        let role = str_at(&b.value, &["roleRef", "name"]).unwrap_or("");
        let target = find(&docs, role_kind, role);
        if b.kind() == "RoleBinding" && role_kind == "Role" {
            assert_eq!(
                target.namespace(),
                b.namespace(),
                "{}: Role namespace",
                b.name()
            );
        }
        for s in seq_at(&b.value, &["subjects"]) {
            assert_eq!(str_at(s, &["kind"]), Some("ServiceAccount"));
            let sa = find(&docs, "ServiceAccount", str_at(s, &["name"]).unwrap_or(""));
            assert_eq!(
                sa.namespace(),
                str_at(s, &["namespace"]),
                "{}: subject namespace",
                b.name()
            );
        }
    }
    let ds = node_daemonset(&docs);
    let sa = str_at(
        &ds.value,
        &["spec", "template", "spec", "serviceAccountName"],
    )
    .expect("the DaemonSet names its service account");
    assert_eq!(
        find(&docs, "ServiceAccount", sa).namespace(),
        ds.namespace()
    );

    // The selector selects the template, and every mount names a declared volume.
    let selector = at(&ds.value, &["spec", "selector", "matchLabels"])
        .and_then(Value::as_mapping)
        .expect("DaemonSet selector");
    let labels = at(&ds.value, &["spec", "template", "metadata", "labels"])
        .and_then(Value::as_mapping)
        .expect("template labels");
    for (k, v) in selector {
        assert_eq!(
            labels.get(k),
            Some(v),
            "selector label {k:?} not on the template"
        );
    }
    let pod = pod_of(ds);
    for c in pod.containers() {
        for m in seq_at(c, &["volumeMounts"]) {
            pod.volume(str_at(m, &["name"]).unwrap_or(""));
        }
    }
}

// ------------------------------------------------------------------ tests: CSIDriver

#[test]
fn csidriver_matches_what_the_driver_advertises() {
    let docs = all_docs();
    let drivers: Vec<&Doc> = docs.iter().filter(|d| d.kind() == "CSIDriver").collect();
    assert_eq!(drivers.len(), 1, "one CSIDriver object");
    let d = drivers[0];
    assert_eq!(d.name(), DRIVER_NAME);
    let spec = &d.value["spec"];
    let bool_field = |k: &str| {
        spec.get(k)
            .and_then(Value::as_bool)
            .unwrap_or_else(|| panic!("CSIDriver spec.{k} must be set explicitly"))
    };
    let controller = controller_caps();

    // Kubernetes calls ControllerPublish only when attachRequired is true, and the
    // attacher only if the controller advertises PUBLISH_UNPUBLISH_VOLUME. The
    // controller advertises it regardless (Nomad calls it); whether Kubernetes should
    // is decided with stowaged's --require-controller-publish (see
    // attach_required_exactly_when_stowaged_requires_controller_publish).
    if bool_field("attachRequired") {
        assert!(
            controller.contains("PublishUnpublishVolume"),
            "attachRequired: true, but the controller does not advertise \
             PUBLISH_UNPUBLISH_VOLUME ({controller:?})"
        );
    }

    // Inline ephemeral volumes are told apart by a key kubelet sets only with pod info.
    let modes: BTreeSet<&str> = seq_at(spec, &["volumeLifecycleModes"])
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    // The driver makes inline ephemeral volumes (volume-core's manager::ephemeral, which
    // this test names, so it cannot build without it).
    assert_eq!(
        modes,
        BTreeSet::from(["Persistent", "Ephemeral"]),
        "volumeLifecycleModes"
    );
    assert_eq!(
        volume_core::manager::ephemeral::EPHEMERAL_KEY,
        "csi.storage.k8s.io/ephemeral"
    );
    assert!(
        bool_field("podInfoOnMount"),
        "Ephemeral needs podInfoOnMount: kubelet passes {} only with pod info",
        volume_core::manager::ephemeral::EPHEMERAL_KEY
    );

    // The scheduler uses CSIStorageCapacity only if told to; it needs GetCapacity and
    // a topology to publish capacity per node.
    assert_eq!(
        bool_field("storageCapacity"),
        controller.contains("GetCapacity")
            && plugin_caps().contains("VolumeAccessibilityConstraints"),
        "storageCapacity"
    );

    assert_eq!(str_at(spec, &["fsGroupPolicy"]), Some("File"));
    assert!(!bool_field("requiresRepublish"));
    assert!(!bool_field("seLinuxMount"));
}

/// The env var `var` of `container`, if set to a plain value.
fn env_value<'a>(container: &'a Value, var: &str) -> Option<&'a str> {
    let e = seq_at(container, &["env"])
        .iter()
        .find(|e| str_at(e, &["name"]) == Some(var))?;
    Some(str_at(e, &["value"]).unwrap_or_else(|| {
        panic!(
            "{}: env {var} is not a plain value",
            container_name(container)
        )
    }))
}

#[test]
fn attach_required_exactly_when_stowaged_requires_controller_publish() {
    let docs = all_docs();
    let spec = &find(&docs, "CSIDriver", DRIVER_NAME).value["spec"];
    let attach_required = spec
        .get("attachRequired")
        .and_then(Value::as_bool)
        .expect("CSIDriver spec.attachRequired must be set explicitly");
    let pod = pod_of(node_daemonset(&docs));
    let stowaged = pod.container("stowaged");
    let arg = require_publish_arg();
    let args: Vec<&str> = seq_at(stowaged, &["args"])
        .iter()
        .map(|a| a.as_str().expect("args are strings"))
        .collect();
    let flag = raw_flag(args.iter().copied(), REQUIRE_PUBLISH);
    let env = arg.env.as_deref().and_then(|var| env_value(stowaged, var));
    let required = arg.effective(flag, env, "node.yaml stowaged");

    // Kubernetes calls ControllerPublish exactly when attachRequired is true. A daemon
    // demanding it otherwise refuses every NodeStage; one not demanding it while
    // Kubernetes attaches gives up the check for nothing. That the csi-attacher runs
    // exactly when attachRequired is true is checked in
    // sidecars_match_the_capabilities_and_a_node_local_driver.
    assert_eq!(
        attach_required, required,
        "CSIDriver attachRequired: {attach_required}, but stowaged in node.yaml runs with \
         --{REQUIRE_PUBLISH}={required} (flag {flag:?}, env {env:?}, default {})",
        arg.default
    );
    if !attach_required {
        // Said where it is read, not left to an env var or to a default that may change.
        assert!(
            args.contains(&format!("--{REQUIRE_PUBLISH}=false").as_str()),
            "attachRequired: false needs --{REQUIRE_PUBLISH}=false in stowaged's args \
             in node.yaml ({args:?})"
        );
    }
}

// ------------------------------------------------------------------ tests: classes

/// What the external-provisioner adds to the parameters with --extra-create-metadata.
fn with_create_metadata(params: &HashMap<String, String>) -> HashMap<String, String> {
    let mut p = params.clone();
    for (k, v) in [
        ("csi.storage.k8s.io/pvc/name", "data"),
        ("csi.storage.k8s.io/pvc/namespace", "default"),
        ("csi.storage.k8s.io/pv/name", "pvc-0000"),
    ] {
        p.insert(k.into(), v.into());
    }
    p
}

#[test]
fn storage_classes_are_accepted_by_the_driver() {
    let docs = all_docs();
    let controller = controller_caps();
    let classes: Vec<&Doc> = docs.iter().filter(|d| d.kind() == "StorageClass").collect();
    assert!(!classes.is_empty());
    for sc in classes {
        let v = &sc.value;
        let name = sc.name();
        assert_eq!(str_at(v, &["provisioner"]), Some(DRIVER_NAME), "{name}");
        let params = string_map(v.get("parameters"));
        let parsed = VolumeParams::parse(&params, None)
            .unwrap_or_else(|e| panic!("StorageClass {name}: the driver rejects it: {e}"));
        VolumeParams::parse(&with_create_metadata(&params), None)
            .unwrap_or_else(|e| panic!("StorageClass {name} with PVC metadata: {e}"));
        // The name says what the class gives.
        let mut expected = format!("stowage-{}", parsed.kind.as_str());
        if let Some(fs) = parsed.fs {
            expected = format!("{expected}-{}", fs.as_str());
        }
        assert_eq!(name, expected, "StorageClass name vs its parameters");
        // A volume lives on one node: wait for the scheduler to pick it, by capacity.
        assert_eq!(
            str_at(v, &["volumeBindingMode"]),
            Some("WaitForFirstConsumer"),
            "{name}"
        );
        assert_eq!(
            v.get("allowVolumeExpansion").and_then(Value::as_bool),
            Some(controller.contains("ExpandVolume")),
            "{name}: allowVolumeExpansion vs EXPAND_VOLUME"
        );
        assert_eq!(str_at(v, &["reclaimPolicy"]), Some("Delete"), "{name}");
        for term in seq_at(v, &["allowedTopologies"]) {
            for e in seq_at(term, &["matchLabelExpressions"]) {
                assert_eq!(str_at(e, &["key"]), Some(TOPOLOGY_KEY), "{name}");
            }
        }
    }
}

/// The image class is a template (its layers are per image, so it stays out of
/// kustomization.yaml), and the driver accepts its parameters.
#[test]
fn image_storage_class_is_accepted_by_the_driver() {
    let docs = parse_file("storageclass-image.yaml");
    assert_eq!(docs.len(), 1);
    let sc = &docs[0];
    assert_eq!(sc.kind(), "StorageClass");
    assert_eq!(str_at(&sc.value, &["provisioner"]), Some(DRIVER_NAME));
    let params = string_map(sc.value.get("parameters"));
    let parsed = VolumeParams::parse(&params, None)
        .unwrap_or_else(|e| panic!("the driver rejects the image class {params:?}: {e}"));
    assert_eq!(parsed.kind, volume_core::VolumeKind::Image);
    assert_eq!(parsed.fs, None);
    assert!(!parsed.layers.is_empty());
    assert!(
        parsed.layers.iter().all(|l| l.starts_with("sha256:")),
        "the template names layers by diff_id, the same on every node"
    );
    assert_eq!(
        parsed.overlay,
        Some(volume_core::params::OverlayBackend::Kernel)
    );
    // With a capability fs_type (as the provisioner may send) it is still accepted.
    VolumeParams::parse(&with_create_metadata(&params), Some("ext4"))
        .expect("image class with PVC metadata and an fs_type");
    let text = read("deploy/kubernetes/storageclass-image.yaml");
    assert!(!text.contains("rejects"), "no stale 'rejected' header");
    assert!(
        text.contains("vol layer import"),
        "says how to get the layers"
    );
}

#[test]
fn volume_attributes_class_is_accepted_by_modify_volume() {
    let docs = all_docs();
    let vacs: Vec<&Doc> = docs
        .iter()
        .filter(|d| d.kind() == "VolumeAttributesClass")
        .collect();
    assert!(!vacs.is_empty());
    assert!(controller_caps().contains("ModifyVolume"));
    // ModifyVolume's validation needs the pool it would apply to: a btrfs pool (as the
    // default embedded one is), behind the fake host.
    let dir = tempfile::tempdir().unwrap();
    let pool_dir = dir.path().join("pool");
    std::fs::create_dir_all(&pool_dir).unwrap();
    let pool = Pool::open(
        &PoolConfig::Btrfs { path: pool_dir },
        FakeHost::new(true).host(),
    )
    .unwrap();
    for vac in vacs {
        assert_eq!(
            str_at(&vac.value, &["driverName"]),
            Some(DRIVER_NAME),
            "{}",
            vac.name()
        );
        let params: BTreeMap<String, String> = string_map(vac.value.get("parameters"))
            .into_iter()
            .collect();
        assert!(!params.is_empty(), "{}: no parameters", vac.name());
        volume_core::manager::modify::validate(&params, VolumeKind::Dir, &pool)
            .unwrap_or_else(|e| panic!("VolumeAttributesClass {}: {e}", vac.name()));
    }
}

#[test]
fn snapshot_class_names_the_driver() {
    let docs = all_docs();
    assert!(controller_caps().contains("CreateDeleteSnapshot"));
    let classes: Vec<&Doc> = docs
        .iter()
        .filter(|d| d.kind() == "VolumeSnapshotClass")
        .collect();
    assert_eq!(classes.len(), 1);
    assert_eq!(str_at(&classes[0].value, &["driver"]), Some(DRIVER_NAME));
    assert_eq!(
        str_at(&classes[0].value, &["deletionPolicy"]),
        Some("Delete")
    );
}

// ------------------------------------------------------------------ tests: the DaemonSet

#[test]
fn stowaged_gets_only_flags_it_has_and_state_survives_on_the_host() {
    let docs = all_docs();
    let pod = pod_of(node_daemonset(&docs));
    let stowaged = pod.container("stowaged");
    let known = stowaged_flags();
    let flags = flags_of(stowaged);
    for (name, _) in &flags {
        assert!(
            known.contains(name),
            "node.yaml passes --{name} to stowaged, which has no such flag (it has {known:?})"
        );
    }
    assert_eq!(
        str_at(stowaged, &["image"]),
        Some(format!("localhost/stowage/stowaged:{}", env!("CARGO_PKG_VERSION")).as_str()),
        "the stowaged image is this release"
    );
    assert_eq!(
        at(stowaged, &["securityContext", "privileged"]).and_then(Value::as_bool),
        Some(true),
        "stowaged mounts and attaches loop devices"
    );

    // The node id is the Kubernetes node name, so the topology value is too: the
    // provisioner in node-deployment mode compares it with its own node.
    assert_eq!(flag(&flags, "node-id"), Some("$(NODE_NAME)"));
    assert_eq!(env_field(stowaged, "NODE_NAME"), Some("spec.nodeName"));

    // State (metadata, pool image) on the host, not in the container.
    let state = flag(&flags, "state-dir").expect("--state-dir");
    assert!(
        pod.host_path(stowaged, state).is_some(),
        "--state-dir {state} is not on a hostPath volume: every restart would lose the pool"
    );
    // The pool is mounted under the state dir and must outlive the container.
    assert_eq!(
        pod.mount_for(stowaged, state)
            .and_then(|m| str_at(m, &["mountPropagation"])),
        Some("Bidirectional"),
        "--state-dir mount propagation"
    );

    // Kubelet hands the driver host paths for staging and publishing: they must be the
    // same paths inside the container, with mounts propagating back to the host.
    for path in [
        "/var/lib/kubelet/pods",
        "/var/lib/kubelet/plugins/kubernetes.io/csi",
    ] {
        assert_eq!(
            pod.host_path(stowaged, path).as_deref(),
            Some(Path::new(path)),
            "{path} inside stowaged"
        );
        assert_eq!(
            pod.mount_for(stowaged, path)
                .and_then(|m| str_at(m, &["mountPropagation"])),
            Some("Bidirectional"),
            "{path} mount propagation"
        );
    }
    // Loop devices and their sysfs attributes.
    for path in ["/dev", "/sys"] {
        assert_eq!(
            pod.host_path(stowaged, path).as_deref(),
            Some(Path::new(path))
        );
    }
}

#[test]
fn every_env_reference_in_args_is_defined() {
    let docs = all_docs();
    let pod = pod_of(node_daemonset(&docs));
    for c in pod.containers() {
        let defined: BTreeSet<&str> = seq_at(c, &["env"])
            .iter()
            .filter_map(|e| str_at(e, &["name"]))
            .collect();
        for a in seq_at(c, &["args"]) {
            let a = a.as_str().unwrap();
            let mut rest = a;
            while let Some(i) = rest.find("$(") {
                let end = rest[i..].find(')').expect("unclosed $(") + i;
                let var = &rest[i + 2..end];
                assert!(
                    defined.contains(var),
                    "{}: {a:?} uses $({var}), not in its env",
                    container_name(c)
                );
                rest = &rest[end..];
            }
        }
    }
}

#[test]
fn sidecars_kubelet_and_stowaged_agree_on_the_socket() {
    let docs = all_docs();
    let pod = pod_of(node_daemonset(&docs));
    let socket = stowaged_socket_on_host(&pod);
    assert_eq!(
        socket,
        Path::new("/var/lib/kubelet/plugins")
            .join(DRIVER_NAME)
            .join("csi.sock"),
        "the plugin directory is named after the driver"
    );
    let mut sidecars = 0;
    for c in pod.containers() {
        if container_name(c) == "stowaged" {
            continue;
        }
        sidecars += 1;
        let flags = flags_of(c);
        let address = flag(&flags, "csi-address")
            .unwrap_or_else(|| panic!("{}: no --csi-address", container_name(c)));
        assert_eq!(
            pod.host_path(c, address).as_deref(),
            Some(socket.as_path()),
            "{}: --csi-address {address} is not stowaged's socket",
            container_name(c)
        );
    }
    // registrar, provisioner, snapshotter, resizer, and the attacher if attaching.
    let expected = 4 + usize::from(pod.sidecar("csi-attacher").is_some());
    assert!(
        sidecars >= expected,
        "{sidecars} sidecars, expected {expected}"
    );

    let registrar = pod
        .sidecar("csi-node-driver-registrar")
        .expect("csi-node-driver-registrar");
    let flags = flags_of(registrar);
    assert_eq!(
        flag(&flags, "kubelet-registration-path").map(Path::new),
        Some(socket.as_path()),
        "the path kubelet dials is stowaged's socket on the host"
    );
    let registration = flag(&flags, "plugin-registration-path").unwrap_or("/registration");
    assert_eq!(
        pod.host_path(registrar, registration).as_deref(),
        Some(Path::new("/var/lib/kubelet/plugins_registry")),
        "the registrar's socket must land in kubelet's plugin registry"
    );
}

#[test]
fn sidecars_match_the_capabilities_and_a_node_local_driver() {
    let docs = all_docs();
    let ds = node_daemonset(&docs);
    let pod = pod_of(ds);
    let controller = controller_caps();
    let csidriver = &find(&docs, "CSIDriver", DRIVER_NAME).value["spec"];

    // Provisioner: one per node, each for its own node's volumes and capacity.
    let provisioner = pod.sidecar("csi-provisioner").expect("csi-provisioner");
    assert!(controller.contains("CreateDeleteVolume"));
    let flags = flags_of(provisioner);
    assert_eq!(flag(&flags, "node-deployment"), Some("true"));
    // external-provisioner v6 has topology always on and no Topology gate: naming
    // it there is an unknown gate, and the sidecar refuses to start.
    assert!(
        str_at(provisioner, &["image"]).is_some_and(|i| i.contains(":v6.")),
        "provisioner at v6"
    );
    assert!(
        flag(&flags, "feature-gates").is_none_or(|g| !g.contains("Topology")),
        "no Topology gate for provisioner v6"
    );
    assert_eq!(flag(&flags, "extra-create-metadata"), Some("true"));
    assert_eq!(
        flag(&flags, "enable-capacity") == Some("true"),
        csidriver["storageCapacity"].as_bool() == Some(true),
        "--enable-capacity vs CSIDriver storageCapacity"
    );
    // CSIStorageCapacity objects are owned by the DaemonSet: pod → DaemonSet is 1 level.
    assert_eq!(ds.kind(), "DaemonSet");
    assert_eq!(flag(&flags, "capacity-ownerref-level"), Some("1"));
    assert_eq!(env_field(provisioner, "NODE_NAME"), Some("spec.nodeName"));
    assert_eq!(
        env_field(provisioner, "NAMESPACE"),
        Some("metadata.namespace")
    );
    assert_eq!(env_field(provisioner, "POD_NAME"), Some("metadata.name"));

    // Attacher exactly when Kubernetes will create VolumeAttachments.
    let attacher = pod.sidecar("csi-attacher");
    assert_eq!(
        attacher.is_some(),
        csidriver["attachRequired"].as_bool() == Some(true),
        "csi-attacher present vs attachRequired"
    );
    let snapshotter = pod.sidecar("csi-snapshotter");
    assert_eq!(
        snapshotter.is_some(),
        controller.contains("CreateDeleteSnapshot")
    );
    let resizer = pod.sidecar("csi-resizer");
    assert_eq!(
        resizer.is_some(),
        controller.contains("ExpandVolume") || controller.contains("ModifyVolume")
    );
    if let Some(r) = resizer
        && controller.contains("ModifyVolume")
    {
        // VolumeAttributesClass is GA in resizer v2 (Kubernetes 1.34): no gate.
        assert!(
            str_at(r, &["image"]).is_some_and(|i| i.contains(":v2.")),
            "resizer at v2, which calls ControllerModifyVolume without a gate"
        );
    }
    assert!(
        node_caps().contains("StageUnstageVolume"),
        "the node plugin stages"
    );

    // In a DaemonSet every sidecar runs once per node. A sidecar in node-deployment
    // mode handles only its own node; any other must elect one leader, or every node
    // acts on every object (a detach "succeeds" on a node that never had the volume).
    for c in [Some(provisioner), attacher, snapshotter, resizer]
        .into_iter()
        .flatten()
    {
        let flags = flags_of(c);
        let name = container_name(c);
        let leader = flag(&flags, "leader-election") == Some("true");
        if flag(&flags, "node-deployment") == Some("true") {
            assert!(!leader, "{name}: node-deployment and leader election");
            assert_eq!(env_field(c, "NODE_NAME"), Some("spec.nodeName"), "{name}");
        } else {
            assert!(leader, "{name}: runs on every node without leader election");
            assert_eq!(
                flag(&flags, "leader-election-namespace"),
                Some("$(NAMESPACE)"),
                "{name}"
            );
            assert_eq!(
                env_field(c, "NAMESPACE"),
                Some("metadata.namespace"),
                "{name}"
            );
        }
    }
}

#[test]
fn liveness_probe_reaches_the_health_endpoint() {
    let docs = all_docs();
    let pod = pod_of(node_daemonset(&docs));
    let stowaged = pod.container("stowaged");
    let probe = at(stowaged, &["livenessProbe", "httpGet"]).expect("stowaged livenessProbe");
    assert_eq!(str_at(probe, &["path"]), Some("/healthz"));
    let port = pod.port(stowaged, &probe["port"]);
    // Either stowaged's own /healthz or a livenessprobe sidecar's.
    let own = flag(&flags_of(stowaged), "metrics-address").map(|a| {
        let addr: SocketAddr = a.parse().expect("--metrics-address is host:port");
        assert!(
            addr.ip().is_unspecified(),
            "--metrics-address {a}: kubelet probes the pod IP, not loopback"
        );
        addr.port()
    });
    let sidecar = pod
        .sidecar("livenessprobe")
        .and_then(|c| flag(&flags_of(c), "http-endpoint").map(port_of));
    assert!(
        Some(port) == own || Some(port) == sidecar,
        "the liveness probe's port {port} is neither --metrics-address ({own:?}) nor the \
         livenessprobe sidecar's --http-endpoint ({sidecar:?})"
    );
}

#[test]
fn no_two_containers_listen_on_one_port() {
    let docs = all_docs();
    let pod = pod_of(node_daemonset(&docs));
    // Containers share the pod's network namespace: a port is one container's.
    let mut owner: BTreeMap<u16, String> = BTreeMap::new();
    for c in pod.containers() {
        let name = container_name(c);
        let mut declared = BTreeSet::new();
        for p in seq_at(c, &["ports"]) {
            let n = at(p, &["containerPort"]).and_then(Value::as_u64).unwrap();
            let n = u16::try_from(n).unwrap();
            assert!(declared.insert(n), "{name}: containerPort {n} twice");
        }
        let mut listening = BTreeSet::new();
        for (f, v) in flags_of(c) {
            if ["metrics-address", "http-endpoint", "health-port"].contains(&f.as_str()) {
                let v = v.expect("a value");
                let port = v.parse().unwrap_or_else(|_| port_of(&v));
                assert!(listening.insert(port), "{name}: two servers on port {port}");
            }
        }
        // livenessprobe listens on 9808 unless told otherwise.
        if image_repo(c) == "registry.k8s.io/sig-storage/livenessprobe" && listening.is_empty() {
            listening.insert(9808);
        }
        for port in declared.union(&listening) {
            if let Some(other) = owner.insert(*port, name.to_string()) {
                panic!("port {port}: both {other} and {name}");
            }
        }
    }
}

#[test]
fn images_are_pinned() {
    let docs = all_docs();
    let pod = pod_of(node_daemonset(&docs));
    for c in pod.containers() {
        let image = str_at(c, &["image"]).expect("image");
        let repo = image_repo(c);
        assert_ne!(repo, image, "{image}: no tag");
        let tag = &image[repo.len() + 1..];
        assert!(!tag.is_empty() && tag != "latest", "{image}: not pinned");
        if container_name(c) != "stowaged" {
            assert!(
                repo.starts_with("registry.k8s.io/sig-storage/"),
                "{image}: not an official CSI sidecar image"
            );
            assert!(tag.starts_with('v'), "{image}: sidecar tags are vX.Y.Z");
        }
    }
}

// ------------------------------------------------------------------ tests: RBAC

/// (apiGroup, resource, verb) triples the pod's service account is granted.
fn granted(docs: &[Doc], namespaced: bool) -> BTreeSet<(String, String, String)> {
    let ds = node_daemonset(docs);
    let sa = str_at(
        &ds.value,
        &["spec", "template", "spec", "serviceAccountName"],
    )
    .unwrap();
    let (binding_kind, role_kind) = if namespaced {
        ("RoleBinding", "Role")
    } else {
        ("ClusterRoleBinding", "ClusterRole")
    };
    let mut out = BTreeSet::new();
    for b in docs.iter().filter(|d| d.kind() == binding_kind) {
        if namespaced && b.namespace() != ds.namespace() {
            continue;
        }
        let bound = seq_at(&b.value, &["subjects"]).iter().any(|s| {
            str_at(s, &["name"]) == Some(sa) && str_at(s, &["namespace"]) == ds.namespace()
        });
        if !bound || str_at(&b.value, &["roleRef", "kind"]) != Some(role_kind) {
            continue;
        }
        let role = find(
            docs,
            role_kind,
            str_at(&b.value, &["roleRef", "name"]).unwrap(),
        );
        for rule in seq_at(&role.value, &["rules"]) {
            for g in seq_at(rule, &["apiGroups"]) {
                for r in seq_at(rule, &["resources"]) {
                    for v in seq_at(rule, &["verbs"]) {
                        out.insert((
                            g.as_str().unwrap().to_string(),
                            r.as_str().unwrap().to_string(),
                            v.as_str().unwrap().to_string(),
                        ));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn rbac_covers_what_the_sidecars_do() {
    let docs = all_docs();
    let pod = pod_of(node_daemonset(&docs));
    let cluster = granted(&docs, false);
    let local = granted(&docs, true);
    let need = |set: &BTreeSet<(String, String, String)>, who: &str, g: &str, r: &str, vs: &str| {
        for v in vs.split(' ') {
            assert!(
                set.contains(&(g.to_string(), r.to_string(), v.to_string())),
                "{who} needs {v} on {g}/{r}"
            );
        }
    };
    if pod.sidecar("csi-provisioner").is_some() {
        let p = "csi-provisioner";
        need(
            &cluster,
            p,
            "",
            "persistentvolumes",
            "get list watch create delete",
        );
        need(
            &cluster,
            p,
            "",
            "persistentvolumeclaims",
            "get list watch update",
        );
        need(
            &cluster,
            p,
            "storage.k8s.io",
            "storageclasses",
            "get list watch",
        );
        need(&cluster, p, "", "events", "create patch");
        need(&cluster, p, "storage.k8s.io", "csinodes", "get list watch");
        need(&cluster, p, "", "nodes", "get list watch");
        need(
            &cluster,
            p,
            "storage.k8s.io",
            "volumeattachments",
            "get list watch",
        );
        // v6 puts a finalizer on a snapshot while it restores from it.
        need(
            &cluster,
            p,
            "snapshot.storage.k8s.io",
            "volumesnapshots",
            "get list watch update",
        );
        need(
            &cluster,
            p,
            "snapshot.storage.k8s.io",
            "volumesnapshotcontents",
            "get list",
        );
        need(
            &local,
            p,
            "storage.k8s.io",
            "csistoragecapacities",
            "get list watch create update patch delete",
        );
        need(&local, p, "", "pods", "get");
    }
    if pod.sidecar("csi-attacher").is_some() {
        let a = "csi-attacher";
        need(&cluster, a, "", "persistentvolumes", "get list watch patch");
        need(&cluster, a, "storage.k8s.io", "csinodes", "get list watch");
        need(
            &cluster,
            a,
            "storage.k8s.io",
            "volumeattachments",
            "get list watch patch",
        );
        need(
            &cluster,
            a,
            "storage.k8s.io",
            "volumeattachments/status",
            "patch",
        );
    }
    if pod.sidecar("csi-snapshotter").is_some() {
        let s = "csi-snapshotter";
        let g = "snapshot.storage.k8s.io";
        need(&cluster, s, g, "volumesnapshotclasses", "get list watch");
        need(
            &cluster,
            s,
            g,
            "volumesnapshotcontents",
            "get list watch update patch",
        );
        need(
            &cluster,
            s,
            g,
            "volumesnapshotcontents/status",
            "update patch",
        );
        need(&cluster, s, "", "events", "create patch");
    }
    if pod.sidecar("csi-resizer").is_some() {
        let r = "csi-resizer";
        need(&cluster, r, "", "persistentvolumes", "get list watch patch");
        need(&cluster, r, "", "persistentvolumeclaims", "get list watch");
        need(&cluster, r, "", "persistentvolumeclaims/status", "patch");
        // It lists the pods that use a PVC (online expansion, ModifyVolume); without
        // this, an expansion never happens and only the resizer's log says why.
        need(&cluster, r, "", "pods", "get list watch");
        need(
            &cluster,
            r,
            "storage.k8s.io",
            "volumeattributesclasses",
            "get list watch",
        );
        need(&cluster, r, "", "events", "create patch");
    }
    let electing = pod
        .containers()
        .iter()
        .any(|c| flag(&flags_of(c), "leader-election") == Some("true"));
    if electing {
        need(
            &local,
            "leader election",
            "coordination.k8s.io",
            "leases",
            "get list watch create update delete",
        );
    }
}

// ------------------------------------------------------------------ tests: Nomad

/// Strips `#` and `//` comments outside strings.
fn hcl_strip_comments(src: &str) -> String {
    let mut out = String::new();
    for line in src.lines() {
        let mut in_str = false;
        let mut prev = '\0';
        let mut cut = line.len();
        for (i, c) in line.char_indices() {
            match c {
                '"' if prev != '\\' => in_str = !in_str,
                '#' if !in_str => {
                    cut = i;
                    break;
                }
                '/' if !in_str && prev == '/' => {
                    cut = i - 1;
                    break;
                }
                _ => {}
            }
            prev = c;
        }
        out.push_str(&line[..cut]);
        out.push('\n');
    }
    out
}

/// The bodies of the blocks whose header starts with `header` (e.g. `csi_plugin` or
/// `task "stowaged"`), braces inside strings ignored.
fn hcl_blocks<'a>(src: &'a str, header: &str) -> Vec<&'a str> {
    let starts = src.match_indices(header).map(|(i, _)| i).filter(|&i| {
        (i == 0 || src[..i].ends_with(char::is_whitespace))
            && src[i + header.len()..].trim_start().starts_with(['{', '"'])
    });
    starts
        .map(|start| {
            let open = start + src[start..].find('{').unwrap();
            let mut depth = 0;
            let mut in_str = false;
            let mut prev = '\0';
            for (i, c) in src[open..].char_indices() {
                match c {
                    '"' if prev != '\\' => in_str = !in_str,
                    '{' if !in_str => depth += 1,
                    '}' if !in_str => {
                        depth -= 1;
                        if depth == 0 {
                            return &src[open + 1..open + i];
                        }
                    }
                    _ => {}
                }
                prev = c;
            }
            panic!("block {header:?} is not closed")
        })
        .collect()
}

fn hcl_block<'a>(src: &'a str, header: &str) -> &'a str {
    hcl_blocks(src, header)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no block {header:?}"))
}

/// `key = value` at any depth of `block`, value unquoted.
fn hcl_attr<'a>(block: &'a str, key: &str) -> Option<&'a str> {
    block.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

/// The quoted strings of `key = [ ... ]` in `block`.
fn hcl_list(block: &str, key: &str) -> Vec<String> {
    let i = block
        .lines()
        .scan(0, |off, l| {
            let here = *off;
            *off += l.len() + 1;
            Some((here, l))
        })
        .find(|(_, l)| l.split_once('=').is_some_and(|(k, _)| k.trim() == key))
        .map(|(i, _)| i)
        .unwrap_or_else(|| panic!("no list {key:?}"));
    let rest = &block[i..];
    let list = &rest[rest.find('[').unwrap() + 1..rest.find(']').unwrap()];
    list.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn nomad_job_runs_stowaged_as_a_monolith_plugin_on_its_endpoint() {
    let job = hcl_strip_comments(&read("deploy/nomad/stowage.nomad.hcl"));
    assert_eq!(
        hcl_attr(&job, "type"),
        Some("system"),
        "one stowaged per node"
    );
    let task = hcl_block(&job, "task \"stowaged\"");
    assert_eq!(hcl_attr(task, "driver"), Some("docker"));
    let config = hcl_block(task, "config");

    // The same image and daemon as on Kubernetes.
    let docs = all_docs();
    let k8s = pod_of(node_daemonset(&docs));
    assert_eq!(
        hcl_attr(config, "image"),
        str_at(k8s.container("stowaged"), &["image"])
    );
    assert_eq!(hcl_attr(config, "privileged"), Some("true"));

    let known = stowaged_flags();
    let args = hcl_list(config, "args");
    let mut flags = BTreeMap::new();
    for a in &args {
        let f = a.strip_prefix("--").expect("--flag=value");
        let (k, v) = f.split_once('=').unwrap_or((f, "true"));
        assert!(
            known.contains(k),
            "the Nomad job passes --{k}, unknown to stowaged"
        );
        flags.insert(k, v);
    }
    assert_eq!(flags.get("node-id"), Some(&"${node.unique.name}"));

    // Nomad calls ControllerPublish before NodeStage exactly when the controller
    // advertises PUBLISH_UNPUBLISH_VOLUME: NodeStage may demand it exactly then.
    let arg = require_publish_arg();
    let env = arg.env.as_deref().and_then(|var| {
        hcl_blocks(task, "env")
            .into_iter()
            .find_map(|b| hcl_attr(b, var))
    });
    let flag = raw_flag(args.iter().map(String::as_str), REQUIRE_PUBLISH);
    let publishes = controller_caps().contains("PublishUnpublishVolume");
    assert_eq!(
        arg.effective(flag, env, "the Nomad job"),
        publishes,
        "the Nomad job's --{REQUIRE_PUBLISH} (flag {flag:?}, env {env:?}, default {}) \
         vs PUBLISH_UNPUBLISH_VOLUME advertised: {publishes}",
        arg.default
    );

    // Nomad puts its plugin directory at mount_dir and dials mount_dir/csi.sock.
    let plugin = hcl_block(task, "csi_plugin");
    let socket = stowage_daemon::endpoint::socket_path(flags["endpoint"]).unwrap();
    assert_eq!(
        socket.parent().and_then(Path::to_str),
        hcl_attr(plugin, "mount_dir"),
        "csi_plugin mount_dir vs --endpoint"
    );
    assert_eq!(
        socket.file_name().and_then(|n| n.to_str()),
        Some("csi.sock")
    );
    // One process serves controller and node.
    assert!(!controller_caps().is_empty() && !node_caps().is_empty());
    assert_eq!(hcl_attr(plugin, "type"), Some("monolith"));
    let plugin_id = hcl_attr(plugin, "id").expect("csi_plugin id");

    // State on the host, the pool mount under it propagating back to the host.
    let state = flags["state-dir"];
    let mount = hcl_blocks(config, "mount")
        .into_iter()
        .find(|m| hcl_attr(m, "target") == Some(state))
        .unwrap_or_else(|| panic!("--state-dir {state} is not bind-mounted from the host"));
    assert_eq!(hcl_attr(mount, "type"), Some("bind"));
    assert_eq!(hcl_attr(mount, "propagation"), Some("rshared"));

    // The health check reaches --metrics-address through the mapped port.
    let metrics = port_of(flags["metrics-address"]);
    let port = hcl_block(&job, "port \"metrics\"");
    assert_eq!(
        hcl_attr(port, "to").and_then(|p| p.parse().ok()),
        Some(metrics)
    );
    let check = hcl_block(&job, "check");
    assert_eq!(hcl_attr(check, "path"), Some("/healthz"));

    // The example volume uses this plugin with parameters and a capability the driver
    // accepts.
    let volume_text = read("deploy/nomad/volume-example.hcl");
    let volume = hcl_strip_comments(&volume_text);
    assert_eq!(hcl_attr(&volume, "type"), Some("csi"));
    assert_eq!(hcl_attr(&volume, "plugin_id"), Some(plugin_id));
    let params: HashMap<String, String> = hcl_block(&volume, "parameters")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().trim_matches('"').to_string(),
                v.trim().trim_matches('"').to_string(),
            )
        })
        .collect();
    assert!(!params.is_empty());
    VolumeParams::parse(&params, None)
        .unwrap_or_else(|e| panic!("volume-example.hcl parameters: {e}"));
    let min = hcl_attr(&volume, "capacity_min").expect("capacity_min");
    volume_core::size::parse_size(min).unwrap_or_else(|e| panic!("capacity_min {min}: {e}"));
    let capability = hcl_block(&volume, "capability");
    let cap = nomad_capability(
        hcl_attr(capability, "access_mode").unwrap(),
        hcl_attr(capability, "attachment_mode").unwrap(),
    );
    stowage_daemon::grpc::convert::check_capability(&cap)
        .unwrap_or_else(|e| panic!("volume-example.hcl capability: {e}"));
    assert!(
        volume_text.contains(&format!("\"{TOPOLOGY_KEY}\"")),
        "the topology example names {TOPOLOGY_KEY}"
    );
}

/// The CSI capability Nomad sends for an access and attachment mode.
fn nomad_capability(access: &str, attachment: &str) -> csi::VolumeCapability {
    use csi::volume_capability::access_mode::Mode;
    use csi::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
    let mode = match access {
        "single-node-reader-only" => Mode::SingleNodeReaderOnly,
        "single-node-writer" => Mode::SingleNodeWriter,
        "multi-node-reader-only" => Mode::MultiNodeReaderOnly,
        "multi-node-single-writer" => Mode::MultiNodeSingleWriter,
        "multi-node-multi-writer" => Mode::MultiNodeMultiWriter,
        other => panic!("Nomad has no access mode {other:?}"),
    };
    let access_type = match attachment {
        "file-system" => AccessType::Mount(MountVolume::default()),
        "block-device" => AccessType::Block(BlockVolume::default()),
        other => panic!("Nomad has no attachment mode {other:?}"),
    };
    csi::VolumeCapability {
        access_mode: Some(AccessMode { mode: mode as i32 }),
        access_type: Some(access_type),
    }
}
