//! How `vol` shows what the daemon answers: names (`-q`), one JSON object per line
//! (`--output json`), or aligned tables.

use std::io::Write;

use serde_json::json;
use stowage_proto::stowage::v1 as pb;
use volume_core::size::format_size;

use crate::args::{Cli, Output};

/// The JSON form of a volume (`--output json`).
pub fn volume_json(v: &pb::Volume) -> serde_json::Value {
    json!({
        "id": v.id,
        "name": v.name,
        "kind": v.kind,
        "layout": if v.layout.is_empty() { serde_json::Value::Null } else { json!(v.layout) },
        "fs": if v.fs_type.is_empty() { serde_json::Value::Null } else { json!(v.fs_type) },
        "capacity_bytes": v.capacity_bytes,
        "capacity": format_size(v.capacity_bytes),
        "capacity_enforced": v.capacity_enforced,
        "created_at": v.created_at,
        "staging_path": if v.staging_path.is_empty() { serde_json::Value::Null } else { json!(v.staging_path) },
        "published_at": v.published_at,
        "attached_nodes": v.attached_nodes,
        "attached_into": v.attached_into,
        "source": if v.content_source.is_empty() { serde_json::Value::Null } else { json!(v.content_source) },
        "parameters": v.parameters,
        "mutable_parameters": v.mutable_parameters,
        "ephemeral": v.ephemeral,
        "condition": v.condition.as_ref().map(|c| json!({"abnormal": c.abnormal, "message": c.message})),
        "replicas": v.replicas.iter().map(|r| json!({
            "node_id": r.node_id,
            "state": r.state,
            "snapshot": r.snapshot,
            "lag_seconds": r.lag_seconds,
            "lag_bytes": r.lag_bytes,
            "bytes_sent": r.bytes_sent,
            "acknowledged_at": r.acknowledged_at,
            "taken_at": r.taken_at,
            "last_error": if r.last_error.is_empty() { serde_json::Value::Null } else { json!(r.last_error) },
        })).collect::<Vec<_>>(),
        "generation": v.generation,
        "copies": v.copies,
        "replication_interval_secs": v.replication_interval_secs,
    })
}

/// The JSON form of a snapshot.
pub fn snapshot_json(s: &pb::Snapshot) -> serde_json::Value {
    json!({
        "id": s.id,
        "name": s.name,
        "source_volume_id": s.source_volume_id,
        "size_bytes": s.size_bytes,
        "size": format_size(s.size_bytes),
        "created_at": s.created_at,
        "group_id": if s.group_id.is_empty() { serde_json::Value::Null } else { json!(s.group_id) },
    })
}

fn state_word(v: &pb::Volume) -> String {
    let mut words = Vec::new();
    if !v.attached_into.is_empty() {
        words.push(format!("attached({})", v.attached_into.len()));
    }
    if !v.published_at.is_empty() {
        words.push(format!("published({})", v.published_at.len()));
    } else if !v.staging_path.is_empty() {
        words.push("staged".to_string());
    }
    if v.condition.as_ref().is_some_and(|c| c.abnormal) {
        words.push("ABNORMAL".to_string());
    }
    if words.is_empty() {
        "idle".to_string()
    } else {
        words.join(",")
    }
}

/// Writes rows as aligned columns.
fn table(out: &mut dyn Write, header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let n = cells.len();
        cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == n {
                    c
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    writeln!(
        out,
        "{}",
        line(header.iter().map(|h| h.to_string()).collect())
    )?;
    for r in rows {
        writeln!(out, "{}", line(r.clone()))?;
    }
    Ok(())
}

/// One kind of listed object: how `-q`, `--output json` and the table show it.
pub(crate) trait Listed {
    const HEADER: &'static [&'static str];
    fn name(&self) -> &str;
    fn json(&self) -> serde_json::Value;
    fn row(&self) -> Vec<String>;
}

impl Listed for pb::Volume {
    const HEADER: &'static [&'static str] = &["NAME", "KIND", "FS", "SIZE", "STATE", "ID"];
    fn name(&self) -> &str {
        &self.name
    }
    fn json(&self) -> serde_json::Value {
        volume_json(self)
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.kind.clone(),
            if self.fs_type.is_empty() {
                "-".into()
            } else {
                self.fs_type.clone()
            },
            format_size(self.capacity_bytes),
            state_word(self),
            self.id.clone(),
        ]
    }
}

impl Listed for pb::Snapshot {
    const HEADER: &'static [&'static str] = &["NAME", "SIZE", "SOURCE", "ID"];
    fn name(&self) -> &str {
        &self.name
    }
    fn json(&self) -> serde_json::Value {
        snapshot_json(self)
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            format_size(self.size_bytes),
            self.source_volume_id.clone(),
            self.id.clone(),
        ]
    }
}

/// The JSON form of a layer (`--output json`).
pub fn layer_json(l: &pb::Layer) -> serde_json::Value {
    serde_json::json!({
        "key": l.key,
        "diff_id": l.diff_id,
        "size_bytes": l.size_bytes,
        "entries": l.entries,
        "blobs": l.blobs,
        "imported_at": l.imported_at,
    })
}

