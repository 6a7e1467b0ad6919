//! The staging memfd's section table in one place, and the compile-time check that ties it to
//! [`crate::ABI_VERSION`].
//!
//! ```text
//! +------------------+ 0
//! | StagingHeader    |   epoch, chunk, counts, resume context, mm fields, cwd, auxv
//! |   ...            |
//! | controller words |   TCP_HOLD_OFF .. HANDOVER_CONN_OFF + 8, in the header's tail
//! +------------------+ RESETS_OFF
//! | [ResetRange]     |
//! +------------------+ FDS_OFF
//! | [FdRecord]       |
//! +------------------+ MAPS_OFF
//! | maps text        |
//! +------------------+ ADDRS_OFF
//! | [u64]            |   address of each page in this chunk
//! +------------------+ DATA_OFF (page aligned)
//! | page data        |
//! +------------------+ KOBJ_OFF        (kobj)
//! | kernel objects   |
//! +------------------+ STAGING_SIZE = KOBJ_END
//! | sockets' log     |   NETLOG_OFF .. NETLOG_END (netlog)
//! +------------------+ FILELOG_OFF
//! | files' log       |   .. FILELOG_END (filelog): the memfd's size
//! +------------------+
//! ```
//!
//! [`LAYOUT`] lists every section offset, every record size and the message size; the shim and
//! remusd agree on the layout when they agree on [`crate::ABI_VERSION`] (the shim's hello
//! carries it, remusd refuses another). A change to any entry changes [`FINGERPRINT`], and the
//! assertion below stops the build until `ABI_VERSION` is bumped and the new fingerprint is
//! written next to it.

use crate::{filelog, kobj, netlog};
use core::mem::size_of;

/// `(what, value)`: every number both sides must agree on.
pub const LAYOUT: &[(&str, usize)] = &[
    ("HEADER_SIZE", crate::HEADER_SIZE),
    ("StagingHeader", size_of::<crate::StagingHeader>()),
    ("COMMITTED_OFF", crate::COMMITTED_OFF),
    ("COMMITTED_FUTEX_OFF", crate::COMMITTED_FUTEX_OFF),
    ("RESEND_REQ_OFF", crate::RESEND_REQ_OFF),
    ("RESEND_DONE_OFF", crate::RESEND_DONE_OFF),
    ("RESEND_EPOCH_OFF", crate::RESEND_EPOCH_OFF),
    ("STREAM_OFF", crate::STREAM_OFF),
    ("HANDOVER_OFF", crate::HANDOVER_OFF),
    ("HANDOVER_CONN_OFF", crate::HANDOVER_CONN_OFF),
    ("RESETS_OFF", crate::RESETS_OFF),
    ("ResetRange", size_of::<crate::ResetRange>()),
    ("FDS_OFF", crate::FDS_OFF),
    ("FdRecord", size_of::<crate::FdRecord>()),
    ("MAPS_OFF", crate::MAPS_OFF),
    ("ADDRS_OFF", crate::ADDRS_OFF),
    ("DATA_OFF", crate::DATA_OFF),
    ("KOBJ_OFF", kobj::KOBJ_OFF),
    ("KobjHeader", size_of::<kobj::KobjHeader>()),
    ("KOBJS_OFF", kobj::KOBJS_OFF),
    ("KobjRecord", size_of::<kobj::KobjRecord>()),
    ("EPOLL_OFF", kobj::EPOLL_OFF),
    ("EpollReg", size_of::<kobj::EpollReg>()),
    ("PIPE_DATA_OFF", kobj::PIPE_DATA_OFF),
    ("STAGING_SIZE", crate::STAGING_SIZE),
    ("NETLOG_OFF", netlog::NETLOG_OFF),
    ("NetLogHeader", size_of::<netlog::NetLogHeader>()),
    ("NETLOG_ERRORS_OFF", netlog::NETLOG_ERRORS_OFF),
    ("NETLOG_DATA_OFF", netlog::NETLOG_DATA_OFF),
    ("NetEntry", size_of::<netlog::NetEntry>()),
    ("NETLOG_END", netlog::NETLOG_END),
    ("FILELOG_OFF", filelog::FILELOG_OFF),
    ("FileLogHeader", size_of::<filelog::FileLogHeader>()),
    ("FILE_RECS_OFF", filelog::FILE_RECS_OFF),
    ("FileRec", size_of::<filelog::FileRec>()),
    ("FILE_RANGES_OFF", filelog::FILE_RANGES_OFF),
    ("FileRange", size_of::<filelog::FileRange>()),
    ("FILE_DATA_OFF", filelog::FILE_DATA_OFF),
    ("FILELOG_END", filelog::FILELOG_END),
    ("Msg", size_of::<crate::Msg>()),
    ("ResumeContext", size_of::<crate::ResumeContext>()),
    ("MmFields", size_of::<crate::MmFields>()),
    ("THREADS_OFF", crate::THREADS_OFF),
    ("MAX_THREADS", crate::MAX_THREADS),
    ("ThreadRecord", size_of::<crate::ThreadRecord>()),
    ("PipeProbe", size_of::<crate::PipeProbe>()),
    ("TCP_HOLD_OFF", crate::TCP_HOLD_OFF),
];

/// FNV-1a over every name and value of [`LAYOUT`].
pub const FINGERPRINT: u64 = {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < LAYOUT.len() {
        let (name, v) = LAYOUT[i];
        let b = name.as_bytes();
        let mut j = 0;
        while j < b.len() {
            h = (h ^ b[j] as u64).wrapping_mul(0x100_0000_01b3);
            j += 1;
        }
        let v = (v as u64).to_le_bytes();
        let mut j = 0;
        while j < 8 {
            h = (h ^ v[j] as u64).wrapping_mul(0x100_0000_01b3);
            j += 1;
        }
        i += 1;
    }
    h
};

/// The fingerprint of the layout [`crate::ABI_VERSION`] (8) names. Change both together.
pub const FINGERPRINT_OF_THIS_VERSION: u64 = 0x1e2f_6e0d_5b10_5079;

const _: () = assert!(
    FINGERPRINT == FINGERPRINT_OF_THIS_VERSION,
    "the staging layout changed: bump ABI_VERSION and set FINGERPRINT_OF_THIS_VERSION to the new \
     FINGERPRINT (cargo test -p remus-abi -- --nocapture layout prints it)"
);

const _: () = {
    // Sections do not overlap and come in this order.
    assert!(crate::RESETS_OFF <= crate::FDS_OFF);
    assert!(crate::DATA_OFF + crate::CHUNK_PAGES * crate::PAGE_SIZE <= kobj::KOBJ_OFF);
    assert!(crate::STAGING_SIZE <= netlog::NETLOG_OFF);
    assert!(netlog::NETLOG_END <= filelog::FILELOG_OFF);
};

#[cfg(test)]
mod tests {
    #[test]
    fn layout() {
        extern crate std;
        std::println!("FINGERPRINT = {:#018x}", super::FINGERPRINT);
        for (name, v) in super::LAYOUT {
            std::println!("{name:24} {v:#x}");
        }
    }
}
