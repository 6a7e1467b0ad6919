//! Authenticating the replication link.
//!
//! The standby turns what it receives into a running process, so an unauthenticated
//! replication port would be remote code execution. Both daemons hold the same secret (a key
//! file, `--key-file`); before the first frame they prove it to each other and derive keys
//! for this connection only:
//!
//! ```text
//! primary                                                  standby
//!   C1 = "RMAU" v flags nonce_p[32] ------------------------->
//!   <------------- S1 = "RMAU" v flags nonce_s[32] proof_s[32]    proof_s = HMAC(K, "standby" | C1 | nonce_s)
//!   C2 = verdict proof_p[32] -------------------------------->    proof_p = HMAC(K, "primary" | C1 | nonce_s)
//!   <------------------------------------------- S2 = verdict
//! ```
//!
//! Each side checks the other's proof (so both are authenticated, and each learns when the
//! other refused it: the verdict byte). Frame keys are per direction and per connection:
//! `HMAC(K, "primary->standby" | C1 | nonce_s)` and `HMAC(K, "standby->primary" | C1 | nonce_s)`.
//! Every frame then carries an HMAC-SHA256 tag over its header (which holds its sequence
//! number) and payload ([`super::frame`]): a changed, replayed, reordered or dropped frame, or
//! one from another connection, is refused.
//!
//! `--insecure` (loopback only) runs the same handshake with a fixed, public key: frames are
//! still checked for integrity, but anyone on the host could connect.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

/// Length of a frame tag, a nonce and a derived key.
pub const TAG_LEN: usize = 32;
/// Minimum key length (after hex decoding).
pub const KEY_MIN: usize = 32;

const AUTH_MAGIC: [u8; 4] = *b"RMAU";
const AUTH_VERSION: u8 = 1;
const FLAG_KEYED: u8 = 1;
const C1_LEN: usize = 4 + 1 + 1 + 32;
const S1_LEN: usize = C1_LEN + TAG_LEN;
/// The key everybody knows, for `--insecure`.
const INSECURE_KEY: &[u8] = b"remus insecure link: integrity only, no authentication";

const VERDICT_OK: u8 = 0;
const VERDICT_BAD_PROOF: u8 = 1;
const VERDICT_MODE: u8 = 2;

/// The secret shared by the primary and the standby.
#[derive(Clone)]
pub struct SharedKey(Arc<Vec<u8>>);

impl fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedKey({} bytes, redacted)", self.0.len())
    }
}

impl SharedKey {
    /// A key from raw bytes (tests; [`load_key_file`] checks a file's key).
    pub fn from_bytes(b: &[u8]) -> SharedKey {
        SharedKey(Arc::new(b.to_vec()))
    }
}

/// How a daemon protects its replication link.
#[derive(Clone, Debug)]
pub enum LinkSecurity {
    /// `--key-file`: mutual authentication and per-frame MACs.
    Keyed(SharedKey),
    /// `--insecure` (loopback addresses only): integrity checks with a public key.
    Insecure,
}

impl LinkSecurity {
    fn key(&self) -> &[u8] {
        match self {
            LinkSecurity::Keyed(k) => &k.0,
            LinkSecurity::Insecure => INSECURE_KEY,
        }
    }
    fn flags(&self) -> u8 {
        match self {
            LinkSecurity::Keyed(_) => FLAG_KEYED,
            LinkSecurity::Insecure => 0,
        }
    }

