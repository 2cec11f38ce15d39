//! Layer store and OCI import, with tarballs generated here. Privileged: runs as root
//! (device nodes, ownership, trusted.* xattrs, overlayfs whiteouts) and fails loudly
//! otherwise.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use layer_store::{
    Compression, Error, ImageSelector, LayerInfo, LayerKey, LayerStore, Privilege, WhiteoutFormat,
};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

const T_ROOT: u64 = 1_500_000_000;
const T_DIR: u64 = 1_600_000_000;
const T_FILE: u64 = 1_650_000_000;
const T_LINK: u64 = 1_660_000_000;
const T_DEV_DIR: u64 = 1_670_000_000;

fn require_root() {
    // SAFETY: geteuid has no arguments, cannot fail and touches no memory of ours.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "layer_import tests need root (device nodes, ownership, trusted.* xattrs); run them as root"
    );
}

/// A store in its own temporary directory, removed on drop.
struct TestStore {
    dir: tempfile::TempDir,
    store: LayerStore,
}

impl TestStore {
    fn new() -> TestStore {
        TestStore::with(Privilege::Root)
    }

    fn with(privilege: Privilege) -> TestStore {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        let store = LayerStore::open_with(dir.path().join("store"), privilege).unwrap();
        TestStore { dir, store }
    }

    fn root(&self) -> &Path {
        self.store.root()
    }

    /// Names in the store root and in layers/, for "nothing new" checks.
    fn snapshot(&self) -> Vec<String> {
        let mut names = Vec::new();
        for dir in [self.root().to_owned(), self.root().join("layers")] {
            for e in fs::read_dir(&dir).unwrap() {
                let e = e.unwrap();
                names.push(format!(
                    "{}/{}",
                    dir.display(),
                    e.file_name().to_string_lossy()
                ));
            }
        }
        names.sort();
        names
    }

    fn layer_dir_count(&self) -> usize {
        fs::read_dir(self.root().join("layers"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_dir())
            .count()
    }

    /// Imports `tar`, expects it to fail, and checks that nothing was added.
    fn refuse(&self, tar: &[u8]) -> Error {
        let before = self.snapshot();
        let err = self
            .store
            .import_tar(tar)
            .expect_err("hostile layer was imported");
        assert_eq!(
            self.snapshot(),
            before,
            "a refused import left something behind ({err})"
        );
        err
    }
}

/// Builds a tar archive in memory.
struct TarBuilder(tar::Builder<Vec<u8>>);

fn header(kind: EntryType, mode: u32, uid: u64, gid: u64, mtime: u64) -> Header {
    let mut h = Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mtime(mtime);
    h.set_size(0);
    h
}

impl TarBuilder {
    fn new() -> TarBuilder {
        TarBuilder(tar::Builder::new(Vec::new()))
    }

    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        self.0
            .append_pax_extensions(records.iter().map(|(k, v)| (*k, *v)))
            .unwrap();
        self
    }

    fn dir(&mut self, path: &str, mode: u32, uid: u64, gid: u64, mtime: u64) -> &mut Self {
        let mut h = header(EntryType::Directory, mode, uid, gid, mtime);
        self.0.append_data(&mut h, path, io::empty()).unwrap();
        self
    }

    fn file(&mut self, path: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> &mut Self {
        let mut h = header(EntryType::Regular, mode, uid, gid, T_FILE);
        h.set_size(data.len() as u64);
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }

    fn symlink(&mut self, path: &str, target: &str, uid: u64) -> &mut Self {
        let mut h = header(EntryType::Symlink, 0o777, uid, uid, T_LINK);
        h.set_link_name_literal(target).unwrap();
        self.0.append_data(&mut h, path, io::empty()).unwrap();
        self
    }

    fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = header(EntryType::Link, 0o644, 0, 0, T_FILE);
        h.set_link_name_literal(target).unwrap();
        self.0.append_data(&mut h, path, io::empty()).unwrap();
        self
    }

    fn node(
        &mut self,
        path: &str,
        kind: EntryType,
        major: u32,
        minor: u32,
        mode: u32,
    ) -> &mut Self {
        let mut h = header(kind, mode, 0, 0, T_FILE);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.0.append_data(&mut h, path, io::empty()).unwrap();
        self
    }

