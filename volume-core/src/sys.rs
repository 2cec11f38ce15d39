//! The crate's only unsafe code: ioctls that neither nix nor rustix wraps (loop device
//! configuration, inode flags). Each function takes borrowed file descriptors and returns
//! `io::Result`, so callers stay safe.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

// From <linux/loop.h>.
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_CAPACITY: libc::c_ulong = 0x4C07;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;

/// `lo_flags`: the device is read-only.
pub const LO_FLAGS_READ_ONLY: u32 = 1;
/// `lo_flags`: the loop driver does direct I/O on the backing file.
pub const LO_FLAGS_DIRECT_IO: u32 = 16;

// From <linux/fs.h>.
const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
/// Inode flag: no copy-on-write (btrfs nodatacow).
pub const FS_NOCOW_FL: libc::c_long = 0x0080_0000;

/// `struct loop_info64` from <linux/loop.h>.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` from <linux/loop.h>.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Asks /dev/loop-control for the number of a free loop device (creating one if needed).
pub fn loop_ctl_get_free(control: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: LOOP_CTL_GET_FREE takes no argument and only returns an int; the fd is a
    // valid open descriptor for the duration of the call.
    let n = check(unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) })?;
    Ok(n as u32)
}

/// Binds `backing` to the loop device `dev` in one step (LOOP_CONFIGURE).
pub fn loop_configure(
    dev: BorrowedFd<'_>,
    backing: BorrowedFd<'_>,
    block_size: u32,
    flags: u32,
) -> io::Result<()> {
    let config = LoopConfig {
        fd: backing.as_raw_fd() as u32,
        block_size,
        info: LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: flags,
            lo_file_name: [0; 64],
            lo_crypt_name: [0; 64],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        },
        reserved: [0; 8],
    };
    // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, which `LoopConfig` mirrors
    // with #[repr(C)]; the pointer is valid for the call and not retained by the kernel.
    check(unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            LOOP_CONFIGURE,
            &config as *const LoopConfig,
        )
    })?;
    Ok(())
}

/// Unbinds a loop device from its backing file.
pub fn loop_clr_fd(dev: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: LOOP_CLR_FD takes no argument; the fd is valid for the call.
    check(unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CLR_FD) })?;
    Ok(())
}

/// Makes a loop device re-read the size of its backing file.
pub fn loop_set_capacity(dev: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: LOOP_SET_CAPACITY takes no argument; the fd is valid for the call.
    check(unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_CAPACITY) })?;
    Ok(())
}

/// Reads an inode's flags (FS_IOC_GETFLAGS).
pub fn get_inode_flags(file: BorrowedFd<'_>) -> io::Result<libc::c_long> {
    let mut flags: libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one long through the pointer, which points to a
    // live local for the duration of the call.
    check(unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            FS_IOC_GETFLAGS,
            &mut flags as *mut libc::c_long,
        )
    })?;
    Ok(flags)
}

/// Writes an inode's flags (FS_IOC_SETFLAGS).
pub fn set_inode_flags(file: BorrowedFd<'_>, flags: libc::c_long) -> io::Result<()> {
    // SAFETY: FS_IOC_SETFLAGS reads one long through the pointer, which points to a live
    // local for the duration of the call.
    check(unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            FS_IOC_SETFLAGS,
            &flags as *const libc::c_long,
        )
    })?;
    Ok(())
}

// From <linux/fs.h>: _IOWR('X', 119, int) and _IOWR('X', 120, int).
const FIFREEZE: libc::c_ulong = 0xC004_5877;
const FITHAW: libc::c_ulong = 0xC004_5878;

/// Freezes the filesystem `mount_dir` is the root of: flushes it and blocks new writes
/// until [`thaw`], so a copy of its device taken meanwhile is consistent.
pub fn freeze(mount_dir: BorrowedFd<'_>) -> io::Result<()> {
    let arg: libc::c_int = 0;
    // SAFETY: FIFREEZE takes an int argument it ignores; the fd is valid for the call.
    check(unsafe { libc::ioctl(mount_dir.as_raw_fd(), FIFREEZE, arg) })?;
    Ok(())
}

/// Thaws a filesystem frozen with [`freeze`].
pub fn thaw(mount_dir: BorrowedFd<'_>) -> io::Result<()> {
    let arg: libc::c_int = 0;
    // SAFETY: FITHAW takes an int argument it ignores; the fd is valid for the call.
    check(unsafe { libc::ioctl(mount_dir.as_raw_fd(), FITHAW, arg) })?;
    Ok(())
}

/// Sets extended attribute `name` of the file at `path` (not following a final symlink).
pub fn lsetxattr(path: &std::path::Path, name: &str, value: &[u8]) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let c_name =
        std::ffi::CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: both strings are NUL-terminated and live for the call; `value` points to
    // `value.len()` readable bytes.
    check(unsafe {
        libc::lsetxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })?;
    Ok(())
}
