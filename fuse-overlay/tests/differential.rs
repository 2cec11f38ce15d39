//! Differential tests: the same scripted operations on kernel overlayfs and on our FUSE
//! overlay, over the same lower layers, must give the same observable results (contents,
//! modes, owners, link counts, listings, errno), except where a case documents an
//! improvement. After each case, our upper layer is mounted with kernel overlayfs and
//! must show the same tree as our mount did. Needs root; fails (never skips) without.

mod overlay_harness;

use overlay_harness::{Ctx, Expect, Fixture, case};

macro_rules! same {
    ($name:ident, $layers:expr, |$fx:ident| $setup:block, |$c:ident| $ops:block) => {
        #[test]
        fn $name() {
            case(
                stringify!($name),
                $layers,
                |$fx: &Fixture| $setup,
                |$c: &mut Ctx| $ops,
                Expect::Same,
            );
        }
    };
}

// ---------------------------------------------------------------- lookup and readdir

same!(
    merge_two_layers,
    2,
    |f| {
        f.file(0, "a", "a0").file(1, "b", "b1").file(1, "a", "a1");
    },
    |c| {
        c.ls("");
        c.read("a");
        c.read("b");
        c.stat("a");
    }
);

same!(
    three_layers_order,
    3,
    |f| {
        f.file(0, "x", "top")
            .file(1, "x", "mid")
            .file(2, "x", "bottom");
        f.file(1, "y", "mid")
            .file(2, "y", "bottom")
            .file(2, "z", "bottom");
    },
    |c| {
        c.read("x");
        c.read("y");
        c.read("z");
        c.ls("");
    }
);

same!(
    whiteout_hides_lower_file,
    2,
    |f| {
        f.whiteout(0, "gone")
            .file(1, "gone", "old")
            .file(1, "kept", "k");
    },
    |c| {
        c.ls("");
        c.stat("gone");
        c.read("gone");
    }
);

same!(
    whiteout_inside_merged_dir,
    2,
    |f| {
        f.dir(0, "d")
            .whiteout(0, "d/x")
            .file(1, "d/x", "x")
            .file(1, "d/y", "y");
    },
    |c| {
        c.ls("d");
        c.stat("d/x");
    }
);

same!(
    opaque_dir_hides_lower_contents,
    2,
    |f| {
        f.opaque(0, "d")
            .file(0, "d/top", "t")
            .file(1, "d/hidden", "h");
    },
    |c| {
        c.ls("d");
        c.stat("d/hidden");
        c.listxattr("d");
    }
);

same!(
    file_over_dir,
    2,
    |f| {
        f.file(0, "d", "file").file(1, "d/inner", "i");
    },
    |c| {
        c.stat("d");
        c.read("d");
        c.stat("d/inner");
    }
);

same!(
    dir_over_file_stops_merge,
    3,
    |f| {
        f.file(0, "d/a", "a")
            .file(1, "d", "file")
            .file(2, "d/b", "b");
    },
    |c| {
        c.ls("d");
    }
);

same!(
    nested_merge_three_layers,
    3,
    |f| {
        f.file(0, "a/b/c/top", "1")
            .file(1, "a/b/c/mid", "2")
            .file(2, "a/b/c/bot", "3");
        f.file(2, "a/b/other", "o");
    },
    |c| {
        c.ls("a");
        c.ls("a/b");
        c.ls("a/b/c");
        c.read("a/b/c/bot");
    }
);

same!(
    lower_symlink,
    1,
    |f| {
        f.file(0, "target", "t")
            .symlink(0, "link", "target")
            .symlink(0, "dangling", "nowhere");
    },
    |c| {
        c.readlink("link");
        c.read("link");
        c.stat("link");
        c.read("dangling");
    }
);

same!(
    lower_hardlinks,
    1,
    |f| {
        f.file(0, "a", "shared").hardlink(0, "a", "b");
    },
    |c| {
        c.stat("a");
        c.stat("b");
        c.read("b");
    }
);

same!(
    lower_fifo,
    1,
    |f| {
        f.fifo(0, "pipe");
    },
    |c| {
        c.stat("pipe");
    }
);

same!(
    lower_owner_and_mode,
    1,
    |f| {
        f.file(0, "f", "x")
            .chown(0, "f", 1000, 1001)
            .chmod(0, "f", 0o4750);
        f.dir(0, "d").chown(0, "d", 7, 8).chmod(0, "d", 0o1777);
    },
    |c| {
        c.stat("f");
        c.stat("d");
    }
);

same!(
    lower_xattrs_visible,
    1,
    |f| {
        f.file(0, "f", "x")
            .xattr(0, "f", "user.one", "1")
            .xattr(0, "f", "trusted.two", "2");
    },
    |c| {
        c.getxattr("f", "user.one");
        c.getxattr("f", "trusted.two");
        c.getxattr("f", "user.missing");
        c.listxattr("f");
    }
);

same!(
    deep_tree_lookup,
    2,
    |f| {
        f.file(1, "1/2/3/4/5/6/7/deep", "deep")
            .file(0, "1/2/3/x", "x");
    },
    |c| {
        c.read("1/2/3/4/5/6/7/deep");
        c.ls("1/2/3");
        c.stat("1/2/3/4/5/6/7");
    }
);

