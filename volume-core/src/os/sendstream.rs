//! Checking a btrfs send stream from a peer before `btrfs receive` acts on any of it.
//!
//! The stream (version 1) is a header (`btrfs-stream\0`, then a little-endian u32
//! version) followed by commands: a 10-byte header (u32 length of the payload, u16
//! command, u32 crc32c) and a payload of attributes, each a u16 type, a u16 length and
//! the value. [`StreamCheck`] takes the stream in pieces of any size, holds back each
//! command until all of it is there, and passes on only commands that:
//!
//! - are version-1 commands (1 to 22), at most 1 MiB long;
//! - name paths (`PATH`, `PATH_TO`, `CLONE_PATH`) that stay inside the received
//!   subvolume: relative, no `.` or `..` component, no NUL;
//! - create exactly one subvolume, first, named as the receiver expects (`SUBVOL`
//!   for a full stream, `SNAPSHOT` of one of the expected parent UUIDs for an
//!   incremental one);
//! - clone only from that subvolume or its parent.
//!
//! `btrfs receive` also runs chrooted into the receiving directory, so even a link the
//! stream creates cannot lead a later path outside it; this check refuses a hostile
//! stream before anything of it is written, and names what was wrong.

use std::fmt;

/// The stream magic with its terminating NUL.
const MAGIC: &[u8; 13] = b"btrfs-stream\0";
const HEADER_LEN: usize = MAGIC.len() + 4;
const CMD_HEADER_LEN: usize = 10;
/// Longest command accepted (the kernel's version-1 commands fit in 64 KiB).
pub const MAX_COMMAND: usize = 1 << 20;

// Commands (version 1).
const C_SUBVOL: u16 = 1;
const C_SNAPSHOT: u16 = 2;
const C_CLONE: u16 = 16;
const C_END: u16 = 21;
const C_MAX_V1: u16 = 22;

// Attributes.
const A_UUID: u16 = 1;
const A_PATH: u16 = 15;
const A_PATH_TO: u16 = 16;
const A_PATH_LINK: u16 = 17;
const C_LINK: u16 = 10;
const A_CLONE_UUID: u16 = 20;
const A_CLONE_PATH: u16 = 22;

/// What the receiver expects of a stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expect {
    /// The name the received subvolume must have.
    pub subvolume: String,
    /// For an incremental stream, the UUIDs the parent is known by here (its own and
    /// the one it was received as); empty for a full stream.
    pub parent_uuids: Vec<[u8; 16]>,
    /// The parent snapshot's directory: a clone from it must name a regular file
    /// reached without a link (`btrfs receive` opens clone sources from the pool's
    /// root, outside its chroot, so a link in the parent could lead anywhere).
    pub parent_root: Option<std::path::PathBuf>,
}

/// Why a stream was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "btrfs send stream refused: {}", self.0)
    }
}

impl std::error::Error for Refused {}

impl From<Refused> for std::io::Error {
    fn from(r: Refused) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, r)
    }
}

/// The checker: feed it with [`StreamCheck::push`], which returns the bytes that may be
/// passed on.
#[derive(Debug)]
pub struct StreamCheck {
    expect: Expect,
    pending: Vec<u8>,
    header_seen: bool,
    /// UUID of the subvolume the stream creates, once seen.
    own_uuid: Option<[u8; 16]>,
    ended: bool,
    commands: u64,
}

fn refuse<T>(why: impl Into<String>) -> Result<T, Refused> {
    Err(Refused(why.into()))
}

fn le16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// A path the stream names for something inside the received subvolume.
fn check_path(value: &[u8]) -> Result<(), Refused> {
    if value.first() == Some(&b'/') {
        return refuse("an absolute path");
    }
    if value.contains(&0) {
        return refuse("a path with a NUL byte");
    }
    if value.split(|b| *b == b'/').any(|c| c == b".." || c == b".") {
        return refuse(format!(
            "a path with a . or .. component ({:?})",
            String::from_utf8_lossy(value)
        ));
    }
    Ok(())
}