    /// An entry whose name is written verbatim (the builder would refuse `..` or `/`).
    fn raw(&mut self, name: &[u8], kind: EntryType, link: Option<&[u8]>, data: &[u8]) -> &mut Self {
        let mut h = header(kind, 0o644, 0, 0, T_FILE);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        if let Some(link) = link {
            h.set_link_name_literal(link).unwrap();
        }
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn finish(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).unwrap()
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    xattr::get(path, name).unwrap()
}

fn lstat(path: &Path) -> fs::Metadata {
    fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn mode(m: &fs::Metadata) -> u32 {
    m.permissions().mode() & 0o7777
}

/// A layer with one entry of every type and metadata worth checking.
fn every_type_layer() -> Vec<u8> {
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(|i| (i % 251) as u8).collect();
    TarBuilder::new()
        .dir("./", 0o755, 0, 0, T_ROOT)
        .dir("etc", 0o750, 1000, 1001, T_DIR)
        .pax(&[
            ("SCHILY.xattr.user.comment", b"hello"),
            ("SCHILY.xattr.trusted.note", b"t"),
            ("SCHILY.xattr.trusted.overlay.redirect", b"/forged"),
            ("mtime", b"1700000000.25"),
        ])
        .file("etc/hosts", b"127.0.0.1 localhost\n", 0o640, 1000, 1001)
        .file("usr/bin/su", b"#!/bin/true\n", 0o4755, 0, 0)
        .file("big", &big, 0o644, 0, 0)
        .symlink("etc/link", "hosts", 1000)
        .symlink("etc/shadow-link", "/etc/shadow", 0)
        .hardlink("etc/hard", "etc/hosts")
        .node("dev/null", EntryType::Char, 1, 3, 0o666)
        .node("dev/loop9", EntryType::Block, 7, 9, 0o660)
        .dir("dev", 0o711, 0, 0, T_DEV_DIR)
        .node("run/fifo", EntryType::Fifo, 0, 0, 0o620)
        .finish()
}

#[test]
fn every_entry_type_is_extracted_with_its_metadata() {
    let s = TestStore::new();
    let tar = every_type_layer();
    let layer = s.store.import_tar(&tar[..]).unwrap();

    assert_eq!(layer.key.as_str(), blake3::hash(&tar).to_hex().as_str());
    assert_eq!(layer.diff_id, sha256(&tar));
    assert_eq!(
        layer.oci_digest, layer.diff_id,
        "a plain tar is its own blob"
    );
    assert_eq!(layer.compression, Compression::None);
    assert_eq!(
        (layer.size, layer.compressed_size),
        (tar.len() as u64, tar.len() as u64)
    );
    assert_eq!(layer.entries, 12);
    assert!(!layer.deduplicated);

    let root = s.store.path(&layer.key);
    let m = lstat(&root);
    assert_eq!((mode(&m), m.mtime()), (0o755, T_ROOT as i64));

    let etc = lstat(&root.join("etc"));
    assert!(etc.is_dir());
    assert_eq!((mode(&etc), etc.uid(), etc.gid()), (0o750, 1000, 1001));
    assert_eq!(
        etc.mtime(),
        T_DIR as i64,
        "directory mtime set after its children"
    );

    let hosts = root.join("etc/hosts");
    let m = lstat(&hosts);
    assert_eq!(fs::read(&hosts).unwrap(), b"127.0.0.1 localhost\n");
    assert_eq!((mode(&m), m.uid(), m.gid()), (0o640, 1000, 1001));
    assert_eq!(
        (m.mtime(), m.mtime_nsec()),
        (1_700_000_000, 250_000_000),
        "PAX mtime"
    );
    assert_eq!(
        xattr(&hosts, "user.comment").as_deref(),
        Some(&b"hello"[..])
    );
    assert_eq!(xattr(&hosts, "trusted.note").as_deref(), Some(&b"t"[..]));
    assert_eq!(
        xattr(&hosts, "trusted.overlay.redirect"),
        None,
        "overlay xattrs are not taken from a layer"
    );
    assert_eq!(m.nlink(), 2);

    let hard = lstat(&root.join("etc/hard"));
    assert_eq!((hard.ino(), hard.dev()), (m.ino(), m.dev()));

    let su = lstat(&root.join("usr/bin/su"));
    assert_eq!(mode(&su), 0o4755, "set-uid bit survives chown");
    let implicit = lstat(&root.join("usr"));
    assert_eq!(mode(&implicit), 0o755, "implicit parent directory");

    let big = fs::read(root.join("big")).unwrap();
    assert_eq!(big.len(), 3 * 1024 * 1024 + 17);
    assert!(big.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));

    let link = root.join("etc/link");
    let m = lstat(&link);
    assert!(m.file_type().is_symlink());
    assert_eq!(fs::read_link(&link).unwrap(), Path::new("hosts"));
    assert_eq!((m.uid(), m.mtime()), (1000, T_LINK as i64));
    assert_eq!(
        fs::read_link(root.join("etc/shadow-link")).unwrap(),
        Path::new("/etc/shadow"),
        "an absolute symlink target is stored as is"
    );

    let null = lstat(&root.join("dev/null"));
    assert!(null.file_type().is_char_device());
    assert_eq!((null.rdev(), mode(&null)), (libc::makedev(1, 3), 0o666));
    let loop9 = lstat(&root.join("dev/loop9"));
    assert!(loop9.file_type().is_block_device());
    assert_eq!((loop9.rdev(), mode(&loop9)), (libc::makedev(7, 9), 0o660));
    let dev = lstat(&root.join("dev"));
    assert_eq!(
        (mode(&dev), dev.mtime()),
        (0o711, T_DEV_DIR as i64),
        "directory entry after its children"
    );

    let fifo = lstat(&root.join("run/fifo"));
    assert!(fifo.file_type().is_fifo());
    assert_eq!(mode(&fifo), 0o620);

    let info = s.store.get(&layer.key).unwrap().expect("metadata");
    assert_eq!(info.diff_id, layer.diff_id);
    assert_eq!(info.oci_digest(), layer.oci_digest);
    assert_eq!((info.size, info.entries), (tar.len() as u64, 12));
    assert_eq!(info.privilege, Privilege::Root);
    assert_eq!(info.whiteouts, WhiteoutFormat::CharDevice);
    assert_eq!(info.skipped_xattrs, 1, "the forged overlay xattr");
    assert_eq!(info.skipped_devices, 0);
    // The metadata file is the documented JSON.
    let json: serde_json::Value = serde_json::from_slice(
        &fs::read(s.root().join(format!("layers/{}.json", layer.key))).unwrap(),
    )
    .unwrap();
    assert_eq!(json["key"], layer.key.as_str());
    assert_eq!(json["diff_id"], layer.diff_id);
    assert_eq!(json["blobs"][0]["digest"], layer.oci_digest);
    assert_eq!(json["blobs"][0]["compression"], "none");
    assert_eq!(json["whiteouts"], "char-device");
    assert!(json["imported_at"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(s.store.list().unwrap(), vec![info]);
    assert!(!s.snapshot().iter().any(|n| n.contains("tmp-")));
}

#[test]
fn oci_whiteouts_become_overlayfs_whiteouts_as_root() {
    let s = TestStore::new();
    let tar = TarBuilder::new()
        .dir("a", 0o755, 0, 0, T_DIR)
        .file("a/.wh.b", b"", 0o644, 0, 0)
        .file("c/keep", b"x", 0o644, 0, 0)
        .file("c/.wh..wh..opq", b"", 0o644, 0, 0)
        .file(".wh.top", b"", 0o644, 0, 0)
        // A whiteout of a name this layer has is ignored (it hides lower layers only).
        .file("d/x", b"mine", 0o644, 0, 0)
        .file("d/.wh.x", b"", 0o644, 0, 0)
        // An entry after a whiteout of its name replaces it; a directory becomes opaque.
        .file(".wh.e", b"", 0o644, 0, 0)
        .dir("e", 0o755, 0, 0, T_DIR)
        .file(".wh.f", b"", 0o644, 0, 0)
        .file("f/inner", b"i", 0o644, 0, 0)
        .finish();
    let layer = s.store.import_tar(&tar[..]).unwrap();
    let root = s.store.path(&layer.key);
    let is_whiteout = |p: &str| {
        let m = lstat(&root.join(p));
        m.file_type().is_char_device() && m.rdev() == 0
    };
    assert!(is_whiteout("a/b"));
    assert!(is_whiteout("top"));
    assert!(!root.join("a/.wh.b").exists() && !root.join(".wh.top").exists());
    assert_eq!(
        xattr(&root.join("c"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!root.join("c/.wh..wh..opq").exists());
    assert_eq!(fs::read(root.join("c/keep")).unwrap(), b"x");
    assert_eq!(fs::read(root.join("d/x")).unwrap(), b"mine");
    assert!(!root.join("d/.wh.x").exists());
    for dir in ["e", "f"] {
        assert!(lstat(&root.join(dir)).is_dir(), "{dir}");
        assert_eq!(
            xattr(&root.join(dir), "trusted.overlay.opaque").as_deref(),
            Some(&b"y"[..]),
            "{dir}"
        );
    }
    assert_eq!(fs::read(root.join("f/inner")).unwrap(), b"i");
    assert_eq!(xattr(&root.join("a"), "trusted.overlay.opaque"), None);
}

#[test]
fn unprivileged_import_keeps_oci_whiteouts_and_skips_what_needs_root() {
    let s = TestStore::with(Privilege::Unprivileged);
    let tar = TarBuilder::new()
        .file("a/.wh.b", b"", 0o644, 0, 0)
        .file("c/.wh..wh..opq", b"", 0o644, 0, 0)
        .pax(&[
            ("SCHILY.xattr.user.comment", b"hello"),
            ("SCHILY.xattr.trusted.note", b"t"),
            ("SCHILY.xattr.security.x", b"s"),
            ("SCHILY.xattr.user.overlay.opaque", b"y"),
        ])
        .file("owned", b"o", 0o600, 1000, 1001)
        .node("dev/null", EntryType::Char, 1, 3, 0o666)
        .node("dev/sda", EntryType::Block, 8, 0, 0o660)
        .hardlink("dev/null2", "dev/null")
        .node("fifo", EntryType::Fifo, 0, 0, 0o600)
        .finish();
    let layer = s.store.import_tar(&tar[..]).unwrap();
    let root = s.store.path(&layer.key);
    let wh = lstat(&root.join("a/.wh.b"));
    assert!(wh.is_file() && wh.len() == 0, "the .wh. file form is kept");
    assert!(!root.join("a/b").exists());
    assert_eq!(
        xattr(&root.join("c"), "user.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(xattr(&root.join("c"), "trusted.overlay.opaque"), None);
    let owned = root.join("owned");
    assert_eq!(
        lstat(&owned).uid(),
        0,
        "owner not applied: files belong to the importer"
    );
    assert_eq!(
        xattr(&owned, "user.comment").as_deref(),
        Some(&b"hello"[..])
    );
    assert_eq!(xattr(&owned, "trusted.note"), None);
    assert_eq!(xattr(&owned, "user.overlay.opaque"), None);
    assert!(!root.join("dev/null").exists() && !root.join("dev/sda").exists());
    assert!(
        lstat(&root.join("fifo")).file_type().is_fifo(),
        "fifos need no privilege"
    );

    let info = s.store.get(&layer.key).unwrap().unwrap();
    assert_eq!(info.privilege, Privilege::Unprivileged);
    assert_eq!(info.whiteouts, WhiteoutFormat::WhFile);
    assert_eq!(info.opaque_xattr, "user.overlay.opaque");
    assert_eq!((info.skipped_devices, info.skipped_xattrs), (3, 3));
}

#[test]
fn later_entries_replace_earlier_ones() {
    let s = TestStore::new();
    let tar = TarBuilder::new()
        .file("x", b"file first", 0o644, 0, 0)
        .dir("x", 0o701, 0, 0, T_DIR)
        .file("x/in", b"in", 0o644, 0, 0)
        .dir("y", 0o755, 0, 0, T_DIR)
        .file("y", b"file second", 0o600, 0, 0)
        .symlink("z", "/etc", 0)
        .file("z", b"no longer a link", 0o644, 0, 0)
        .dir("w", 0o700, 0, 0, T_DIR)
        .dir("w", 0o750, 0, 0, T_ROOT)
        .finish();
    let layer = s.store.import_tar(&tar[..]).unwrap();
    let root = s.store.path(&layer.key);
    let x = lstat(&root.join("x"));
    assert!(x.is_dir() && mode(&x) == 0o701);
    assert_eq!(fs::read(root.join("x/in")).unwrap(), b"in");
    let y = lstat(&root.join("y"));
    assert!(y.is_file() && mode(&y) == 0o600);
    assert_eq!(fs::read(root.join("y")).unwrap(), b"file second");
    assert!(lstat(&root.join("z")).is_file());
    let w = lstat(&root.join("w"));
    assert_eq!(
        (mode(&w), w.mtime()),
        (0o750, T_ROOT as i64),
        "the later entry wins"
    );

    let err = s.refuse(
        &TarBuilder::new()
            .file("full/child", b"c", 0o644, 0, 0)
            .file("full", b"f", 0o644, 0, 0)
            .finish(),
    );
    assert!(
        matches!(
            err,
            Error::InvalidEntry {
                reason: "replaces a non-empty directory",
                ..
            }
        ),
        "{err}"
    );
}

fn small_layer(tag: &str) -> Vec<u8> {
    TarBuilder::new()
        .dir("data", 0o755, 0, 0, T_DIR)
        .file("data/tag", tag.as_bytes(), 0o644, 0, 0)
        .file("data/.wh.gone", b"", 0o644, 0, 0)
        .finish()
}

#[test]
fn gzip_and_zstd_blobs_of_one_tar_are_one_layer() {
    let s = TestStore::new();
    let tar = small_layer("compressed");
    let plain = s.store.import_tar(&tar[..]).unwrap();
    let gz = gzip(&tar);
    let gzl = s.store.import_tar(&gz[..]).unwrap();
    let zs = zstd(&tar);
    let zsl = s.store.import_tar(&zs[..]).unwrap();

    assert_eq!(
        (gzl.compression, zsl.compression),
        (Compression::Gzip, Compression::Zstd)
    );
    assert_eq!(
        (gzl.oci_digest.clone(), gzl.compressed_size),
        (sha256(&gz), gz.len() as u64)
    );
    assert_eq!(
        (zsl.oci_digest.clone(), zsl.compressed_size),
        (sha256(&zs), zs.len() as u64)
    );
    for l in [&gzl, &zsl] {
        assert_eq!(l.key, plain.key);
        assert_eq!(l.diff_id, sha256(&tar));
        assert_eq!(l.size, tar.len() as u64);
        assert!(l.deduplicated);
    }
    assert_eq!(s.layer_dir_count(), 1);
    let info = s.store.get(&plain.key).unwrap().unwrap();
    let digests: Vec<_> = info.blobs.iter().map(|b| b.digest.clone()).collect();
    assert_eq!(digests, vec![sha256(&tar), sha256(&gz), sha256(&zs)]);
    assert_eq!(s.store.find(&sha256(&zs)).unwrap().unwrap().key, plain.key);
    assert_eq!(s.store.find(&sha256(&tar)).unwrap().unwrap().key, plain.key);
    assert_eq!(
        s.store.find(&plain.key.to_digest()).unwrap().unwrap().key,
        plain.key
    );
    assert_eq!(s.store.find(&sha256(b"other")).unwrap(), None);
    assert_eq!(
        fs::read(s.store.path(&plain.key).join("data/tag")).unwrap(),
        b"compressed"
    );
}

#[test]
fn an_identical_layer_is_stored_once() {
    let s = TestStore::new();
    let tar = small_layer("same");
    let first = s.store.import_tar(&tar[..]).unwrap();
    let file = s.store.path(&first.key).join("data/tag");
    let ino = lstat(&file).ino();
    let second = s.store.import_tar(&tar[..]).unwrap();
    assert_eq!(second.key, first.key);
    assert!(!first.deduplicated && second.deduplicated);
    assert_eq!(lstat(&file).ino(), ino, "the stored copy is untouched");
    assert_eq!(s.layer_dir_count(), 1);
    let info = s.store.get(&first.key).unwrap().unwrap();
    assert_eq!(info.blobs.len(), 1, "the same blob is recorded once");
    let names = s.snapshot();
    assert_eq!(names.len(), 4, "{names:?}"); // .lock, layers, layers/<key>, layers/<key>.json

    let other = s.store.import_tar(&small_layer("other")[..]).unwrap();
    assert_ne!(other.key, first.key);
    assert_eq!(s.layer_dir_count(), 2);
}

/// An OCI image layout written by the test.
struct Layout {
    dir: tempfile::TempDir,
}

struct Blob {
    digest: String,
    size: u64,
}

impl Layout {
    fn new() -> Layout {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        fs::write(
            dir.path().join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        Layout { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn blob(&self, bytes: &[u8]) -> Blob {
        let digest = sha256(bytes);
        let hex = digest.strip_prefix("sha256:").unwrap();
        fs::write(self.path().join("blobs/sha256").join(hex), bytes).unwrap();
        Blob {
            digest,
            size: bytes.len() as u64,
        }
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.path()
            .join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap())
    }

    /// Writes config + manifest for `layers` (blob bytes, media type, diff_id tar) and
    /// returns the manifest's descriptor JSON.
    fn image(
        &self,
        layers: &[(&[u8], &str, &[u8])],
        arch: &str,
        reference: &str,
    ) -> serde_json::Value {
        let config = serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|(_, _, tar)| sha256(tar)).collect::<Vec<_>>(),
            },
        });
        let config = self.blob(&serde_json::to_vec(&config).unwrap());
        let layer_descs: Vec<_> = layers
            .iter()
            .map(|(blob, media_type, _)| {
                let b = self.blob(blob);
                serde_json::json!({"mediaType": media_type, "digest": b.digest, "size": b.size})
            })
            .collect();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config.digest,
                "size": config.size,
            },
            "layers": layer_descs,
        });
        let m = self.blob(&serde_json::to_vec(&manifest).unwrap());
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": m.digest,
            "size": m.size,
            "annotations": {"org.opencontainers.image.ref.name": reference},
            "platform": {"architecture": arch, "os": "linux"},
        })
    }