same!(
    many_files_listing,
    2,
    |f| {
        for i in 0..150 {
            f.file(i % 2, &format!("dir/f{i:03}"), "x");
        }
        for i in 0..20 {
            f.whiteout(0, &format!("dir/g{i}"));
            f.file(1, &format!("dir/g{i}"), "hidden");
        }
    },
    |c| {
        c.ls("dir");
    }
);

same!(
    empty_lower_dirs,
    2,
    |f| {
        f.dir(0, "e").dir(1, "e").dir(1, "only1");
    },
    |c| {
        c.ls("");
        c.ls("e");
        c.ls("only1");
    }
);

same!(
    merged_dir_nlink,
    2,
    |f| {
        f.file(0, "m/a", "a")
            .file(1, "m/b", "b")
            .file(1, "single/sub/x", "x");
    },
    |c| {
        c.stat_nlink("m");
        c.stat_nlink("single");
    }
);

// ---------------------------------------------------------------- create and write

same!(
    create_in_root,
    1,
    |f| {
        f.file(0, "a", "a");
    },
    |c| {
        c.write("new", "hello");
        c.read("new");
        c.stat("new");
        c.ls("");
    }
);

same!(
    create_in_lower_dir_copies_parent_metadata,
    1,
    |f| {
        f.dir(0, "d")
            .chown(0, "d", 1000, 1000)
            .chmod(0, "d", 0o750)
            .xattr(0, "d", "user.tag", "dir");
        f.file(0, "d/old", "o");
    },
    |c| {
        c.write("d/new", "n");
        c.stat("d");
        c.getxattr("d", "user.tag");
        c.ls("d");
    }
);

same!(
    create_in_deep_lower_dir,
    2,
    |f| {
        f.dir(1, "a/b/c")
            .chown(1, "a/b", 5, 6)
            .chmod(1, "a/b", 0o711)
            .file(0, "a/x", "x");
    },
    |c| {
        c.write("a/b/c/new", "n");
        c.stat("a");
        c.stat("a/b");
        c.stat("a/b/c");
        c.ls("a/b/c");
    }
);

same!(
    mkdir_new_and_existing,
    1,
    |f| {
        f.dir(0, "exists");
    },
    |c| {
        c.mkdir("fresh");
        c.mkdir("exists");
        c.mkdir("fresh/sub");
        c.stat("fresh");
        c.ls("");
    }
);

same!(
    overwrite_lower_file,
    1,
    |f| {
        f.file(0, "f", "old content")
            .chown(0, "f", 1000, 1000)
            .chmod(0, "f", 0o640);
    },
    |c| {
        c.write("f", "new");
        c.read("f");
        c.stat("f");
    }
);

same!(
    append_lower_file,
    2,
    |f| {
        f.file(1, "f", "base").xattr(1, "f", "user.keep", "yes");
    },
    |c| {
        c.append("f", "+tail");
        c.read("f");
        c.getxattr("f", "user.keep");
    }
);

same!(
    copy_up_keeps_mtime_on_chmod,
    1,
    |f| {
        f.file(0, "f", "x").mtime(0, "f", 1_000_000);
    },
    |c| {
        c.stat_times("f");
        c.chmod("f", 0o600);
        c.stat_times("f");
        c.stat("f");
    }
);

same!(
    copy_up_keeps_xattrs,
    1,
    |f| {
        f.file(0, "f", "x")
            .xattr(0, "f", "user.a", "1")
            .xattr(0, "f", "trusted.b", "2");
    },
    |c| {
        c.setxattr("f", "user.c", "3");
        c.listxattr("f");
        c.getxattr("f", "user.a");
        c.getxattr("f", "trusted.b");
    }
);

same!(
    copy_up_keeps_owner_mode,
    1,
    |f| {
        f.file(0, "f", "x")
            .chown(0, "f", 1234, 5678)
            .chmod(0, "f", 0o604);
    },
    |c| {
        c.append("f", "y");
        c.stat("f");
    }
);

same!(
    truncate_lower_file,
    1,
    |f| {
        f.file(0, "f", "0123456789");
    },
    |c| {
        c.truncate("f", 3);
        c.read("f");
        c.stat("f");
    }
);

same!(
    truncate_lower_to_zero,
    1,
    |f| {
        f.file(0, "f", "0123456789").chmod(0, "f", 0o755);
    },
    |c| {
        c.truncate("f", 0);
        c.read("f");
        c.stat("f");
    }
);

same!(
    truncate_extend_sparse,
    1,
    |f| {
        f.file(0, "f", "abc");
    },
    |c| {
        c.truncate("f", 1 << 20);
        c.read("f");
        c.stat("f");
    }
);

same!(
    chmod_chown_lower,
    1,
    |f| {
        f.file(0, "f", "x").dir(0, "d");
    },
    |c| {
        c.chmod("f", 0o4711);
        c.chown("f", 33, 44);
        c.chmod("d", 0o700);
        c.chown("d", 1, 2);
        c.stat("f");
        c.stat("d");
    }
);

same!(
    utimens_lower,
    1,
    |f| {
        f.file(0, "f", "x").dir(0, "d");
    },
    |c| {
        c.utimes("f", 111, 222);
        c.utimes("d", 333, 444);
        c.stat_times("f");
        c.stat_times("d");
    }
);