/// A clone source in the parent snapshot: a regular file reached from `root` without
/// a link or `..` (the parent is read-only, so what is checked is what is cloned).
fn check_clone_source(root: &std::path::Path, path: &[u8]) -> Result<(), Refused> {
    use std::os::unix::ffi::OsStrExt;
    let rel = std::path::Path::new(std::ffi::OsStr::from_bytes(path));
    let dir = std::fs::File::open(root)
        .or_else(|e| refuse(format!("the parent snapshot cannot be opened: {e}")))?;
    let fd = crate::sys::open_beneath(std::os::fd::AsFd::as_fd(&dir), rel, false).or_else(|e| {
        refuse(format!(
            "a clone from {:?} in the parent, which is not reached without a link: {e}",
            String::from_utf8_lossy(path)
        ))
    })?;
    let id = crate::sys::file_identity(std::os::fd::AsFd::as_fd(&fd))
        .or_else(|e| refuse(format!("a clone source that cannot be examined: {e}")))?;
    if id.mode & libc::S_IFMT != libc::S_IFREG {
        return refuse(format!(
            "a clone from {:?} in the parent, which is not a regular file",
            String::from_utf8_lossy(path)
        ));
    }
    Ok(())
}

fn uuid(value: &[u8]) -> Result<[u8; 16], Refused> {
    value
        .try_into()
        .or_else(|_| refuse("a UUID that is not 16 bytes"))
}

impl StreamCheck {
    /// A checker for a stream the receiver expects to match `expect`.
    pub fn new(expect: Expect) -> Self {
        StreamCheck {
            expect,
            pending: Vec::new(),
            header_seen: false,
            own_uuid: None,
            ended: false,
            commands: 0,
        }
    }

