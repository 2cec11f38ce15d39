//! The ids the driver issues: a prefix (`v-` volumes, `s-` snapshots, `g-` group
//! snapshots) and 32 lowercase hex digits of a random UUID, so an id never names
//! anything outside the pool's own directories.

/// Prefix of volume ids.
pub const VOLUME_PREFIX: &str = "v-";
/// Prefix of snapshot ids.
pub const SNAPSHOT_PREFIX: &str = "s-";
/// Prefix of group snapshot ids.
pub const GROUP_PREFIX: &str = "g-";

/// True when `id` has the shape of an id this driver issues (and so cannot name
/// anything outside the pool's volumes directory).
pub fn is_valid_id(id: &str) -> bool {
    has_id_shape(VOLUME_PREFIX, id)
}

/// True when `id` is `prefix` followed by 32 lowercase hex digits.
pub fn has_id_shape(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|hex| {
        hex.len() == 32
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A fresh id with `prefix`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}