same!(
    xattr_set_get_remove,
    1,
    |f| {
        f.file(0, "f", "x").xattr(0, "f", "user.old", "o");
    },
    |c| {
        c.removexattr("f", "user.old");
        c.removexattr("f", "user.never");
        c.setxattr("f", "user.new", "n");
        c.getxattr("f", "user.old");
        c.getxattr("f", "user.new");
        c.write("g", "g");
        c.setxattr("g", "user.g", "1");
        c.listxattr("g");
    }
);

same!(
    xattr_on_lower_dir,
    2,
    |f| {
        f.dir(0, "d").file(1, "d/x", "x");
    },
    |c| {
        c.setxattr("d", "user.d", "v");
        c.getxattr("d", "user.d");
        c.ls("d");
    }
);

same!(
    large_file_copy_up,
    1,
    |f| {
        let data: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        f.bytes(0, "big", &data);
    },
    |c| {
        c.append("big", "END");
        c.read("big");
        c.stat("big");
    }
);

same!(
    open_trunc_lower,
    1,
    |f| {
        f.file(0, "f", "long original").chown(0, "f", 9, 9);
    },
    |c| {
        c.write("f", "s");
        c.read("f");
        c.stat("f");
    }
);

// ---------------------------------------------------------------- unlink and rmdir

same!(
    unlink_lower_file,
    2,
    |f| {
        f.file(1, "f", "x").file(0, "g", "g");
    },
    |c| {
        c.unlink("f");
        c.ls("");
        c.stat("f");
        c.unlink("f");
    }
);

same!(
    unlink_upper_file,
    1,
    |f| {
        f.file(0, "a", "a");
    },
    |c| {
        c.write("n", "n");
        c.unlink("n");
        c.ls("");
    }
);

same!(
    unlink_copied_up_file,
    1,
    |f| {
        f.file(0, "f", "x");
    },
    |c| {
        c.append("f", "y");
        c.unlink("f");
        c.stat("f");
        c.ls("");
    }
);

same!(
    unlink_then_recreate,
    2,
    |f| {
        f.file(1, "f", "lower").chown(1, "f", 3, 3);
    },
    |c| {
        c.unlink("f");
        c.write("f", "fresh");
        c.read("f");
        c.stat("f");
        c.ls("");
    }
);

same!(
    unlink_errors,
    1,
    |f| {
        f.dir(0, "d").file(0, "f", "x");
    },
    |c| {
        c.unlink("missing");
        c.unlink("d");
        c.rmdir("f");
        c.rmdir("missing");
    }
);

same!(
    rmdir_lower_empty_dir,
    2,
    |f| {
        f.dir(0, "e").dir(1, "e").dir(1, "e2");
    },
    |c| {
        c.rmdir("e");
        c.rmdir("e2");
        c.ls("");
        c.stat("e");
    }
);

same!(
    rmdir_nonempty_lower_dir,
    2,
    |f| {
        f.file(1, "d/x", "x");
    },
    |c| {
        c.rmdir("d");
        c.ls("d");
    }
);

same!(
    rmdir_after_emptying_merged_dir,
    2,
    |f| {
        f.file(0, "d/a", "a").file(1, "d/b", "b");
    },
    |c| {
        c.unlink("d/a");
        c.unlink("d/b");
        c.ls("d");
        c.rmdir("d");
        c.ls("");
    }
);

same!(
    mkdir_after_rmdir_is_opaque,
    2,
    |f| {
        f.file(0, "d/a", "a")
            .file(1, "d/b", "b")
            .file(1, "d/sub/c", "c");
    },
    |c| {
        c.rm_rf("d");
        c.mkdir("d");
        c.ls("d");
        c.write("d/new", "n");
        c.ls("d");
        c.stat("d/b");
    }
);

same!(
    rm_rf_lower_tree,
    2,
    |f| {
        for i in 0..5 {
            f.file(i % 2, &format!("t/{i}/a/b/file{i}"), "x");
        }
        f.symlink(0, "t/link", "/etc");
    },
    |c| {
        c.rm_rf("t");
        c.ls("");
        c.stat("t");
    }
);

same!(
    unlink_one_lower_hardlink,
    1,
    |f| {
        f.file(0, "a", "shared").hardlink(0, "a", "b");
    },
    |c| {
        c.unlink("a");
        c.read("b");
        c.ls("");
    }
);

same!(
    unlink_open_lower_file,
    1,
    |f| {
        f.file(0, "f", "data");
    },
    |c| {
        c.open_unlink_use("f");
        c.ls("");
    }
);

same!(
    unlink_open_upper_file,
    1,
    |f| {
        f.dir(0, "d");
    },
    |c| {
        c.write("d/f", "mine");
        c.open_unlink_use("d/f");
        c.ls("d");
    }
);

same!(
    readdir_after_create_and_unlink,
    2,
    |f| {
        f.file(0, "d/a", "a").file(1, "d/b", "b");
    },
    |c| {
        c.ls("d");
        c.write("d/c", "c");
        c.ls("d");
        c.unlink("d/b");
        c.ls("d");
        c.unlink("d/c");
        c.ls("d");
        c.write("d/b", "b again");
        c.ls("d");
    }
);

