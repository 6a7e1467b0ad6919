//! userfaultfd in asynchronous write-protect mode: the kernel resolves write faults itself and
//! leaves the page marked written, so tracking costs no signal and no thread.
//!
//! The headers on these machines predate the kernel, so the layouts and numbers below are
//! copied from the kernel's `include/uapi/linux/userfaultfd.h`.

use super::sys;

const UFFD_API: u64 = 0xAA;
const UFFD_USER_MODE_ONLY: usize = 1;
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;

const fn iowr(ty: u64, nr: u64, size: u64) -> u64 {
    (3 << 30) | (size << 16) | (ty << 8) | nr
}

const UFFDIO_API: u64 = iowr(0xAA, 0x3F, 24);
const UFFDIO_REGISTER: u64 = iowr(0xAA, 0x00, 32);
const UFFDIO_WRITEPROTECT: u64 = iowr(0xAA, 0x06, 24);
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

/// Opens a userfaultfd with async write-protect. Returns the fd, or the features the kernel
/// lacks (as a bitmask) / the errno.
pub fn open() -> Result<i32, OpenError> {
    // SAFETY: userfaultfd takes only flags.
    let fd = unsafe {
        sys::raw6(
            libc::SYS_userfaultfd,
            libc::O_CLOEXEC as usize | libc::O_NONBLOCK as usize | UFFD_USER_MODE_ONLY,
            0,
            0,
            0,
            0,
            0,
        )
    }
    .map_err(OpenError::Syscall)? as i32;
    let want = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
    let mut api = UffdioApi {
        api: UFFD_API,
        features: want,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes one UffdioApi.
    if let Err(e) = unsafe { sys::ioctl(fd, UFFDIO_API, &mut api) } {
        sys::close(fd);
        // Ask what the kernel does support, for the error message.
        return Err(OpenError::Features {
            errno: e,
            missing: want & !supported_features(),
        });
    }
    Ok(fd)
}

fn supported_features() -> u64 {
    // SAFETY: as in `open`.
    let Ok(fd) = (unsafe {
        sys::raw6(
            libc::SYS_userfaultfd,
            libc::O_CLOEXEC as usize | UFFD_USER_MODE_ONLY,
            0,
            0,
            0,
            0,
            0,
        )
    }) else {
        return 0;
    };
    let mut api = UffdioApi {
        api: UFFD_API,
        features: 0,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes one UffdioApi.
    let r = unsafe { sys::ioctl(fd as i32, UFFDIO_API, &mut api) };
    sys::close(fd as i32);
    if r.is_ok() {
        api.features
    } else {
        0
    }
}

pub enum OpenError {
    Syscall(i32),
    Features { errno: i32, missing: u64 },
}

/// Registers `[start, end)` for write-protect tracking.
pub fn register_wp(uffd: i32, start: u64, end: u64) -> Result<(), i32> {
    let mut reg = UffdioRegister {
        range: UffdioRange {
            start,
            len: end - start,
        },
        mode: UFFDIO_REGISTER_MODE_WP,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER reads and writes one UffdioRegister.
    unsafe { sys::ioctl(uffd, UFFDIO_REGISTER, &mut reg) }.map(|_| ())
}

/// Write-protects `[start, end)` (including unpopulated pages, thanks to WP_UNPOPULATED), so
/// the next write to each page marks it written.
pub fn write_protect(uffd: i32, start: u64, end: u64) -> Result<(), i32> {
    let mut wp = UffdioWriteprotect {
        range: UffdioRange {
            start,
            len: end - start,
        },
        mode: UFFDIO_WRITEPROTECT_MODE_WP,
    };
    // SAFETY: UFFDIO_WRITEPROTECT reads one UffdioWriteprotect.
    unsafe { sys::ioctl(uffd, UFFDIO_WRITEPROTECT, &mut wp) }.map(|_| ())
}
