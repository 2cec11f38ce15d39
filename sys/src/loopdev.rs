//! Loop devices: asking /dev/loop-control for a free one, configuring one on a backing
//! file (LOOP_CONFIGURE), detaching, and re-reading the backing file's size.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::check;

// From <linux/loop.h>.
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;

const LOOP_SET_CAPACITY: libc::c_ulong = 0x4C07;

const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;

/// `lo_flags`: the device is read-only.
pub const LO_FLAGS_READ_ONLY: u32 = 1;

/// `lo_flags`: the loop driver does direct I/O on the backing file.
pub const LO_FLAGS_DIRECT_IO: u32 = 16;

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

impl LoopInfo64 {
    /// Every field zero.
    const fn zeroed() -> Self {
        LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: 0,
            lo_file_name: [0; 64],
            lo_crypt_name: [0; 64],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        }
    }
}

/// `struct loop_config` from <linux/loop.h>.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
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
            lo_flags: flags,
            ..LoopInfo64::zeroed()
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

/// The device and inode numbers of the file bound to loop device `dev`
/// (LOOP_GET_STATUS64), the device encoded as `stat`'s `st_dev` is. Unlike
/// sysfs's `backing_file`, which is a path as seen from the mount namespace of
/// whoever bound the device, these name the file in every namespace.
pub fn loop_backing_file_id(dev: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let mut info = LoopInfo64::zeroed();
    // SAFETY: LOOP_GET_STATUS64 writes one `struct loop_info64`, which `LoopInfo64`
    // mirrors with #[repr(C)]; the pointer is valid and exclusive for the call.
    check(unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            LOOP_GET_STATUS64,
            &mut info as *mut LoopInfo64,
        )
    })?;
    Ok((info.lo_device, info.lo_inode))
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
