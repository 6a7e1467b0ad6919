//! The standby's committed image on disk, `STATE_DIR/image.remus`, and its JSON form for
//! `remusctl inspect` (in the spirit of CRIU's `crit`).
//!
//! Layout (all integers little-endian):
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `REMUSIMG` |
//! | 8 | 4 | format version ([`VERSION`]) |
//! | 12 | 4 | page size (4096) |
//! | 16 | 8 | `meta_len`: bytes of metadata (at most [`MAX_META`]) |
//! | 24 | 8 | `pages`: number of pages (at most [`MAX_PAGES`]) |
//! | 32 | 4 | CRC-32 of every byte after the header |
//! | 36 | 4 | zero |
//! | 40 | `meta_len` | the epoch's [`EpochMeta`] (MessagePack, rmp-serde) |
//! | … | 8 × `pages` | page addresses, ascending |
//! | … | 4096 × `pages` | page contents, in the same order |
//!
//! The file is exactly that long; it is written to `image.remus.tmp` and renamed, so a reader
//! sees a whole image or the previous one. The standby writes it after it acknowledged a
//! restorable epoch, at most once per [`PERSIST_INTERVAL`] and at most a tenth of the time
//! (a large image written every epoch would make the standby fall behind), so it may be that
//! much older than the image in memory, which is what a takeover restores.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::image::{
    parse_maps, EpochMeta, Image, KernelObject, PAGE_SIZE, THREAD_LEADER, THREAD_MAIN,
};

pub const MAGIC: [u8; 8] = *b"REMUSIMG";
pub const VERSION: u32 = 1;
pub const HEADER_LEN: u64 = 40;
/// Metadata larger than this is refused (a corrupt length, not a real epoch).
pub const MAX_META: u64 = 256 << 20;
/// 64 GiB of pages.
pub const MAX_PAGES: u64 = 1 << 24;
/// The file's name in the state directory.
pub const FILE_NAME: &str = "image.remus";
/// The least time between two writes of the file.
pub const PERSIST_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum SaveImageError {
    #[error("the image has no committed epoch yet: nothing to save")]
    Empty,
    #[error("encoding the epoch's metadata: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("writing {path}: {source}; check the state directory is writable and has space")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LoadImageError {
    #[error(
        "cannot read {path}: {source} (is it a standby's state directory that committed an epoch?)"
    )]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a remus image (bad magic {found:02x?}, want \"REMUSIMG\")")]
    Magic { path: PathBuf, found: [u8; 8] },
    #[error("{path}: image format version {found}, this remusctl reads version {VERSION}: use the remus that wrote it")]
    Version { path: PathBuf, found: u32 },
    #[error("{path}: page size {found}, want {PAGE_SIZE}")]
    PageSize { path: PathBuf, found: u32 },
    #[error(
        "{path}: header says {what} = {found}, above the limit {limit}: the header is corrupt"
    )]
    Limit {
        path: PathBuf,
        what: &'static str,
        found: u64,
        limit: u64,
    },
    #[error("{path}: truncated: {actual} bytes, the header says {expected}; the file was cut short (disk full, or copied while written?)")]
    Truncated {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("{path}: {actual} bytes, the header says {expected}: trailing bytes after the image")]
    Trailing {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("{path}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): the file is corrupt; a running standby rewrites it at its next epoch")]
    Checksum {
        path: PathBuf,
        stored: u32,
        computed: u32,
    },
    #[error("{path}: the epoch metadata does not decode: {source}")]
    Meta {
        path: PathBuf,
        #[source]
        source: rmp_serde::decode::Error,
    },
    #[error("{path}: page addresses are not ascending page-aligned addresses (at {addr:#x})")]
    PageIndex { path: PathBuf, addr: u64 },
}

/// An image read back from disk.
pub struct LoadedImage {
    pub meta: EpochMeta,
    /// Page addresses, ascending.
    pub addrs: Vec<u64>,
    /// The contents, when asked for (same order as `addrs`).
    pub pages: Option<Vec<Box<[u8]>>>,
}

