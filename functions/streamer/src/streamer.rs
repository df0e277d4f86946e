//! The streaming loop of one streamer process: joining the streamers' work group, the rounds
//! between passes, and leaving.
//!
//! Between passes the streamer reads the group (members, shard owners, shard states) at one
//! revision, rebalances its shards, and decides what to do: stop (every shard reached `--passes`),
//! wait for a change (nothing for it to stream), or stream a pass over the shards it owns
//! (`pass.rs`). Each shard's rows go out in fenced transactions that also advance the shard's
//! state (`shard.rs`); a transaction the fence refuses means the shard moved: its rows are left
//! to the new owner, never published twice (`publish.rs`).

use std::time::Duration;

use etcd_client::Client;
use etcd_queue::change_feed::ChangeFeed;
use etcd_queue::{Queue, WorkGroup, WorkGroupKeys};
use function_runtime::{NoSpaceWait, Readiness, Shutdown};

use crate::config::{StreamerConfig, WORK_GROUP};
use crate::error::StreamerError;
use crate::metrics::StreamerMetrics;
use crate::pass::Passes;
use crate::retry::{self, sleep_or_stop};
use crate::shard::{self, OwnedShard, SHARDS};

/// How long a stopping streamer waits for its transactions in flight (and for leaving the group)
/// before giving up on them. Abandoning is safe: an unfinished publish either landed with its
/// state update or not at all. Kept under the pod's termination grace period.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// When idle, the streamer re-reads the group at least this often even without a watch event.
const IDLE_RECHECK: Duration = Duration::from_secs(30);

/// What one streamer did before it stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReport {
    pub member_id: String,
    pub samples_published: u64,
    /// Batches (queue messages) published.
    pub batches_published: u64,
    pub transactions: u64,
    /// Passes over a shard this streamer completed.
    pub shard_passes: u64,
    /// Passes over the file that read it to the end.
    pub file_passes: u64,
    /// True when it stopped because every shard reached `--passes`.
    pub passes_reached: bool,
}

/// How long `/readyz` of a streamer that was given no readiness of its own would wait for etcd.
const UNSERVED_READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// Streams the CSV to the queue as one member of the streamers' work group.
pub struct Streamer {
    client: Client,
    config: StreamerConfig,
    metrics: StreamerMetrics,
    readiness: Readiness,
}

impl Streamer {
    pub fn new(client: Client, config: StreamerConfig, metrics: StreamerMetrics) -> Self {
        let readiness = Readiness::new(&config.queue.prefix, UNSERVED_READINESS_TIMEOUT);
        Streamer {
            client,
            config,
            metrics,
            readiness,
        }
    }

    /// Reports the faults the streamer waits in (etcd out of space) to `readiness`, the one
    /// `/readyz` serves.
    pub fn with_readiness(self, readiness: Readiness) -> Self {
        Streamer { readiness, ..self }
    }

    /// Streams until `stop` triggers or every shard reached `config.passes`; then finishes the
    /// transactions in flight, releases its shards and returns. Transient etcd failures are
    /// retried (and logged) for as long as it takes; only permanent failures return an error.
    pub async fn run(self, stop: Shutdown) -> Result<RunReport, StreamerError> {
        let config = &self.config;
        if config.batch_size == 0 || config.in_flight == 0 {
            return Err(StreamerError::InvalidConfig(
                "batch size and transactions in flight must be at least 1".into(),
            ));
        }
        let keys = WorkGroupKeys::new(&config.queue.prefix, WORK_GROUP)
            .map_err(StreamerError::queue("work group keys"))?;
        let report = RunReport {
            member_id: config.member_id.clone(),
            ..RunReport::default()
        };
        let nospace = NoSpaceWait::new(
            self.readiness.clone(),
            self.metrics.nospace_waits.clone(),
            self.metrics.nospace_waiting.clone(),
        );
        let mut client = self.client.clone();
        let opened = retry::etcd(&stop, &nospace, &mut client, |client| {
            let open = Queue::open(client.clone(), config.queue.clone());
            Box::pin(async { open.await.map_err(StreamerError::queue("open queue")) })
        });
        let Some(queue) = opened.await? else {
            return Ok(report);
        };
        let joined = retry::etcd(&stop, &nospace, &mut client, |client| {
            let join = WorkGroup::join(
                client.clone(),
                keys.clone(),
                SHARDS,
                config.member_id.clone(),
                config.lease_ttl,
                config.queue.retry_budget,
            );
            Box::pin(async {
                join.await
                    .map_err(StreamerError::queue("join streamer group"))
            })
        });
        let Some(group) = joined.await? else {
            return Ok(report);
        };
        let session = Session {
            client,
            config,
            metrics: &self.metrics,
            stop: stop.clone(),
            keys,
            group,
            passes: Passes::new(config, queue, stop, self.metrics.clone(), nospace.clone()),
            nospace,
        };
        // Boxed: the session's future is large (it holds etcd clients and their requests), and a
        // caller that runs the streamer inline would carry it, several times over, on its stack.
        Box::pin(session.run(report)).await
    }
}