// ---------------------------------------------------------------- rename

same!(
    rename_lower_file,
    2,
    |f| {
        f.file(1, "f", "x").chown(1, "f", 7, 7);
    },
    |c| {
        c.rename("f", "g");
        c.ls("");
        c.read("g");
        c.stat("g");
        c.stat("f");
    }
);

same!(
    rename_lower_file_into_lower_dir,
    1,
    |f| {
        f.file(0, "f", "x").dir(0, "d").file(0, "d/y", "y");
    },
    |c| {
        c.rename("f", "d/f");
        c.ls("");
        c.ls("d");
        c.read("d/f");
    }
);

same!(
    rename_over_lower_file,
    2,
    |f| {
        f.file(0, "a", "A").file(1, "b", "B");
    },
    |c| {
        c.rename("a", "b");
        c.read("b");
        c.ls("");
    }
);

same!(
    rename_upper_file,
    1,
    |f| {
        f.dir(0, "d");
    },
    |c| {
        c.write("x", "x");
        c.rename("x", "d/y");
        c.ls("");
        c.ls("d");
    }
);

same!(
    rename_noreplace,
    1,
    |f| {
        f.file(0, "a", "A").file(0, "b", "B");
    },
    |c| {
        c.rename_noreplace("a", "b");
        c.rename_noreplace("a", "c");
        c.ls("");
        c.read("b");
    }
);

same!(
    rename_upper_dir,
    1,
    |f| {
        f.file(0, "keep", "k");
    },
    |c| {
        c.mkdir_all("new/sub");
        c.write("new/sub/f", "f");
        c.rename("new", "moved");
        c.ls("");
        c.read("moved/sub/f");
    }
);

same!(
    rename_type_errors,
    1,
    |f| {
        f.file(0, "f", "x").file(0, "g", "g");
    },
    |c| {
        c.mkdir("d");
        c.mkdir_all("full/sub");
        c.mkdir("empty");
        c.rename("f", "d");
        c.rename("d", "f");
        c.rename("d", "full");
        c.rename("d", "empty");
        c.rename("g", "missing/g");
        c.rename("nothing", "x");
        c.ls("");
    }
);

same!(
    rename_upper_dir_onto_deleted_lower_dir,
    2,
    |f| {
        f.file(1, "d/old", "o");
    },
    |c| {
        c.rm_rf("d");
        c.mkdir("x");
        c.write("x/new", "n");
        c.rename("x", "d");
        c.ls("d");
    }
);

same!(
    rename_file_back_and_forth,
    1,
    |f| {
        f.file(0, "a", "A");
    },
    |c| {
        c.rename("a", "b");
        c.rename("b", "a");
        c.ls("");
        c.read("a");
    }
);

same!(
    rename_exchange_files,
    2,
    |f| {
        f.file(0, "a", "A").file(1, "b", "B").chown(1, "b", 4, 4);
    },
    |c| {
        c.exchange("a", "b");
        c.read("a");
        c.read("b");
        c.stat("a");
        c.exchange("a", "missing");
        c.write("u", "U");
        c.exchange("u", "a");
        c.read("u");
        c.ls("");
    }
);

same!(
    rename_exchange_upper_dir_and_file,
    1,
    |f| {
        f.file(0, "f", "F").file(0, "old/x", "x");
    },
    |c| {
        c.rm_rf("old");
        c.mkdir("old");
        c.mkdir("d");
        c.write("d/in", "in");
        c.exchange("d", "f");
        c.ls("");
        c.ls("f");
        c.read("d");
        c.exchange("f", "old");
        c.ls("old");
        c.ls("f");
    }
);

// ---------------------------------------------------------------- links and special files

same!(
    link_lower_file,
    1,
    |f| {
        f.file(0, "a", "A").chown(0, "a", 2, 2);
    },
    |c| {
        c.link("a", "b");
        c.stat("a");
        c.stat("b");
        c.append("b", "+");
        c.read("a");
    }
);

same!(
    link_upper_file,
    1,
    |f| {
        f.dir(0, "d");
    },
    |c| {
        c.write("a", "A");
        c.link("a", "d/b");
        c.stat("d/b");
        c.unlink("a");
        c.stat("d/b");
    }
);

same!(
    link_errors,
    1,
    |f| {
        f.file(0, "a", "A").dir(0, "d");
    },
    |c| {
        c.link("a", "a");
        c.link("missing", "x");
        c.link("d", "d2");
    }
);

same!(
    symlink_create,
    1,
    |f| {
        f.file(0, "t", "target");
    },
    |c| {
        c.symlink("t", "l");
        c.symlink("/nonexistent", "dangling");
        c.readlink("l");
        c.read("l");
        c.stat("l");
        c.symlink("t", "l");
    }
);

same!(
    mkfifo_and_mknod,
    1,
    |f| {
        f.dir(0, "dev");
    },
    |c| {
        c.mkfifo("dev/fifo");
        c.mknod_chr("dev/null2", 1, 3);
        c.stat("dev/fifo");
        c.stat("dev/null2");
    }
);

// ---------------------------------------------------------------- mmap

