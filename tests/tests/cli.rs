//! The `vol` command line against a real daemon: output shapes, exit codes, error
//! messages, and attaching volumes into processes in their own mount (and user)
//! namespaces.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use stowage_tests::vol::{bin as vol_bin, fails, json, ok, run as vol};

use stowage_tests::Daemon;

#[tokio::test]
async fn every_command_prints_its_shape_and_exits_with_its_code() {
    let d = Daemon::start("4GiB", &[]);
    // create: JSON object, idempotent repeat, conflicting repeat.
    let created = json(
        ok(
            &d,
            &[
                "--output", "json", "create", "db", "--size", "64MiB", "--kind", "loop", "--fs",
                "ext4",
            ],
        )
        .trim(),
    );
    assert_eq!(created["name"], "db");
    assert_eq!(created["kind"], "loop");
    assert_eq!(created["fs"], "ext4");
    assert_eq!(created["capacity"], "64MiB");
    assert_eq!(created["capacity_bytes"], 64u64 << 20);
    let again = json(
        ok(
            &d,
            &[
                "--output", "json", "create", "db", "--size", "64MiB", "--kind", "loop", "--fs",
                "ext4",
            ],
        )
        .trim(),
    );
    assert_eq!(again["id"], created["id"]);
    let err = fails(
        &d,
        &["create", "db", "--size", "128MiB", "--kind", "loop"],
        1,
    );
    assert!(err.contains("already exists"), "{err}");
    ok(
        &d,
        &["create", "web", "--size", "8MiB", "-o", "compression=zstd"],
    );

    // ls: table, -q names, one JSON object per line.
    let table = ok(&d, &["ls"]);
    let mut lines = table.lines();
    assert!(lines.next().unwrap().starts_with("NAME"));
    assert_eq!(table.lines().count(), 3);
    assert_eq!(ok(&d, &["ls", "-q"]), "db\nweb\n");
    let objs: Vec<_> = ok(&d, &["--output", "json", "ls"])
        .lines()
        .map(json)
        .collect();
    assert_eq!(objs.len(), 2);
    assert_eq!(objs[1]["mutable_parameters"]["compression"], "zstd");

    // inspect: by name and by id; missing → exit 3.
    let by_id = json(
        ok(
            &d,
            &[
                "--output",
                "json",
                "inspect",
                created["id"].as_str().unwrap(),
            ],
        )
        .trim(),
    );
    assert_eq!(by_id["name"], "db");
    assert!(ok(&d, &["inspect", "db"]).contains("capacity_enforced"));
    let err = fails(&d, &["inspect", "nope"], 3);
    assert!(err.contains("nope"), "{err}");

    // snapshot create/ls/rm, clone from volume and from snapshot, expand.
    let snap = json(
        ok(
            &d,
            &["--output", "json", "snapshot", "create", "db", "db-1"],
        )
        .trim(),
    );
    assert_eq!(snap["name"], "db-1");
    assert_eq!(snap["source_volume_id"], created["id"]);
    assert_eq!(ok(&d, &["snapshot", "ls", "db", "-q"]), "db-1\n");
    let clone = json(ok(&d, &["--output", "json", "clone", "db", "db-copy"]).trim());
    assert_eq!(
        clone["source"],
        format!("volume:{}", created["id"].as_str().unwrap())
    );
    // Without --size a clone is as large as its source; a smaller size is refused.
    assert_eq!(clone["capacity"], created["capacity"], "{clone}");
    let err = fails(&d, &["clone", "db", "db-small", "--size", "1MiB"], 2);
    assert!(err.contains("smaller than the source"), "{err}");
    // A bare number is bytes: one below a MiB is refused as a missing unit.
    let err = fails(&d, &["create", "tiny", "--size", "64"], 2);
    assert!(err.contains("give a unit"), "{err}");
    let restored = json(
        ok(
            &d,
            &[
                "--output",
                "json",
                "clone",
                "--from-snapshot",
                "db-1",
                "db-restored",
                "--size",
                "128MiB",
            ],
        )
        .trim(),
    );
    assert_eq!(restored["capacity"], "128MiB");
    let grown = json(
        ok(
            &d,
            &["--output", "json", "expand", "web", "--size", "16MiB"],
        )
        .trim(),
    );
    assert_eq!(grown["capacity"], "16MiB");
    fails(&d, &["snapshot", "rm", "no-such-snap"], 3);
    assert!(ok(&d, &["snapshot", "rm", "db-1"]).contains("removed snapshot db-1"));

    // Usage errors: exit 2.
    let err = fails(&d, &["create", "x", "--size", "lots"], 2);
    assert!(err.contains("lots"), "{err}");
    let out = vol(&d, &["create"]);
    assert_eq!(out.status.code(), Some(2), "clap usage error");

    // rm: then gone.
    for n in ["db", "db-copy", "db-restored", "web"] {
        assert!(ok(&d, &["rm", n]).contains(&format!("removed {n}")));
    }
    fails(&d, &["rm", "db"], 3);
    assert_eq!(ok(&d, &["ls", "-q"]), "");

    // Completion scripts, and a daemon that is not there.
    assert!(ok(&d, &["completion", "bash"]).contains("_vol"));
    let out = Command::new(vol_bin())
        .args(["--socket", "/nonexistent/stowage.sock", "ls"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is it running?"));
}

/// A process in its own mount namespace (and, with `userns`, its own user namespace
/// mapping container root to host uid 100000); killed on drop.
struct Contained {
    child: Child,
}

impl Contained {
    fn start(userns: bool) -> Contained {
        let mut cmd = Command::new("unshare");
        if userns {
            cmd.arg("--user");
        }
        // The shell waits for a line, so the id maps can be written before it goes on.
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "read go; echo ready; exec sleep 600",
        ])
        .stdout(Stdio::piped())
        .stdin(Stdio::piped());
        let mut child = cmd.spawn().expect("unshare");
        if userns {
            let pid = child.id();
            // Root in the namespace is host uid/gid 100000 (as root we may write the
            // maps directly; unshare's --map-users would need /etc/subuid).
            let map = |file: &str| {
                let path = format!("/proc/{pid}/{file}");
                for _ in 0..100 {
                    if std::fs::write(&path, "0 100000 65536\n").is_ok() {
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                panic!("cannot write {path}");
            };
            map("uid_map");
            map("gid_map");
        }
        use std::io::Write;
        writeln!(child.stdin.take().unwrap(), "go").unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        Contained { child }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Runs a shell command inside the namespaces (as the namespace's root).
    fn sh(&self, script: &str) -> Output {
        let pid = self.pid().to_string();
        Command::new("nsenter")
            .args(["-t", &pid, "-m", "-U", "sh", "-c", script])
            .output()
            .unwrap()
    }

    fn sh_mount_only(&self, script: &str) -> Output {
        let pid = self.pid().to_string();
        Command::new("nsenter")
            .args(["-t", &pid, "-m", "sh", "-c", script])
            .output()
            .unwrap()
    }
}

impl Drop for Contained {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Host mount points that this test could have changed: under the daemon's directory,
/// or at the target path (other tests run daemons of their own at the same time).
fn host_mount_points(d: &Daemon, target: &str) -> BTreeSet<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| Path::new(m).starts_with(d.root()) || m.starts_with(target))
        .collect()
}

#[tokio::test]
async fn attach_into_a_mount_namespace_reads_writes_and_detaches_cleanly() {
    let d = Daemon::start("4GiB", &[]);
    ok(
        &d,
        &["create", "shared", "--size", "64MiB", "--kind", "loop"],
    );
    let box1 = Contained::start(false);
    let target = format!("/tmp/stowage-attach-{}/data", std::process::id());
    let before = host_mount_points(&d, &target);

    let out = json(
        ok(
            &d,
            &[
                "--output",
                "json",
                "attach",
                "shared",
                "--pid",
                &box1.pid().to_string(),
                "--target",
                &target,
            ],
        )
        .trim(),
    );
    assert_eq!(out["attached_into"][0], format!("{}:{target}", box1.pid()));
    let r = box1.sh_mount_only(&format!(
        "echo hello > {target}/f && cat {target}/f && grep ' {target} ' /proc/self/mountinfo"
    ));
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(text.starts_with("hello\n"), "{text}");
    assert!(text.contains("nosuid") && text.contains("nodev"), "{text}");
    assert!(
        !host_mount_points(&d, &target).contains(&target),
        "target must not appear on the host"
    );
    fails(&d, &["rm", "shared"], 1);

    ok(
        &d,
        &[
            "detach",
            "shared",
            "--pid",
            &box1.pid().to_string(),
            "--target",
            &target,
        ],
    );
    assert_eq!(
        host_mount_points(&d, &target),
        before,
        "host mount table as before"
    );
    let r = box1.sh_mount_only(&format!(
        "grep -c ' {target} ' /proc/self/mountinfo || true"
    ));
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "0");
    assert!(d.volume_loops().is_empty());

    // Data written inside persisted in the volume.
    let box2 = Contained::start(false);
    ok(
        &d,
        &[
            "attach",
            "shared",
            "--pid",
            &box2.pid().to_string(),
            "--target",
            "/tmp/stowage-attach-ro",
            "--read-only",
        ],
    );
    let r = box2.sh_mount_only(
        "cat /tmp/stowage-attach-ro/f; touch /tmp/stowage-attach-ro/g 2>&1 || echo refused",
    );
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(
        text.starts_with("hello\n") && text.contains("refused"),
        "{text}"
    );
    ok(
        &d,
        &[
            "detach",
            "shared",
            "--pid",
            &box2.pid().to_string(),
            "--target",
            "/tmp/stowage-attach-ro",
        ],
    );
    let _ = std::fs::remove_dir_all(format!("/tmp/stowage-attach-{}", std::process::id()));
    let _ = std::fs::remove_dir("/tmp/stowage-attach-ro");
}

#[tokio::test]
async fn attach_refuses_a_symlink_in_the_target_path() {
    let d = Daemon::start("2GiB", &[]);
    ok(&d, &["create", "s", "--size", "8MiB"]);
    let boxed = Contained::start(false);
    let base = tempfile::Builder::new()
        .prefix("stowage-symlink-")
        .tempdir()
        .unwrap();
    std::os::unix::fs::symlink("/etc", base.path().join("link")).unwrap();
    let target = base.path().join("link/stowage-escape");
    let err = fails(
        &d,
        &[
            "attach",
            "s",
            "--pid",
            &boxed.pid().to_string(),
            "--target",
            target.to_str().unwrap(),
        ],
        2,
    );
    assert!(err.contains("symlink"), "{err}");
    assert!(
        !Path::new("/etc/stowage-escape").exists(),
        "nothing created through the link"
    );
    let v = json(ok(&d, &["--output", "json", "inspect", "s"]).trim());
    assert!(
        v["staging_path"].is_null(),
        "a refused attach leaves nothing staged: {v}"
    );
}

#[tokio::test]
async fn attach_into_a_user_namespace_shows_ownership_as_inside() {
    let d = Daemon::start("2GiB", &[]);
    ok(
        &d,
        &["create", "owned", "--size", "64MiB", "--kind", "loop"],
    );
    let boxed = Contained::start(true);
    let target = "/tmp/stowage-userns-target";
    ok(
        &d,
        &[
            "attach",
            "owned",
            "--pid",
            &boxed.pid().to_string(),
            "--target",
            target,
        ],
    );
    // Inside, the namespace's root creates a file; it must look root-owned inside,
    // and the volume's root directory (host uid 0) must too.
    let r = boxed.sh(&format!(
        "id -u; touch {target}/made-inside && stat -c %u {target}/made-inside {target}"
    ));
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success(),
        "{} {}",
        text,
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(
        text.split_whitespace().collect::<Vec<_>>(),
        ["0", "0", "0"],
        "{text}"
    );
    ok(
        &d,
        &[
            "detach",
            "owned",
            "--pid",
            &boxed.pid().to_string(),
            "--target",
            target,
        ],
    );
    let _ = std::fs::remove_dir(target);
}

/// Attach refuses a second volume at a target another one occupies, and detach
/// removes only the volume's own mount: one made over it inside the container is left
/// alone (refused, the volume stays attached). Image volumes are not attached.
#[tokio::test]
async fn attach_refuses_stacking_and_detach_removes_only_its_own_mount() {
    let d = Daemon::start("2GiB", &[]);
    ok(&d, &["create", "a", "--size", "16MiB"]);
    ok(&d, &["create", "b", "--size", "16MiB", "--kind", "loop"]);
    let boxed = Contained::start(false);
    let pid = boxed.pid().to_string();
    let target = format!("/tmp/stowage-stack-{}", std::process::id());
    ok(&d, &["attach", "a", "--pid", &pid, "--target", &target]);
    let r = boxed.sh_mount_only(&format!("echo A > {target}/f"));
    assert!(r.status.success(), "{r:?}");

    let err = fails(&d, &["attach", "b", "--pid", &pid, "--target", &target], 1);
    assert!(err.contains("volume a is already attached"), "{err}");
    let b = json(ok(&d, &["--output", "json", "inspect", "b"]).trim());
    assert!(b["staging_path"].is_null(), "refused attach staged b: {b}");

    // A mount made inside the container over the volume's.
    let r = boxed.sh_mount_only(&format!("mount -t tmpfs cover {target}"));
    assert!(r.status.success(), "{r:?}");
    let err = fails(&d, &["detach", "a", "--pid", &pid, "--target", &target], 1);
    assert!(err.contains("another mount covers"), "{err}");
    let a = json(ok(&d, &["--output", "json", "inspect", "a"]).trim());
    assert_eq!(a["attached_into"][0], format!("{pid}:{target}"), "{a}");
    fails(&d, &["rm", "a"], 1);
    let r = boxed.sh_mount_only(&format!("umount {target} && cat {target}/f"));
    assert_eq!(String::from_utf8_lossy(&r.stdout), "A\n", "{r:?}");

    ok(&d, &["detach", "a", "--pid", &pid, "--target", &target]);
    let r = boxed.sh_mount_only(&format!("grep -c ' {target} ' /proc/self/mountinfo"));
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "0", "{r:?}");
    ok(&d, &["rm", "a"]);

    // An image volume: its overlay is CSI's business, attach refuses it.
    let layer_dir = tempfile::tempdir().unwrap();
    std::fs::write(layer_dir.path().join("hello"), "from the layer").unwrap();
    let tarball = layer_dir.path().join("layer.tar");
    let st = Command::new("tar")
        .args(["-cf", tarball.to_str().unwrap(), "-C"])
        .arg(layer_dir.path())
        .arg("hello")
        .status()
        .unwrap();
    assert!(st.success());
    let layer = json(
        ok(
            &d,
            &[
                "--output",
                "json",
                "layer",
                "import",
                tarball.to_str().unwrap(),
            ],
        )
        .trim(),
    );
    let key = layer["key"].as_str().expect("layer key").to_string();
    ok(
        &d,
        &[
            "create",
            "img",
            "--size",
            "16MiB",
            "--kind",
            "image",
            "-o",
            &format!("layers={key}"),
        ],
    );
    let err = fails(
        &d,
        &["attach", "img", "--pid", &pid, "--target", "/tmp/img"],
        1,
    );
    assert!(err.contains("image volume"), "{err}");
    let _ = std::fs::remove_dir(&target);
}

/// A completion script nobody reads to the end (`| head`) is no error: here the
/// reader is gone before the first write.
#[test]
fn completion_into_a_closed_pipe_exits_cleanly() {
    let script = format!(
        "{{ sleep 0.3; {} completion bash; }} | true; echo ${{PIPESTATUS[0]}}",
        vol_bin().display()
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An attachment whose container ended does not hold the volume: released at start
/// (after a crash of the daemon) and before an operation it would hold up.
#[tokio::test]
async fn attachments_of_ended_containers_are_released_by_the_daemon() {
    let mut d = Daemon::start("2GiB", &[]);
    ok(&d, &["create", "a", "--size", "16MiB"]);
    ok(&d, &["create", "b", "--size", "16MiB", "--kind", "loop"]);
    let target = format!("/tmp/stowage-ended-{}", std::process::id());

    // Daemon killed while attached; the container ends while it is down.
    let first = Contained::start(false);
    let pid = first.pid().to_string();
    ok(&d, &["attach", "a", "--pid", &pid, "--target", &target]);
    d.kill9();
    drop(first);
    d.restart();
    let a = json(ok(&d, &["--output", "json", "inspect", "a"]).trim());
    assert!(
        a["attached_into"].as_array().is_none_or(|v| v.is_empty()),
        "{a}"
    );
    assert!(a["staging_path"].is_null(), "attach's staging left: {a}");
    assert!(
        d.log()
            .contains("attachment of a process that is gone released")
    );

    // The container ends under a running daemon: rm needs no detach.
    let second = Contained::start(false);
    let pid = second.pid().to_string();
    ok(&d, &["attach", "b", "--pid", &pid, "--target", &target]);
    fails(&d, &["rm", "b"], 1);
    drop(second);
    ok(&d, &["rm", "b"]);
    ok(&d, &["rm", "a"]);
    let _ = std::fs::remove_dir_all(&target);
}