    fn index(&self, manifests: Vec<serde_json::Value>) {
        let index = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
        fs::write(
            self.path().join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    }
}

const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const PLAIN_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

#[test]
fn an_oci_image_layout_imports_its_layers_in_order() {
    let s = TestStore::new();
    let base = TarBuilder::new()
        .file("etc/os-release", b"ID=test\n", 0o644, 0, 0)
        .file("bin/sh", b"sh", 0o755, 0, 0)
        .finish();
    let top = TarBuilder::new()
        .file("etc/.wh.os-release", b"", 0o644, 0, 0)
        .file("app/run", b"run", 0o755, 0, 0)
        .finish();
    let other = small_layer("arm");
    let layout = Layout::new();
    let amd64 = layout.image(
        &[
            (&gzip(&base), GZIP_LAYER, &base),
            (&zstd(&top), ZSTD_LAYER, &top),
        ],
        "amd64",
        "v1",
    );
    let arm64 = layout.image(&[(&other, PLAIN_LAYER, &other)], "arm64", "v2");
    layout.index(vec![amd64, arm64]);

    let layers = s.store.import_oci_layout(layout.path()).unwrap();
    assert_eq!(layers.len(), 2);
    assert_eq!(
        layers[0].key.as_str(),
        blake3::hash(&base).to_hex().as_str()
    );
    assert_eq!(layers[1].key.as_str(), blake3::hash(&top).to_hex().as_str());
    assert_eq!(layers[0].diff_id, sha256(&base));
    assert_eq!(layers[1].oci_digest, sha256(&zstd(&top)));
    assert_eq!(
        fs::read(s.store.path(&layers[0].key).join("bin/sh")).unwrap(),
        b"sh"
    );
    assert!(
        lstat(&s.store.path(&layers[1].key).join("etc/os-release"))
            .file_type()
            .is_char_device()
    );

    let by_tag = ImageSelector {
        reference: Some("v2".into()),
        ..Default::default()
    };
    let arm = s
        .store
        .import_oci_layout_with(layout.path(), &by_tag)
        .unwrap();
    assert_eq!(arm.len(), 1);
    assert_eq!(arm[0].key.as_str(), blake3::hash(&other).to_hex().as_str());
    let by_arch = ImageSelector {
        architecture: Some("arm64".into()),
        ..Default::default()
    };
    assert_eq!(
        s.store
            .import_oci_layout_with(layout.path(), &by_arch)
            .unwrap()[0]
            .key,
        arm[0].key
    );
    assert!(
        s.store
            .import_oci_layout_with(layout.path(), &by_arch)
            .unwrap()[0]
            .deduplicated
    );

    // Importing again adds nothing.
    let before = s.snapshot();
    let again = s.store.import_oci_layout(layout.path()).unwrap();
    assert!(again.iter().all(|l| l.deduplicated));
    assert_eq!(s.snapshot(), before);

    let none = ImageSelector {
        os: Some("windows".into()),
        ..Default::default()
    };
    assert!(matches!(
        s.store.import_oci_layout_with(layout.path(), &none),
        Err(Error::NoMatchingManifest { .. })
    ));
}

#[test]
fn an_oci_layout_with_a_corrupt_blob_is_refused_and_adds_nothing() {
    let s = TestStore::new();
    let good = small_layer("good");
    let bad = small_layer("bad");
    let bad_gz = gzip(&bad);
    let layout = Layout::new();
    let image = layout.image(
        &[(&good, PLAIN_LAYER, &good), (&bad_gz, GZIP_LAYER, &bad)],
        "amd64",
        "v1",
    );
    layout.index(vec![image]);
    // Flip one byte of the second layer's blob: same size, other digest.
    let path = layout.blob_path(&sha256(&bad_gz));
    let mut bytes = fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&path, &bytes).unwrap();