same!(
    mmap_write_lower_file,
    1,
    |f| {
        f.file(0, "f", "0123456789abcdef");
    },
    |c| {
        c.mmap_write("f", 4, "WXYZ");
        c.read("f");
    }
);

same!(
    mmap_write_new_file,
    1,
    |f| {
        f.dir(0, "d");
    },
    |c| {
        c.write("d/f", "................");
        c.mmap_write("d/f", 0, "head");
        c.mmap_write("d/f", 12, "tail");
        c.read("d/f");
    }
);

// ---------------------------------------------------------------- other users

same!(
    create_as_other_user,
    1,
    |f| {
        f.dir(0, "shared").chmod(0, "shared", 0o1777);
    },
    |c| {
        c.sh_as(1000, 1000, "echo hi > shared/mine && cat shared/mine");
        c.stat("shared/mine");
    }
);

same!(
    write_denied_to_other_user,
    1,
    |f| {
        f.file(0, "rootfile", "root").chmod(0, "rootfile", 0o644);
    },
    |c| {
        c.sh_as(1000, 1000, "echo x >> rootfile");
        c.read("rootfile");
    }
);

same!(
    setgid_dir_inherits_group,
    1,
    |f| {
        f.dir(0, "g").chown(0, "g", 0, 4242).chmod(0, "g", 0o2777);
    },
    |c| {
        c.sh_as(1000, 1000, "touch g/file && mkdir g/sub");
        c.stat("g/file");
        c.stat("g/sub");
    }
);

// ---------------------------------------------------------------- inode numbers

same!(
    inode_numbers_consistent,
    2,
    |f| {
        f.file(0, "d/a", "a")
            .file(1, "d/b", "b")
            .file(1, "top", "t")
            .hardlink(1, "top", "top2");
    },
    |c| {
        c.ls_inos_consistent("");
        c.ls_inos_consistent("d");
        let before = c.ino("d/a");
        c.chmod("d/a", 0o600);
        let after = c.ino("d/a");
        c.note(format!("ino kept over copy-up: {}", before == after));
        let t1 = c.ino("top");
        let t2 = c.ino("top2");
        c.note(format!("hard links share ino: {}", t1 == t2));
    }
);

// ---------------------------------------------------------------- more corner cases

/// A read-only descriptor opened before a copy-up: kernel overlayfs (since 4.19) moves
/// it to the copy; with FUSE passthrough the kernel pins the inode to its lower backing
/// file, so the descriptor keeps reading the lower data (see `split_inode`). The write
/// itself succeeds and later opens see the new data.
#[test]
fn read_fd_opened_before_copy_up() {
    case(
        "read_fd_opened_before_copy_up",
        1,
        |f: &Fixture| {
            f.file(0, "f", "old!");
        },
        |c: &mut Ctx| {
            use std::io::Read;
            let mut ro = std::fs::File::open(c.p("f")).unwrap();
            c.write("f", "new!");
            let mut s = String::new();
            ro.read_to_string(&mut s).unwrap();
            c.note(format!("old descriptor reads {s:?}"));
            c.read("f");
        },
        Expect::Deviation {
            kernel_has: r#"old descriptor reads "new!""#,
            ours_has: r#"old descriptor reads "old!""#,
        },
    );
}

same!(
    file_over_deleted_lower_dir,
    2,
    |f| {
        f.file(1, "d/x", "x");
    },
    |c| {
        c.rm_rf("d");
        c.write("d", "now a file");
        c.read("d");
        c.stat("d");
    }
);

same!(
    dir_over_deleted_lower_file,
    1,
    |f| {
        f.file(0, "f", "file");
    },
    |c| {
        c.unlink("f");
        c.mkdir("f");
        c.write("f/inside", "i");
        c.ls("f");
    }
);

same!(
    rename_file_onto_whiteout,
    2,
    |f| {
        f.file(1, "gone", "g").file(0, "src", "s");
    },
    |c| {
        c.unlink("gone");
        c.rename("src", "gone");
        c.read("gone");
        c.ls("");
    }
);

same!(
    chown_lower_symlink,
    1,
    |f| {
        f.file(0, "t", "t").symlink(0, "l", "t");
    },
    |c| {
        c.chown("l", 5, 5);
        c.stat("l");
        c.stat("t");
        c.readlink("l");
    }
);

same!(
    utimens_lower_symlink,
    1,
    |f| {
        f.symlink(0, "l", "nowhere");
    },
    |c| {
        c.utimes("l", 10, 20);
        c.stat_times("l");
    }
);

same!(
    append_mode_writes,
    1,
    |f| {
        f.file(0, "log", "line1\n");
    },
    |c| {
        c.append("log", "line2\n");
        c.append("log", "line3\n");
        c.read("log");
    }
);

same!(
    private_xattrs_refused,
    1,
    |f| {
        f.opaque(0, "o").file(0, "f", "x");
    },
    |c| {
        c.getxattr("o", "trusted.overlay.opaque");
        c.setxattr("f", "trusted.overlay.opaque", "y");
        c.listxattr("o");
    }
);

same!(
    user_xattr_on_symlink_refused,
    1,
    |f| {
        f.symlink(0, "l", "x");
    },
    |c| {
        c.setxattr("l", "user.a", "1");
    }
);

