//! Streaming passes over the shards this streamer owns: a pass reads the file from the start on a
//! blocking thread, stamps each row of an owned shard as it is processed (paced to the rate cap),
//! buffers it, and publishes a shard's buffer alone once it fills one transaction; rows that have
//! waited the linger time are published together (every shard's buffer, packed into as few
//! transactions as fit), and so are the shards' remaining rows at the end of the pass.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_queue::Queue;
use function_runtime::{NoSpaceWait, Shutdown};
use telemetry_model::{ReadStats, TimestampMicros};
use tokio::sync::mpsc;

use crate::buffer::{BufferLimits, ShardBuffer};
use crate::clock::{Pacer, Stamper};
use crate::config::StreamerConfig;
use crate::encode::{self, EventWriter};
use crate::error::StreamerError;
use crate::metrics::StreamerMetrics;
use crate::packing::{Packing, Part};
use crate::publish::{Published, Publisher};
use crate::reader::{
    read_pass, replay_pass, ParsedCsv, PassPlan, ReaderEvent, ShardRow, CHANNEL_CHUNKS,
};
use crate::shard::OwnedShard;

/// One shard being streamed in the current pass.
struct ShardSlot {
    buffer: ShardBuffer,
    shard: OwnedShard,
}

impl ShardSlot {
    /// Takes the buffered rows as a publish that advances the shard's state (`last` ends its
    /// pass). The shard's next publish then compares the state this one writes.
    fn take_part(&mut self, last: bool) -> Part {
        let taken = self.buffer.take();
        let fence = self.shard.advance(taken.rows, taken.last_ts, last);
        Part::new(self.shard.id(), last, taken, fence)
    }
}

/// Streams this streamer's passes, one after another: the stamps, the pacing and the publish
/// tasks carry over from pass to pass.
pub struct Passes {
    csv: PathBuf,
    stop: Shutdown,
    metrics: StreamerMetrics,
    queue: Queue,
    publisher: Publisher,
    stamper: Stamper,
    pacer: Pacer,
    limits: BufferLimits,
    bad_rows_reported: bool,
    file_passes: u64,
    /// Files up to this size are parsed once and replayed.
    parse_once_bytes: u64,
    /// The file's rows, once a pass parsed it to the end (and it was small enough).
    parsed: Option<Arc<(ParsedCsv, ReadStats)>>,
    /// Longest a buffered row waits before its buffer is published.
    linger: Duration,
    /// When the oldest row not yet handed to a publish was buffered.
    oldest_buffered: Option<Instant>,
}

