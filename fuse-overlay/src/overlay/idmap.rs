//! Owner id mapping between the layers and the mount (`uidmapping=` / `gidmapping=`).
//!
//! A layer stores owners as the image has them (0 for root); a container in a user
//! namespace sees the host's ids through its namespace's map. Instead of chowning a
//! shared layer for every namespace, the mount shows each stored id `s` of a range
//! `s0:h0:len` as `h0 + (s - s0)` and stores an id given by a caller (a new file's
//! owner, a chown) the other way round. The option's syntax is fuse-overlayfs's:
//! `STORED:SHOWN:LEN` triples, all separated by `:` (or a new triple after a `,`).

use std::fmt;

/// The id a stored owner outside every range is shown as: the kernel's default
/// overflow id ("nobody"), as a user namespace shows an unmapped owner — unless a range
/// shows some stored id as 65534: then that user would own every unmapped file (the
/// kernel checks permissions against the ids the mount shows), and the largest id no
/// range shows is used instead, which no process has.
pub const OVERFLOW_ID: u32 = 65534;

/// One contiguous range of ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    stored: u32,
    shown: u32,
    len: u32,
}

impl Range {
    fn contains(start: u32, len: u32, id: u32) -> bool {
        id >= start && u64::from(id) < u64::from(start) + u64::from(len)
    }

    fn overlaps(a: u32, b: u32, len_a: u32, len_b: u32) -> bool {
        u64::from(a) < u64::from(b) + u64::from(len_b)
            && u64::from(b) < u64::from(a) + u64::from(len_a)
    }
}

/// A mapping of owner ids (user or group) between the layers and the mount. The empty
/// mapping is the identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMap {
    ranges: Vec<Range>,
    /// What a stored id outside every range is shown as (see [`OVERFLOW_ID`]).
    overflow: u32,
}

impl Default for IdMap {
    fn default() -> Self {
        IdMap {
            ranges: Vec::new(),
            overflow: OVERFLOW_ID,
        }
    }
}

/// Why an id mapping was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdMapError {
    /// Not a list of `STORED:SHOWN:LEN` triples of decimal numbers.
    #[error("id mapping {0:?}: want STORED:SHOWN:LEN triples of decimal numbers")]
    Syntax(String),
    /// A range of length 0, or one reaching 4294967295 (`(uid_t)-1`, not an id).
    #[error("id mapping range {0}: empty or past the largest id (4294967294)")]
    BadRange(String),
    /// Two ranges share stored or shown ids: the mapping would not be one-to-one.
    #[error("id mapping ranges {0} and {1} overlap")]
    Overlap(String, String),
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.stored, self.shown, self.len)
    }
}

