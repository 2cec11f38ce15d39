//! Imports cannot fill the host: holes stay holes, zeros become holes, sparse entries
//! declaring far more than their data are refused, and a layer is held to a size
//! limit and to the store's free space before anything is written. Also: fifos with
//! empty device fields (as Python's tarfile writes them) import.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use layer_store::{Error, ImportLimits, LayerStore, Privilege};
use tar::{EntryType, Header};

fn store(dir: &Path, limits: ImportLimits) -> LayerStore {
    let mut s = LayerStore::open_with(dir.join("store"), Privilege::Unprivileged).unwrap();
    s.set_limits(limits);
    s
}

fn layers_in(store: &LayerStore) -> usize {
    fs::read_dir(store.root().join("layers"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_dir())
        .count()
}

/// A tar holding one GNU sparse file `name` of `real_size` bytes whose data is the
/// given (offset, bytes) chunks, each a multiple of 512 bytes.
fn sparse_tar(name: &str, real_size: u64, chunks: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut h = Header::new_gnu();
    h.set_path(name).unwrap();
    h.set_entry_type(EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    let stored: usize = chunks.iter().map(|(_, d)| d.len()).sum();
    h.set_size(stored as u64);
    {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.set_real_size(real_size);
        for (slot, (offset, data)) in gnu.sparse.iter_mut().zip(chunks) {
            slot.set_offset(*offset);
            slot.set_length(data.len() as u64);
        }
    }
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    for (_, data) in chunks {
        out.extend_from_slice(data);
    }
    let pad = (512 - out.len() % 512) % 512;
    out.extend(std::iter::repeat_n(0, pad + 1024));
    out
}

fn file_tar(name: &str, data: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, name, data).unwrap();
    b.into_inner().unwrap()
}

fn allocated(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn a_small_tar_claiming_a_huge_sparse_file_is_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), ImportLimits::default());
    let tar = sparse_tar("bomb", 10 << 30, &[(10 << 30, Vec::new())]);
    assert!(tar.len() < 4096, "{} bytes", tar.len());
    let err = s.import_tar(tar.as_slice()).unwrap_err();
    assert!(matches!(err, Error::SparseBomb { .. }), "{err}");
    assert_eq!(layers_in(&s), 0);
}

#[test]
fn sparse_files_keep_their_holes_and_zeros_become_holes() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), ImportLimits::default());
    let a = vec![0xa5u8; 1 << 20];
    let b = vec![0x5au8; 1 << 20];
    let real = 200 << 20;
    // A trailing hole is a last, empty chunk at the real size (as GNU tar writes it).
    let tar = sparse_tar(
        "sparse",
        real,
        &[(0, a.clone()), (100 << 20, b.clone()), (real, Vec::new())],
    );
    let layer = s.import_tar(tar.as_slice()).unwrap();
    let path = s.path(&layer.key).join("sparse");
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), real);
    assert!(
        allocated(&path) < 4 << 20,
        "{} bytes allocated for 2 MiB of data",
        allocated(&path)
    );
    let content = fs::read(&path).unwrap();
    assert_eq!(&content[..1 << 20], a.as_slice());
    assert_eq!(&content[100 << 20..(100 << 20) + (1 << 20)], b.as_slice());
    assert!(content[1 << 20..100 << 20].iter().all(|x| *x == 0));
    assert!(content[(101 << 20)..].iter().all(|x| *x == 0));

    // 64 MiB of zeros stored as data (a gzip of it is ~64 KiB) take no blocks.
    let zeros = vec![0u8; 64 << 20];
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&file_tar("zeros", &zeros)).unwrap();
    let blob = gz.finish().unwrap();
    let layer = s.import_tar(blob.as_slice()).unwrap();
    let path = s.path(&layer.key).join("zeros");
    assert_eq!(fs::metadata(&path).unwrap().len(), 64 << 20);
    assert!(allocated(&path) < 1 << 20, "{}", allocated(&path));
    assert!(fs::read(&path).unwrap().iter().all(|x| *x == 0));
}

#[test]
fn a_layer_beyond_the_size_limit_or_the_free_space_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..(2u32 << 20)).map(|i| (i % 251) as u8 + 1).collect();
    let small = store(
        dir.path(),
        ImportLimits {
            max_bytes: 1 << 20,
            ..ImportLimits::default()
        },
    );
    let err = small
        .import_tar(file_tar("big", &data).as_slice())
        .unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    assert_eq!(layers_in(&small), 0);
    drop(small);

    let full = store(
        dir.path(),
        ImportLimits {
            reserve_free: u64::MAX / 2,
            ..ImportLimits::default()
        },
    );
    let err = full
        .import_tar(file_tar("big", &data).as_slice())
        .unwrap_err();
    assert!(matches!(err, Error::NoSpace { .. }), "{err}");
    assert_eq!(layers_in(&full), 0);
}

#[test]
fn fifos_with_empty_device_fields_import() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), ImportLimits::default());
    let mut h = Header::new_ustar();
    h.set_path("pipe").unwrap();
    h.set_entry_type(EntryType::Fifo);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(0);
    // As Python's tarfile writes a fifo: device fields all NUL.
    if let Some(u) = h.as_ustar_mut() {
        u.dev_major = [0; 8];
        u.dev_minor = [0; 8];
    }
    h.set_cksum();
    let mut tar = h.as_bytes().to_vec();
    tar.extend(std::iter::repeat_n(0, 1024));
    let layer = s.import_tar(tar.as_slice()).unwrap();
    let meta = fs::symlink_metadata(s.path(&layer.key).join("pipe")).unwrap();
    assert!(meta.file_type().is_fifo());
}
