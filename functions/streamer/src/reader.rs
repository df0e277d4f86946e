//! Reading the CSV for one pass on a blocking thread: rows of the shards being streamed are sent
//! in chunks over a bounded channel (so memory stays bounded whatever the file size), rows a shard
//! already published this pass are skipped, and bad rows are logged and counted on the first pass.

use std::collections::HashMap;
use std::path::PathBuf;

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
#[derive(Debug)]
pub struct ShardRow {
    pub shard: u32,
    pub row: CsvRow,
}

/// What the reader sends.
#[derive(Debug)]
pub enum ReaderEvent {
    Rows(Vec<ShardRow>),
    /// The whole file was read.
    Finished(ReadStats),
    /// The file could not be opened (or its header is unusable).
    OpenFailed(CsvError),
    /// Reading failed part-way (an I/O error): the pass is incomplete.
    ReadFailed(String),
}

/// Reads the file once, sending the plan's rows; returns when done or when the receiver is gone.
pub fn read_pass(mut plan: PassPlan, tx: mpsc::Sender<ReaderEvent>, metrics: StreamerMetrics) {
    let mut reader = match DcgmCsvReader::open(&plan.path) {
        Ok(reader) => reader,
        Err(e) => {
            let _ = tx.blocking_send(ReaderEvent::OpenFailed(e));
            return;
        }
    };
    let mut chunk = Vec::with_capacity(CHUNK_ROWS);
    let mut read = 0u64;
    for outcome in reader.by_ref() {
        read += 1;
        if read % CANCEL_CHECK_ROWS == 0 {
            metrics.rows_read.inc_by(CANCEL_CHECK_ROWS);
            if tx.is_closed() {
                return;
            }
        }
        match outcome {
            RowOutcome::Row(row) => {
                let shard = shard_for(&row.info.uuid);
                let Some(skip) = plan.skip.get_mut(&shard) else {
                    continue;
                };
                if *skip > 0 {
                    *skip -= 1;
                    continue;
                }
                chunk.push(ShardRow { shard, row });
                if chunk.len() == CHUNK_ROWS {
                    let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_ROWS));
                    if tx.blocking_send(ReaderEvent::Rows(full)).is_err() {
                        return;
                    }
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
        return;
    }
    let last = match reader.read_error() {
        // The failure was also yielded as a bad row; the pass must not count as complete.
        Some(e) => ReaderEvent::ReadFailed(e.to_string()),
        None => ReaderEvent::Finished(reader.stats()),
    };
    let _ = tx.blocking_send(last);
}
