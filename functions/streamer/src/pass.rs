//! Streaming passes over the shards this streamer owns: a pass reads the file from the start on a
//! blocking thread, stamps each row of an owned shard as it is processed (paced to the rate cap),
//! buffers it, and publishes a shard's buffer alone once it fills one transaction; at the end of
//! the pass the shards' remaining rows are packed together into as few transactions as fit.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use etcd_client::{Compare, TxnOp};
use etcd_queue::{Fence, Queue, WorkGroupKeys};
use function_runtime::Shutdown;
use tokio::sync::mpsc;

use crate::buffer::{BufferLimits, ShardBuffer};
use crate::clock::{Pacer, Stamper};
use crate::config::StreamerConfig;
use crate::encode;
use crate::error::StreamerError;
use crate::metrics::StreamerMetrics;
use crate::packing::{Packing, Part};
use crate::publish::{Published, Publisher};
use crate::reader::{read_pass, PassPlan, ReaderEvent, ShardRow, CHANNEL_CHUNKS};
use crate::retry::sleep_or_stop;
use crate::shard::StoredShardState;

/// One shard being streamed in the current pass.
struct ShardSlot {
    buffer: ShardBuffer,
    /// The state the next publish compares (what the last publish wrote, once it is in flight).
    stored: StoredShardState,
    owner_fence: Compare,
}

impl ShardSlot {
    /// Takes the buffered rows as a publish that advances the shard's state (`last` ends its
    /// pass). The slot then compares the state this publish writes.
    fn take_part(&mut self, keys: &WorkGroupKeys, shard: u32, last: bool) -> Part {
        let taken = self.buffer.take();
        let next = if last {
            self.stored.state.completed(taken.rows, taken.last_ts)
        } else {
            self.stored.state.advanced(taken.rows, taken.last_ts)
        };
        let key = keys.item_state(shard);
        let written = StoredShardState::written(next);
        let value = written.raw.clone().unwrap_or_default();
        let fence = Fence {
            compares: vec![self.owner_fence.clone(), self.stored.unchanged(&key)],
            bytes: key.len() + value.len(),
            ops: vec![TxnOp::put(key, value, None)],
        };
        self.stored = written;
        Part::new(shard, last, taken, fence)
    }
}

/// Streams this streamer's passes, one after another: the stamps, the pacing and the publish
/// tasks carry over from pass to pass.
pub struct Passes {
    csv: PathBuf,
    keys: WorkGroupKeys,
    stop: Shutdown,
    metrics: StreamerMetrics,
    queue: Queue,
    publisher: Publisher,
    stamper: Stamper,
    pacer: Pacer,
    limits: BufferLimits,
    bad_rows_reported: bool,
    file_passes: u64,
}

impl Passes {
    /// Passes of `config.csv` published to `queue`, `config.in_flight` transactions at once, for
    /// the shards of the work group `keys`.
    pub fn new(
        config: &StreamerConfig,
        keys: WorkGroupKeys,
        queue: Queue,
        stop: Shutdown,
        metrics: StreamerMetrics,
    ) -> Self {
        let source = encode::source(&config.member_id);
        let producers = (0..config.in_flight).map(|_| queue.producer()).collect();
        Passes {
            csv: config.csv.clone(),
            keys,
            limits: BufferLimits::new(config.batch_size, config.queue.max_payload_bytes, &source),
            publisher: Publisher::new(producers, source, stop.clone(), metrics.clone()),
            stop,
            metrics,
            queue,
            stamper: Stamper::default(),
            pacer: Pacer::new(config.rate),
            bad_rows_reported: false,
            file_passes: 0,
        }
    }

    /// Passes that read the file to the end.
    pub fn file_passes(&self) -> u64 {
        self.file_passes
    }

    pub fn published(&self) -> Published {
        self.publisher.published()
    }

    /// Abandons the publishes in flight and closes the producers (see [`Publisher::close`]).
    pub async fn close(self) {
        self.publisher.close().await;
    }