    let before = s.snapshot();
    let err = s.store.import_oci_layout(layout.path()).unwrap_err();
    assert!(
        matches!(err, Error::DigestMismatch { what: "blob digest", ref expected, .. } if *expected == sha256(&bad_gz)),
        "{err}"
    );
    assert_eq!(
        s.snapshot(),
        before,
        "the good first layer is not imported either"
    );

    // A config whose diff_id does not match the uncompressed layer.
    let layout = Layout::new();
    let lying = layout.image(&[(&gzip(&good), GZIP_LAYER, b"not the tar")], "amd64", "v1");
    layout.index(vec![lying]);
    let err = s.store.import_oci_layout(layout.path()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::DigestMismatch {
                what: "diff_id",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(s.snapshot(), before);

    // Not a layout at all.
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        s.store.import_oci_layout(empty.path()),
        Err(Error::Layout { .. })
    ));
}

/// A layer that starts well, so the failure comes after some extraction.
fn benign_prefix() -> TarBuilder {
    let mut t = TarBuilder::new();
    t.dir("ok", 0o555, 0, 0, T_DIR)
        .file("ok/file", b"fine", 0o444, 0, 0)
        .file("ok2/file", b"fine", 0o644, 0, 0);
    t
}

#[test]
fn parent_directory_components_are_refused() {
    let s = TestStore::new();
    let err = s.refuse(
        &benign_prefix()
            .raw(b"../evil", EntryType::Regular, None, b"x")
            .finish(),
    );
    assert!(
        matches!(
            err,
            Error::UnsafePath {
                reason: "`..` component",
                ..
            }
        ),
        "{err}"
    );
    assert!(!s.dir.path().join("evil").exists() && !s.root().join("evil").exists());
    let err = s.refuse(
        &benign_prefix()
            .raw(b"ok/../../x", EntryType::Regular, None, b"x")
            .finish(),
    );
    assert!(matches!(err, Error::UnsafePath { .. }), "{err}");
}