impl Passes {
    /// Passes of `config.csv` published to `queue`, `config.in_flight` transactions at once;
    /// publishes etcd refuses for lack of space wait through `nospace`.
    pub fn new(
        config: &StreamerConfig,
        queue: Queue,
        stop: Shutdown,
        metrics: StreamerMetrics,
        nospace: NoSpaceWait,
    ) -> Self {
        let source = encode::source(&config.member_id);
        let producers = (0..config.in_flight).map(|_| queue.producer()).collect();
        let limits = BufferLimits::new(config.batch_size, config.queue.max_payload_bytes, &source);
        Passes {
            csv: config.csv.clone(),
            limits,
            publisher: Publisher::new(
                producers,
                EventWriter::new(source, config.encoding)
                    .with_limits(limits.batch_size, limits.max_payload_bytes),
                stop.clone(),
                metrics.clone(),
                nospace,
            ),
            stop,
            metrics,
            queue,
            stamper: Stamper::default().with_max_ahead(config.max_future),
            pacer: Pacer::new(config.rate),
            bad_rows_reported: false,
            file_passes: 0,
            parse_once_bytes: config.parse_once_bytes,
            parsed: None,
            linger: config.linger,
            oldest_buffered: None,
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

    /// Streams one pass over `shards`. True when every one of them completed the pass.
    pub async fn stream(&mut self, shards: Vec<OwnedShard>) -> Result<bool, StreamerError> {
        let mut slots: HashMap<u32, ShardSlot> = HashMap::with_capacity(shards.len());
        for mut shard in shards {
            let last_ts = shard.state().last_ts;
            if !self.stamper.raise_floor(last_ts) {
                tracing::warn!(
                    shard = shard.id(),
                    last_stamp = %TimestampMicros(last_ts),
                    "the shard's last stamp is further ahead of this clock than the future \
                     bound (TELEMETRY_MAX_FUTURE); stamping from the clock again"
                );
                shard.restart_stamps();
            }
            let slot = ShardSlot {
                buffer: ShardBuffer::new(self.limits),
                shard,
            };
            slots.insert(slot.shard.id(), slot);
        }
        self.publisher.begin_pass(slots.keys().copied());
        let plan = PassPlan {
            path: self.csv.clone(),
            skip: slots
                .iter()
                .map(|(id, slot)| (*id, slot.shard.state().row))
                .collect(),
            report_bad_rows: !self.bad_rows_reported,
        };
        let (tx, mut rx) = mpsc::channel(CHANNEL_CHUNKS);
        let metrics = self.metrics.clone();
        let reader = match self.parsed.clone() {
            Some(parsed) => tokio::task::spawn_blocking(move || {
                replay_pass(&parsed.0, parsed.1, plan, tx, metrics);
                None
            }),
            None => {
                let keep = self.fits_in_memory();
                tokio::task::spawn_blocking(move || read_pass(plan, tx, metrics, keep))
            }
        };
        self.pacer.restart(Instant::now());
        self.oldest_buffered = None;
        let streamed = self.stream_rows(&mut slots, &mut rx).await;
        drop(rx);
        // The reader notices the closed channel within a few rows.
        if let Ok(Some(parsed)) = reader.await {
            tracing::info!(
                rows = parsed.0.len(),
                "parsed the CSV once; later passes replay its rows from memory"
            );
            self.parsed = Some(Arc::new(parsed));
        }
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
            self.publish_buffers(&mut slots, true).await?;
        }
        self.publisher.drain().await?;
        Ok(read_to_end && self.publisher.all_completed())
    }

    /// Whether the file is small enough to keep its parsed rows (checked before each read, so a
    /// file that grows past the limit is streamed).
    fn fits_in_memory(&self) -> bool {
        std::fs::metadata(&self.csv).is_ok_and(|m| m.len() <= self.parse_once_bytes)
    }

    /// Feeds the reader's rows into the shard buffers. True when the file was read to the end,
    /// false when the streamer is stopping.
    async fn stream_rows(
        &mut self,
        slots: &mut HashMap<u32, ShardSlot>,
        rx: &mut mpsc::Receiver<ReaderEvent>,
    ) -> Result<bool, StreamerError> {
        loop {
            let linger_end = self.linger_end();
            let event = tokio::select! {
                biased;
                _ = self.stop.wait() => return Ok(false),
                landed = self.publisher.land_next(), if self.publisher.has_flights() => {
                    landed?;
                    continue;
                }
                _ = tokio::time::sleep_until(linger_end.unwrap_or_else(tokio::time::Instant::now)),
                    if linger_end.is_some() => {
                    self.publish_buffers(slots, false).await?;
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
        if self.publisher.is_dropped(shard) || !slots.contains_key(&shard) {
            return Ok(());
        }
        if let Some(wait) = self.pacer.admit(Instant::now()) {
            self.pace(wait, slots).await?;
            if self.publisher.is_dropped(shard) {
                return Ok(());
            }
        }
        let slot = slots.get_mut(&shard).expect("checked above");
        let ts = self.stamper.stamp();
        let partition = self.queue.partition_for(row.info.uuid.as_str().as_bytes());
        if slot.buffer.try_push(&row, partition, ts) {
            self.oldest_buffered.get_or_insert_with(Instant::now);
            return Ok(());
        }
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
            self.publisher.launch(vec![slot.take_part(false)]).await?;
        }
        if !self.publisher.is_dropped(shard) {
            slot.buffer.push(&row, partition, ts);
            self.oldest_buffered.get_or_insert_with(Instant::now);
        }
        Ok(())
    }

    /// When the oldest buffered row has waited the linger time.
    fn linger_end(&self) -> Option<tokio::time::Instant> {
        self.oldest_buffered
            .map(|oldest| tokio::time::Instant::from_std(oldest + self.linger))
    }

    /// Waits `wait` for the rate cap (or until the streamer stops). Rows whose linger time ends
    /// meanwhile are published then: a paced pass spends most of its time here, and a row waits
    /// no longer than the linger whatever the rate, the read chunk or the pass length.
    async fn pace(
        &mut self,
        wait: Duration,
        slots: &mut HashMap<u32, ShardSlot>,
    ) -> Result<(), StreamerError> {
        let due = tokio::time::Instant::now() + wait;
        loop {
            let linger_end = self.linger_end();
            tokio::select! {
                biased;
                _ = self.stop.wait() => return Ok(()),
                _ = tokio::time::sleep_until(due) => return Ok(()),
                _ = tokio::time::sleep_until(linger_end.unwrap_or(due)), if linger_end.is_some() => {
                    self.publish_buffers(slots, false).await?;
                }
            }
        }
    }

    /// Publishes the shards' buffered rows, small shards sharing transactions (each with its own
    /// fence), as many as fit. With `end_of_pass`, every shard still streaming publishes (even
    /// with nothing buffered) and marks its pass done; otherwise (the linger time is up) only
    /// shards with rows publish, and their passes go on.
    async fn publish_buffers(
        &mut self,
        slots: &mut HashMap<u32, ShardSlot>,
        end_of_pass: bool,
    ) -> Result<(), StreamerError> {
        self.oldest_buffered = None;
        let mut shards: Vec<u32> = slots
            .iter()
            .filter(|(_, slot)| end_of_pass || !slot.buffer.is_empty())
            .map(|(id, _)| *id)
            .collect();
        shards.sort_unstable();
        let mut packing = Packing::new(self.limits.batch_size);
        for shard in shards {
            if !self.publisher.wait_idle(shard).await? {
                continue;
            }
            let part = slots
                .get_mut(&shard)
                .expect("a streamed shard")
                .take_part(end_of_pass);
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
