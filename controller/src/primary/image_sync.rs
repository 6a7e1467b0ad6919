//! Sending a connection its first full image (streamed while the program runs, or in one
//! pause), and the step to `Protected` once the standby committed all of it.

use super::protection::Protection;
use super::state::Primary;
use super::stream;

impl Primary {
    /// Starts streaming a full image (a new connection): the next epoch registers every
    /// region it does not follow yet without copying it, and acks release nothing until the
    /// image is complete.
    pub(super) fn start_stream(&mut self) {
        if !self.args.stream_images {
            // The full image goes in the next epoch's pause (the baseline): its ack releases
            // and protects.
            self.gate.release_from(0);
            self.complete_at = Some(self.last_epoch.map_or(1, |e| e + 1));
            return;
        }
        self.gate.release_from(u64::MAX);
        self.complete_at = None;
        self.stream = Some(stream::Stream::new(
            self.args.app_pid,
            self.args.stream_batch_pages,
        ));
        self.staging.set_stream(true);
    }

    /// The connection the stream was for is gone.
    pub(super) fn stop_stream(&mut self) {
        self.stream = None;
        self.complete_at = None;
        self.staging.set_stream(false);
    }

    /// Before an epoch signal: reads the next batch of the streamed image (the pages belong to
    /// the epoch about to be taken). When nothing is left to read after it, that epoch
    /// completes the image. When the program's memory cannot be read, the image is taken in
    /// that epoch's pause instead.
    pub(super) fn stream_batch(&mut self) {
        let Some(st) = &mut self.stream else { return };
        let epoch = self.last_epoch.map_or(1, |e| e + 1);
        // Only the epoch that starts the stream leaves its regions' pages to remusd: regions
        // new in later epochs ship in their pause, as at any time, so what is left to read only
        // shrinks and the stream ends whatever the program maps meanwhile.
        self.staging.set_stream(st.first_epoch.is_none());
        let last_batch = match st.read_batch(epoch) {
            Ok(more) => !more,
            Err(e) => {
                tracing::warn!(
                    "cannot stream the full image ({e}); taking it in one pause instead (the \
                     program stops for as long as the copy takes)"
                );
                let unheld = st.unheld;
                *st = stream::Stream::new(self.args.app_pid, self.args.stream_batch_pages);
                st.unheld = unheld;
                self.staging.set_stream(false);
                self.staging.request_resend();
                true
            }
        };
        if last_batch && st.unheld {
            // The epoch about to be taken completes the image: its output, and all after
            // it, waits for acks again.
            st.unheld = false;
            let last = self.last_epoch.unwrap_or(0);
            tracing::info!(
                epoch,
                "the next epoch completes the streamed image; output is held again from it on"
            );
            self.hold_output_again(last);
        }
        let Some(st) = &self.stream else { return };
        let s = st.progress(None);
        self.status.lock().status.image_stream = Some(s);
    }

    /// An epoch of a streamed image ended: the batch pages that go out with it, and whether
    /// it completes the image (`meta.partial` false): from its ack on, acks release output.
    pub(super) fn stream_commit(
        &mut self,
        epoch: u64,
        meta: &mut crate::image::EpochMeta,
        streamed: bool,
        shim_pages: u64,
    ) -> Vec<(u64, crate::wire::messages::PageBytes)> {
        let Some(st) = &mut self.stream else {
            return Vec::new();
        };
        let read = st.commit(epoch, meta, streamed, shim_pages);
        if !meta.partial {
            tracing::info!(
                epoch,
                batches = st.batches,
                pages_read = st.pages_shipped,
                pages_dropped = st.pages_dropped,
                pages_zero = st.pages_zero,
                max_pause_pages = st.max_pause_pages,
                max_pause_us = st.max_pause_ns / 1000,
                "the streamed full image is complete with this epoch"
            );
            let mut b = self.status.lock();
            b.status.image_stream = Some(st.progress(Some(epoch)));
            drop(b);
            self.gate.release_from(epoch);
            self.complete_at = Some(epoch);
            self.stream = None;
            self.staging.set_stream(false);
        }
        read
    }

    /// Protection (re)starts once the standby acked the epoch that completed the streamed
    /// image.
    pub(super) fn step_sync(&mut self) {
        let Some(e) = self.complete_at else { return };
        let committed = self.staging.committed();
        if committed == remus_abi::COMMITTED_UNPROTECTED || committed < e {
            return;
        }
        self.complete_at = None;
        if !self.protection.syncing() {
            return;
        }
        // (The status turned `protected` in the ack callback, with the committed epoch.)
        let was = std::mem::replace(&mut self.protection, Protection::Protected);
        self.show_protection(|b| {
            b.status.protected = true;
            b.status.reason = None;
        });
        match was {
            Protection::Resyncing(r) => {
                tracing::info!(standby = %r.addr, epoch = e, "the standby committed the full image; protection resumes");
            }
            _ => tracing::info!(epoch = e, "the standby committed the full image; protected"),
        }
    }

    /// The first chunk of an epoch on a resynchronising link: it must carry the full image
    /// asked for. `Err(reason)` when the shim did not honour the request.
    pub(super) fn check_full_resend(&mut self, epoch: u64) -> Result<(), String> {
        let Some(r) = self.protection.resync_mut() else {
            return Ok(());
        };
        let Some(req) = r.request else { return Ok(()) };
        let (done, full) = self.staging.resend_done();
        if done != req || full != epoch {
            return Err(format!(
                "the shim did not ship a full image for the reconnected standby (request {req}, \
                 honoured {done} in epoch {full}, epoch {epoch} arrived)"
            ));
        }
        r.request = None;
        r.full_epoch = Some(epoch);
        tracing::info!(
            epoch,
            "the full image for the reconnected standby is on its way"
        );
        Ok(())
    }
}