/// `dir/image.remus`.
pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Writes `image` to `path` (through a temporary file renamed over it).
pub fn save(path: &Path, image: &Image) -> Result<(), SaveImageError> {
    let meta = image.meta.as_ref().ok_or(SaveImageError::Empty)?;
    let meta_bytes = rmp_serde::to_vec(meta)?;
    let tmp = path.with_extension("remus.tmp");
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| SaveImageError::Io { path: p, source }
    };
    let f = File::create(&tmp).map_err(io(&tmp))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let mut crc = crc32fast::Hasher::new();
    let mut header = [0u8; HEADER_LEN as usize];
    w.write_all(&header).map_err(io(&tmp))?;
    let mut put = |w: &mut BufWriter<File>, b: &[u8]| {
        crc.update(b);
        w.write_all(b)
    };
    put(&mut w, &meta_bytes).map_err(io(&tmp))?;
    for a in image.pages.keys() {
        put(&mut w, &a.to_le_bytes()).map_err(io(&tmp))?;
    }
    for p in image.pages.values() {
        put(&mut w, p).map_err(io(&tmp))?;
    }
    header[0..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&VERSION.to_le_bytes());
    header[12..16].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
    header[16..24].copy_from_slice(&(meta_bytes.len() as u64).to_le_bytes());
    header[24..32].copy_from_slice(&(image.pages.len() as u64).to_le_bytes());
    header[32..36].copy_from_slice(&crc.finalize().to_le_bytes());
    let mut f = w.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
    f.seek(SeekFrom::Start(0)).map_err(io(&tmp))?;
    f.write_all(&header).map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Reads and checks `path`; `with_pages`: keep the page contents too (else only addresses).
pub fn load(path: &Path, with_pages: bool) -> Result<LoadedImage, LoadImageError> {
    let p = || path.to_path_buf();
    let io = |source| LoadImageError::Io { path: p(), source };
    let f = File::open(path).map_err(io)?;
    let actual = f.metadata().map_err(io)?.len();
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut h = [0u8; HEADER_LEN as usize];
    if actual < HEADER_LEN {
        return Err(LoadImageError::Truncated {
            path: p(),
            expected: HEADER_LEN,
            actual,
        });
    }
    r.read_exact(&mut h).map_err(io)?;
    let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().expect("8 bytes"));
    if h[0..8] != MAGIC {
        return Err(LoadImageError::Magic {
            path: p(),
            found: h[0..8].try_into().expect("8 bytes"),
        });
    }
    if u32_at(8) != VERSION {
        return Err(LoadImageError::Version {
            path: p(),
            found: u32_at(8),
        });
    }
    if u64::from(u32_at(12)) != PAGE_SIZE {
        return Err(LoadImageError::PageSize {
            path: p(),
            found: u32_at(12),
        });
    }
    let (meta_len, pages, stored) = (u64_at(16), u64_at(24), u32_at(32));
    for (what, found, limit) in [
        ("meta_len", meta_len, MAX_META),
        ("pages", pages, MAX_PAGES),
    ] {
        if found > limit {
            return Err(LoadImageError::Limit {
                path: p(),
                what,
                found,
                limit,
            });
        }
    }
    let expected = HEADER_LEN + meta_len + pages * (8 + PAGE_SIZE);
    if actual < expected {
        return Err(LoadImageError::Truncated {
            path: p(),
            expected,
            actual,
        });
    }
    if actual > expected {
        return Err(LoadImageError::Trailing {
            path: p(),
            expected,
            actual,
        });
    }
    let mut crc = crc32fast::Hasher::new();
    let mut meta_bytes = vec![0u8; meta_len as usize];
    r.read_exact(&mut meta_bytes).map_err(io)?;
    crc.update(&meta_bytes);
    let mut index = vec![0u8; pages as usize * 8];
    r.read_exact(&mut index).map_err(io)?;
    crc.update(&index);
    let addrs: Vec<u64> = index
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    let mut contents = with_pages.then(|| Vec::with_capacity(addrs.len()));
    let mut page = vec![0u8; PAGE_SIZE as usize];
    for _ in 0..pages {
        r.read_exact(&mut page).map_err(io)?;
        crc.update(&page);
        if let Some(c) = &mut contents {
            c.push(page.clone().into_boxed_slice());
        }
    }
    let computed = crc.finalize();
    if computed != stored {
        return Err(LoadImageError::Checksum {
            path: p(),
            stored,
            computed,
        });
    }
    if let Some(w) = addrs.windows(2).find(|w| w[0] >= w[1]) {
        return Err(LoadImageError::PageIndex {
            path: p(),
            addr: w[1],
        });
    }
    if let Some(a) = addrs.iter().find(|a| !a.is_multiple_of(PAGE_SIZE)) {
        return Err(LoadImageError::PageIndex {
            path: p(),
            addr: *a,
        });
    }
    let meta = rmp_serde::from_slice(&meta_bytes)
        .map_err(|source| LoadImageError::Meta { path: p(), source })?;
    Ok(LoadedImage {
        meta,
        addrs,
        pages: contents,
    })
}

fn hex(v: u64) -> String {
    format!("{v:#x}")
}