#[test]
fn absolute_paths_are_refused() {
    let s = TestStore::new();
    let err = s.refuse(
        &benign_prefix()
            .raw(b"/abs", EntryType::Regular, None, b"x")
            .finish(),
    );
    assert!(
        matches!(
            err,
            Error::UnsafePath {
                reason: "absolute path",
                ..
            }
        ),
        "{err}"
    );
    assert!(!Path::new("/abs").exists());
}

#[test]
fn writing_through_an_extracted_symlink_is_refused() {
    let s = TestStore::new();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_str().unwrap();
    let err = s.refuse(
        &benign_prefix()
            .symlink("a", target, 0)
            .file("a/passwd", b"root::0:0::/:/bin/sh\n", 0o644, 0, 0)
            .finish(),
    );
    assert!(matches!(err, Error::ThroughSymlink { .. }), "{err}");
    assert!(!outside.path().join("passwd").exists());

    // Relative escapes and directories through a symlink fail the same way.
    let err = s.refuse(
        &benign_prefix()
            .symlink("up", "../../../..", 0)
            .dir("up/x", 0o755, 0, 0, T_DIR)
            .finish(),
    );
    assert!(matches!(err, Error::ThroughSymlink { .. }), "{err}");
    let err = s.refuse(
        &benign_prefix()
            .symlink("d", "ok", 0)
            .file("d/deep/er", b"x", 0o644, 0, 0)
            .finish(),
    );
    assert!(matches!(err, Error::ThroughSymlink { .. }), "{err}");
}

