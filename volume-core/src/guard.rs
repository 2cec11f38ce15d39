//! One in-flight operation per key (volume id or name). A second concurrent call on the
//! same key is refused at once with [`Error::Busy`] (CSI's ABORTED) rather than queued,
//! so a CO's retry loop never piles up behind a slow mkfs.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// The set of keys with an operation in progress.
#[derive(Debug, Default, Clone)]
pub struct InFlight {
    keys: Arc<Mutex<HashSet<String>>>,
}

/// Holds a key in [`InFlight`] until dropped.
#[derive(Debug)]
pub struct OperationGuard {
    keys: Arc<Mutex<HashSet<String>>>,
    held: Vec<String>,
}

impl InFlight {
    /// Claims every key in `keys` at once, or none of them.
    pub fn try_claim<I, S>(&self, keys: I) -> Result<OperationGuard>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let wanted: Vec<String> = keys.into_iter().map(Into::into).collect();
        let mut set = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(busy) = wanted.iter().find(|k| set.contains(*k)) {
            return Err(Error::Busy(busy.clone()));
        }
        let mut held = Vec::with_capacity(wanted.len());
        for key in wanted {
            if set.insert(key.clone()) {
                held.push(key);
            }
        }
        Ok(OperationGuard {
            keys: Arc::clone(&self.keys),
            held,
        })
    }

    /// Number of keys currently held (for metrics and tests).
    pub fn len(&self) -> usize {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when no operation is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for OperationGuard {
    fn drop(&mut self) {
        let mut set = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        for key in &self.held {
            set.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_claim_on_same_key_is_busy_until_first_drops() {
        let inflight = InFlight::default();
        let g = inflight.try_claim(["vol-a"]).unwrap();
        assert!(matches!(
            inflight.try_claim(["vol-a"]),
            Err(Error::Busy(k)) if k == "vol-a"
        ));
        assert!(inflight.try_claim(["vol-b"]).is_ok());
        drop(g);
        assert!(inflight.try_claim(["vol-a"]).is_ok());
        assert!(inflight.is_empty());
    }

    #[test]
    fn claim_of_several_keys_is_all_or_nothing() {
        let inflight = InFlight::default();
        let _g = inflight.try_claim(["name:x"]).unwrap();
        assert!(inflight.try_claim(["vol-y", "name:x"]).is_err());
        // vol-y must not have been left claimed by the failed attempt.
        assert!(inflight.try_claim(["vol-y"]).is_ok());
    }
}