/// What the loop does after one round.
enum Step {
    Continue,
    Done,
}

/// A streamer that joined the group.
struct Session<'a> {
    client: Client,
    config: &'a StreamerConfig,
    metrics: &'a StreamerMetrics,
    stop: Shutdown,
    keys: WorkGroupKeys,
    group: WorkGroup,
    passes: Passes,
    nospace: NoSpaceWait,
}

impl Session<'_> {
    /// Runs the rounds; then abandons what is still in flight, closes the producers and leaves
    /// the group, and completes `report`.
    async fn run(mut self, mut report: RunReport) -> Result<RunReport, StreamerError> {
        let result = self.run_rounds().await;
        let Session {
            group,
            passes,
            metrics,
            ..
        } = self;
        let published = passes.published();
        report.samples_published = published.samples;
        report.batches_published = published.batches;
        report.transactions = published.transactions;
        report.shard_passes = published.shard_passes;
        report.file_passes = passes.file_passes();
        passes.close().await;
        match tokio::time::timeout(SHUTDOWN_GRACE, group.leave()).await {
            Ok(Ok(())) => tracing::info!(member = %report.member_id, "released shards and left"),
            Ok(Err(e)) => tracing::warn!(error = %e,
                "could not leave the group; the shards free themselves when the lease expires"),
            Err(_) => tracing::warn!(
                "leaving the group timed out; the shards free themselves when the lease expires"
            ),
        }
        metrics.owned_shards.set(0);
        result.map(|passes_reached| RunReport {
            passes_reached,
            ..report
        })
    }

    /// Runs rounds until the streamer stops (false) or every shard reached the requested passes
    /// (true), retrying the rounds etcd failed.
    async fn run_rounds(&mut self) -> Result<bool, StreamerError> {
        let stop = self.stop.clone();
        let nospace = self.nospace.clone();
        loop {
            match retry::etcd(&stop, &nospace, self, |session| Box::pin(session.round())).await? {
                None => return Ok(false),
                Some(Step::Done) => return Ok(true),
                Some(Step::Continue) => {}
            }
        }
    }

    /// Reads the group, rebalances, then streams one pass, waits, or reports that all is done.
    async fn round(&mut self) -> Result<Step, StreamerError> {
        let (snapshot, responses) = self
            .group
            .snapshot_with(&[shard::read_states(&self.keys)])
            .await
            .map_err(StreamerError::queue("read streamer group"))?;
        let mut states = shard::decode_states(responses.first().map_or(&[], Vec::as_slice))?;
        let keys = self.keys.clone();
        let (_, acquired) = self
            .group
            .rebalance(&snapshot, |id| vec![shard::read_state(&keys, id)])
            .await
            .map_err(StreamerError::queue("rebalance shards"))?;
        for (id, responses) in acquired {
            states.insert(id, shard::decode_state(&keys, id, responses.first())?);
        }
        self.metrics
            .owned_shards
            .set(self.group.owned().len() as i64);

        let passes_of = |id: u32| states.get(&id).map_or(0, |s| s.state.passes);
        if let Some(target) = self.config.passes {
            if (0..SHARDS).all(|id| passes_of(id) >= target) {
                tracing::info!(passes = target, "every shard reached the requested passes");
                return Ok(Step::Done);
            }
        }
        let active: Vec<OwnedShard> = self
            .group
            .owned()
            .keys()
            .filter(|id| self.config.passes.is_none_or(|n| passes_of(**id) < n))
            .filter_map(|id| {
                let owner = self.group.owner_fence(*id)?;
                let stored = states.get(id).cloned().unwrap_or_default();
                Some(OwnedShard::new(&keys, *id, owner, stored))
            })
            .collect();
        if active.is_empty() {
            self.wait_for_change(snapshot.revision).await;
            return Ok(Step::Continue);
        }
        let shards: Vec<u32> = active.iter().map(OwnedShard::id).collect();
        let reached_after_pass = self
            .config
            .passes
            .is_some_and(|n| active.iter().all(|s| s.state().passes + 1 >= n));
        let complete = self.passes.stream(active).await?;
        if complete && !reached_after_pass {
            tracing::debug!(shards = ?shards, "pass complete");
            sleep_or_stop(self.config.interval, &self.stop).await;
        }
        Ok(Step::Continue)
    }

    /// Nothing to stream: waits until the group changes (a member joins or leaves, a shard is
    /// released or advances), the lease is lost, or the streamer stops.
    async fn wait_for_change(&mut self, revision: i64) {
        let root = self.keys.prefix();
        match ChangeFeed::open(&self.client, &[root], &[], revision + 1).await {
            Ok(mut feed) => {
                tokio::select! {
                    _ = feed.changed() => {}
                    _ = self.group.wait_lease_lost() => {}
                    _ = self.stop.wait() => {}
                    _ = tokio::time::sleep(IDLE_RECHECK) => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the streamer group; re-reading shortly");
                sleep_or_stop(Duration::from_secs(1), &self.stop).await;
            }
        }
    }
}