#[test]
fn hard_links_outside_or_to_absent_entries_are_refused() {
    let s = TestStore::new();
    for (target, reason) in [
        (&b"../../etc/passwd"[..], "`..` component"),
        (b"/etc/passwd", "absolute path"),
        (
            b"absent",
            "target is not an earlier non-directory entry of this layer",
        ),
        (
            b"ok",
            "target is not an earlier non-directory entry of this layer",
        ),
    ] {
        let err = s.refuse(
            &benign_prefix()
                .raw(b"link", EntryType::Link, Some(target), b"")
                .finish(),
        );
        assert!(
            matches!(err, Error::HardLink { reason: r, .. } if r == reason),
            "{target:?}: {err}"
        );
    }
    // Through a symlink to the host: a/passwd is not an entry of this layer.
    let err = s.refuse(
        &benign_prefix()
            .symlink("a", "/etc", 0)
            .hardlink("h", "a/passwd")
            .finish(),
    );
    assert!(matches!(err, Error::HardLink { .. }), "{err}");
    // A link that comes before its target.
    let err = s.refuse(
        &TarBuilder::new()
            .hardlink("early", "later")
            .file("later", b"x", 0o644, 0, 0)
            .finish(),
    );
    assert!(matches!(err, Error::HardLink { .. }), "{err}");
}