impl Listed for pb::Layer {
    const HEADER: &'static [&'static str] = &["KEY", "DIFF_ID", "SIZE", "ENTRIES"];
    fn name(&self) -> &str {
        &self.key
    }
    fn json(&self) -> serde_json::Value {
        layer_json(self)
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.key.clone(),
            self.diff_id.clone(),
            format_size(self.size_bytes),
            self.entries.to_string(),
        ]
    }
}

impl Listed for pb::ReplicateVolumeResponse {
    const HEADER: &'static [&'static str] = &["SNAPSHOT", "PARENT", "INCREMENTAL", "BYTES SENT"];
    fn name(&self) -> &str {
        &self.snapshot
    }
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "snapshot": self.snapshot,
            "parent": self.parent,
            "incremental": self.incremental,
            "bytes_sent": self.bytes_sent,
        })
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.snapshot.clone(),
            if self.parent.is_empty() {
                "-".into()
            } else {
                self.parent.clone()
            },
            self.incremental.to_string(),
            self.bytes_sent.to_string(),
        ]
    }
}

impl Listed for pb::Replica {
    const HEADER: &'static [&'static str] = &[
        "NAME",
        "KIND",
        "SOURCE NODE",
        "SNAPSHOTS",
        "LATEST",
        "VOLUME ID",
    ];
    fn name(&self) -> &str {
        &self.name
    }
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "volume_id": self.volume_id,
            "name": self.name,
            "kind": self.kind,
            "fs_type": self.fs_type,
            "capacity_bytes": self.capacity_bytes,
            "source_node_id": self.source_node_id,
            "snapshots": self.snapshots,
            "latest_path": self.latest_path,
            "latest_stream_bytes": self.latest_stream_bytes,
            "latest_taken_at": self.latest_taken_at,
            "generation": self.generation,
            "split_brain": if self.split_brain.is_empty() { serde_json::Value::Null } else { serde_json::json!(self.split_brain) },
        })
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.kind.clone(),
            self.source_node_id.clone(),
            self.snapshots.join(","),
            self.latest_path.clone(),
            self.volume_id.clone(),
        ]
    }
}

/// Prints objects as names (`-q`), one JSON object per line, or a table.
pub(crate) fn print_list<T: Listed>(
    cli: &Cli,
    out: &mut dyn Write,
    items: &[T],
) -> std::io::Result<()> {
    if cli.quiet {
        for i in items {
            writeln!(out, "{}", i.name())?;
        }
        return Ok(());
    }
    match cli.output {
        Output::Json => {
            for i in items {
                writeln!(out, "{}", i.json())?;
            }
            Ok(())
        }
        Output::Table => {
            let rows: Vec<Vec<String>> = items.iter().map(Listed::row).collect();
            table(out, T::HEADER, &rows)
        }
    }
}

pub(crate) fn print_inspect(cli: &Cli, out: &mut dyn Write, v: &pb::Volume) -> std::io::Result<()> {
    if cli.quiet {
        return writeln!(out, "{}", v.name);
    }
    match cli.output {
        Output::Json => writeln!(out, "{}", volume_json(v)),
        Output::Table => {
            let json = volume_json(v);
            // serde_json keeps keys sorted: a stable, readable listing.
            if let Some(map) = json.as_object() {
                for (k, val) in map {
                    let shown = match val {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Null => "-".into(),
                        other => other.to_string(),
                    };
                    writeln!(out, "{k:<18} {shown}")?;
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_json_has_a_stable_shape() {
        let v = pb::Volume {
            id: "v-1".into(),
            name: "data".into(),
            kind: "loop".into(),
            fs_type: "ext4".into(),
            capacity_bytes: 10 << 30,
            layout: "host-image".into(),
            ..Default::default()
        };
        let j = volume_json(&v);
        assert_eq!(j["capacity"], "10GiB");
        assert_eq!(j["layout"], "host-image");
        assert_eq!(j["fs"], "ext4");
        assert!(j["staging_path"].is_null());
        let mut keys: Vec<_> = j.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "attached_into",
                "attached_nodes",
                "capacity",
                "capacity_bytes",
                "capacity_enforced",
                "condition",
                "copies",
                "created_at",
                "ephemeral",
                "fs",
                "generation",
                "id",
                "kind",
                "layout",
                "mutable_parameters",
                "name",
                "parameters",
                "published_at",
                "replicas",
                "replication_interval_secs",
                "source",
                "staging_path"
            ]
        );
    }

    #[test]
    fn layer_json_and_rows_have_a_stable_shape() {
        let l = pb::Layer {
            key: "ab".repeat(32),
            diff_id: format!("sha256:{}", "cd".repeat(32)),
            size_bytes: 3 << 20,
            entries: 7,
            blobs: vec![format!("sha256:{}", "ef".repeat(32))],
            imported_at: 1,
        };
        let j = layer_json(&l);
        let mut keys: Vec<_> = j.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "blobs",
                "diff_id",
                "entries",
                "imported_at",
                "key",
                "size_bytes"
            ]
        );
        assert_eq!(j["entries"], 7);
        assert_eq!(Listed::name(&l), l.key);
        assert_eq!(
            l.row(),
            vec![l.key.clone(), l.diff_id.clone(), "3MiB".into(), "7".into()]
        );
    }
}