    /// What a daemon uses: the key file, or `--insecure` for a loopback `addr` (`what` names
    /// the address in errors, e.g. "--listen"). Refuses everything else, saying what to do.
    pub fn resolve(
        key_file: Option<&Path>,
        insecure: bool,
        addr: &str,
        what: &str,
    ) -> Result<LinkSecurity, String> {
        match (key_file, insecure) {
            (Some(_), true) => Err(
                "both --key-file and --insecure were given: pass only one (--key-file, unless \
                 both daemons run on this host)"
                    .into(),
            ),
            (Some(p), false) => load_key_file(p)
                .map(LinkSecurity::Keyed)
                .map_err(|e| e.to_string()),
            (None, true) => {
                require_loopback(addr, what)?;
                Ok(LinkSecurity::Insecure)
            }
            (None, false) => Err(format!(
                "no key for the replication link: the standby runs whatever it receives, so the \
                 link must be authenticated. Create a key once with `remusd keygen --out FILE`, \
                 copy it to both hosts (mode 0600) and pass --key-file FILE to `remusd standby` \
                 and `scripts/remus-run` (REMUS_KEY_FILE for the shim); or, only when both \
                 daemons run on this host, pass --insecure (REMUS_INSECURE=1) with a loopback \
                 {what} address"
            )),
        }
    }
}

/// `--insecure` is only for a link that never leaves this host.
pub fn require_loopback(addr: &str, what: &str) -> Result<(), String> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {what} address {addr}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{what} address {addr} resolves to nothing"));
    }
    if let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        return Err(format!(
            "--insecure is refused for {what} address {addr} ({}, not a loopback address): \
             an unauthenticated replication link reachable from other hosts would let anyone run \
             code on the standby. Use --key-file FILE on both daemons (create one with \
             `remusd keygen --out FILE`), or a 127.0.0.1/[::1] address",
            a.ip()
        ));
    }
    Ok(())
}

#[derive(Debug, Error)]
pub enum KeyFileError {
    #[error("key file {0} does not exist: create one with `remusd keygen --out {0}` and copy it to both hosts")]
    Missing(PathBuf),
    #[error("key file {0}: {1}")]
    Io(PathBuf, io::Error),
    #[error("key file {0} is not a regular file")]
    NotFile(PathBuf),
    #[error("key file {path} is readable or writable by group or others (mode {mode:04o}): run `chmod 600 {path}`")]
    Mode { path: PathBuf, mode: u32 },
    #[error("key file {path} is owned by uid {owner}, not by this user (uid {me}): run `chown {me} {path}` or use your own key file")]
    Owner { path: PathBuf, owner: u32, me: u32 },
    #[error("key file {0} is empty: create a key with `remusd keygen --out {0}`")]
    Empty(PathBuf),
    #[error("key file {path} holds a {len}-byte key; at least {KEY_MIN} random bytes (or {} hex digits) are needed: create one with `remusd keygen --out {path}`", 2 * KEY_MIN)]
    Short { path: PathBuf, len: usize },
    #[error("key file {path} does not look random ({distinct} distinct byte values in {len} bytes): create one with `remusd keygen --out {path}`")]
    LowEntropy {
        path: PathBuf,
        distinct: usize,
        len: usize,
    },
}

/// Reads and checks a key file: a regular file of ours, mode 0600 or stricter, holding at
/// least [`KEY_MIN`] random-looking bytes, raw or as hex (surrounding whitespace ignored).
pub fn load_key_file(path: &Path) -> Result<SharedKey, KeyFileError> {
    let p = || path.to_path_buf();
    let md = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(KeyFileError::Missing(p())),
        Err(e) => return Err(KeyFileError::Io(p(), e)),
    };
    if !md.is_file() {
        return Err(KeyFileError::NotFile(p()));
    }
    let mode = md.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Mode { path: p(), mode });
    }
    let me = crate::sys::getuid();
    if md.uid() != me && me != 0 {
        return Err(KeyFileError::Owner {
            path: p(),
            owner: md.uid(),
            me,
        });
    }
    let raw = std::fs::read(path).map_err(|e| KeyFileError::Io(p(), e))?;
    let key = parse_key(&raw).map_err(|e| match e {
        KeyProblem::Empty => KeyFileError::Empty(p()),
        KeyProblem::Short(len) => KeyFileError::Short { path: p(), len },
        KeyProblem::LowEntropy { distinct, len } => KeyFileError::LowEntropy {
            path: p(),
            distinct,
            len,
        },
    })?;
    Ok(SharedKey::from_bytes(&key))
}

#[derive(Debug, PartialEq, Eq)]
enum KeyProblem {
    Empty,
    Short(usize),
    LowEntropy { distinct: usize, len: usize },
}

