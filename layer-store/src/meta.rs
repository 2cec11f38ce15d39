//! What the importer may do (privilege), and the metadata of one tar entry as read from
//! its header and PAX records.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;

use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use super::sys::{self, Timestamp};

/// Whether the importer may do what only root can: set owners, make device nodes and
/// overlayfs-style whiteouts, set `trusted.*`/`security.*` attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Privilege {
    Root,
    Unprivileged,
}

impl Privilege {
    /// `Root` when the effective user id is 0.
    pub fn detect() -> Privilege {
        if sys::geteuid() == 0 {
            Privilege::Root
        } else {
            Privilege::Unprivileged
        }
    }

    /// How whiteouts are stored at this privilege.
    pub fn whiteout_format(self) -> WhiteoutFormat {
        match self {
            Privilege::Root => WhiteoutFormat::CharDevice,
            Privilege::Unprivileged => WhiteoutFormat::WhFile,
        }
    }

    /// The xattr that marks an opaque directory at this privilege.
    pub fn opaque_xattr(self) -> &'static str {
        match self {
            Privilege::Root => "trusted.overlay.opaque",
            Privilege::Unprivileged => "user.overlay.opaque",
        }
    }
}

/// How a layer's whiteouts are stored on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhiteoutFormat {
    /// A character device 0/0 with the deleted name (kernel overlayfs's form).
    CharDevice,
    /// The OCI form, an empty `.wh.NAME` file, kept as in the tar.
    WhFile,
}

/// Metadata of one entry, from its header and PAX records.
#[derive(Debug)]
pub struct Meta {
    /// Permission bits with set-id and sticky bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    /// Extended attributes as named in the tar, before any filtering.
    pub xattrs: Vec<(OsString, Vec<u8>)>,
}

impl Meta {
    /// Reads an entry's mode, owner, times (PAX `mtime`/`atime` over the header) and
    /// `SCHILY.xattr.*` records.
    pub fn read<R: Read>(entry: &mut tar::Entry<'_, R>, shown: &str) -> Result<Meta> {
        let header = entry.header();
        let invalid = |reason| Error::InvalidEntry {
            path: shown.to_owned(),
            reason,
        };
        let id = |v: u64| u32::try_from(v).map_err(|_| invalid("uid or gid out of range"));
        let mode = header.mode().map_err(header_err(shown))? & 0o7777;
        let uid = id(header.uid().map_err(header_err(shown))?)?;
        let gid = id(header.gid().map_err(header_err(shown))?)?;
        let secs = header.mtime().map_err(header_err(shown))?;
        let secs = i64::try_from(secs).map_err(|_| invalid("mtime out of range"))?;
        let mut mtime = Timestamp { sec: secs, nsec: 0 };
        let mut atime = None;
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().map_err(Error::Read)? {
            for ext in pax {
                let ext = ext.map_err(Error::Read)?;
                let key = ext.key_bytes();
                if key == b"mtime" {
                    mtime = parse_pax_time(ext.value_bytes()).unwrap_or(mtime);
                } else if key == b"atime" {
                    atime = parse_pax_time(ext.value_bytes());
                } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((
                        OsStr::from_bytes(name).to_owned(),
                        ext.value_bytes().to_vec(),
                    ));
                }
            }
        }
        Ok(Meta {
            mode,
            uid,
            gid,
            atime: atime.unwrap_or(mtime),
            mtime,
            xattrs,
        })
    }
}

fn header_err(path: &str) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Extract {
        path: path.to_owned(),
        source,
    }
}

/// Parses a PAX time, `SECONDS[.FRACTION]`, possibly negative.
fn parse_pax_time(value: &[u8]) -> Option<Timestamp> {
    let s = std::str::from_utf8(value).ok()?;
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let sec: i64 = int.parse().ok()?;
    let mut nsec: u32 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nsec += u32::from(b - b'0') * 10u32.pow(8 - i as u32);
    }
    Some(if !negative {
        Timestamp { sec, nsec }
    } else if nsec == 0 {
        Timestamp { sec: -sec, nsec: 0 }
    } else {
        Timestamp {
            sec: -sec - 1,
            nsec: 1_000_000_000 - nsec,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        let t = |s: &str| parse_pax_time(s.as_bytes());
        assert_eq!(t("12"), Some(Timestamp { sec: 12, nsec: 0 }));
        assert_eq!(
            t("12.5"),
            Some(Timestamp {
                sec: 12,
                nsec: 500_000_000
            })
        );
        assert_eq!(t("1.0000000019"), Some(Timestamp { sec: 1, nsec: 1 }));
        assert_eq!(
            t("-1.25"),
            Some(Timestamp {
                sec: -2,
                nsec: 750_000_000
            })
        );
        assert_eq!(t("x"), None);
        assert_eq!(t("1.x"), None);
        assert_eq!(t(""), None);
    }
}