same!(
    chmod_lower_dir_then_create,
    2,
    |f| {
        f.dir(1, "d").file(1, "d/a", "a");
    },
    |c| {
        c.chmod("d", 0o700);
        c.write("d/b", "b");
        c.stat("d");
        c.ls("d");
    }
);

same!(
    many_copy_ups_in_one_dir,
    2,
    |f| {
        for i in 0..40 {
            f.file(i % 2, &format!("d/f{i}"), &format!("{i}"));
        }
    },
    |c| {
        for i in (0..40).step_by(3) {
            c.append(&format!("d/f{i}"), "+");
        }
        for i in (1..40).step_by(7) {
            c.unlink(&format!("d/f{i}"));
        }
        c.ls("d");
    }
);

// ---------------------------------------------------------------- documented differences

/// Hard links of a lower file are one inode here, so renaming one onto the other is the
/// POSIX no-op; kernel overlayfs without `index=on` gives each name its own inode and
/// removes the source name.
#[test]
fn rename_lower_hardlink_onto_itself() {
    case(
        "rename_lower_hardlink_onto_itself",
        1,
        |f: &Fixture| {
            f.file(0, "a", "A").hardlink(0, "a", "b");
        },
        |c: &mut Ctx| {
            c.rename("a", "b");
            c.ls("");
        },
        Expect::Improved {
            kernel_has: "ls : [\"b\"]",
            ours: &[
                "rename a b: ok",
                r#"ls : ["a", "b"]"#,
                "-- tree --",
                "a file 644 0:0 nlink=2 size=1 data=af63fc4c860222ec",
                "b file 644 0:0 nlink=2 size=1 data=af63fc4c860222ec",
            ],
        },
    );
}

/// Renaming a directory that lives in a lower layer: kernel overlayfs without
/// `redirect_dir` answers EXDEV; we copy the merged subtree up and rename it.
#[test]
fn rename_lower_dir() {
    case(
        "rename_lower_dir",
        1,
        |f: &Fixture| {
            f.file(0, "d/a", "A")
                .file(0, "d/sub/b", "B")
                .symlink(0, "d/l", "a");
            f.chown(0, "d", 10, 20)
                .chmod(0, "d", 0o750)
                .xattr(0, "d/a", "user.x", "1");
        },
        |c: &mut Ctx| {
            c.rename("d", "e");
            c.ls("");
            c.ls("e");
            c.read("e/sub/b");
            c.stat("e");
            c.getxattr("e/a", "user.x");
        },
        Expect::Improved {
            kernel_has: "rename d e: EXDEV",
            ours: &[
                "rename d e: ok",
                r#"ls : ["e"]"#,
                r#"ls e: ["a", "l", "sub"]"#,
                r#"read e/sub/b: "B""#,
                "stat e: dir 750 10:20",
                "getxattr e/a user.x: 1",
                "-- tree --",
                "e dir 750 10:20",
                "e/a file 644 0:0 nlink=1 size=1 data=af63fc4c860222ec user.x=1",
                "e/l symlink 777 0:0 nlink=1 -> a",
                "e/sub dir 755 0:0",
                "e/sub/b file 644 0:0 nlink=1 size=1 data=af63ff4c86022805",
            ],
        },
    );
}

/// A merged directory (two lower layers and the upper) renamed, then the old name
/// reused: the new directory must not show the old contents.
#[test]
fn rename_merged_dir_then_reuse_name() {
    case(
        "rename_merged_dir_then_reuse_name",
        2,
        |f: &Fixture| {
            f.file(0, "d/top", "T")
                .file(1, "d/bottom", "B")
                .whiteout(0, "d/gone");
            f.file(1, "d/gone", "G");
        },
        |c: &mut Ctx| {
            c.write("d/upper", "U");
            c.rename("d", "moved");
            c.mkdir("d");
            c.ls("d");
            c.ls("moved");
        },
        Expect::Improved {
            kernel_has: "rename d moved: EXDEV",
            ours: &[
                "write d/upper: ok",
                "rename d moved: ok",
                "mkdir d: ok",
                "ls d: []",
                r#"ls moved: ["bottom", "top", "upper"]"#,
                "-- tree --",
                "d dir 755 0:0",
                "moved dir 755 0:0",
                "moved/bottom file 644 0:0 nlink=1 size=1 data=af63ff4c86022805",
                "moved/top file 644 0:0 nlink=1 size=1 data=af64094c86023903",
                "moved/upper file 644 0:0 nlink=1 size=1 data=af64084c86023750",
            ],
        },
    );
}

/// A lower directory moved into another lower directory, over an empty lower directory.
#[test]
fn rename_lower_dir_over_empty_lower_dir() {
    case(
        "rename_lower_dir_over_empty_lower_dir",
        2,
        |f: &Fixture| {
            f.file(1, "src/x", "X")
                .dir(0, "dst/empty")
                .file(1, "dst/empty/.keep_out", "no");
            f.whiteout(0, "dst/empty/.keep_out");
        },
        |c: &mut Ctx| {
            c.ls("dst/empty");
            c.rename("src", "dst/empty");
            c.ls("dst/empty");
            c.ls("");
        },
        Expect::Improved {
            kernel_has: "rename src dst/empty: EXDEV",
            ours: &[
                "ls dst/empty: []",
                "rename src dst/empty: ok",
                r#"ls dst/empty: ["x"]"#,
                r#"ls : ["dst"]"#,
                "-- tree --",
                "dst dir 755 0:0",
                "dst/empty dir 755 0:0",
                "dst/empty/x file 644 0:0 nlink=1 size=1 data=af64154c86024d67",
            ],
        },
    );
}