/// The key bytes of a key file's contents: hex if it is all hex digits, else the raw bytes.
fn parse_key(raw: &[u8]) -> Result<Vec<u8>, KeyProblem> {
    let t = raw.trim_ascii();
    if t.is_empty() {
        return Err(KeyProblem::Empty);
    }
    let key = if t.len().is_multiple_of(2) && t.iter().all(u8::is_ascii_hexdigit) {
        t.chunks(2)
            .map(|c| {
                let s = std::str::from_utf8(c).unwrap_or("00");
                u8::from_str_radix(s, 16).unwrap_or(0)
            })
            .collect()
    } else {
        raw.to_vec()
    };
    if key.len() < KEY_MIN {
        return Err(KeyProblem::Short(key.len()));
    }
    // 32 random bytes have about 30 distinct values; a passphrase of one repeated word, or a
    // run of one character, has few.
    let mut seen = [false; 256];
    key.iter().for_each(|&b| seen[b as usize] = true);
    let distinct = seen.iter().filter(|&&s| s).count();
    if distinct < 16 {
        return Err(KeyProblem::LowEntropy {
            distinct,
            len: key.len(),
        });
    }
    Ok(key)
}

/// `remusd keygen`: writes 32 random bytes as hex to a new file of mode 0600.
pub fn generate_key_file(path: &Path) -> Result<(), String> {
    let mut key = [0u8; KEY_MIN];
    getrandom::getrandom(&mut key).map_err(|e| format!("getting random bytes: {e}"))?;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                format!(
                    "{} already exists: remove it first, or keep using it",
                    path.display()
                )
            } else {
                format!("creating {}: {e}", path.display())
            }
        })?;
    f.write_all(format!("{hex}\n").as_bytes())
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(())
}

/// The MAC key of one direction of one connection.
#[derive(Clone)]
pub struct FrameKey([u8; TAG_LEN]);

impl fmt::Debug for FrameKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FrameKey(redacted)")
    }
}

impl FrameKey {
    /// A key from raw bytes (tests and fuzzing).
    pub fn from_bytes(b: [u8; TAG_LEN]) -> FrameKey {
        FrameKey(b)
    }

    /// The tag of one frame (header and payload, given in pieces).
    pub fn tag(&self, parts: &[&[u8]]) -> [u8; TAG_LEN] {
        let mut m = self.mac();
        parts.iter().for_each(|p| m.update(p));
        m.finalize().into_bytes().into()
    }

    /// Checks `tag` in constant time.
    pub fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let mut m = self.mac();
        parts.iter().for_each(|p| m.update(p));
        m.verify_slice(tag).is_ok()
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length: this cannot fail.
        <HmacSha256 as Mac>::new_from_slice(&self.0).expect("HMAC accepts any key length")
    }
}

/// The keys of one authenticated connection.
#[derive(Clone, Debug)]
pub struct SessionKeys {
    /// For frames this side sends.
    pub send: FrameKey,
    /// For frames this side receives.
    pub recv: FrameKey,
}

