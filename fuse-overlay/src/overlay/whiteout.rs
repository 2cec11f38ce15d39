//! The on-disk formats that hide lower entries: whiteouts and opaque directories.
//!
//! Both forms kernel overlayfs writes are understood, and so are the OCI/aufs forms
//! image layers carry:
//!
//! | meaning | kernel form (written as root) | OCI form (read; written when unprivileged) |
//! |---|---|---|
//! | `NAME` deleted | character device 0/0 named `NAME` | empty file `.wh.NAME` |
//! | directory opaque | xattr `trusted.overlay.opaque` = `y` (`user.overlay.opaque` unprivileged) | file `.wh..wh..opq` inside it |
//!
//! Names beginning with `.wh.` are never shown in the merged view.

use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::sys;

/// Prefix of OCI whiteout names.
pub const WH_PREFIX: &[u8] = b".wh.";
/// Name of the OCI opaque-directory marker.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Opaque xattr written as root (and read by kernel overlayfs).
pub const OPAQUE_XATTR_TRUSTED: &str = "trusted.overlay.opaque";
/// Opaque xattr written unprivileged (kernel overlayfs with `userxattr`).
pub const OPAQUE_XATTR_USER: &str = "user.overlay.opaque";

/// Whether a name belongs to the whiteout namespace (`.wh.*`) and is never shown.
pub fn is_wh_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(WH_PREFIX)
}

/// `.wh.NAME`.
pub fn wh_name(name: &OsStr) -> OsString {
    let mut v = WH_PREFIX.to_vec();
    v.extend_from_slice(name.as_bytes());
    OsString::from_vec(v)
}

/// Whether metadata describes a kernel-style whiteout (character device 0/0).
pub fn is_whiteout(md: &Metadata) -> bool {
    md.file_type().is_char_device() && md.rdev() == 0
}

/// Prefix of the overlay's own xattrs: `trusted.overlay.` when privileged (what
/// kernel overlayfs uses), `user.overlay.` otherwise (kernel overlayfs `userxattr`).
pub fn private_prefix(privileged: bool) -> &'static [u8] {
    if privileged {
        b"trusted.overlay."
    } else {
        b"user.overlay."
    }
}

fn join(a: &[u8], b: &[u8]) -> OsString {
    let mut v = a.to_vec();
    v.extend_from_slice(b);
    OsString::from_vec(v)
}

/// The name under which an xattr the caller names is stored in a layer. The overlay's
/// own namespace is escaped, as kernel overlayfs does for nested overlays:
/// `trusted.overlay.X` is stored as `trusted.overlay.overlay.X`.
pub fn xattr_to_layer(name: &OsStr, privileged: bool) -> OsString {
    let prefix = private_prefix(privileged);
    match name.as_bytes().strip_prefix(prefix) {
        Some(rest) => join(prefix, &join(b"overlay.", rest).into_vec()),
        None => name.to_os_string(),
    }
}

/// The name a layer's xattr shows under in the overlay, or `None` for the overlay's own
/// (opaque markers and the like), which stay hidden.
pub fn xattr_from_layer(name: &OsStr, privileged: bool) -> Option<OsString> {
    let prefix = private_prefix(privileged);
    match name.as_bytes().strip_prefix(prefix) {
        Some(rest) => rest
            .strip_prefix(b"overlay.".as_slice())
            .map(|escaped| join(prefix, escaped)),
        None => Some(name.to_os_string()),
    }
}

/// Whether the directory at `path` is opaque (hides everything below it).
pub fn is_opaque_dir(path: &Path) -> bool {
    for name in [OPAQUE_XATTR_TRUSTED, OPAQUE_XATTR_USER] {
        if let Ok(v) = sys::lgetxattr(path, OsStr::new(name))
            && v == b"y"
        {
            return true;
        }
    }
    std::fs::symlink_metadata(path.join(OPAQUE_MARKER)).is_ok()
}