/// The image as JSON: epoch, regions (with the pages the image holds in each), the thread's
/// resume context, descriptors, kernel objects, files, and the process-wide fields.
pub fn to_json(img: &LoadedImage) -> Value {
    let m = &img.meta;
    let regions: Vec<Value> = match parse_maps(&m.maps) {
        Ok(rs) => rs
            .iter()
            .map(|r| {
                let lo = img.addrs.partition_point(|&a| a < r.start);
                let hi = img.addrs.partition_point(|&a| a < r.end);
                json!({
                    "start": hex(r.start),
                    "end": hex(r.end),
                    "perms": format!(
                        "{}{}{}{}",
                        if r.read { 'r' } else { '-' },
                        if r.write { 'w' } else { '-' },
                        if r.exec { 'x' } else { '-' },
                        if r.shared { 's' } else { 'p' }
                    ),
                    "offset": hex(r.offset),
                    "dev": r.dev,
                    "inode": r.inode,
                    "path": r.path,
                    "pages_held": hi - lo,
                })
            })
            .collect(),
        Err(e) => vec![json!({ "error": e })],
    };
    let threads: Vec<Value> = m
        .thread_records()
        .iter()
        .map(|t| {
            let c = &t.ctx;
            let name_len = t.name.iter().position(|&b| b == 0).unwrap_or(t.name.len());
            json!({
                "tid": t.tid,
                "leader": t.flags & THREAD_LEADER != 0,
                "main": t.flags & THREAD_MAIN != 0,
                "name": String::from_utf8_lossy(&t.name[..name_len]),
                "resume": {
                    "rip": hex(c.rip), "rsp": hex(c.rsp), "rbp": hex(c.rbp), "rbx": hex(c.rbx),
                    "r12": hex(c.r12), "r13": hex(c.r13), "r14": hex(c.r14), "r15": hex(c.r15),
                    "fs_base": hex(c.fs_base),
                },
                "sigmask": hex(t.sigmask),
                "altstack": { "sp": hex(t.altstack_sp), "flags": t.altstack_flags,
                    "size": t.altstack_size },
                "clear_child_tid": hex(t.clear_child_tid),
                "robust_list": { "head": hex(t.robust_head), "len": t.robust_len },
                "rseq": { "area": hex(t.rseq_area), "len": t.rseq_len },
            })
        })
        .collect();
    let kobjs: Vec<Value> = m
        .kobjs
        .iter()
        .map(|(fd, k)| {
            let mut v = match k {
                KernelObject::Socket(s) => json!({ "kind": "socket", "family": s.family,
                    "type": s.sock_type, "protocol": s.protocol, "listening": s.listening,
                    "backlog": s.backlog, "addr_len": s.addr.len(),
                    "connected": s.peer.is_some() }),
                KernelObject::Pipe {
                    ino,
                    size,
                    data,
                    truncated,
                } => json!({ "kind": "pipe", "ino": ino, "size": size,
                    "unread_bytes": data.len(), "truncated": truncated }),
                KernelObject::Epoll { regs, truncated } => json!({ "kind": "epoll",
                    "registrations": regs.iter().map(|r| json!({ "fd": r.fd,
                        "events": hex(u64::from(r.events)), "data": hex(r.data) })).collect::<Vec<_>>(),
                    "truncated": truncated }),
                KernelObject::EventFd { count, semaphore } => {
                    json!({ "kind": "eventfd", "count": count, "semaphore": semaphore })
                }
                KernelObject::TimerFd {
                    clockid,
                    value,
                    interval,
                    ticks,
                } => json!({ "kind": "timerfd", "clockid": clockid,
                    "value": [value.0, value.1], "interval": [interval.0, interval.1],
                    "ticks": ticks }),
                KernelObject::SignalFd { mask } => json!({ "kind": "signalfd", "mask": hex(*mask) }),
            };
            v["fd"] = json!(fd);
            v
        })
        .collect();
    json!({
        "format": { "magic": "REMUSIMG", "version": VERSION },
        "epoch": m.epoch,
        "partial": m.partial,
        "pages": img.addrs.len(),
        "regions": regions,
        "threads": threads,
        "rendezvous_ns": m.rendezvous_ns,
        "descriptors": m.fds.iter().map(|f| json!({
            "fd": f.fd, "kind": format!("{:?}", f.kind), "flags": hex(f.flags as u64),
            "fd_flags": f.fd_flags, "offset": f.offset, "path": f.path,
        })).collect::<Vec<_>>(),
        "kernel_objects": kobjs,
        "files": {
            "replicated_open": m.replicated,
            "writes_in_epoch": m.files.iter().map(|w| json!({
                "path": w.path, "whole": w.whole, "ranges": w.ranges.len(), "size": w.size,
            })).collect::<Vec<_>>(),
        },
        "mm": serde_json::to_value(m.mm).unwrap_or(Value::Null),
        "cwd": m.cwd,
        "auxv_words": m.auxv.len(),
        "pause_ns": m.pause_ns,
    })
}

