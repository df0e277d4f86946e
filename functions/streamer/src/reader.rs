//! Reading the CSV for one pass on a blocking thread: rows of the shards being streamed are sent
//! in chunks over a bounded channel (so memory stays bounded whatever the file size), rows a shard
//! already published this pass are skipped, and bad rows are logged and counted on the first pass.
//!
//! A file no larger than the cache limit is parsed once: the first pass that reads it to the end
//! keeps its rows ([`ParsedCsv`]), and later passes replay them instead of parsing again. Larger
//! files are read from disk on every pass.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use telemetry_model::{CsvError, CsvRow, DcgmCsvReader, ReadStats, RowOutcome};
use tokio::sync::mpsc;

use crate::metrics::StreamerMetrics;
use crate::shard::shard_for;

/// Rows per message on the channel: large enough to amortise the hand-over, small enough to keep
/// memory and latency low.
const CHUNK_ROWS: usize = 256;
/// Chunks that may wait in the channel.
pub const CHANNEL_CHUNKS: usize = 8;
/// How often (in rows) the reader checks whether the pass was abandoned.
const CANCEL_CHECK_ROWS: u64 = 1024;

/// What one pass reads.
#[derive(Debug, Clone)]
pub struct PassPlan {
    pub path: PathBuf,
    /// Shards to stream, each with the number of its rows to skip (published earlier this pass).
    pub skip: HashMap<u32, u64>,
    /// Log and count bad and blank rows (done on the process's first pass only).
    pub report_bad_rows: bool,
}

/// A row of a streamed shard.
#[derive(Debug, Clone)]
pub struct ShardRow {
    pub shard: u32,
    pub row: Arc<CsvRow>,
}

/// Every good row of the file, in file order, each with its shard: what a pass replays.
#[derive(Debug)]
pub struct ParsedCsv {
    rows: Vec<ShardRow>,
}