    /// Streams one pass over `shards` (each with the compare that it is still owned and its
    /// state). True when every one of them completed the pass.
    pub async fn stream(
        &mut self,
        shards: BTreeMap<u32, (Compare, StoredShardState)>,
    ) -> Result<bool, StreamerError> {
        let mut slots: HashMap<u32, ShardSlot> = HashMap::with_capacity(shards.len());
        for (shard, (owner_fence, stored)) in shards {
            self.stamper.raise_floor(stored.state.last_ts);
            let slot = ShardSlot {
                buffer: ShardBuffer::new(self.limits),
                stored,
                owner_fence,
            };
            slots.insert(shard, slot);
        }
        self.publisher.begin_pass(slots.keys().copied());
        let plan = PassPlan {
            path: self.csv.clone(),
            skip: slots
                .iter()
                .map(|(shard, slot)| (*shard, slot.stored.state.row))
                .collect(),
            report_bad_rows: !self.bad_rows_reported,
        };
        let (tx, mut rx) = mpsc::channel(CHANNEL_CHUNKS);
        let metrics = self.metrics.clone();
        let reader = tokio::task::spawn_blocking(move || read_pass(plan, tx, metrics));
        self.pacer.restart(Instant::now());
        let streamed = self.stream_rows(&mut slots, &mut rx).await;
        drop(rx);
        // The reader notices the closed channel within a few rows.
        let _ = reader.await;
        let read_to_end = match streamed {
            Ok(read_to_end) => read_to_end,
            Err(e) => {
                self.publisher.abort_all();
                return Err(e);
            }
        };
        if read_to_end {
            self.bad_rows_reported = true;
            self.file_passes += 1;
            self.finish_shards(&mut slots).await?;
        }
        self.publisher.drain().await?;
        Ok(read_to_end && self.publisher.all_completed())
    }

    /// Feeds the reader's rows into the shard buffers. True when the file was read to the end,
    /// false when the streamer is stopping.
    async fn stream_rows(
        &mut self,
        slots: &mut HashMap<u32, ShardSlot>,
        rx: &mut mpsc::Receiver<ReaderEvent>,
    ) -> Result<bool, StreamerError> {
        loop {
            let event = tokio::select! {
                biased;
                _ = self.stop.wait() => return Ok(false),
                landed = self.publisher.land_next(), if self.publisher.has_flights() => {
                    landed?;
                    continue;
                }
                event = rx.recv() => event,
            };
            match event {
                Some(ReaderEvent::Rows(rows)) => {
                    for row in rows {
                        if self.stop.is_triggered() {
                            return Ok(false);
                        }
                        self.stream_row(row, slots).await?;
                    }
                }
                Some(ReaderEvent::Finished(stats)) => {
                    tracing::debug!(?stats, "read the CSV to the end");
                    return Ok(true);
                }
                Some(ReaderEvent::OpenFailed(source)) => {
                    return Err(StreamerError::OpenCsv {
                        path: self.csv.clone(),
                        source,
                    })
                }
                Some(ReaderEvent::ReadFailed(reason)) => {
                    return Err(StreamerError::ReadCsv {
                        path: self.csv.clone(),
                        reason,
                    })
                }
                None => {
                    return Err(StreamerError::ReaderTask(
                        "the reader ended without finishing the file".into(),
                    ))
                }
            }
        }
    }

    async fn stream_row(
        &mut self,
        ShardRow { shard, row }: ShardRow,
        slots: &mut HashMap<u32, ShardSlot>,
    ) -> Result<(), StreamerError> {
        if self.publisher.is_dropped(shard) {
            return Ok(());
        }
        let Some(slot) = slots.get_mut(&shard) else {
            return Ok(());
        };
        if let Some(wait) = self.pacer.admit(Instant::now()) {
            sleep_or_stop(wait, &self.stop).await;
        }
        let ts = self.stamper.stamp();
        let partition = self.queue.partition_for(row.info.uuid.as_str().as_bytes());
        if !slot.buffer.fits(&row, partition, ts) {
            if !ShardBuffer::fits_alone(self.limits, &row, partition, ts) {
                tracing::warn!(
                    line = row.line,
                    shard,
                    "skipping a row too large for one queue message"
                );
                self.metrics.bad_rows.inc();
                slot.buffer.skip_row();
                return Ok(());
            }
            // A full buffer goes out on its own, in one transaction.
            if self.publisher.wait_idle(shard).await? {
                let part = slot.take_part(&self.keys, shard, false);
                self.publisher.launch(vec![part]).await?;
            }
        }
        if !self.publisher.is_dropped(shard) {
            slot.buffer.push(&row, partition, ts);
        }
        Ok(())
    }

    /// Ends the pass of every shard still streaming: each publishes its remaining rows and marks
    /// the pass done. Small shards share transactions (each with its own fence), as many as fit.
    async fn finish_shards(
        &mut self,
        slots: &mut HashMap<u32, ShardSlot>,
    ) -> Result<(), StreamerError> {
        let mut shards: Vec<u32> = slots.keys().copied().collect();
        shards.sort_unstable();
        let mut packing = Packing::default();
        for shard in shards {
            if !self.publisher.wait_idle(shard).await? {
                continue;
            }
            let slot = slots.get_mut(&shard).expect("a streamed shard");
            let part = slot.take_part(&self.keys, shard, true);
            if let Some(full) = packing.add(part) {
                self.publisher.launch(full).await?;
            }
        }
        if let Some(last) = packing.finish() {
            self.publisher.launch(last).await?;
        }
        Ok(())
    }
}
