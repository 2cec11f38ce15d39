//! Byte sizes with binary units (`10GiB`, `512MiB`), as flags and parameters spell them.

use crate::error::{Error, Result};

const UNITS: [(&str, u64); 9] = [
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("K", 1 << 10),
    ("M", 1 << 20),
    ("G", 1 << 30),
    ("T", 1 << 40),
    ("B", 1),
];

/// Parses `123`, `10GiB`, `512M` (binary units; a bare number is bytes).
pub fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (digits, mult) = UNITS
        .iter()
        .find_map(|(u, m)| s.strip_suffix(u).map(|d| (d.trim(), *m)))
        .unwrap_or((s, 1));
    let n: u64 = digits.parse().map_err(|_| {
        Error::InvalidArgument(format!("size {s:?} is not a number with a unit like 10GiB"))
    })?;
    n.checked_mul(mult)
        .ok_or_else(|| Error::InvalidArgument(format!("size {s:?} is too large")))
}

/// [`parse_size`] for the size of a new volume as a person types it: zero, or a bare
/// number below a MiB (bytes: almost surely a missing unit), is refused.
pub fn parse_volume_size(s: &str) -> Result<u64> {
    let n = parse_size(s)?;
    let t = s.trim();
    if n == 0 {
        return Err(Error::InvalidArgument(format!(
            "size {t:?} is zero: give a unit and a size above 0 (e.g. 1GiB)"
        )));
    }
    if n < 1 << 20 && t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::InvalidArgument(format!(
            "size {t:?} is {n} bytes: give a unit (e.g. {t}MiB or {t}GiB)"
        )));
    }
    Ok(n)
}

/// Formats bytes with the largest binary unit that divides them exactly.
pub fn format_size(bytes: u64) -> String {
    for (unit, mult) in [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ] {
        if bytes >= mult && bytes.is_multiple_of(mult) {
            return format!("{}{unit}", bytes / mult);
        }
    }
    format!("{bytes}B")
}

/// Rounds `n` up to a multiple of `align` (a power of two).
pub fn round_up(n: u64, align: u64) -> u64 {
    n.div_ceil(align) * align
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_sizes_refuse_zero_and_unitless_small_numbers() {
        assert_eq!(parse_volume_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_volume_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_volume_size("4KiB").unwrap(), 4096);
        for bad in ["0", "0GiB", "64", " 64 "] {
            let e = parse_volume_size(bad).unwrap_err().to_string();
            assert!(e.contains("give a unit"), "{bad}: {e}");
        }
    }

    #[test]
    fn parses_binary_units_and_bare_bytes() {
        assert_eq!(parse_size("10GiB").unwrap(), 10 << 30);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("ten").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }

    #[test]
    fn formats_with_exact_units() {
        assert_eq!(format_size(10 << 30), "10GiB");
        assert_eq!(format_size(1536 << 20), "1536MiB");
        assert_eq!(format_size(1000), "1000B");
        assert_eq!(round_up(1, 4096), 4096);
    }
}