#[test]
fn oversize_names_and_bad_whiteouts_are_refused() {
    let s = TestStore::new();
    let long = "n".repeat(256);
    let err = s.refuse(
        &benign_prefix()
            .pax(&[("path", long.as_bytes())])
            .file("short", b"x", 0o644, 0, 0)
            .finish(),
    );
    assert!(
        matches!(
            err,
            Error::UnsafePath {
                reason: "name too long",
                ..
            }
        ),
        "{err}"
    );
    let err = s.refuse(&benign_prefix().file(".wh.x/y", b"", 0o644, 0, 0).finish());
    assert!(matches!(err, Error::UnsafePath { .. }), "{err}");
    let err = s.refuse(
        &benign_prefix()
            .file("d/.wh..wh.x", b"", 0o644, 0, 0)
            .finish(),
    );
    assert!(matches!(err, Error::InvalidEntry { .. }), "{err}");
}

#[test]
fn a_broken_stream_leaves_nothing() {
    let s = TestStore::new();
    let tar = every_type_layer();
    // Truncated in the middle of the big file.
    let err = s.refuse(&tar[..tar.len() / 2]);
    assert!(matches!(err, Error::Read(_)), "{err}");
    // Truncated compressed stream.
    let gz = gzip(&tar);
    let err = s.refuse(&gz[..gz.len() - 100]);
    assert!(matches!(err, Error::Read(_)), "{err}");
    // A reader that fails part-way.
    struct Failing<'a>(&'a [u8]);
    impl Read for Failing<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::Error::other("connection reset"));
            }
            let n = buf.len().min(self.0.len()).min(4096);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let before = s.snapshot();
    let err = s
        .store
        .import_tar(Failing(&tar[..tar.len() - 2048]))
        .unwrap_err();
    assert!(matches!(err, Error::Read(_)), "{err}");
    assert_eq!(s.snapshot(), before);
}