impl IdMap {
    /// Parses `STORED:SHOWN:LEN[:STORED:SHOWN:LEN…]` (a `,` may also separate
    /// triples); refuses empty or overflowing ranges and overlaps on either side.
    pub fn parse(spec: &str) -> Result<Self, IdMapError> {
        let nums = spec
            .split([':', ','])
            .map(|n| match n.bytes().all(|b| b.is_ascii_digit()) {
                true => n.parse::<u32>().ok(),
                false => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| IdMapError::Syntax(spec.into()))?;
        if nums.is_empty() || nums.len() % 3 != 0 {
            return Err(IdMapError::Syntax(spec.into()));
        }
        let mut ranges: Vec<Range> = Vec::new();
        for t in nums.chunks(3) {
            let r = Range {
                stored: t[0],
                shown: t[1],
                len: t[2],
            };
            let past = |start: u32| u64::from(start) + u64::from(r.len) > u64::from(u32::MAX);
            if r.len == 0 || past(r.stored) || past(r.shown) {
                return Err(IdMapError::BadRange(r.to_string()));
            }
            if let Some(o) = ranges.iter().find(|o| {
                Range::overlaps(o.stored, r.stored, o.len, r.len)
                    || Range::overlaps(o.shown, r.shown, o.len, r.len)
            }) {
                return Err(IdMapError::Overlap(o.to_string(), r.to_string()));
            }
            ranges.push(r);
        }
        // The largest id below u32::MAX that no range shows (there is one: ranges end
        // below u32::MAX and cannot cover everything below it without overlapping).
        let shown_by = |id: u32| ranges.iter().find(|r| Range::contains(r.shown, r.len, id));
        let mut overflow = OVERFLOW_ID;
        if shown_by(overflow).is_some() {
            overflow = u32::MAX - 1;
            while let Some(r) = shown_by(overflow) {
                overflow = r
                    .shown
                    .checked_sub(1)
                    .ok_or_else(|| IdMapError::Syntax(spec.into()))?;
            }
        }
        Ok(IdMap { ranges, overflow })
    }

    /// Whether this is the identity (no option given).
    pub fn is_identity(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The id the mount shows for a stored owner; [`OVERFLOW_ID`] outside every range.
    pub fn shown(&self, stored: u32) -> u32 {
        if self.is_identity() {
            return stored;
        }
        self.ranges
            .iter()
            .find(|r| Range::contains(r.stored, r.len, stored))
            .map_or(self.overflow, |r| r.shown + (stored - r.stored))
    }

    /// The id to store for an owner the mount's user gave; `None` when it lies
    /// outside every range (it cannot be written down).
    pub fn stored(&self, shown: u32) -> Option<u32> {
        if self.is_identity() {
            return Some(shown);
        }
        self.ranges
            .iter()
            .find(|r| Range::contains(r.shown, r.len, shown))
            .map(|r| r.stored + (shown - r.shown))
    }
}

impl fmt::Display for IdMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.ranges.iter().map(Range::to_string).collect();
        f.write_str(&parts.join(":"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_maps_everything_to_itself() {
        let m = IdMap::default();
        assert!(m.is_identity());
        assert_eq!(m.shown(0), 0);
        assert_eq!(m.shown(u32::MAX), u32::MAX);
        assert_eq!(m.stored(12345), Some(12345));
    }

    #[test]
    fn ranges_map_both_ways_and_unmapped_ids_overflow() {
        // The fuse-overlayfs manual's example: a namespace with 0 → 1000 and
        // 1..65537 → 110000...
        let m = IdMap::parse("0:1000:1:1:110000:65536").unwrap();
        assert_eq!(m.shown(0), 1000);
        assert_eq!(m.shown(1), 110000);
        assert_eq!(m.shown(65536), 175535);
        assert_eq!(m.shown(65537), OVERFLOW_ID);
        assert_eq!(m.stored(1000), Some(0));
        assert_eq!(m.stored(110000), Some(1));
        assert_eq!(m.stored(175535), Some(65536));
        assert_eq!(m.stored(175536), None);
        assert_eq!(m.stored(0), None);
        assert_eq!(m.to_string(), "0:1000:1:1:110000:65536");
        // A comma between triples, as the manual's synopsis writes it.
        assert_eq!(IdMap::parse("0:1000:1,1:110000:65536").unwrap(), m);
    }

    #[test]
    fn unmapped_owners_never_show_as_a_mapped_user() {
        // 65534 is shown for stored 65534 here: unmapped owners must not become that
        // user's files.
        let m = IdMap::parse("0:0:65536").unwrap();
        assert_eq!(m.shown(65534), 65534);
        assert_eq!(m.shown(70000), u32::MAX - 1);
        assert_eq!(m.stored(u32::MAX - 1), None);
        // The fallback itself taken too: the next free id below.
        let m = IdMap::parse("0:0:65536:70000:4294967200:95").unwrap();
        assert_eq!(m.shown(80000), 4294967199);
        assert_eq!(m.stored(4294967199), None);
    }

    #[test]
    fn bad_mappings_are_refused() {
        for bad in [
            "", "0:1", "0:1:2:3", "a:1:1", "-1:0:1", "0:0:1:", " 0:1:1", "+0:1:1",
        ] {
            assert!(
                matches!(IdMap::parse(bad), Err(IdMapError::Syntax(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            IdMap::parse("0:0:0"),
            Err(IdMapError::BadRange(_))
        ));
        assert!(matches!(
            IdMap::parse("4294967295:0:2"),
            Err(IdMapError::BadRange(_))
        ));
        // (uid_t)-1 is not an id: a range may end at 4294967294, not one later.
        assert!(IdMap::parse("0:4294967294:1").is_ok());
        assert!(matches!(
            IdMap::parse("0:4294967295:1"),
            Err(IdMapError::BadRange(_))
        ));
        // Overlap of stored ids, then of shown ids.
        assert!(matches!(
            IdMap::parse("0:100:10:5:200:10"),
            Err(IdMapError::Overlap(..))
        ));
        assert!(matches!(
            IdMap::parse("0:100:10:50:105:10"),
            Err(IdMapError::Overlap(..))
        ));
        // Adjacent ranges are fine.
        assert!(IdMap::parse("0:100:10:10:110:10").is_ok());
    }
}
