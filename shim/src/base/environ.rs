//! The process's environment, read and changed through `environ` itself.
//!
//! Not through libc's `getenv`/`setenv` (nor `std::env`, which calls them): the program may
//! define its own. bash does, and before its `main` its `getenv` misses variables and its
//! `setenv` changes nothing that bash later exports; a child of a protected bash then never
//! learnt it is a child. Changing `environ` before `main` is what every program, bash
//! included, imports as its environment. Start-up and hooks only (allocates), never the
//! signal path.

use std::ffi::{CStr, CString};

extern "C" {
    static mut environ: *mut *mut libc::c_char;
}

/// The `NAME=value` entries, in order.
fn entries() -> Vec<&'static [u8]> {
    let mut out = Vec::new();
    // SAFETY: environ is null or a null-terminated array of C strings; start-up and hooks run
    // on the program's one thread, which is the only writer (here or in libc).
    unsafe {
        let mut p = environ;
        while !p.is_null() && !(*p).is_null() {
            out.push(CStr::from_ptr(*p).to_bytes());
            p = p.add(1);
        }
    }
    out
}

fn value<'a>(kv: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let n = name.as_bytes();
    (kv.len() > n.len() && kv.starts_with(n) && kv[n.len()] == b'=').then(|| &kv[n.len() + 1..])
}

/// The value of `name`, when set and valid UTF-8.
pub fn get(name: &str) -> Option<String> {
    entries()
        .into_iter()
        .find_map(|kv| value(kv, name))
        .and_then(|v| String::from_utf8(v.to_vec()).ok())
}

/// Sets `name` (replacing it) or, with `None`, removes it. The new array and strings are never
/// freed (a few per process lifetime); the old ones stay valid for whoever still holds them.
pub fn set(name: &str, val: Option<&str>) {
    let mut keep: Vec<*mut libc::c_char> = Vec::new();
    for kv in entries() {
        if value(kv, name).is_none() && kv != name.as_bytes() {
            keep.push(kv.as_ptr() as *mut libc::c_char);
        }
    }
    if let Some(v) = val {
        if let Ok(c) = CString::new(format!("{name}={v}")) {
            keep.push(c.into_raw());
        }
    }
    keep.push(core::ptr::null_mut());
    let array = Box::leak(keep.into_boxed_slice());
    // SAFETY: as in `entries`; the new array is null-terminated and lives forever.
    unsafe { environ = array.as_mut_ptr() };
}