// ---------------------------------------------------------------- OCI forms (ours only)

/// OCI whiteouts (`.wh.NAME`) and opaque markers (`.wh..wh..opq`) in lower layers are
/// honoured; kernel overlayfs does not read these forms.
#[test]
fn oci_whiteout_and_opaque_marker() {
    case(
        "oci_whiteout_and_opaque_marker",
        2,
        |f: &Fixture| {
            f.oci_whiteout(0, "", "gone")
                .file(1, "gone", "G")
                .file(1, "kept", "K");
            f.opaque_marker(0, "o")
                .file(0, "o/top", "T")
                .file(1, "o/hidden", "H");
        },
        |c: &mut Ctx| {
            c.ls("");
            c.stat("gone");
            c.ls("o");
            c.stat(".wh.gone");
        },
        Expect::OursOnly(&[
            r#"ls : ["kept", "o"]"#,
            "stat gone: ENOENT",
            r#"ls o: ["top"]"#,
            "stat .wh.gone: ENOENT",
            "-- tree --",
            "kept file 644 0:0 nlink=1 size=1 data=af64064c860233ea",
            "o dir 755 0:0",
            "o/top file 644 0:0 nlink=1 size=1 data=af64094c86023903",
        ]),
    );
}

// ---------------------------------------------------------------- read-only overlays

/// Every path under `root` with its mode, size, mtime and content (for files).
fn layer_state(root: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).unwrap();
        let content = if md.is_file() {
            std::fs::read(&p).unwrap()
        } else {
            Vec::new()
        };
        out.push(format!(
            "{} {:o} {} {} {content:?}",
            p.display(),
            md.mode(),
            md.size(),
            md.mtime_nsec() + md.mtime() * 1_000_000_000
        ));
        if md.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

/// Without an upper layer the overlay is read-only: the merged view is the same as
/// kernel overlayfs's (whiteouts and opaque directories of the top layer honoured),
/// every change fails with EROFS on both, and no layer is touched.
#[test]
fn read_only_overlay_matches_kernel_and_refuses_changes() {
    overlay_harness::require_root();
    let f = Fixture::new(3);
    f.file(0, "top", "T")
        .file(1, "mid", "M")
        .file(2, "bottom", "B")
        .file(2, "hidden", "H")
        .whiteout(0, "hidden")
        .file(1, "d/one", "1")
        .file(2, "d/two", "2")
        .file(2, "opq/gone", "G")
        .opaque(0, "opq")
        .file(0, "opq/kept", "K")
        .file(2, "shadow", "low")
        .file(1, "shadow", "high");
    let before = layer_state(f.root.path());
    let ops = |c: &mut Ctx| {
        c.ls("");
        c.ls("d");
        c.ls("opq");
        c.read("shadow");
        c.read("top");
        c.stat("bottom");
        c.append("bottom", "+");
        c.write("new", "x");
        c.unlink("top");
        c.mkdir("dir");
        c.rmdir("d");
        c.rename("mid", "mid2");
        c.chmod("top", 0o600);
        c.truncate("shadow", 0);
        c.symlink("top", "link");
        c.setxattr("top", "user.x", "1");
    };
    let kernel = overlay_harness::run_read_only(fuse_overlay::overlay::Backend::Kernel, &f, &ops);
    let ours = overlay_harness::run_read_only(fuse_overlay::overlay::Backend::Fuse, &f, &ops);
    assert_eq!(kernel, ours, "kernel vs ours:\n{kernel:#?}\n{ours:#?}");
    assert!(
        ours.iter().filter(|l| l.contains("EROFS")).count() >= 9,
        "every change refused: {ours:#?}"
    );
    assert_eq!(layer_state(f.root.path()), before, "no layer was changed");
}

