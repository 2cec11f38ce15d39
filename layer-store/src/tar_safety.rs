//! Which tar paths are acceptable, and what their names mean.
//!
//! The rule: an entry path is a *relative* path made of normal components. Empty
//! components (`a//b`, a trailing `/`) and `.` components (the usual `./` prefix) are
//! dropped; `..` anywhere and any absolute path (`/etc/passwd`) are refused — layers
//! produced by container tools never contain them, so seeing one means a broken or
//! hostile archive, and refusing is safer than guessing (stripping a leading `/` is
//! what GNU tar does, but it silently turns an attack into a plausible file). A path
//! that is empty after dropping `.` (`.` or `./`) names the layer's root directory.
//! Each component is at most [`NAME_MAX`] bytes and the whole path at most
//! [`PATH_MAX`] bytes; NUL bytes are refused.
//!
//! Names starting with `.wh.` are OCI whiteouts and may only be the last component.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

/// Longest file name component Linux accepts.
pub const NAME_MAX: usize = 255;
/// Longest path accepted in a layer (Linux's PATH_MAX less its NUL).
pub const PATH_MAX: usize = 4095;

/// OCI whiteout prefix.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// OCI opaque-directory marker.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// A validated path inside a layer: relative, normal components only. The empty path is
/// the layer's root.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryPath(Vec<OsString>);

/// What an entry's last component says it is.
#[derive(Debug, PartialEq, Eq)]
pub enum Name<'a> {
    /// An ordinary name.
    Plain,
    /// `.wh.NAME`: NAME is deleted from the layers below.
    Whiteout(&'a OsStr),
    /// `.wh..wh..opq`: the parent directory hides the layers below.
    Opaque,
}

impl EntryPath {
    /// Validates a raw tar path. The error is a short reason for
    /// [`super::Error::UnsafePath`].
    pub fn parse(raw: &[u8]) -> Result<EntryPath, &'static str> {
        if raw.is_empty() {
            return Err("empty path");
        }
        if raw.contains(&0) {
            return Err("NUL byte in path");
        }
        if raw.len() > PATH_MAX {
            return Err("path too long");
        }
        if raw.starts_with(b"/") {
            return Err("absolute path");
        }
        let mut parts = Vec::new();
        for comp in raw.split(|b| *b == b'/') {
            match comp {
                b"" | b"." => {}
                b".." => return Err("`..` component"),
                c if c.len() > NAME_MAX => return Err("name too long"),
                c => parts.push(OsStr::from_bytes(c).to_owned()),
            }
        }
        let path = EntryPath(parts);
        let dirs = path.parent_components();
        if dirs
            .iter()
            .any(|d| d.as_bytes().starts_with(WHITEOUT_PREFIX))
        {
            return Err("whiteout name used as a directory");
        }
        Ok(path)
    }

    /// True for the layer's root directory.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of components (the root has depth 0).
    pub fn depth(&self) -> usize {
        self.0.len()
    }

    /// The components leading to the entry (its parent directory, from the root).
    pub fn parent_components(&self) -> &[OsString] {
        self.0.split_last().map_or(&[], |(_, dirs)| dirs)
    }

    /// The first `n` components.
    pub fn prefix(&self, n: usize) -> EntryPath {
        EntryPath(self.0[..n.min(self.0.len())].to_vec())
    }

    /// The components, from the root.
    pub fn components(&self) -> &[OsString] {
        &self.0
    }

    /// The parent's path (the root's parent is the root).
    pub fn parent(&self) -> EntryPath {
        EntryPath(self.parent_components().to_vec())
    }

    /// The last component; `None` for the root.
    pub fn file_name(&self) -> Option<&OsStr> {
        self.0.last().map(OsString::as_os_str)
    }

    /// The same directory with another last component.
    pub fn with_file_name(&self, name: &OsStr) -> EntryPath {
        let mut parts = self.parent_components().to_vec();
        parts.push(name.to_owned());
        EntryPath(parts)
    }

    /// The path joined with `/`, as the file system wants it (`.` for the root).
    pub fn to_os_string(&self) -> OsString {
        if self.0.is_empty() {
            return OsString::from(".");
        }
        let mut s = OsString::new();
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                s.push("/");
            }
            s.push(c);
        }
        s
    }

    /// Classifies the last component: plain, whiteout or opaque marker. A whiteout of
    /// nothing (`.wh.`), of `.`/`..`, or any other reserved `.wh..wh.` name is an error.
    pub fn name_kind(&self) -> Result<Name<'_>, &'static str> {
        let Some(name) = self.file_name() else {
            return Ok(Name::Plain);
        };
        let bytes = name.as_bytes();
        if bytes == OPAQUE_MARKER {
            return Ok(Name::Opaque);
        }
        let Some(target) = bytes.strip_prefix(WHITEOUT_PREFIX) else {
            return Ok(Name::Plain);
        };
        match target {
            b"" | b"." | b".." => Err("whiteout of an invalid name"),
            t if t.starts_with(WHITEOUT_PREFIX) => Err("reserved .wh..wh. name"),
            t => Ok(Name::Whiteout(OsStr::from_bytes(t))),
        }
    }
}

impl std::fmt::Display for EntryPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_os_string().to_string_lossy())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        EntryPath::parse(raw.as_bytes()).unwrap().to_string()
    }

    #[test]
    fn relative_paths_are_normalized() {
        assert_eq!(ok("a/b"), "a/b");
        assert_eq!(ok("./a/b/"), "a/b");
        assert_eq!(ok("a//./b"), "a/b");
        assert_eq!(ok("./"), ".");
        assert!(EntryPath::parse(b"./").unwrap().is_root());
    }

    #[test]
    fn escapes_and_oddities_are_refused() {
        for (raw, reason) in [
            (&b"../evil"[..], "`..` component"),
            (b"a/../../evil", "`..` component"),
            (b"./..", "`..` component"),
            (b"/etc/passwd", "absolute path"),
            (b"//x", "absolute path"),
            (b"", "empty path"),
            (b"a\0b", "NUL byte in path"),
            (b".wh.x/y", "whiteout name used as a directory"),
        ] {
            assert_eq!(EntryPath::parse(raw), Err(reason), "{raw:?}");
        }
        assert_eq!(EntryPath::parse(&[b'n'; 256]), Err("name too long"));
        assert!(EntryPath::parse(&[b'n'; 255]).is_ok());
        let long = "d/".repeat(2048);
        assert_eq!(EntryPath::parse(long.as_bytes()), Err("path too long"));
    }

    #[test]
    fn whiteout_names() {
        let kind = |raw: &str| {
            let p = EntryPath::parse(raw.as_bytes()).unwrap();
            p.name_kind().map(|k| format!("{k:?}"))
        };
        assert_eq!(kind("a/b").unwrap(), "Plain");
        assert_eq!(kind("a/.wh.b").unwrap(), "Whiteout(\"b\")");
        assert_eq!(kind("a/.wh..wh..opq").unwrap(), "Opaque");
        assert!(kind("a/.wh.").is_err());
        assert!(kind("a/.wh...").is_err());
        assert!(kind("a/.wh..wh.x").is_err());
    }
}