    /// Takes the next piece of the stream; returns what may be passed on (whole
    /// commands that passed), or why the stream is refused.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<u8>, Refused> {
        self.pending.extend_from_slice(data);
        let mut out = Vec::new();
        let mut at = 0;
        if !self.header_seen {
            if self.pending.len() < HEADER_LEN {
                if !MAGIC.starts_with(&self.pending[..self.pending.len().min(MAGIC.len())]) {
                    return refuse("not a btrfs send stream");
                }
                return Ok(out);
            }
            if &self.pending[..MAGIC.len()] != MAGIC {
                return refuse("not a btrfs send stream");
            }
            let version = le32(&self.pending[MAGIC.len()..HEADER_LEN]);
            if version != 1 {
                return refuse(format!("stream version {version} (1 is taken)"));
            }
            self.header_seen = true;
            at = HEADER_LEN;
        }
        let mut pending = std::mem::take(&mut self.pending);
        loop {
            let rest = &pending[at..];
            if rest.len() < CMD_HEADER_LEN {
                break;
            }
            let len = le32(&rest[0..4]) as usize;
            if len > MAX_COMMAND {
                return refuse(format!("a command of {len} bytes"));
            }
            if rest.len() < CMD_HEADER_LEN + len {
                break;
            }
            let cmd = le16(&rest[4..6]);
            let payload = &rest[CMD_HEADER_LEN..CMD_HEADER_LEN + len];
            self.check_command(cmd, payload)?;
            at += CMD_HEADER_LEN + len;
        }
        out.extend_from_slice(&pending[..at]);
        pending.drain(..at);
        self.pending = pending;
        Ok(out)
    }

    /// Says whether the stream ended where it may: after a whole command, with its
    /// subvolume made.
    pub fn finish(&self) -> Result<(), Refused> {
        if !self.pending.is_empty() {
            return refuse(format!(
                "the stream ends inside a command ({} bytes left over)",
                self.pending.len()
            ));
        }
        if self.own_uuid.is_none() {
            return refuse("the stream makes no subvolume");
        }
        Ok(())
    }

    /// Commands passed so far.
    pub fn commands(&self) -> u64 {
        self.commands
    }

    fn check_command(&mut self, cmd: u16, payload: &[u8]) -> Result<(), Refused> {
        if cmd == 0 || cmd > C_MAX_V1 {
            return refuse(format!("unknown command {cmd}"));
        }
        if self.ended {
            return refuse("commands after the end");
        }
        let first = self.own_uuid.is_none();
        if first != matches!(cmd, C_SUBVOL | C_SNAPSHOT) {
            return refuse(if first {
                format!("command {cmd} before the subvolume is made")
            } else {
                "a second subvolume in one stream".to_string()
            });
        }
        let mut path = None;
        let mut own = None;
        let mut clone_uuid = None;
        let mut clone_path = None;
        let mut at = 0;
        while at < payload.len() {
            if payload.len() - at < 4 {
                return refuse("a truncated attribute");
            }
            let kind = le16(&payload[at..]);
            let len = le16(&payload[at + 2..]) as usize;
            at += 4;
            if payload.len() - at < len {
                return refuse("an attribute longer than its command");
            }
            let value = &payload[at..at + len];
            at += len;
            match kind {
                A_PATH => {
                    check_path(value)?;
                    path = Some(value);
                }
                A_PATH_TO => check_path(value)?,
                A_CLONE_PATH => {
                    check_path(value)?;
                    clone_path = Some(value);
                }
                // A hard link's source is a path in the subvolume; a symlink's target
                // is only its content.
                A_PATH_LINK if cmd == C_LINK => check_path(value)?,
                A_UUID => own = Some(uuid(value)?),
                A_CLONE_UUID => clone_uuid = Some(uuid(value)?),
                _ => {}
            }
        }
        match cmd {
            C_SUBVOL | C_SNAPSHOT => {
                if path != Some(self.expect.subvolume.as_bytes()) {
                    return refuse(format!(
                        "the subvolume is named {:?}, not {:?}",
                        String::from_utf8_lossy(path.unwrap_or_default()),
                        self.expect.subvolume
                    ));
                }
                let incremental = !self.expect.parent_uuids.is_empty();
                if (cmd == C_SNAPSHOT) != incremental {
                    return refuse(if incremental {
                        "a full stream where an incremental one was announced"
                    } else {
                        "an incremental stream where a full one was announced"
                    });
                }
                if cmd == C_SNAPSHOT
                    && !clone_uuid.is_some_and(|u| self.expect.parent_uuids.contains(&u))
                {
                    return refuse("a snapshot of another subvolume than the announced parent");
                }
                self.own_uuid =
                    Some(own.ok_or_else(|| Refused("a subvolume without a UUID".into()))?);
            }
            C_CLONE => {
                let from_parent = clone_uuid.is_some_and(|u| self.expect.parent_uuids.contains(&u));
                if !from_parent && clone_uuid != self.own_uuid {
                    return refuse("a clone from a subvolume outside the stream's lineage");
                }
                if from_parent && let Some(root) = &self.expect.parent_root {
                    check_clone_source(root, clone_path.unwrap_or_default())?;
                }
            }
            C_END => self.ended = true,
            _ => {}
        }
        self.commands += 1;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a stream command from attributes.
    pub(crate) fn command(cmd: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut payload = Vec::new();
        for (kind, value) in attrs {
            payload.extend_from_slice(&kind.to_le_bytes());
            payload.extend_from_slice(&(value.len() as u16).to_le_bytes());
            payload.extend_from_slice(value);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&cmd.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&payload);
        out
    }

    pub(crate) fn header() -> Vec<u8> {
        let mut h = MAGIC.to_vec();
        h.extend_from_slice(&1u32.to_le_bytes());
        h
    }

    const OWN: [u8; 16] = [7; 16];
    const PARENT: [u8; 16] = [9; 16];

    fn full(rest: &[Vec<u8>]) -> Vec<u8> {
        let mut s = header();
        s.extend(command(C_SUBVOL, &[(A_PATH, b"data"), (A_UUID, &OWN)]));
        for c in rest {
            s.extend_from_slice(c);
        }
        s
    }

    fn check(expect: Expect, stream: &[u8], piece: usize) -> Result<Vec<u8>, Refused> {
        let mut c = StreamCheck::new(expect);
        let mut out = Vec::new();
        for chunk in stream.chunks(piece.max(1)) {
            out.extend(c.push(chunk)?);
        }
        c.finish()?;
        Ok(out)
    }

    fn expect_full() -> Expect {
        Expect {
            subvolume: "data".into(),
            ..Expect::default()
        }
    }

    #[test]
    fn a_sound_stream_passes_whole_in_any_pieces() {
        let s = full(&[
            command(3, &[(A_PATH, b"dir/file")]),
            command(15, &[(A_PATH, b"dir/file"), (19, b"hello")]),
            command(
                C_CLONE,
                &[
                    (A_PATH, b"b"),
                    (A_CLONE_UUID, &OWN),
                    (A_CLONE_PATH, b"dir/file"),
                ],
            ),
            command(C_END, &[]),
        ]);
        for piece in [1, 3, 10, 17, 4096] {
            assert_eq!(check(expect_full(), &s, piece).unwrap(), s, "{piece}");
        }
    }

    #[test]
    fn paths_leaving_the_subvolume_are_refused_before_they_are_passed_on() {
        for bad in [
            &b"../../etc/cron.d/x"[..],
            b"/etc/passwd",
            b"a/./b",
            b"a/../../b",
            b"a\0b",
        ] {
            for attr in [A_PATH, A_PATH_TO, A_CLONE_PATH] {
                let s = full(&[command(9, &[(A_PATH, b"ok"), (attr, bad)])]);
                let mut c = StreamCheck::new(expect_full());
                let head = c.push(&s[..HEADER_LEN + 40]).unwrap();
                assert!(head.len() <= HEADER_LEN + 40);
                assert!(c.push(&s[HEADER_LEN + 40..]).is_err(), "{bad:?} in {attr}");
            }
        }
    }

    #[test]
    fn the_subvolume_must_be_the_expected_one_made_once() {
        let mut s = header();
        s.extend(command(C_SUBVOL, &[(A_PATH, b"../data"), (A_UUID, &OWN)]));
        assert!(check(expect_full(), &s, 64).is_err());
        let mut s = header();
        s.extend(command(C_SUBVOL, &[(A_PATH, b"other"), (A_UUID, &OWN)]));
        assert!(check(expect_full(), &s, 64).is_err());
        let s = full(&[command(C_SUBVOL, &[(A_PATH, b"data"), (A_UUID, &OWN)])]);
        assert!(check(expect_full(), &s, 64).is_err(), "a second subvolume");
        let mut s = header();
        s.extend(command(3, &[(A_PATH, b"f")]));
        assert!(check(expect_full(), &s, 64).is_err(), "no subvolume first");
        assert!(
            check(expect_full(), &header(), 64).is_err(),
            "no subvolume at all"
        );
    }

    #[test]
    fn incremental_streams_snapshot_the_announced_parent_and_clone_within_the_lineage() {
        let inc = Expect {
            subvolume: "data".into(),
            parent_uuids: vec![PARENT],
            parent_root: None,
        };
        let snap = |clone: [u8; 16]| {
            let mut s = header();
            s.extend(command(
                C_SNAPSHOT,
                &[(A_PATH, b"data"), (A_UUID, &OWN), (A_CLONE_UUID, &clone)],
            ));
            s
        };
        assert!(check(inc.clone(), &snap(PARENT), 7).is_ok());
        assert!(
            check(inc.clone(), &snap([1; 16]), 7).is_err(),
            "another parent"
        );
        assert!(
            check(expect_full(), &snap(PARENT), 7).is_err(),
            "not announced"
        );
        assert!(
            check(inc.clone(), &full(&[]), 7).is_err(),
            "full where incremental"
        );
        let mut s = snap(PARENT);
        s.extend(command(
            C_CLONE,
            &[
                (A_PATH, b"f"),
                (A_CLONE_UUID, &[3; 16]),
                (A_CLONE_PATH, b"g"),
            ],
        ));
        assert!(check(inc.clone(), &s, 7).is_err(), "clone from elsewhere");
        let mut s = snap(PARENT);
        s.extend(command(
            C_CLONE,
            &[
                (A_PATH, b"f"),
                (A_CLONE_UUID, &PARENT),
                (A_CLONE_PATH, b"g"),
            ],
        ));
        assert!(check(inc, &s, 7).is_ok());
    }

    #[test]
    fn clones_from_the_parent_must_not_go_through_a_link_in_it() {
        let parent = tempfile::tempdir().unwrap();
        std::fs::write(parent.path().join("f"), b"x").unwrap();
        std::fs::create_dir(parent.path().join("d")).unwrap();
        std::os::unix::fs::symlink("/etc", parent.path().join("l")).unwrap();
        let inc = Expect {
            subvolume: "data".into(),
            parent_uuids: vec![PARENT],
            parent_root: Some(parent.path().to_path_buf()),
        };
        let with_clone = |from: &[u8]| {
            let mut s = header();
            s.extend(command(
                C_SNAPSHOT,
                &[(A_PATH, b"data"), (A_UUID, &OWN), (A_CLONE_UUID, &PARENT)],
            ));
            s.extend(command(
                C_CLONE,
                &[
                    (A_PATH, b"g"),
                    (A_CLONE_UUID, &PARENT),
                    (A_CLONE_PATH, from),
                ],
            ));
            s
        };
        assert!(check(inc.clone(), &with_clone(b"f"), 9).is_ok());
        for bad in [&b"l/passwd"[..], b"l", b"d", b"missing"] {
            assert!(check(inc.clone(), &with_clone(bad), 9).is_err(), "{bad:?}");
        }
        // A hard link's source is a path too; a symlink's target is not.
        let s = full(&[command(
            C_LINK,
            &[(A_PATH, b"h"), (A_PATH_LINK, b"../../x")],
        )]);
        assert!(check(expect_full(), &s, 9).is_err());
        let s = full(&[command(8, &[(A_PATH, b"s"), (A_PATH_LINK, b"../../x")])]);
        assert!(check(expect_full(), &s, 9).is_ok());
    }

    #[test]
    fn malformed_streams_are_refused() {
        assert!(check(expect_full(), b"not-a-stream-at-all", 4).is_err());
        let mut v2 = MAGIC.to_vec();
        v2.extend_from_slice(&2u32.to_le_bytes());
        assert!(check(expect_full(), &v2, 4).is_err());
        let mut s = full(&[]);
        s.extend_from_slice(&((MAX_COMMAND + 1) as u32).to_le_bytes());
        s.extend_from_slice(&[3, 0, 0, 0, 0, 0]);
        assert!(check(expect_full(), &s, 64).is_err(), "oversized command");
        let mut s = full(&[]);
        s.extend(command(99, &[]));
        assert!(check(expect_full(), &s, 64).is_err(), "unknown command");
        let mut s = full(&[command(C_END, &[])]);
        s.extend(command(3, &[(A_PATH, b"f")]));
        assert!(check(expect_full(), &s, 64).is_err(), "after the end");
        let s = full(&[command(3, &[(A_PATH, b"f")])]);
        assert!(
            check(expect_full(), &s[..s.len() - 1], 64).is_err(),
            "cut short"
        );
        // An attribute claiming more than its command holds.
        let mut s = full(&[]);
        let mut cmd = command(3, &[(A_PATH, b"f")]);
        cmd[CMD_HEADER_LEN + 2] = 200;
        s.extend(cmd);
        assert!(check(expect_full(), &s, 64).is_err());
    }
}
