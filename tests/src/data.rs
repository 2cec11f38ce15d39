//! Test data: patterns, digests, durable writes.

use std::path::Path;
use std::process::Command;

/// sha256 of a file, by the system tool (fast even in a debug build).
pub fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// Writes `data` to `path` (replacing it) and syncs it to the device.
pub fn write_synced(path: &Path, data: &[u8]) {
    use std::io::Write as _;
    let mut f =
        std::fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

/// `len` deterministic bytes from `seed` that do not compress or deduplicate.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
