//! Our `csi.proto` must describe the same wire format as the CSI spec's own.
//!
//! The upstream file comes from the spec's Go module, fetched with
//! `go mod download`; both files are compiled with protox and compared
//! descriptor by descriptor: messages (nested ones too, map entries included),
//! fields, oneofs, enums and their values, services and methods, extension
//! definitions, and the options set on each of them (`csi_secret`, `alpha_*`,
//! `go_package`). Declaration order and comments are free to differ.
//!
//! Without `go`, or when the download fails, the test fails: it never skips.

use std::path::{Path, PathBuf};
use std::process::Command;

use prost::Message as _;
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};
use protox::prost_reflect::DescriptorPool;
use stowage_proto::CSI_FILE_DESCRIPTOR_SET;

// The comparison itself, apart from where the descriptors come from.
#[path = "upstream/facts.rs"]
mod facts;

use facts::{diff, facts};

/// The Go module that carries the spec's `csi.proto`, at the release we implement.
const SPEC_MODULE: &str = "github.com/container-storage-interface/spec@v1.12.0";

/// File name of the CSI protobuf, both upstream and here.
const CSI_PROTO: &str = "csi.proto";

#[test]
fn csi_proto_matches_upstream_spec() {
    let upstream = facts(&compile_dir(&upstream_dir()), CSI_PROTO);
    let ours = facts(&our_pool(), CSI_PROTO);

    // Guard against comparing two empty descriptions.
    for service in [
        "Identity",
        "Controller",
        "GroupController",
        "Node",
        "SnapshotMetadata",
    ] {
        let key = format!("service csi.v1.{service}");
        assert!(
            upstream.contains_key(&key),
            "upstream csi.proto has no {key}"
        );
    }

    let differences = diff(&ours, &upstream);
    assert!(
        differences.is_empty(),
        "proto/csi.proto differs from the upstream spec ({SPEC_MODULE}) in {} place(s) \
         ('-' ours, '+' upstream):\n{}",
        differences.len(),
        differences.join("\n"),
    );
}

#[test]
fn changed_field_number_is_reported() {
    // A copy of our descriptor set with one field number changed. The copy
    // goes through prost-types, which drops custom options, so the original is
    // sent the same way to keep the comparison about the number alone.
    let mut set = prost_types::FileDescriptorSet::decode(CSI_FILE_DESCRIPTOR_SET)
        .expect("decode our descriptor set");
    let original = facts(&pool_from_set(&set), CSI_PROTO);

    let field = set
        .file
        .iter_mut()
        .find(|f| f.name() == CSI_PROTO)
        .and_then(|f| {
            f.message_type
                .iter_mut()
                .find(|m| m.name() == "CreateVolumeRequest")
        })
        .and_then(|m| m.field.iter_mut().find(|f| f.name() == "name"))
        .expect("CreateVolumeRequest.name in our descriptor set");
    assert_eq!(field.number(), 1);
    field.number = Some(9);
    let mutated = facts(&pool_from_set(&set), CSI_PROTO);

    let differences = diff(&mutated, &original);
    assert_eq!(differences.len(), 2, "{differences:#?}");
    assert!(differences[0].starts_with("- field csi.v1.CreateVolumeRequest.name: number=9 "));
    assert!(differences[1].starts_with("+ field csi.v1.CreateVolumeRequest.name: number=1 "));
}

#[test]
fn dropped_secret_option_is_reported() {
    let source = std::fs::read_to_string(manifest_dir().join(CSI_PROTO)).expect("read csi.proto");
    let secret = "message DeleteVolumeRequest {\n  string volume_id = 1;\n  \
                  map<string, string> secrets = 2 [(csi_secret) = true];";
    assert!(
        source.contains(secret),
        "csi.proto no longer has the text this test edits"
    );
    let mutated = source.replace(
        secret,
        "message DeleteVolumeRequest {\n  string volume_id = 1;\n  \
         map<string, string> secrets = 2;",
    );

    let differences = diff(
        &facts(&compile_source(mutated), CSI_PROTO),
        &facts(&compile_source(source), CSI_PROTO),
    );
    assert_eq!(differences.len(), 2, "{differences:#?}");
    assert!(differences[0].starts_with("- field csi.v1.DeleteVolumeRequest.secrets: "));
    assert!(!differences[0].contains("csi_secret"));
    assert!(differences[1].starts_with("+ field csi.v1.DeleteVolumeRequest.secrets: "));
    assert!(differences[1].contains("(csi.v1.csi_secret)=true"));
}

#[test]
fn identical_descriptions_have_no_differences() {
    let ours = facts(&our_pool(), CSI_PROTO);
    assert!(ours.len() > 300, "only {} descriptors found", ours.len());
    assert_eq!(diff(&ours, &ours.clone()), Vec::<String>::new());
}

// --- where the descriptors come from ---------------------------------------

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Downloads (or finds in the module cache) the spec module and returns its directory.
fn upstream_dir() -> PathBuf {
    let output = Command::new("go")
        .args(["mod", "download", "-json", SPEC_MODULE])
        .env("GO111MODULE", "on")
        // Outside any Go module, so no go.mod around us is consulted.
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap_or_else(|err| {
            panic!("cannot run `go` (needed to fetch the upstream CSI spec {SPEC_MODULE}): {err}")
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "`go mod download -json {SPEC_MODULE}` failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
    );
    let info: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|err| panic!("`go mod download -json` printed no JSON ({err}):\n{stdout}"));
    if let Some(error) = info.get("Error").and_then(|e| e.as_str()) {
        panic!("`go mod download` could not fetch {SPEC_MODULE}: {error}");
    }
    let dir = info
        .get("Dir")
        .and_then(|d| d.as_str())
        .unwrap_or_else(|| panic!("`go mod download -json` gave no Dir:\n{stdout}"));
    PathBuf::from(dir)
}

/// Compiles `csi.proto` found in `dir`; the google/protobuf imports are built into protox.
fn compile_dir(dir: &Path) -> DescriptorPool {
    let mut compiler = protox::Compiler::new([dir]).expect("protox include path");
    compiler
        .open_file(CSI_PROTO)
        .unwrap_or_else(|err| panic!("compile {}: {err:?}", dir.join(CSI_PROTO).display()));
    compiler.descriptor_pool()
}

/// Compiles `source` as `csi.proto` without touching the file system.
fn compile_source(source: String) -> DescriptorPool {
    struct Memory(String);
    impl FileResolver for Memory {
        fn open_file(&self, name: &str) -> Result<File, protox::Error> {
            if name == CSI_PROTO {
                File::from_source(name, &self.0)
            } else {
                Err(protox::Error::file_not_found(name))
            }
        }
    }
    let mut resolver = ChainFileResolver::new();
    resolver.add(Memory(source));
    resolver.add(GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler
        .open_file(CSI_PROTO)
        .expect("compile edited csi.proto");
    compiler.descriptor_pool()
}

/// The descriptor set this crate ships, custom options included.
fn our_pool() -> DescriptorPool {
    DescriptorPool::decode(CSI_FILE_DESCRIPTOR_SET).expect("decode CSI_FILE_DESCRIPTOR_SET")
}

fn pool_from_set(set: &prost_types::FileDescriptorSet) -> DescriptorPool {
    DescriptorPool::decode(set.encode_to_vec().as_slice()).expect("decode descriptor set")
}
