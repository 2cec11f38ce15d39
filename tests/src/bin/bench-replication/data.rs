//! The volume's data: incompressible files written and fsynced, scattered overwrites,
//! and comparing two trees.

use super::*;

/// xorshift64: fast incompressible bytes.
#[derive(Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for w in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            w.copy_from_slice(&v[..w.len()]);
        }
    }
}

pub(crate) fn data_files(vol_dir: &Path) -> Vec<PathBuf> {
    (0..FILES)
        .map(|i| vol_dir.join(DATA_DIR).join(format!("part-{i}.bin")))
        .collect()
}

/// Capacity of the full-sync volume: the data plus 1/8 for btrfs metadata and
/// copy-on-write room (a qgroup limit counts both).
pub(crate) fn volume_bytes(args: &Args) -> u64 {
    args.data_mib * MIB + args.data_mib * MIB / 8
}

/// Writes `total` bytes of incompressible data into the data files of `vol_dir`, then
/// fsyncs files and directory.
pub(crate) fn write_data(vol_dir: &Path, total: u64) {
    let dir = vol_dir.join(DATA_DIR);
    std::fs::create_dir_all(&dir).expect("create data dir");
    let per_file = total / FILES;
    let mut rng = Rng::new(1);
    let mut buf = vec![0u8; MIB as usize];
    for path in data_files(vol_dir) {
        let mut f =
            File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let mut left = per_file;
        while left > 0 {
            let n = left.min(MIB) as usize;
            rng.fill(&mut buf[..n]);
            f.write_all(&buf[..n])
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            left -= n as u64;
        }
        f.sync_all().expect("fsync data");
    }
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .expect("fsync data dir");
}

/// Overwrites `bytes` (rounded up to whole 64 KiB blocks) at distinct random
/// block-aligned offsets of the data files, then fsyncs them. Returns the bytes
/// overwritten.
pub(crate) fn scatter(vol_dir: &Path, total: u64, bytes: u64, seed: u64) -> u64 {
    let per_file = total / FILES;
    let blocks_per_file = per_file / BLOCK;
    let count = bytes.div_ceil(BLOCK).min(blocks_per_file * FILES);
    let mut rng = Rng::new(seed);
    let mut chosen = HashSet::new();
    while (chosen.len() as u64) < count {
        chosen.insert(rng.next() % (blocks_per_file * FILES));
    }
    let files: Vec<File> = data_files(vol_dir)
        .iter()
        .map(|p| {
            OpenOptions::new()
                .write(true)
                .open(p)
                .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
        })
        .collect();
    let mut buf = vec![0u8; BLOCK as usize];
    let mut blocks: Vec<u64> = chosen.into_iter().collect();
    blocks.sort_unstable();
    for b in &blocks {
        rng.fill(&mut buf);
        let (file, block) = (b / blocks_per_file, b % blocks_per_file);
        files[file as usize]
            .write_all_at(&buf, block * BLOCK)
            .expect("overwrite block");
    }
    for f in &files {
        f.sync_all().expect("fsync data");
    }
    count * BLOCK
}

/// Panics unless every data file of `a` equals the one of `b`, byte for byte.
pub(crate) fn assert_same(a: &Path, b: &Path) {
    let mut x = vec![0u8; 4 * MIB as usize];
    let mut y = vec![0u8; 4 * MIB as usize];
    for (pa, pb) in data_files(a).iter().zip(data_files(b).iter()) {
        let mut fa = File::open(pa).unwrap_or_else(|e| panic!("open {}: {e}", pa.display()));
        let mut fb = File::open(pb).unwrap_or_else(|e| panic!("open {}: {e}", pb.display()));
        let mut offset = 0u64;
        loop {
            let n = read_full(&mut fa, &mut x);
            let m = read_full(&mut fb, &mut y);
            assert!(
                n == m && x[..n] == y[..m],
                "{} and {} differ near byte {offset}",
                pa.display(),
                pb.display()
            );
            if n == 0 {
                break;
            }
            offset += n as u64;
        }
    }
}