/// Whether `dir` hides `name` through an OCI `.wh.NAME` file.
pub fn has_wh_file(dir: &Path, name: &OsStr) -> bool {
    std::fs::symlink_metadata(dir.join(wh_name(name))).is_ok()
}

/// Creates a whiteout for `name` in `dir`: a 0/0 character device when privileged,
/// else (or when mknod is refused) an OCI `.wh.NAME` file.
pub fn make_whiteout(dir: &Path, name: &OsStr, privileged: bool) -> io::Result<()> {
    if privileged {
        match nix::sys::stat::mknod(
            &dir.join(name),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        ) {
            Ok(()) => return Ok(()),
            Err(nix::errno::Errno::EPERM) => {}
            Err(e) => return Err(e.into()),
        }
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dir.join(wh_name(name)))
        .map(drop)
}

/// Removes any whiteout for `name` in the upper directory `dir`; returns whether there
/// was one.
pub fn remove_whiteout(dir: &Path, name: &OsStr) -> io::Result<bool> {
    let mut removed = false;
    let path = dir.join(name);
    if let Ok(md) = std::fs::symlink_metadata(&path)
        && is_whiteout(&md)
    {
        std::fs::remove_file(&path)?;
        removed = true;
    }
    let wh = dir.join(wh_name(name));
    match std::fs::remove_file(&wh) {
        Ok(()) => removed = true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(removed)
}

/// Marks the upper directory at `path` opaque.
pub fn make_opaque(path: &Path, privileged: bool) -> io::Result<()> {
    let name = if privileged {
        OPAQUE_XATTR_TRUSTED
    } else {
        OPAQUE_XATTR_USER
    };
    match sys::lsetxattr(path, OsStr::new(name), b"y", 0) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EPERM)) => {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(path.join(OPAQUE_MARKER))
                .map(drop)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_wh_name(OsStr::new(".wh.foo")));
        assert!(is_wh_name(OsStr::new(OPAQUE_MARKER)));
        assert!(!is_wh_name(OsStr::new(".whfoo")));
        assert_eq!(wh_name(OsStr::new("a b")), OsString::from(".wh.a b"));
        let t = |s: &str| OsStr::new(s).to_os_string();
        assert_eq!(
            xattr_to_layer(OsStr::new("trusted.overlay.opaque"), true),
            t("trusted.overlay.overlay.opaque")
        );
        assert_eq!(xattr_to_layer(OsStr::new("user.x"), true), t("user.x"));
        assert_eq!(
            xattr_from_layer(OsStr::new("trusted.overlay.opaque"), true),
            None
        );
        assert_eq!(
            xattr_from_layer(OsStr::new("trusted.overlay.overlay.opaque"), true),
            Some(t("trusted.overlay.opaque"))
        );
        assert_eq!(
            xattr_from_layer(OsStr::new("user.overlay.origin"), true),
            Some(t("user.overlay.origin"))
        );
        assert_eq!(
            xattr_from_layer(OsStr::new("user.overlay.origin"), false),
            None
        );
        assert_eq!(
            xattr_from_layer(OsStr::new("security.capability"), false),
            Some(t("security.capability"))
        );
    }

    #[test]
    fn oci_whiteout_and_marker_unprivileged_forms() {
        let dir = tempfile::tempdir().unwrap();
        make_whiteout(dir.path(), OsStr::new("gone"), false).unwrap();
        assert!(has_wh_file(dir.path(), OsStr::new("gone")));
        assert!(remove_whiteout(dir.path(), OsStr::new("gone")).unwrap());
        assert!(!has_wh_file(dir.path(), OsStr::new("gone")));
        assert!(!remove_whiteout(dir.path(), OsStr::new("gone")).unwrap());
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        assert!(!is_opaque_dir(&sub));
        std::fs::write(sub.join(OPAQUE_MARKER), b"").unwrap();
        assert!(is_opaque_dir(&sub));
    }
}
