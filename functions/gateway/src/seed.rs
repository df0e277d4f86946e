//! Development seeding (`gateway seed`): fills the store from a DCGM CSV without the streamer and
//! collector, so the API can be tried and fuzzed on a fresh etcd. Each pass over the file stamps
//! every row with the pass's time, the way the streamer stamps rows with their processing time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use function_runtime::{EtcdConfig, RuntimeError};
use telemetry_model::{CsvError, DcgmCsvReader, RowOutcome, SampleBatch, TimestampMicros};
use telemetry_store::{group_by_gpu, ChunkTag, StoreConfig, StoreError, TelemetryStore};

/// What `gateway seed` loads, and where.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedConfig {
    /// etcd and the key prefix.
    pub etcd: EtcdConfig,
    /// The CSV to load.
    pub csv: PathBuf,
    /// Passes over the file; each pass is one sample per row.
    pub passes: u32,
    /// Time between passes (the last pass is stamped now).
    pub interval: Duration,
}

impl Default for SeedConfig {
    fn default() -> Self {
        SeedConfig {
            etcd: EtcdConfig::default(),
            csv: PathBuf::new(),
            passes: 3,
            interval: Duration::from_secs(1),
        }
    }
}

/// Why seeding failed.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("connect to etcd: {0}")]
    ConnectEtcd(#[source] RuntimeError),
    #[error("read CSV: {0}")]
    ReadCsv(#[from] CsvError),
    #[error("write samples: {0}")]
    WriteSamples(#[from] StoreError),
}

/// What one seeding run wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedReport {
    pub passes: u32,
    pub rows_per_pass: usize,
    pub rows_skipped: u64,
    pub samples: usize,
}

/// `gateway seed`: connects to etcd and writes `config.passes` passes over the CSV into the store,
/// the last one stamped now.
pub async fn run(config: &SeedConfig) -> Result<SeedReport, SeedError> {
    let client = config
        .etcd
        .connect()
        .await
        .map_err(SeedError::ConnectEtcd)?;
    let store = TelemetryStore::new(
        client,
        StoreConfig {
            prefix: config.etcd.prefix.clone(),
            ..StoreConfig::default()
        },
    );
    seed_from_csv(
        &store,
        &config.csv,
        config.passes,
        config.interval,
        TimestampMicros::now(),
    )
    .await
}

/// One batch per pass over `csv`: pass `i` (0-based) is stamped `last_pass_at - (passes - 1 - i)
/// * interval`, so the last pass is the newest.
pub fn csv_passes(
    csv: &Path,
    passes: u32,
    interval: Duration,
    last_pass_at: TimestampMicros,
) -> Result<(Vec<SampleBatch>, u64), CsvError> {
    let mut reader = DcgmCsvReader::open(csv)?;
    let rows: Vec<_> = reader.by_ref().filter_map(RowOutcome::row).collect();
    let stats = reader.stats();
    let step = interval.as_micros() as i64;
    let batches = (0..passes)
        .map(|pass| {
            let at = TimestampMicros(last_pass_at.0 - i64::from(passes - 1 - pass) * step);
            let mut builder = SampleBatch::builder();
            for row in &rows {
                builder.push(&row.info, &row.metric, at, row.value);
            }
            builder.build()
        })
        .collect();
    Ok((batches, stats.rows_bad + stats.rows_blank))
}

/// Writes `passes` passes over `csv` into the store (idempotently: seeding twice with the same
/// times stores the samples once).
pub async fn seed_from_csv(
    store: &TelemetryStore,
    csv: &Path,
    passes: u32,
    interval: Duration,
    last_pass_at: TimestampMicros,
) -> Result<SeedReport, SeedError> {
    let (batches, rows_skipped) = csv_passes(csv, passes, interval, last_pass_at)?;
    let mut samples = 0;
    for (pass, batch) in batches.iter().enumerate() {
        let stats = store
            .write_idempotent(
                ChunkTag::Seed {
                    at: TimestampMicros(batch_time(batch)),
                },
                &group_by_gpu([batch]),
            )
            .await?;
        samples += stats.samples;
        tracing::info!(pass, samples = stats.samples, "seeded one pass");
    }
    Ok(SeedReport {
        passes,
        rows_per_pass: batches.first().map(SampleBatch::len).unwrap_or(0),
        rows_skipped,
        samples,
    })
}

fn batch_time(batch: &SampleBatch) -> i64 {
    batch.rows.first().map(|r| r.timestamp.0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn passes_are_stamped_one_interval_apart_ending_at_the_given_time() {
        let csv =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/dcgm-slice-100.csv");
        let (batches, skipped) =
            csv_passes(&csv, 3, Duration::from_secs(1), TimestampMicros(10_000_000)).unwrap();
        assert_eq!(skipped, 0);
        assert_eq!(batches.len(), 3);
        let times: Vec<i64> = batches.iter().map(batch_time).collect();
        assert_eq!(times, vec![8_000_000, 9_000_000, 10_000_000]);
        for batch in &batches {
            assert_eq!(batch.len(), 100);
            assert!(batch
                .rows
                .iter()
                .all(|r| r.timestamp.0 == batch_time(batch)));
        }
    }
}
