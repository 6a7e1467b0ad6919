//! Start-up: the shim's hello (ABI check), then the first connection to the standby, or
//! running unprotected when allowed, or refusing to start.
//!
//! The texts sent to the shim with `Refuse` and `RunUnprotected` are printed by it after its
//! own `remus: ` prefix: they do not start with one.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use remus_abi::MsgKind;

use super::protection::Protection;
use super::shim_link::FromShim;
use super::state::{End, Primary};

impl Primary {
    pub(super) fn await_hello(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("the shim did not say hello within 10 s");
            }
            match self
                .shim
                .recv_timeout(left)
                .context("waiting for the shim's hello")?
            {
                Some(FromShim::Msg(m)) if m.kind == MsgKind::Hello as u32 => {
                    if let Err(text) = self.check_hello(&m) {
                        let _ = self.shim.send(MsgKind::Refuse, 0, 0, &text);
                        bail!("{text}");
                    }
                    tracing::info!(app_pid = self.args.app_pid, "shim said hello");
                    return Ok(());
                }
                Some(FromShim::Msg(m)) if m.kind == MsgKind::Log as u32 => {
                    tracing::info!(target: "shim", "{}", String::from_utf8_lossy(m.text()));
                }
                Some(FromShim::Msg(m)) => tracing::warn!(
                    kind = m.kind,
                    "unexpected message from the shim before hello"
                ),
                Some(FromShim::Eof) => bail!("the shim closed its socket before saying hello"),
                None => {}
            }
        }
    }

    /// A hello (the first one, or a new image's after an exec or a handover): the ABI the shim
    /// speaks must be this remusd's; a pid other than the program's is logged.
    pub(super) fn check_hello(&self, m: &remus_abi::Msg) -> Result<(), String> {
        if m.a as i32 != self.args.app_pid {
            tracing::warn!(
                hello_pid = m.a,
                app_pid = self.args.app_pid,
                "the shim's hello names another pid"
            );
        }
        if m.b != remus_abi::ABI_VERSION as u64 {
            return Err(format!(
                "the shim speaks ABI {} and remusd speaks ABI {}: install matching libremus.so and remusd",
                m.b,
                remus_abi::ABI_VERSION
            ));
        }
        Ok(())
    }

    /// Connects to the standby and tells the shim. `Some(end)` if remusd must stop here.
    pub(super) fn connect(&mut self) -> Result<Option<End>> {
        // `--etcd`: the leader key first; without it nothing may be released.
        let lease = self.take_lease();
        let why = match (lease, self.args.standby.clone()) {
            (Err(e), _) => e,
            (Ok(()), None) => {
                "no standby is configured (set REMUS_STANDBY=HOST:PORT or pass --standby)"
                    .to_string()
            }
            (Ok(()), Some(addr)) => {
                let dialer = match self.dialer(&addr) {
                    Ok(d) => d,
                    Err(e) => {
                        let text = format!("refusing to start: {e}");
                        tracing::error!("{text}");
                        let _ = self.shim.send(MsgKind::Refuse, 0, 0, &text);
                        return Ok(Some(End::Exit(1)));
                    }
                };
                match dialer.connect(Duration::from_secs(3), self.on_ack()) {
                    Ok(link) => {
                        tracing::info!(standby = %addr, "connected to the standby; streaming the first full image");
                        self.link = Some(link);
                        self.output.new_link();
                        self.start_stream();
                        self.set_protection(Protection::Syncing, |b| {
                            b.status.reason = Some(format!(
                                "sending the first full image to {addr} while the program runs; \
                                 protected once the standby has all of it"
                            ));
                        });
                        self.shim
                            .send(MsgKind::Ready, 0, 0, "")
                            .context("telling the shim we are ready")?;
                        return Ok(None);
                    }
                    Err(e) => format!("cannot reach the standby: {e}"),
                }
            }
        };
        let listen = self
            .args
            .standby
            .clone()
            .unwrap_or_else(|| "HOST:PORT".into());
        if self.args.allow_unprotected {
            tracing::warn!("running UNPROTECTED: {why}");
            self.release_all_held();
            let reason = why.clone();
            self.set_protection(Protection::Unprotected, |b| b.unprotect(reason));
            self.shim
                // The shim prints it after "WARNING: running UNPROTECTED: ".
                .send(MsgKind::RunUnprotected, 0, 0, &why)
                .context("telling the shim to run unprotected")?;
            Ok(None)
        } else {
            let text = if self.args.arbiter.is_some() && self.lease.is_none() {
                format!(
                    "refusing to start: {why}. Or set REMUS_ALLOW_UNPROTECTED=1 to run without \
                     protection."
                )
            } else {
                format!(
                    "{why}. Start `remusd standby --listen {listen} --state-dir DIR` on the standby \
                     host, or set REMUS_ALLOW_UNPROTECTED=1 to run without protection."
                )
            };
            tracing::error!("{text}");
            let _ = self.shim.send(MsgKind::Refuse, 0, 0, &text);
            Ok(Some(End::Exit(1)))
        }
    }
}