/// The pages of `img` as the standby's image (for a round trip).
pub fn into_pages(img: LoadedImage) -> BTreeMap<u64, Box<[u8]>> {
    img.addrs
        .into_iter()
        .zip(img.pages.unwrap_or_default())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> Image {
        let mut img = Image::default();
        let meta = EpochMeta {
            epoch: 42,
            maps: "1000-4000 rw-p 00000000 00:00 0 [heap]\n".into(),
            cwd: "/srv".into(),
            tid: 7,
            ..Default::default()
        };
        let pg = |b: u8| vec![b; 4096].into_boxed_slice();
        img.apply(meta, vec![(0x1000, pg(1)), (0x3000, pg(3))])
            .unwrap();
        img
    }

    fn saved(tag: &str) -> (PathBuf, Image) {
        let dir = std::env::temp_dir().join(format!("remus-persist-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = path_in(&dir);
        let img = image();
        save(&path, &img).unwrap();
        (path, img)
    }

    #[test]
    fn round_trip() {
        let (path, img) = saved("rt");
        let back = load(&path, true).unwrap();
        assert_eq!(Some(&back.meta), img.meta.as_ref());
        assert_eq!(into_pages(back), img.pages);
        let v = to_json(&load(&path, false).unwrap());
        assert_eq!(v["epoch"], 42);
        assert_eq!(v["pages"], 2);
        assert_eq!(v["regions"][0]["pages_held"], 2);
        assert_eq!(v["regions"][0]["perms"], "rw-p");
        assert_eq!(v["threads"][0]["tid"], 7);
        assert_eq!(
            v["threads"][0]["main"], true,
            "one thread made from ctx and tid"
        );
        assert_eq!(v["threads"].as_array().unwrap().len(), 1);
        assert_eq!(v["cwd"], "/srv");
    }

    #[test]
    fn threads_round_trip_and_show() {
        let mut img = image();
        let m = img.meta.as_mut().unwrap();
        let mut name = [0u8; 16];
        name[..7].copy_from_slice(b"bio_aof");
        m.threads = vec![
            crate::image::ThreadRecord {
                tid: 7,
                flags: THREAD_MAIN | THREAD_LEADER,
                ..Default::default()
            },
            crate::image::ThreadRecord {
                tid: 9,
                name,
                robust_head: 0x7f00_0000_0a20,
                robust_len: 24,
                ..Default::default()
            },
        ];
        m.rendezvous_ns = 64_000;
        let dir = std::env::temp_dir().join(format!("remus-persist-thr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = path_in(&dir);
        save(&path, &img).unwrap();
        let back = load(&path, false).unwrap();
        assert_eq!(Some(&back.meta), img.meta.as_ref());
        let v = to_json(&back);
        assert_eq!(v["threads"][1]["tid"], 9);
        assert_eq!(v["threads"][1]["name"], "bio_aof");
        assert_eq!(v["threads"][1]["main"], false);
        assert_eq!(v["threads"][1]["robust_list"]["len"], 24);
        assert_eq!(v["threads"][0]["leader"], true);
        assert_eq!(v["rendezvous_ns"], 64_000);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_checksum_is_named() {
        let (path, _) = saved("crc");
        let mut b = std::fs::read(&path).unwrap();
        let last = b.len() - 1;
        b[last] ^= 0xff;
        std::fs::write(&path, &b).unwrap();
        let e = load(&path, false).err().unwrap();
        assert!(matches!(e, LoadImageError::Checksum { .. }), "{e}");
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
    }

    #[test]
    fn truncated_and_foreign_files_are_named() {
        let (path, _) = saved("trunc");
        let b = std::fs::read(&path).unwrap();
        std::fs::write(&path, &b[..b.len() - 100]).unwrap();
        let e = load(&path, false).err().unwrap();
        assert!(matches!(e, LoadImageError::Truncated { .. }), "{e}");
        assert!(e.to_string().contains("truncated"), "{e}");
        std::fs::write(&path, &b[..10]).unwrap();
        assert!(matches!(
            load(&path, false),
            Err(LoadImageError::Truncated { .. })
        ));
        let mut bad = b.clone();
        bad[0] = b'X';
        std::fs::write(&path, &bad).unwrap();
        assert!(matches!(
            load(&path, false),
            Err(LoadImageError::Magic { .. })
        ));
        let mut big = b.clone();
        big[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&path, &big).unwrap();
        assert!(matches!(
            load(&path, false),
            Err(LoadImageError::Limit { .. })
        ));
        let mut v2 = b.clone();
        v2[8] = 2;
        std::fs::write(&path, &v2).unwrap();
        assert!(matches!(
            load(&path, false),
            Err(LoadImageError::Version { .. })
        ));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(load(&path, false), Err(LoadImageError::Io { .. })));
    }
}
