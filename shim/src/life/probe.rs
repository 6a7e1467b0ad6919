//! Probing the kernel once, at start-up: userfaultfd async write-protect and `PAGEMAP_SCAN`
//! must both work, or the program is refused with the kernel version and what is missing.

use crate::kernel::pagemap::{self, PageRegion, Query};
use crate::kernel::sys;
use crate::kernel::uffd;

/// The userfaultfd and pagemap descriptors, ready for use.
pub struct Kernel {
    pub uffd: i32,
    pub pagemap: i32,
}

/// Returns the descriptors, or a sentence for the user.
pub fn probe() -> Result<Kernel, String> {
    let release = kernel_release();
    // Fault injection for the tests of the refusal and of the fallback (this kernel has the
    // features): `REMUS_FAULT_PROBE=no-wp-async` answers as a kernel without async
    // write-protect would.
    let opened = if crate::base::environ::get("REMUS_FAULT_PROBE").as_deref() == Some("no-wp-async")
    {
        Err(uffd::OpenError::Features {
            errno: libc::EINVAL,
            missing: uffd::UFFD_FEATURE_WP_ASYNC,
        })
    } else {
        uffd::open()
    };
    let uffd = match opened {
        Ok(fd) => fd,
        Err(uffd::OpenError::Syscall(e)) => {
            return Err(format!(
                "this kernel ({release}) refused userfaultfd ({}); remus needs Linux 6.7 or newer with CONFIG_USERFAULTFD (and, if not root, vm.unprivileged_userfaultfd=1 or UFFD_USER_MODE_ONLY support)",
                std::io::Error::from_raw_os_error(e)
            ))
        }
        Err(uffd::OpenError::Features { errno, missing }) => {
            let mut names = Vec::new();
            if missing & uffd::UFFD_FEATURE_WP_ASYNC != 0 {
                names.push("UFFD_FEATURE_WP_ASYNC");
            }
            if missing & uffd::UFFD_FEATURE_WP_UNPOPULATED != 0 {
                names.push("UFFD_FEATURE_WP_UNPOPULATED");
            }
            return Err(format!(
                "this kernel ({release}) lacks userfaultfd {} ({}); remus needs Linux 6.7 or newer for asynchronous write-protect dirty tracking",
                if names.is_empty() { "async write-protect".to_string() } else { names.join(" and ") },
                std::io::Error::from_raw_os_error(errno)
            ));
        }
    };
    let pm = match std::fs::File::open("/proc/self/pagemap") {
        Ok(f) => std::os::fd::IntoRawFd::into_raw_fd(f),
        Err(e) => {
            sys::close(uffd);
            return Err(format!(
                "cannot open /proc/self/pagemap on this kernel ({release}): {e}"
            ));
        }
    };
    if let Err(what) = functional_test(uffd, pm) {
        sys::close(uffd);
        sys::close(pm);
        return Err(format!(
            "this kernel ({release}) does not support PAGEMAP_SCAN with write-protect matching ({what}); remus needs Linux 6.7 or newer"
        ));
    }
    Ok(Kernel { uffd, pagemap: pm })
}

/// For the mprotect tracker: only `/proc/self/pagemap` (read, not `PAGEMAP_SCAN`) is needed;
/// check that it reports a page we just wrote as present.
pub fn probe_mprotect() -> Result<Kernel, String> {
    let release = kernel_release();
    let pm = match std::fs::File::open("/proc/self/pagemap") {
        Ok(f) => std::os::fd::IntoRawFd::into_raw_fd(f),
        Err(e) => {
            return Err(format!(
                "cannot open /proc/self/pagemap on this kernel ({release}): {e}"
            ))
        }
    };
    let mut probe_page = Box::new([0u8; 2 * remus_abi::PAGE_SIZE]);
    probe_page[remus_abi::PAGE_SIZE] = 1;
    let addr = (probe_page.as_ptr() as u64 + remus_abi::PAGE_SIZE as u64) & !4095;
    let mut e = [0u8; 8];
    // SAFETY: pread writes 8 bytes into e.
    let r = unsafe { libc::pread(pm, e.as_mut_ptr() as *mut _, 8, ((addr / 4096) * 8) as i64) };
    if r != 8 || u64::from_ne_bytes(e) & (1 << 63) == 0 {
        sys::close(pm);
        return Err(format!(
            "/proc/self/pagemap on this kernel ({release}) does not report present pages"
        ));
    }
    Ok(Kernel {
        uffd: -1,
        pagemap: pm,
    })
}

/// Protects two fresh pages, writes one, and checks the scan reports exactly that one.
fn functional_test(uffd: i32, pm: i32) -> Result<(), String> {
    let len = 2 * remus_abi::PAGE_SIZE;
    // SAFETY: an anonymous private mapping at a kernel-chosen address; unmapped below.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err("mmap failed".into());
    }
    let start = p as u64;
    let end = start + len as u64;
    let res = (|| {
        uffd::register_wp(uffd, start, end)
            .map_err(|e| format!("UFFDIO_REGISTER: {}", std::io::Error::from_raw_os_error(e)))?;
        uffd::write_protect(uffd, start, end).map_err(|e| {
            format!(
                "UFFDIO_WRITEPROTECT: {}",
                std::io::Error::from_raw_os_error(e)
            )
        })?;
        // SAFETY: p is a writable mapping of two pages.
        unsafe { *(p as *mut u8) = 1 };
        let mut vec = [PageRegion::default(); 4];
        let mut seen = Vec::new();
        pagemap::scan(
            pm,
            start,
            end,
            Query::WrittenAndReprotect,
            &mut vec,
            |a, b| {
                seen.push((a, b));
                Ok(())
            },
        )
        .map_err(|e| format!("PAGEMAP_SCAN: {}", std::io::Error::from_raw_os_error(e)))?;
        if seen != [(start, start + remus_abi::PAGE_SIZE as u64)] {
            return Err(format!(
                "PAGEMAP_SCAN reported {seen:x?} instead of the one written page"
            ));
        }
        Ok(())
    })();
    // SAFETY: unmapping the test mapping made above.
    unsafe { libc::munmap(p, len) };
    res
}

pub fn kernel_release() -> String {
    // SAFETY: uname writes one utsname.
    let mut u: libc::utsname = unsafe { core::mem::zeroed() };
    // SAFETY: u is a valid out-parameter.
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    // SAFETY: the kernel NUL-terminates release.
    unsafe { core::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}
