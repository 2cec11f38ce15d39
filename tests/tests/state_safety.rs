//! The daemon's state is root's alone: real daemon (root).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use stowage_tests::Daemon;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Whether user nobody can read `path`.
fn nobody_can_read(path: &Path) -> bool {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "head",
            "-c",
            "1",
        ])
        .arg(path)
        .output()
        .expect("run setpriv")
        .status
        .success()
}

#[tokio::test]
async fn state_pool_images_and_metadata_are_root_only() {
    let daemon = Daemon::start("4GiB", &[]);
    let mut c = daemon.clients().await;
    let id = c.create("l", 64 << 20, &[("kind", "loop")]).await;
    let state = daemon.state_dir();
    let image = daemon.volume_dir(&id).join("disk.img");
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("pool.img")), 0o600);
    assert_eq!(mode(&state.join("stowage.redb")), 0o600);
    assert_eq!(mode(&state.join("pool")), 0o700, "the pool's root");
    assert_eq!(mode(&image), 0o600);
    // The probe itself works: user nobody reads a world-readable file.
    let control = daemon.root().join("readable");
    std::fs::write(&control, b"x").unwrap();
    std::fs::set_permissions(daemon.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(
        nobody_can_read(&control),
        "setpriv cannot read as nobody at all"
    );
    for path in [
        state.join("pool.img"),
        state.join("stowage.redb"),
        image.clone(),
    ] {
        assert!(!nobody_can_read(&path), "{} is readable", path.display());
    }

    // A state made by an older daemon (world-readable) is tightened at start.
    daemon_tightens_old_state(daemon, &image).await;
}

async fn daemon_tightens_old_state(mut daemon: Daemon, image: &Path) {
    daemon.stop();
    let state = daemon.state_dir();
    for (path, old) in [
        (state.clone(), 0o755),
        (state.join("pool.img"), 0o644),
        (state.join("stowage.redb"), 0o644),
        (image.to_path_buf(), 0o644),
    ] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(old)).unwrap();
    }
    daemon.restart();
    let _ = daemon.clients().await;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("pool.img")), 0o600);
    assert_eq!(mode(&state.join("stowage.redb")), 0o600);
    assert_eq!(mode(image), 0o600);
}

/// How a damaged metadata database is made.
#[derive(Debug, Clone, Copy)]
enum Damage {
    Emptied,
    Truncated,
    Scribbled,
    Deleted,
}

fn damage(db: &Path, how: Damage) {
    match how {
        Damage::Emptied => std::fs::write(db, b"").unwrap(),
        Damage::Truncated => {
            let len = std::fs::metadata(db).unwrap().len();
            let f = std::fs::OpenOptions::new().write(true).open(db).unwrap();
            f.set_len(len / 3).unwrap();
        }
        Damage::Scribbled => {
            let mut bytes = std::fs::read(db).unwrap();
            for b in bytes.iter_mut().take(4096) {
                *b ^= 0xa5;
            }
            std::fs::write(db, bytes).unwrap();
        }
        Damage::Deleted => std::fs::remove_file(db).unwrap(),
    }
}

#[tokio::test]
async fn lost_or_damaged_metadata_refuses_to_start_and_is_rebuilt_from_the_pool() {
    let mut daemon = Daemon::start("4GiB", &[]);
    let mut c = daemon.clients().await;
    let dir = c.create("pvc-dir", 64 << 20, &[("kind", "dir")]).await;
    let lp = c.create("pvc-loop", 64 << 20, &[("kind", "loop")]).await;
    let staging = daemon.root().join("s");
    c.stage(&dir, &staging).await.unwrap();
    stowage_tests::write_synced(&staging.join("kept"), b"data that must survive");
    c.unstage(&dir, &staging).await.unwrap();
    let snap = c.snapshot("snap-1", &dir).await.snapshot_id;
    drop(c);
    let db = daemon.state_dir().join("stowage.redb");
    let sound = std::fs::read(&db).unwrap();
    daemon.stop();

    for how in [
        Damage::Emptied,
        Damage::Truncated,
        Damage::Scribbled,
        Damage::Deleted,
    ] {
        std::fs::write(&db, &sound).unwrap();
        damage(&db, how);
        let (status, out) = daemon.run_to_exit();
        assert!(!status.success(), "{how:?}: started on it:\n{out}");
        assert!(!out.contains("panicked"), "{how:?}: {out}");
        assert!(
            out.contains("--rebuild-metadata") && out.contains(db.to_str().unwrap()),
            "{how:?}: the error names the file and the way out:\n{out}"
        );
    }

    // The way out: every volume and snapshot is back, names and data included.
    std::fs::write(&db, &sound).unwrap();
    damage(&db, Damage::Scribbled);
    daemon.restart_with(&["--rebuild-metadata"]);
    let mut c = daemon.clients().await;
    let mut ids = c.list_ids().await;
    ids.sort();
    let mut want = vec![dir.clone(), lp.clone()];
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(c.create("pvc-dir", 64 << 20, &[("kind", "dir")]).await, dir);
    assert_eq!(c.get_snapshot(&snap).await.unwrap().source_volume_id, dir);
    c.stage(&dir, &staging).await.unwrap();
    assert_eq!(
        std::fs::read(staging.join("kept")).unwrap(),
        b"data that must survive"
    );
    c.unstage(&dir, &staging).await.unwrap();
    let kept: Vec<_> = std::fs::read_dir(daemon.state_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".damaged-"))
        .collect();
    assert_eq!(kept.len(), 1, "the damaged file is kept beside the new one");
    // A sound database with the flag still set is left as it is.
    drop(c);
    daemon.restart();
    let mut c = daemon.clients().await;
    assert_eq!(c.list_ids().await.len(), 2);
}