/// Copying a lower file up leaves its access time alone (layers are shared by many
/// overlays), as kernel overlayfs does; so does reading it on kernel overlayfs. Under
/// FUSE passthrough a read is the kernel's, through a backing file it opens with the
/// reader's flags (O_NOATIME cannot be added): the lower file's atime follows the
/// lower filesystem's own rule (relatime: at most once a day) — a documented
/// difference.
#[test]
fn lower_access_times_do_not_change() {
    overlay_harness::require_root();
    for backend in [
        fuse_overlay::overlay::Backend::Kernel,
        fuse_overlay::overlay::Backend::Fuse,
    ] {
        let f = Fixture::new(1);
        f.file(0, "read", "r").file(0, "copied", "c");
        // atime before mtime: relatime would update it on the next read.
        for name in ["read", "copied"] {
            let p = f.lowers[0].join(name);
            nix::sys::stat::utimes(
                &p,
                &nix::sys::time::TimeVal::new(1_000, 0),
                &nix::sys::time::TimeVal::new(2_000, 0),
            )
            .unwrap();
        }
        let ops = |c: &mut Ctx| {
            c.read("read");
            c.append("copied", "+");
            c.read("copied");
        };
        let tmp = tempfile::tempdir().unwrap();
        let (u, w, m) = (
            tmp.path().join("u"),
            tmp.path().join("w"),
            tmp.path().join("m"),
        );
        for d in [&u, &w, &m] {
            std::fs::create_dir(d).unwrap();
        }
        let layers = fuse_overlay::overlay::Layers::writable(f.lowers.clone(), u, w);
        let guard = fuse_overlay::overlay::Overlay::mount(
            backend,
            &layers,
            &m,
            &fuse_overlay::overlay::MountOptions::default(),
        )
        .unwrap();
        let mut c = Ctx {
            root: m.clone(),
            log: Vec::new(),
        };
        ops(&mut c);
        assert_eq!(
            c.log,
            vec![
                r#"read read: "r""#.to_string(),
                "append copied: ok".into(),
                r#"read copied: "c+""#.into()
            ]
        );
        guard.unmount().unwrap();
        use std::os::unix::fs::MetadataExt;
        let atime = |name: &str| std::fs::metadata(f.lowers[0].join(name)).unwrap().atime();
        assert_eq!(
            atime("copied"),
            1_000,
            "{backend:?}: copy-up changed the atime"
        );
        if backend == fuse_overlay::overlay::Backend::Kernel {
            assert_eq!(atime("read"), 1_000, "kernel: a read changed the atime");
        } else {
            assert!(atime("read") > 1_000, "passthrough reads follow relatime");
        }
    }
}

// ---------------------------------------------------------------- the stowage-overlay binary

/// Mounts through the `stowage-overlay` binary in both command-line forms (its own and
/// the one fuse3's mount helper uses), checks that it daemonizes once the mount is up,
/// runs a short script with known results, and checks that the daemon
/// exits when the mount goes away.
#[test]
fn stowage_overlay_binary() {
    overlay_harness::require_root();
    let bin = env!("CARGO_BIN_EXE_stowage-overlay");
    for helper_form in [false, true] {
        let f = Fixture::new(2);
        f.file(0, "a", "A")
            .file(1, "d/b", "B")
            .whiteout(0, "gone")
            .file(1, "gone", "G");
        let tmp = tempfile::tempdir().unwrap();
        let (upper, work, mnt) = (
            tmp.path().join("u"),
            tmp.path().join("w"),
            tmp.path().join("m"),
        );
        for d in [&upper, &work, &mnt] {
            std::fs::create_dir(d).unwrap();
        }
        let opts = format!(
            "lowerdir={}:{},upperdir={},workdir={}",
            f.lowers[0].display(),
            f.lowers[1].display(),
            upper.display(),
            work.display()
        );
        let mut cmd = std::process::Command::new(bin);
        if helper_form {
            cmd.arg("overlay")
                .arg(&mnt)
                .arg("-o")
                .arg(format!("rw,nosuid,{opts}"));
        } else {
            cmd.arg("-o").arg(&opts).arg(&mnt);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "stowage-overlay failed: {out:?}");
        let guard = overlay_harness::LazyUnmount(mnt.clone());
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        let line = mounts
            .lines()
            .find(|l| l.split(' ').nth(1) == Some(mnt.to_str().unwrap()))
            .expect("mount is up when the command returns");
        assert!(line.contains(" fuse.stowage-overlay "), "{line}");
        assert_eq!(line.contains("nosuid"), helper_form, "{line}");

        let mut c = Ctx {
            root: mnt.clone(),
            log: Vec::new(),
        };
        c.ls("");
        c.append("a", "+");
        c.read("a");
        c.rename("a", "d/a");
        c.ls("d");
        assert_eq!(
            c.log,
            vec![
                r#"ls : ["a", "d"]"#,
                "append a: ok",
                r#"read a: "A+""#,
                "rename a d/a: ok",
                r#"ls d: ["a", "b"]"#,
            ]
        );
        // The kernel may still be releasing the files just closed (FUSE RELEASE is
        // asynchronous): a moment of EBUSY is not a failure.
        let mut st = nix::mount::umount(&mnt);
        for _ in 0..20 {
            if st != Err(nix::errno::Errno::EBUSY) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            st = nix::mount::umount(&mnt);
        }
        assert!(st.is_ok(), "umount: {st:?}");
        std::mem::forget(guard);
        // The daemon notices the unmount and exits.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let running = std::process::Command::new("pgrep")
                .arg("-f")
                .arg(format!("stowage-overlay.*{}", mnt.display()))
                .output()
                .unwrap();
            if !running.status.success() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "daemon still running after umount"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// A bad command line fails with a message and mounts nothing.
#[test]
fn stowage_overlay_binary_refuses_bad_options() {
    overlay_harness::require_root();
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stowage-overlay"))
        .arg("-o")
        .arg("lowerdir=/nonexistent,upperdir=/nonexistent,workdir=/nonexistent")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(tmp.path().to_str().unwrap()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stowage-overlay"))
        .arg("-o")
        .arg("lowerdir=/l,upperdir=/u,workdir=/w,squash_to_root")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not supported"));
}