#[test]
fn open_removes_interrupted_work_and_locks_the_store() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let key = {
        let store = LayerStore::open(&root).unwrap();
        assert!(matches!(LayerStore::open(&root), Err(Error::Locked { .. })));
        store.import_tar(&small_layer("kept")[..]).unwrap().key
    };
    // What a killed import and a half-committed layer leave.
    fs::create_dir_all(root.join("tmp-123-0/deep/er")).unwrap();
    fs::write(root.join("tmp-123-0/deep/er/f"), b"x").unwrap();
    fs::set_permissions(
        root.join("tmp-123-0/deep"),
        fs::Permissions::from_mode(0o500),
    )
    .unwrap();
    fs::write(root.join("tmp-123-1.json"), b"{").unwrap();
    let orphan_tree = root.join("layers").join("b".repeat(64));
    fs::create_dir_all(orphan_tree.join("x")).unwrap();
    let orphan_meta = root.join("layers").join(format!("{}.json", "c".repeat(64)));
    fs::write(&orphan_meta, b"{}").unwrap();

    let store = LayerStore::open(&root).unwrap();
    assert!(!root.join("tmp-123-0").exists());
    assert!(!root.join("tmp-123-1.json").exists());
    assert!(!orphan_tree.exists() && !orphan_meta.exists());
    let listed: Vec<LayerKey> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|l: LayerInfo| l.key)
        .collect();
    assert_eq!(listed, vec![key.clone()]);
    assert_eq!(
        fs::read(store.path(&key).join("data/tag")).unwrap(),
        b"kept"
    );
    assert_eq!(mode(&lstat(&root)), 0o700);
}

#[test]
fn remove_deletes_tree_and_metadata() {
    let s = TestStore::new();
    let layer = s.store.import_tar(&benign_prefix().finish()[..]).unwrap();
    let path = s.store.path(&layer.key);
    assert!(path.is_dir());
    assert!(s.store.remove(&layer.key).unwrap());
    assert!(!path.exists());
    assert_eq!(s.store.get(&layer.key).unwrap(), None);
    assert!(s.store.list().unwrap().is_empty());
    assert!(
        !s.store.remove(&layer.key).unwrap(),
        "removing again is not an error"
    );
    assert_eq!(s.snapshot().len(), 2, "{:?}", s.snapshot()); // .lock, layers
    // It can come back.
    let again = s.store.import_tar(&benign_prefix().finish()[..]).unwrap();
    assert!(!again.deduplicated);
    assert_eq!(fs::read(path.join("ok/file")).unwrap(), b"fine");
}

#[test]
fn layer_keys_never_become_paths_unchecked() {
    for bad in ["../x", "", "ABC", "blake3:xyz"] {
        assert!(
            matches!(bad.parse::<LayerKey>(), Err(Error::InvalidKey(_))),
            "{bad}"
        );
    }
}
