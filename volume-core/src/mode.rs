//! File modes of what the daemon owns (its state directory, database, pool).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::{IoContext, Result};

/// Sets `path`'s permission bits to `mode` unless they already are.
pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    let meta = std::fs::metadata(path).ctx(|| format!("stat {}", path.display()))?;
    if meta.permissions().mode() & 0o7777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .ctx(|| format!("chmod {}", path.display()))?;
    }
    Ok(())
}