#[derive(Debug, Error)]
pub enum AuthError {
    #[error("{0} (during the link authentication)")]
    Io(#[from] io::Error),
    #[error("the peer closed the connection during the link authentication{0}")]
    Closed(&'static str),
    #[error("the peer is not a remus daemon of this version (no \"RMAU\" greeting: got {0:02x?}); run the same remus version on both hosts")]
    NotRemus([u8; 4]),
    #[error("the peer speaks link authentication version {0}, this remusd speaks {AUTH_VERSION}: run the same remus version on both hosts")]
    Version(u8),
    #[error("wrong key: the {peer} could not prove it holds this daemon's key file; the two key files differ (copy the same key file to both hosts)")]
    BadProof { peer: &'static str },
    #[error("wrong key: the {peer} refused this daemon's key proof; the two key files differ (copy the same key file to both hosts)")]
    RefusedByPeer { peer: &'static str },
    #[error("the {peer} runs with --insecure (no key) but this daemon has a key file: give both daemons the same --key-file")]
    PeerInsecure { peer: &'static str },
    #[error("the {peer} has a key file but this daemon runs with --insecure: give both daemons the same --key-file")]
    PeerKeyed { peer: &'static str },
    #[error("the {peer} refused the link authentication (verdict {0})", peer = .1)]
    Refused(u8, &'static str),
}

impl AuthError {
    /// The peer's key differs from ours (either side found out).
    pub fn is_wrong_key(&self) -> bool {
        matches!(
            self,
            AuthError::BadProof { .. } | AuthError::RefusedByPeer { .. }
        )
    }
}

fn hmac(key: &[u8], label: &[u8], c1: &[u8], nonce_s: &[u8]) -> [u8; TAG_LEN] {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    m.update(label);
    m.update(c1);
    m.update(nonce_s);
    m.finalize().into_bytes().into()
}

fn derive(key: &[u8], c1: &[u8], nonce_s: &[u8]) -> (FrameKey, FrameKey) {
    (
        FrameKey(hmac(key, b"remus primary->standby", c1, nonce_s)),
        FrameKey(hmac(key, b"remus standby->primary", c1, nonce_s)),
    )
}

fn nonce() -> io::Result<[u8; 32]> {
    let mut n = [0u8; 32];
    getrandom::getrandom(&mut n).map_err(|e| io::Error::other(format!("random nonce: {e}")))?;
    Ok(n)
}

fn read_exact(s: &mut impl Read, buf: &mut [u8], at: &'static str) -> Result<(), AuthError> {
    match s.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(AuthError::Closed(at)),
        Err(e) => Err(AuthError::Io(e)),
    }
}

fn check_greeting(b: &[u8]) -> Result<u8, AuthError> {
    let magic = [b[0], b[1], b[2], b[3]];
    if magic != AUTH_MAGIC {
        return Err(AuthError::NotRemus(magic));
    }
    if b[4] != AUTH_VERSION {
        return Err(AuthError::Version(b[4]));
    }
    Ok(b[5])
}

fn mode_mismatch(mine: u8, theirs: u8, peer: &'static str) -> Option<AuthError> {
    match (mine & FLAG_KEYED != 0, theirs & FLAG_KEYED != 0) {
        (true, false) => Some(AuthError::PeerInsecure { peer }),
        (false, true) => Some(AuthError::PeerKeyed { peer }),
        _ => None,
    }
}

/// The primary's side of the handshake, on a connected stream (with timeouts set).
pub fn client_handshake<S: Read + Write>(
    s: &mut S,
    sec: &LinkSecurity,
) -> Result<SessionKeys, AuthError> {
    let peer = "standby";
    let mut c1 = [0u8; C1_LEN];
    c1[..4].copy_from_slice(&AUTH_MAGIC);
    c1[4] = AUTH_VERSION;
    c1[5] = sec.flags();
    c1[6..].copy_from_slice(&nonce()?);
    s.write_all(&c1)?;
    s.flush()?;
    let mut s1 = [0u8; S1_LEN];
    read_exact(
        s,
        &mut s1,
        " (a standby that refuses this primary's mode or version closes at once)",
    )?;
    let flags = check_greeting(&s1)?;
    let nonce_s = &s1[6..C1_LEN];
    let mut c2 = [0u8; 1 + TAG_LEN];
    if let Some(e) = mode_mismatch(sec.flags(), flags, peer) {
        c2[0] = VERDICT_MODE;
        let _ = s.write_all(&c2);
        return Err(e);
    }
    let key = sec.key();
    let want = hmac(key, b"remus standby proof", &c1, nonce_s);
    if !constant_eq(&want, &s1[C1_LEN..]) {
        c2[0] = VERDICT_BAD_PROOF;
        let _ = s.write_all(&c2);
        return Err(AuthError::BadProof { peer });
    }
    c2[0] = VERDICT_OK;
    c2[1..].copy_from_slice(&hmac(key, b"remus primary proof", &c1, nonce_s));
    s.write_all(&c2)?;
    s.flush()?;
    let mut s2 = [0u8; 1];
    read_exact(s, &mut s2, " after our key proof")?;
    match s2[0] {
        VERDICT_OK => {
            let (p2s, s2p) = derive(key, &c1, nonce_s);
            Ok(SessionKeys {
                send: p2s,
                recv: s2p,
            })
        }
        VERDICT_BAD_PROOF => Err(AuthError::RefusedByPeer { peer }),
        v => Err(AuthError::Refused(v, peer)),
    }
}

/// The standby's side of the handshake, on an accepted stream (with timeouts set).
pub fn server_handshake<S: Read + Write>(
    s: &mut S,
    sec: &LinkSecurity,
) -> Result<SessionKeys, AuthError> {
    let peer = "primary";
    let mut c1 = [0u8; C1_LEN];
    read_exact(s, &mut c1, " before its greeting")?;
    let flags = check_greeting(&c1)?;
    let nonce_s = nonce()?;
    let key = sec.key();
    let mut s1 = [0u8; S1_LEN];
    s1[..4].copy_from_slice(&AUTH_MAGIC);
    s1[4] = AUTH_VERSION;
    s1[5] = sec.flags();
    s1[6..C1_LEN].copy_from_slice(&nonce_s);
    if let Some(e) = mode_mismatch(sec.flags(), flags, peer) {
        // Our greeting tells the primary what we want; no proof for a peer in another mode.
        let _ = s.write_all(&s1);
        return Err(e);
    }
    s1[C1_LEN..].copy_from_slice(&hmac(key, b"remus standby proof", &c1, &nonce_s));
    s.write_all(&s1)?;
    s.flush()?;
    let mut c2 = [0u8; 1 + TAG_LEN];
    read_exact(s, &mut c2, " after our key proof")?;
    match c2[0] {
        VERDICT_OK => {}
        VERDICT_BAD_PROOF => return Err(AuthError::RefusedByPeer { peer }),
        v => return Err(AuthError::Refused(v, peer)),
    }
    let want = hmac(key, b"remus primary proof", &c1, &nonce_s);
    if !constant_eq(&want, &c2[1..]) {
        let _ = s.write_all(&[VERDICT_BAD_PROOF]);
        return Err(AuthError::BadProof { peer });
    }
    s.write_all(&[VERDICT_OK])?;
    s.flush()?;
    let (p2s, s2p) = derive(key, &c1, &nonce_s);
    Ok(SessionKeys {
        send: s2p,
        recv: p2s,
    })
}

/// Compares two byte strings without an early exit.
fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Runs a handshake on a TCP stream with `timeout` for each read and write; the stream's
/// timeouts are cleared afterwards.
pub fn handshake_tcp(
    stream: &TcpStream,
    sec: &LinkSecurity,
    as_server: bool,
    timeout: Duration,
) -> Result<SessionKeys, AuthError> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut s = stream;
    let r = if as_server {
        server_handshake(&mut s, sec)
    } else {
        client_handshake(&mut s, sec)
    };
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn keyed(b: u8) -> LinkSecurity {
        LinkSecurity::Keyed(SharedKey::from_bytes(
            &(0..32u8).map(|i| i.wrapping_mul(b)).collect::<Vec<_>>(),
        ))
    }

    fn pair(
        p: LinkSecurity,
        s: LinkSecurity,
    ) -> (
        Result<SessionKeys, AuthError>,
        Result<SessionKeys, AuthError>,
    ) {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let h = std::thread::spawn(move || server_handshake(&mut b, &s));
        let c = client_handshake(&mut a, &p);
        drop(a);
        (c, h.join().unwrap())
    }

    #[test]
    fn same_key_agrees_on_per_direction_keys() {
        let (c, s) = pair(keyed(3), keyed(3));
        let (c, s) = (c.unwrap(), s.unwrap());
        assert_eq!(c.send.0, s.recv.0);
        assert_eq!(c.recv.0, s.send.0);
        assert_ne!(c.send.0, c.recv.0, "one key per direction");
        // Fresh nonces: another connection gets other keys.
        let (c2, _) = pair(keyed(3), keyed(3));
        assert_ne!(c2.unwrap().send.0, c.send.0);
    }

    #[test]
    fn wrong_key_refused_on_both_sides() {
        let (c, s) = pair(keyed(3), keyed(5));
        let (c, s) = (c.unwrap_err(), s.unwrap_err());
        assert!(c.is_wrong_key(), "{c}");
        assert!(s.is_wrong_key(), "{s}");
        assert!(c.to_string().contains("wrong key"), "{c}");
        assert!(s.to_string().contains("wrong key"), "{s}");
    }

    #[test]
    fn insecure_and_keyed_do_not_mix() {
        let (c, s) = pair(LinkSecurity::Insecure, keyed(3));
        assert!(matches!(c, Err(AuthError::PeerKeyed { .. })), "{c:?}");
        assert!(matches!(s, Err(AuthError::PeerInsecure { .. })), "{s:?}");
        let (c, s) = pair(keyed(3), LinkSecurity::Insecure);
        assert!(matches!(c, Err(AuthError::PeerInsecure { .. })), "{c:?}");
        assert!(matches!(s, Err(AuthError::PeerKeyed { .. })), "{s:?}");
        let (c, s) = pair(LinkSecurity::Insecure, LinkSecurity::Insecure);
        assert!(c.is_ok() && s.is_ok());
    }

    #[test]
    fn not_a_remus_peer() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        a.write_all(&[b"GET / HTTP/1.1\r\nHost: x\r\n".as_slice(), &[b' '; 40]].concat())
            .unwrap();
        let e = server_handshake(&mut b, &keyed(3)).unwrap_err();
        assert!(matches!(e, AuthError::NotRemus(_)), "{e}");
    }

    #[test]
    fn key_parsing() {
        assert_eq!(parse_key(b"  \n"), Err(KeyProblem::Empty));
        assert_eq!(parse_key(b"abcd"), Err(KeyProblem::Short(2)));
        assert!(matches!(
            parse_key(&[b'a'; 64]),
            Err(KeyProblem::Short(32)) | Err(KeyProblem::LowEntropy { .. })
        ));
        assert!(matches!(
            parse_key(&[b'x'; 100]),
            Err(KeyProblem::LowEntropy { .. })
        ));
        let hex: String = (0..32u8).map(|b| format!("{:02x}", b * 7)).collect();
        assert_eq!(parse_key(format!("{hex}\n").as_bytes()).unwrap().len(), 32);
        let raw: Vec<u8> = (0..48u8).map(|b| b.wrapping_mul(37)).collect();
        assert_eq!(parse_key(&raw).unwrap(), raw);
    }

    #[test]
    fn key_file_checks() {
        let dir = std::env::temp_dir().join(format!("remus-key-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let k = dir.join("k");
        assert!(matches!(load_key_file(&k), Err(KeyFileError::Missing(_))));
        generate_key_file(&k).unwrap();
        assert!(generate_key_file(&k)
            .unwrap_err()
            .contains("already exists"));
        load_key_file(&k).unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_key_file(&k).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        let empty = dir.join("empty");
        std::fs::write(&empty, b"").unwrap();
        std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(load_key_file(&empty), Err(KeyFileError::Empty(_))));
        assert!(matches!(load_key_file(&dir), Err(KeyFileError::NotFile(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn insecure_only_on_loopback() {
        assert!(LinkSecurity::resolve(None, true, "127.0.0.1:7000", "--listen").is_ok());
        assert!(LinkSecurity::resolve(None, true, "[::1]:7000", "--listen").is_ok());
        let e = LinkSecurity::resolve(None, true, "0.0.0.0:7000", "--listen").unwrap_err();
        assert!(
            e.contains("not a loopback") && e.contains("--key-file"),
            "{e}"
        );
        let e = LinkSecurity::resolve(None, false, "127.0.0.1:7000", "--listen").unwrap_err();
        assert!(e.contains("--key-file") && e.contains("--insecure"), "{e}");
    }
}
