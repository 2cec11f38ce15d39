//! The metadata store: one redb database under the state root holding every volume
//! record, keyed by id, with a name index. Each change is one durable transaction, so
//! after a crash the store says exactly which step a volume had reached.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::{Error, Result};
use crate::model::VolumeRecord;

const VOLUMES: TableDefinition<&str, &[u8]> = TableDefinition::new("volumes");
const NAMES: TableDefinition<&str, &str> = TableDefinition::new("volume_names");

fn db_err(e: impl Into<redb::Error>) -> Error {
    Error::Store(Box::new(e.into()))
}

/// Persistent volume metadata.
#[derive(Debug)]
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path).map_err(db_err)?;
        // Make sure both tables exist so readers never see "table does not exist".
        let tx = db.begin_write().map_err(db_err)?;
        tx.open_table(VOLUMES).map_err(db_err)?;
        tx.open_table(NAMES).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(Store { db })
    }

    /// Inserts or replaces a volume record (and its name index entry).
    pub fn put(&self, rec: &VolumeRecord) -> Result<()> {
        let bytes = serde_json::to_vec(rec).map_err(|source| Error::Corrupt {
            key: rec.id.clone(),
            source,
        })?;
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut vols = tx.open_table(VOLUMES).map_err(db_err)?;
            vols.insert(rec.id.as_str(), bytes.as_slice())
                .map_err(db_err)?;
            let mut names = tx.open_table(NAMES).map_err(db_err)?;
            names
                .insert(rec.name.as_str(), rec.id.as_str())
                .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// Removes a volume record and its name index entry.
    pub fn remove(&self, id: &str) -> Result<()> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut vols = tx.open_table(VOLUMES).map_err(db_err)?;
            let old = vols.remove(id).map_err(db_err)?;
            if let Some(old) = old {
                let rec = decode(id, old.value())?;
                drop(old);
                let mut names = tx.open_table(NAMES).map_err(db_err)?;
                let points_here = names
                    .get(rec.name.as_str())
                    .map_err(db_err)?
                    .is_some_and(|v| v.value() == id);
                if points_here {
                    names.remove(rec.name.as_str()).map_err(db_err)?;
                }
            }
        }
        tx.commit().map_err(db_err)
    }

    /// The record of volume `id`.
    pub fn get(&self, id: &str) -> Result<Option<VolumeRecord>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let vols = tx.open_table(VOLUMES).map_err(db_err)?;
        match vols.get(id).map_err(db_err)? {
            Some(v) => decode(id, v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// The record of the volume named `name`.
    pub fn get_by_name(&self, name: &str) -> Result<Option<VolumeRecord>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let names = tx.open_table(NAMES).map_err(db_err)?;
        let Some(id) = names.get(name).map_err(db_err)? else {
            return Ok(None);
        };
        let id = id.value().to_string();
        let vols = tx.open_table(VOLUMES).map_err(db_err)?;
        match vols.get(id.as_str()).map_err(db_err)? {
            Some(v) => decode(&id, v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// All records, ordered by id.
    pub fn list(&self) -> Result<Vec<VolumeRecord>> {
        self.list_after(None, usize::MAX)
    }

    /// Up to `limit` records with ids greater than `after`, ordered by id.
    pub fn list_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<VolumeRecord>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let vols = tx.open_table(VOLUMES).map_err(db_err)?;
        let iter = match after {
            Some(a) => {
                vols.range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
            }
            None => vols.range::<&str>(..),
        }
        .map_err(db_err)?;
        let mut out = Vec::new();
        for item in iter.take(limit) {
            let (k, v) = item.map_err(db_err)?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }
}

fn decode(key: &str, bytes: &[u8]) -> Result<VolumeRecord> {
    serde_json::from_slice(bytes).map_err(|source| Error::Corrupt {
        key: key.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{VolumeKind, VolumeState};

    fn rec(id: &str, name: &str) -> VolumeRecord {
        VolumeRecord {
            id: id.into(),
            name: name.into(),
            kind: VolumeKind::Dir,
            fs: None,
            capacity: 1 << 20,
            state: VolumeState::Ready,
            capacity_enforced: true,
            subvolume_id: None,
            parameters: Default::default(),
            created_at: 0,
            staging: None,
            publications: vec![],
        }
    }

    #[test]
    fn put_get_by_id_and_name_list_and_remove_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let s = Store::open(&path).unwrap();
            s.put(&rec("b", "two")).unwrap();
            s.put(&rec("a", "one")).unwrap();
            s.put(&rec("c", "three")).unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.get("a").unwrap().unwrap().name, "one");
        assert_eq!(s.get_by_name("two").unwrap().unwrap().id, "b");
        let ids: Vec<_> = s.list().unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        let page: Vec<_> = s
            .list_after(Some("a"), 1)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(page, ["b"]);
        s.remove("b").unwrap();
        assert!(s.get("b").unwrap().is_none());
        assert!(s.get_by_name("two").unwrap().is_none());
        s.remove("nope").unwrap();
    }
}