impl ParsedCsv {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// What the reader sends.
#[derive(Debug)]
pub enum ReaderEvent {
    Rows(Vec<ShardRow>),
    /// The whole file was read (or replayed: the stats of the read that parsed it).
    Finished(ReadStats),
    /// The file could not be opened (or its header is unusable).
    OpenFailed(CsvError),
    /// Reading failed part-way (an I/O error): the pass is incomplete.
    ReadFailed(String),
}

/// Sends `row` when the plan streams its shard (and it is not skipped). False once the receiver
/// is gone.
fn offer(
    plan: &mut PassPlan,
    row: ShardRow,
    chunk: &mut Vec<ShardRow>,
    tx: &mpsc::Sender<ReaderEvent>,
) -> bool {
    let Some(skip) = plan.skip.get_mut(&row.shard) else {
        return true;
    };
    if *skip > 0 {
        *skip -= 1;
        return true;
    }
    chunk.push(row);
    if chunk.len() == CHUNK_ROWS {
        let full = std::mem::replace(chunk, Vec::with_capacity(CHUNK_ROWS));
        return tx.blocking_send(ReaderEvent::Rows(full)).is_ok();
    }
    true
}

/// Replays `parsed` for one pass, sending the plan's rows, as [`read_pass`] would from the file.
pub fn replay_pass(
    parsed: &ParsedCsv,
    stats: ReadStats,
    mut plan: PassPlan,
    tx: mpsc::Sender<ReaderEvent>,
    metrics: StreamerMetrics,
) {
    let mut chunk = Vec::with_capacity(CHUNK_ROWS);
    for rows in parsed.rows.chunks(CANCEL_CHECK_ROWS as usize) {
        metrics.rows_read.inc_by(rows.len() as u64);
        if tx.is_closed() {
            return;
        }
        for row in rows {
            if !offer(&mut plan, row.clone(), &mut chunk, &tx) {
                return;
            }
        }
    }
    // The file's bad and blank rows count as read on every pass, as when reading from disk.
    metrics
        .rows_read
        .inc_by(stats.rows_total.saturating_sub(parsed.rows.len() as u64));
    if !chunk.is_empty() && tx.blocking_send(ReaderEvent::Rows(chunk)).is_err() {
        return;
    }
    let _ = tx.blocking_send(ReaderEvent::Finished(stats));
}

/// Reads the file once, sending the plan's rows; returns when done or when the receiver is gone.
/// With `keep`, also returns every good row of a file read to the end (for [`replay_pass`]).
pub fn read_pass(
    mut plan: PassPlan,
    tx: mpsc::Sender<ReaderEvent>,
    metrics: StreamerMetrics,
    keep: bool,
) -> Option<(ParsedCsv, ReadStats)> {
    let mut reader = match DcgmCsvReader::open(&plan.path) {
        Ok(reader) => reader,
        Err(e) => {
            let _ = tx.blocking_send(ReaderEvent::OpenFailed(e));
            return None;
        }
    };
    let mut kept = Vec::new();
    let mut chunk = Vec::with_capacity(CHUNK_ROWS);
    let mut read = 0u64;
    for outcome in reader.by_ref() {
        read += 1;
        if read % CANCEL_CHECK_ROWS == 0 {
            metrics.rows_read.inc_by(CANCEL_CHECK_ROWS);
            if tx.is_closed() {
                return None;
            }
        }
        match outcome {
            RowOutcome::Row(row) => {
                let row = ShardRow {
                    shard: shard_for(&row.info.uuid),
                    row: Arc::new(row),
                };
                if keep {
                    kept.push(row.clone());
                }
                if !offer(&mut plan, row, &mut chunk, &tx) {
                    return None;
                }
            }
            RowOutcome::Bad(bad) => {
                if plan.report_bad_rows {
                    tracing::warn!(line = bad.line, reason = %bad.reason, "skipping bad CSV row");
                    metrics.bad_rows.inc();
                }
            }
            RowOutcome::Blank(blank) => {
                if plan.report_bad_rows {
                    tracing::info!(line = blank.line, "skipping DCGM blank-sentinel row");
                    metrics.blank_rows.inc();
                }
            }
        }
    }
    metrics.rows_read.inc_by(read % CANCEL_CHECK_ROWS);
    if !chunk.is_empty() && tx.blocking_send(ReaderEvent::Rows(chunk)).is_err() {
        return None;
    }
    let (last, parsed) = match reader.read_error() {
        // The failure was also yielded as a bad row; the pass must not count as complete.
        Some(e) => (ReaderEvent::ReadFailed(e.to_string()), None),
        None => {
            let stats = reader.stats();
            let parsed = keep.then_some((ParsedCsv { rows: kept }, stats));
            (ReaderEvent::Finished(stats), parsed)
        }
    };
    let _ = tx.blocking_send(last);
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every event a pass sends, rows as (shard, line).
    fn collect(
        pass: impl FnOnce(mpsc::Sender<ReaderEvent>) + Send + 'static,
    ) -> (Vec<(u32, u64)>, Option<ReadStats>) {
        let (tx, mut rx) = mpsc::channel(CHANNEL_CHUNKS);
        let reader = std::thread::spawn(move || pass(tx));
        let mut rows = Vec::new();
        let mut finished = None;
        while let Some(event) = rx.blocking_recv() {
            match event {
                ReaderEvent::Rows(chunk) => {
                    rows.extend(chunk.iter().map(|r| (r.shard, r.row.line)));
                }
                ReaderEvent::Finished(stats) => finished = Some(stats),
                other => panic!("unexpected {other:?}"),
            }
        }
        reader.join().unwrap();
        (rows, finished)
    }

    #[test]
    fn a_replay_sends_what_reading_the_file_sends() {
        let path = test_support::testdata("csv-bad-rows.csv");
        let plan = |skip: HashMap<u32, u64>| PassPlan {
            path: path.clone(),
            skip,
            report_bad_rows: false,
        };
        let every_shard: HashMap<u32, u64> = (0..crate::shard::SHARDS).map(|s| (s, 0)).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let first = plan(every_shard.clone());
        let (read, read_stats) = collect(move |events| {
            let kept = read_pass(first, events, StreamerMetrics::default(), true);
            tx.send(kept).unwrap();
        });
        let (parsed, stats) = rx.recv().unwrap().expect("kept the rows");
        assert_eq!(parsed.len(), 4, "the good rows only");
        assert_eq!(read.len(), 4);
        assert_eq!(read_stats, Some(stats));

        // With some shards skipping rows and others not streamed at all, both sources agree.
        let mut skip: HashMap<u32, u64> = read.iter().map(|(shard, _)| (*shard, 0)).collect();
        let skipped = read[0].0;
        *skip.get_mut(&skipped).unwrap() = 1;
        let not_streamed = read[read.len() - 1].0;
        if not_streamed != skipped {
            skip.remove(&not_streamed);
        }
        let from_disk = plan(skip.clone());
        let (disk, _) = collect(move |events| {
            assert!(read_pass(from_disk, events, StreamerMetrics::default(), false).is_none());
        });
        let metrics = StreamerMetrics::default();
        let replay_metrics = metrics.clone();
        let replayed_plan = plan(skip);
        let (replayed, replay_stats) = collect(move |events| {
            replay_pass(&parsed, stats, replayed_plan, events, replay_metrics);
        });
        assert_eq!(replayed, disk);
        assert!(replayed.len() < read.len(), "{replayed:?}");
        assert_eq!(replay_stats, Some(stats));
        assert_eq!(
            metrics.rows_read.get(),
            stats.rows_total,
            "bad rows count as read"
        );
    }
}
