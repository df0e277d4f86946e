//! The telemetry store against a real etcd: the collector write path, sealing, reads with inclusive
//! windows and cursors (entry and series pages), idempotent writes, retention, samples beyond the future bound, stale
//! caches, bytes per sample, and how often each registry key is rewritten.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse};
use telemetry_model::{DcgmCsvReader, GpuInfo, GpuUuid, MetricName, RowOutcome, TimestampMicros};
use telemetry_store::{
    Chunk, ChunkTag, GpuKey, GpuRecord, GpuSamples, Order, PreparedWrite, SampleQuery, SeriesPage,
    StoreConfig, StoreError, StoreWriter, TelemetryStore,
};
use test_support::{testdata, unique_prefix, wait_until, EtcdHarness, REAL_CSV};

/// The most GPUs a collector commit carries: what fits beside the queue's own operations.
const GPUS_PER_COMMIT: usize =
    (etcd_queue::MAX_TXN_OPS - etcd_queue::COMMIT_RESERVED_OPS) / telemetry_store::OPS_PER_GPU;

/// The tag of a test event with this id, as the HTTP ingest names the chunks it writes.
fn event(id: &str) -> ChunkTag<'_> {
    ChunkTag::Event {
        source: "/test",
        id,
    }
}

fn now_us() -> i64 {
    TimestampMicros::now().0
}

/// The real CSV's rows as (info, metric, value), in file order.
fn real_rows() -> Vec<(GpuInfo, MetricName, f64)> {
    DcgmCsvReader::open(testdata(REAL_CSV))
        .unwrap()
        .filter_map(RowOutcome::row)
        .map(|row| (row.info, row.metric, row.value))
        .collect()
}

/// One pass of the real data stamped from `t0`, 10 µs per row, grouped by GPU.
fn pass(rows: &[(GpuInfo, MetricName, f64)], t0: i64) -> BTreeMap<GpuUuid, GpuSamples> {
    let mut by_gpu: BTreeMap<GpuUuid, GpuSamples> = BTreeMap::new();
    for (i, (info, metric, value)) in rows.iter().enumerate() {
        by_gpu
            .entry(info.uuid.clone())
            .or_insert_with(|| GpuSamples {
                info: info.clone(),
                samples: Vec::new(),
            })
            .samples
            .push((metric.clone(), TimestampMicros(t0 + 10 * i as i64), *value));
    }
    by_gpu
}

/// Applies a prepared write as its own transaction (the collector adds it to a queue commit).
async fn apply(client: &Client, writer: &mut StoreWriter, prepared: PreparedWrite) -> bool {
    let txn = Txn::new()
        .when(prepared.fence.compares.clone())
        .and_then(prepared.fence.ops.clone());
    let response = client.clone().txn(txn).await.unwrap();
    if response.succeeded() {
        writer.committed(prepared, response.header().unwrap().revision());
    } else {
        writer.invalidate_all();
    }
    response.succeeded()
}

async fn write_passes(store: &TelemetryStore, passes: usize, t0: i64, step_us: i64) -> usize {
    let rows = real_rows();
    let mut writer = StoreWriter::new(store.clone());
    let mut written = 0;
    for p in 0..passes {
        let by_gpu = pass(&rows, t0 + p as i64 * step_us);
        // As many GPUs per commit as a collector commit carries.
        let gpus: Vec<_> = by_gpu.into_iter().collect();
        for group in gpus.chunks(GPUS_PER_COMMIT) {
            let group: BTreeMap<_, _> = group.iter().cloned().collect();
            let prepared = writer.prepare(&group).await.unwrap();
            written += prepared.samples;
            assert!(apply(store.client(), &mut writer, prepared).await);
        }
    }
    written
}

/// The registry records that passes of `rows` starting at `starts` make, in UUID order.
fn expected_records(rows: &[(GpuInfo, MetricName, f64)], starts: &[i64]) -> Vec<GpuRecord> {
    let mut records: BTreeMap<GpuUuid, GpuRecord> = BTreeMap::new();
    for &t0 in starts {
        for (uuid, gpu) in pass(rows, t0) {
            let record = records
                .entry(uuid)
                .or_insert_with(|| GpuRecord::new(gpu.info.clone(), gpu.samples[0].1));
            record.observe_batch(&gpu.info, gpu.samples.iter().map(|(m, t, v)| (m, *t, *v)));
        }
    }
    records.into_values().collect()
}

/// A GPU's identity and seen entries in etcd.
async fn registry_kvs(
    store: &TelemetryStore,
    uuid: &GpuUuid,
) -> (Option<KeyValue>, Option<KeyValue>) {
    let txn = Txn::new().and_then([
        TxnOp::get(store.keys().gpu(uuid), None),
        TxnOp::get(store.keys().gpu_seen(uuid), None),
    ]);
    let response = store.client().clone().txn(txn).await.unwrap();
    let first = |i: usize| match &response.op_responses()[i] {
        TxnOpResponse::Get(get) => get.kvs().first().cloned(),
        _ => unreachable!("a get"),
    };
    (first(0), first(1))
}

/// Every GPU's identity and seen entries, from one range read.
async fn registry_snapshot(
    store: &TelemetryStore,
) -> BTreeMap<String, (Option<KeyValue>, Option<KeyValue>)> {
    let response = store
        .client()
        .clone()
        .get(
            store.keys().gpus_prefix(),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let mut snapshot: BTreeMap<String, (Option<KeyValue>, Option<KeyValue>)> = BTreeMap::new();
    for kv in response.kvs() {
        let (uuid, kind) = store.keys().parse_gpu_key(kv.key()).unwrap();
        let entry = snapshot.entry(uuid.to_string()).or_default();
        match kind {
            GpuKey::Identity => entry.0 = Some(kv.clone()),
            GpuKey::Seen => entry.1 = Some(kv.clone()),
        }
    }
    snapshot
}

/// The lease etcd holds for the retention bucket starting at `bucket`.
async fn bucket_lease(store: &TelemetryStore, bucket: i64) -> i64 {
    let key = store.keys().retention_bucket(bucket);
    let response = store.client().clone().get(key, None).await.unwrap();
    std::str::from_utf8(response.kvs()[0].value())
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn collector_path_stores_every_sample_once_in_order() {
    let etcd = EtcdHarness::start().await;
    let config = StoreConfig {
        prefix: unique_prefix("store"),
        chunk_max_samples: 25, // small, so the test crosses many seals
        ..StoreConfig::default()
    };
    let store = TelemetryStore::new(etcd.client().await, config);
    let t0 = now_us() - 60_000_000;
    let written = write_passes(&store, 6, t0, 1_000_000).await;
    assert_eq!(written, 6 * 2_470);

    let gpus = store.list_gpus().await.unwrap();
    assert_eq!(gpus.len(), 247);
    let hosts: std::collections::BTreeSet<_> =
        gpus.iter().map(|g| g.info.hostname.clone()).collect();
    assert_eq!(hosts.len(), 31);
    for record in &gpus {
        assert_eq!(record.latest.len(), 10, "{}", record.info.uuid);
        let all = store
            .query(
                &record.info.uuid,
                &SampleQuery {
                    limit: 10_000,
                    ..SampleQuery::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(
            all.samples.len(),
            60,
            "{}: 6 passes x 10 metrics",
            record.info.uuid
        );
        assert!(all.next_cursor.is_none());
        let keys: Vec<_> = all
            .samples
            .iter()
            .map(|s| (s.timestamp, s.metric.clone()))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(keys, sorted, "ordered by time then metric, no duplicates");
        assert_eq!(record.first_seen, all.samples.first().unwrap().timestamp);
        assert_eq!(record.last_seen, all.samples.last().unwrap().timestamp);
    }
    assert_eq!(store.metric_names().await.unwrap().len(), 10);
    let footprint = store.footprint().await.unwrap();
    assert_eq!(footprint.samples, 6 * 2_470);
}

#[tokio::test]
async fn windows_are_inclusive_and_pages_resume_exactly() {
    let etcd = EtcdHarness::start().await;
    let store = TelemetryStore::new(
        etcd.client().await,
        StoreConfig {
            prefix: unique_prefix("window"),
            chunk_max_samples: 30,
            ..StoreConfig::default()
        },
    );
    let t0 = now_us() - 600_000_000;
    write_passes(&store, 12, t0, 1_000_000).await;
    let gpu = store.list_gpus().await.unwrap()[0].info.uuid.clone();
    let all = store
        .query(
            &gpu,
            &SampleQuery {
                limit: 10_000,
                ..SampleQuery::default()
            },
        )
        .await
        .unwrap()
        .samples;
    assert_eq!(all.len(), 120);
    let pick = &all[57];
    let exact = |start: i64, end: i64| {
        let store = store.clone();
        let gpu = gpu.clone();
        async move {
            store
                .query(
                    &gpu,
                    &SampleQuery {
                        start: Some(TimestampMicros(start)),
                        end: Some(TimestampMicros(end)),
                        limit: 10_000,
                        ..SampleQuery::default()
                    },
                )
                .await
                .unwrap()
                .samples
        }
    };
    let t = pick.timestamp.0;
    assert_eq!(
        exact(t, t).await,
        vec![pick.clone()],
        "start = end = a sample's time returns it"
    );
    assert!(exact(t + 1, t + 1).await.is_empty());
    assert!(exact(t - 1, t - 1).await.is_empty());
    assert_eq!(exact(t - 1, t + 1).await, vec![pick.clone()]);

    // Pages of 7 in both directions return every entry exactly once, in order.
    for order in [Order::Asc, Order::Desc] {
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = store
                .query(
                    &gpu,
                    &SampleQuery {
                        limit: 7,
                        cursor: cursor.clone(),
                        order,
                        ..SampleQuery::default()
                    },
                )
                .await
                .unwrap();
            assert!(page.samples.len() <= 7);
            seen.extend(page.samples);
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let mut expected = all.clone();
        if order == Order::Desc {
            expected.reverse();
        }
        assert_eq!(seen, expected, "{order:?}");
    }

    // Metric filter.
    let util = MetricName::parse("DCGM_FI_DEV_GPU_UTIL").unwrap();
    let only = store
        .query(
            &gpu,
            &SampleQuery {
                metrics: Some(vec![util.clone()]),
                limit: 10_000,
                ..SampleQuery::default()
            },
        )
        .await
        .unwrap()
        .samples;
    assert_eq!(only.len(), 12);
    assert!(only.iter().all(|s| &*s.metric == util.as_str()));
}

/// Pages read their chunks in the page's direction and stop once the page is settled, also when a
/// chunk written over HTTP overlaps the collector's chunks in time.
#[tokio::test]
async fn pages_read_only_the_chunks_they_need() {
    let etcd = EtcdHarness::start().await;
    let store = TelemetryStore::new(
        etcd.client().await,
        StoreConfig {
            prefix: unique_prefix("paging"),
            chunk_max_samples: 10,
            ..StoreConfig::default()
        },
    );
    let second = 1_000_000;
    // One retention bucket (1 h), well inside retention, so only the sample count seals chunks.
    let t0 = store.leases().bucket_of(now_us() - 3 * 3_600 * second) + second;
    let info = GpuInfo::new(GpuUuid::parse("GPU-paging").unwrap());
    let (a, b, c) = (
        MetricName::parse("A").unwrap(),
        MetricName::parse("B").unwrap(),
        MetricName::parse("C").unwrap(),
    );
    // The collector path: 100 seconds of A and B, 10 samples per chunk: chunk k holds seconds
    // 5k..5k+4; 19 sealed chunks and the open one.
    let mut collected = GpuSamples {
        info: info.clone(),
        samples: Vec::new(),
    };
    for i in 0..100 {
        for metric in [&a, &b] {
            collected
                .samples
                .push((metric.clone(), TimestampMicros(t0 + i * second), i as f64));
        }
    }
    let mut writer = StoreWriter::new(store.clone());
    let group = BTreeMap::from([(info.uuid.clone(), collected)]);
    let prepared = writer.prepare(&group).await.unwrap();
    assert!(apply(store.client(), &mut writer, prepared).await);
    // An event posted over HTTP: metric C every 20 s across the whole span, one chunk that
    // overlaps all the others.
    let posted = GpuSamples {
        info: info.clone(),
        samples: (0..5)
            .map(|i| (c.clone(), TimestampMicros(t0 + 20 * i * second), -1.0))
            .collect(),
    };
    store
        .write_idempotent(event("1"), &BTreeMap::from([(info.uuid.clone(), posted)]))
        .await
        .unwrap();

    let everything = store
        .query(
            &info.uuid,
            &SampleQuery {
                limit: 10_000,
                ..SampleQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(everything.samples.len(), 205);
    assert_eq!(
        everything.chunks_read, 21,
        "19 sealed + the open one + the posted one"
    );

    // A metric no chunk holds: nothing tells how full the chunks are, so rounds grow to the
    // cap and every chunk is read once; the page is empty and final.
    let absent = store
        .query(
            &info.uuid,
            &SampleQuery {
                metrics: Some(vec![MetricName::parse("D").unwrap()]),
                limit: 15,
                ..SampleQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (absent.samples.len(), absent.chunks_read, absent.next_cursor),
        (0, 21, None)
    );

    // A chunk whose series name is not a metric name is reported as corrupt, not passed on.
    let mut bad = Chunk::new();
    bad.push("not a metric", t0 + 500 * second, 1.0);
    let bad_key = store.keys().sealed_chunk(
        &info.uuid,
        t0 + 500 * second,
        t0 + 500 * second,
        event("bad"),
    );
    store
        .client()
        .clone()
        .put(bad_key.clone(), bad.encode(), None)
        .await
        .unwrap();
    let err = store
        .query(&info.uuid, &SampleQuery::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::CorruptChunk { key, .. } if *key == bad_key),
        "{err}"
    );
    store.client().clone().delete(bad_key, None).await.unwrap();

    for order in [Order::Asc, Order::Desc] {
        let mut pages = Vec::new();
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = store
                .query(
                    &info.uuid,
                    &SampleQuery {
                        limit: 15,
                        cursor: cursor.clone(),
                        order,
                        ..SampleQuery::default()
                    },
                )
                .await
                .unwrap();
            pages.push((page.samples.len(), page.chunks_read));
            seen.extend(page.samples);
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let mut expected = everything.samples.clone();
        if order == Order::Desc {
            expected.reverse();
        }
        assert_eq!(seen, expected, "{order:?}: every sample once, in order");
        assert_eq!(pages.len(), 14, "{order:?}: 205 samples in pages of 15");
        // The first page. Ascending: the open chunk, then a first round of 2 sealed chunks (the
        // posted one, which starts first, and seconds 0-4): 10 samples + 1 of C before second 5
        // is not yet a page; those 2 chunks held 15 samples, so the 5 missing need 1 chunk,
        // plus 1 (seconds 5-14). Descending: the open chunk and the 2 chunks ending last
        // (seconds 85-94) already settle 30 samples; the posted one ends at second 80.
        let first_page = match order {
            Order::Asc => (15, 1 + 2 + 2),
            Order::Desc => (15, 1 + 2),
        };
        assert_eq!(pages[0], first_page, "{order:?}");
        // A later page reads at most the open chunk, then the posted one and the chunk its
        // cursor cuts (neither tells how full the chunks ahead are), then a round of 4: never
        // the 21 chunks of the whole history.
        let most = pages.iter().map(|(_, read)| *read).max().unwrap();
        assert_eq!(most, 1 + 2 + 4, "{order:?}: {pages:?}");
    }

    // Series pages, made from each chunk's columns (C's chunk overlaps all the others, the open
    // chunk is read first), are the entry pages cut per series, page after page; together
    // they hold every sample once. A page limit below the series' limits ends some pages first.
    for order in [Order::Asc, Order::Desc] {
        for (per_series, limit) in [(1, 3), (7, 21), (7, 10), (40, 120), (200, 600)] {
            let mut cursor = None;
            let mut seen = 0;
            let mut pages = 0;
            loop {
                let query = SampleQuery {
                    limit,
                    cursor: cursor.clone(),
                    order,
                    ..SampleQuery::default()
                };
                let page = store
                    .query_series(&info.uuid, &query, per_series)
                    .await
                    .unwrap();
                let entries = store.query(&info.uuid, &query).await.unwrap();
                let expected =
                    SeriesPage::from_entries(entries.samples, entries.next_cursor, per_series);
                assert_eq!(
                    page, expected,
                    "{order:?} {per_series}/{limit} page {pages}"
                );
                assert!(page.series.iter().all(|s| s.timestamps.len() <= per_series));
                seen += page.count;
                pages += 1;
                match page.next_cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            assert_eq!(seen, 205, "{order:?} {per_series}/{limit}: {pages} pages");
        }
    }
}

#[tokio::test]
async fn idempotent_writes_do_not_duplicate_on_replay() {
    let etcd = EtcdHarness::start().await;
    let store = TelemetryStore::new(
        etcd.client().await,
        StoreConfig {
            prefix: unique_prefix("idem"),
            ..StoreConfig::default()
        },
    );
    let t0 = now_us() - 5_000_000;
    let by_gpu = pass(&real_rows(), t0);
    let first = store.write_idempotent(event("aa"), &by_gpu).await.unwrap();
    let replay = store.write_idempotent(event("aa"), &by_gpu).await.unwrap();
    assert_eq!(first.samples, 2_470);
    assert_eq!(replay, first);
    let footprint = store.footprint().await.unwrap();
    assert_eq!(footprint.samples, 2_470, "a replay rewrites the same keys");
    assert_eq!(store.list_gpus().await.unwrap().len(), 247);
    for uuid in by_gpu.keys() {
        let (identity, seen) = registry_kvs(&store, uuid).await;
        assert_eq!(
            (identity.unwrap().version(), seen.unwrap().version()),
            (1, 1),
            "a replay leaves the registry of {uuid} untouched"
        );
    }

    // Another event, applied after the first in one store and before it (and again) in another:
    // the same registry either way.
    let later = pass(&real_rows(), t0 + 1_000_000);
    store.write_idempotent(event("2"), &later).await.unwrap();
    let other = TelemetryStore::new(
        etcd.client().await,
        StoreConfig {
            prefix: unique_prefix("idem-reordered"),
            ..StoreConfig::default()
        },
    );
    for (tag, gpus) in [
        (event("2"), &later),
        (event("aa"), &by_gpu),
        (event("2"), &later),
    ] {
        other.write_idempotent(tag, gpus).await.unwrap();
    }
    let registry = store.list_gpus().await.unwrap();
    assert_eq!(registry, other.list_gpus().await.unwrap());
    assert_eq!(
        registry,
        expected_records(&real_rows(), &[t0, t0 + 1_000_000])
    );
}

#[tokio::test]
async fn a_stale_cache_fails_the_commit_instead_of_overwriting() {
    let etcd = EtcdHarness::start().await;
    let store = TelemetryStore::new(
        etcd.client().await,
        StoreConfig {
            prefix: unique_prefix("stale"),
            ..StoreConfig::default()
        },
    );
    let rows = real_rows();
    let t0 = now_us() - 10_000_000;
    let mut a = StoreWriter::new(store.clone());
    let mut b = StoreWriter::new(store.clone());
    let first = pass(&rows[..10], t0);
    let prepared = a.prepare(&first).await.unwrap();
    assert!(apply(store.client(), &mut a, prepared).await);
    // b loads, then a writes again: b's cache is now stale.
    let second = pass(&rows[..10], t0 + 1_000_000);
    let b_prepared = b.prepare(&second).await.unwrap();
    let a_prepared = a.prepare(&second).await.unwrap();
    assert!(apply(store.client(), &mut a, a_prepared).await);
    assert!(
        !apply(store.client(), &mut b, b_prepared).await,
        "stale writer must not commit"
    );
    let gpu = rows[0].0.uuid.clone();
    let stored = store
        .query(&gpu, &SampleQuery::default())
        .await
        .unwrap()
        .samples;
    // The first 10 rows are one metric of 10 GPUs: one sample per pass for this GPU.
    assert_eq!(
        stored.len(),
        2,
        "both passes stored once: the stale write left no trace"
    );
}

#[tokio::test]
async fn an_identity_rewritten_elsewhere_fails_a_cached_fence() {
    // The fence compares a GPU's seen key for both registry keys, so a write that changes only
    // the identity must rewrite the seen key too.
    let etcd = EtcdHarness::start().await;
    let store = TelemetryStore::new(
        etcd.client().await,
        StoreConfig {
            prefix: unique_prefix("identity-fence"),
            ..StoreConfig::default()
        },
    );
    let rows = real_rows();
    let t0 = now_us() - 10_000_000;
    let mut writer = StoreWriter::new(store.clone());
    let first = pass(&rows[..10], t0);
    let prepared = writer.prepare(&first).await.unwrap();
    assert!(apply(store.client(), &mut writer, prepared).await);
    let gpu = rows[0].0.uuid.clone();
    let (identity, seen) = registry_kvs(&store, &gpu).await;
    let (identity, seen) = (identity.unwrap(), seen.unwrap());

    // The same samples with greater metadata, through the idempotent path: the newest sample ties,
    // so the greater metadata wins and only the identity changes.
    let mut renamed = first.clone();
    for samples in renamed.values_mut() {
        samples.info.hostname = Some("zz-renamed-host".to_owned());
    }
    store
        .write_idempotent(event("renamed"), &renamed)
        .await
        .unwrap();
    let (identity_after, seen_after) = registry_kvs(&store, &gpu).await;
    let (identity_after, seen_after) = (identity_after.unwrap(), seen_after.unwrap());
    assert_ne!(
        identity_after.value(),
        identity.value(),
        "the identity changed"
    );
    assert_eq!(seen_after.value(), seen.value(), "the seen value did not");
    assert!(
        seen_after.mod_revision() > seen.mod_revision(),
        "the seen key is rewritten with the identity"
    );
    assert_eq!(seen_after.mod_revision(), identity_after.mod_revision());

    // The writer's cache still holds the old identity: its next fence fails, and once reloaded
    // the same write lands.
    let second = pass(&rows[..10], t0 + 1_000_000);
    let stale = writer.prepare(&second).await.unwrap();
    assert!(!apply(store.client(), &mut writer, stale).await);
    let fresh = writer.prepare(&second).await.unwrap();
    assert!(apply(store.client(), &mut writer, fresh).await);
    let record = store.gpu(&gpu).await.unwrap().unwrap();
    assert_eq!(record.last_seen, TimestampMicros(t0 + 1_000_000));
}

/// The real rows of the first 20 GPUs in the file: one commit's worth.
fn rows_of_20_gpus() -> Vec<(GpuInfo, MetricName, f64)> {
    let mut gpus = std::collections::BTreeSet::new();
    real_rows()
        .into_iter()
        .filter(|(info, _, _)| {
            if gpus.len() < 20 {
                gpus.insert(info.uuid.clone());
            }
            gpus.contains(&info.uuid)
        })
        .collect()
}

/// Every GPU of `rows` holds exactly `passes` samples per row, each pass's once.
async fn assert_passes_stored(
    store: &TelemetryStore,
    rows: &[(GpuInfo, MetricName, f64)],
    passes: usize,
) {
    let footprint = store.footprint().await.unwrap();
    assert_eq!(footprint.samples, (passes * rows.len()) as u64);
    for (uuid, gpu) in pass(rows, 0) {
        let all = store
            .query(
                &uuid,
                &SampleQuery {
                    limit: 10_000,
                    ..SampleQuery::default()
                },
            )
            .await
            .unwrap();
        let mut keys: Vec<_> = all
            .samples
            .iter()
            .map(|s| (s.metric.clone(), s.timestamp))
            .collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), passes * gpu.samples.len(), "{uuid}");
        assert_eq!(all.samples.len(), passes * gpu.samples.len(), "{uuid}");
    }
}

/// A prepared write that never lands (its commit failed, or the collector cut the delivery
/// shorter) took its GPUs' open chunks out of the cache: preparing the same samples again loads
/// them from etcd, so what the dropped write appended is not written twice.
#[tokio::test]
async fn a_prepared_write_that_never_lands_leaves_its_gpus_to_be_reloaded() {
    let etcd = EtcdHarness::start().await;
    let store = TelemetryStore::new(
        etcd.client().await,
        StoreConfig {
            prefix: unique_prefix("dropped"),
            ..StoreConfig::default()
        },
    );
    let rows = rows_of_20_gpus();
    let t0 = now_us() - 10_000_000;
    let mut writer = StoreWriter::new(store.clone());
    let prepared = writer.prepare(&pass(&rows, t0)).await.unwrap();
    assert!(apply(store.client(), &mut writer, prepared).await);
    let second = pass(&rows, t0 + 1_000_000);
    let dropped = writer.prepare(&second).await.unwrap();
    assert_eq!(dropped.samples, rows.len());
    drop(dropped);
    let prepared = writer.prepare(&second).await.unwrap();
    assert_eq!(prepared.samples, rows.len());
    assert!(apply(store.client(), &mut writer, prepared).await);
    assert_passes_stored(&store, &rows, 2).await;
}

/// A write whose fence failed (another writer wrote its GPUs) took its GPUs out of the cache: even
/// without invalidating, the next prepare reads them again and lands on what the other wrote.
#[tokio::test]
async fn gpus_of_a_failed_fence_are_reloaded_without_invalidating() {
    let etcd = EtcdHarness::start().await;
    let store = TelemetryStore::new(
        etcd.client().await,
        StoreConfig {
            prefix: unique_prefix("failed-fence"),
            ..StoreConfig::default()
        },
    );
    let rows = rows_of_20_gpus();
    let t0 = now_us() - 10_000_000;
    let mut a = StoreWriter::new(store.clone());
    let mut b = StoreWriter::new(store.clone());
    let prepared = a.prepare(&pass(&rows, t0)).await.unwrap();
    assert!(apply(store.client(), &mut a, prepared).await);
    let prepared = b.prepare(&pass(&rows, t0 + 1_000_000)).await.unwrap();
    assert!(apply(store.client(), &mut b, prepared).await);
    // a's cache is stale for every GPU: its fence fails, and nothing is invalidated.
    let third = pass(&rows, t0 + 2_000_000);
    let stale = a.prepare(&third).await.unwrap();
    let txn = Txn::new()
        .when(stale.fence.compares.clone())
        .and_then(stale.fence.ops.clone());
    let response = store.client().clone().txn(txn).await.unwrap();
    assert!(!response.succeeded(), "a stale fence fails");
    drop(stale);
    let prepared = a.prepare(&third).await.unwrap();
    assert!(apply(store.client(), &mut a, prepared).await);
    assert_passes_stored(&store, &rows, 3).await;
}

#[tokio::test]
async fn samples_expire_after_the_retention_period() {
    let etcd = EtcdHarness::start().await;
    let store = TelemetryStore::new(
        etcd.client().await,
        StoreConfig {
            prefix: unique_prefix("retention"),
            retention: Duration::from_secs(2),
            bucket: Duration::from_secs(1),
            ..StoreConfig::default()
        },
    );
    let written = write_passes(&store, 2, now_us(), 100_000).await;
    assert_eq!(written, 2 * 2_470);
    assert_eq!(store.list_gpus().await.unwrap().len(), 247);
    let gpu = store.list_gpus().await.unwrap()[0].info.uuid.clone();
    assert_eq!(
        store
            .query(&gpu, &SampleQuery::default())
            .await
            .unwrap()
            .samples
            .len(),
        20
    );
    // Bucket (1 s) + retention (2 s) + lease rounding: gone within a few seconds, by etcd itself.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let gpus = store.list_gpus().await.unwrap().len();
        let samples = store
            .query(&gpu, &SampleQuery::default())
            .await
            .unwrap()
            .samples
            .len();
        let footprint = store.footprint().await.unwrap();
        if gpus == 0 && samples == 0 && footprint.chunks == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {gpus} GPUs, {samples} samples, {} chunks",
            footprint.chunks
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Data older than the retention is not written at all.
    let stale = pass(&real_rows(), now_us() - 60_000_000);
    let stats = store.write_idempotent(event("old"), &stale).await.unwrap();
    assert_eq!((stats.samples, stats.expired), (0, 2_470));
}

#[tokio::test]
async fn real_feed_is_stored_in_at_most_four_bytes_per_sample() {
    let etcd = EtcdHarness::start().await;
    let store = TelemetryStore::new(
        etcd.client().await,
        StoreConfig {
            prefix: unique_prefix("bytes"),
            ..StoreConfig::default()
        },
    );
    // 150 passes 1 s apart: what 2.5 minutes of the looped feed stores.
    let written = write_passes(&store, 150, now_us() - 200_000_000, 1_000_000).await;
    let footprint = store.footprint().await.unwrap();
    assert_eq!(footprint.samples as usize, written);
    let per_sample = footprint.chunk_value_bytes as f64 / footprint.samples as f64;
    println!(
        "stored {} samples in {} chunks: {:.3} value bytes/sample ({:.3} with keys, registry {} bytes)",
        footprint.samples,
        footprint.chunks,
        per_sample,
        (footprint.chunk_value_bytes + footprint.chunk_key_bytes) as f64 / footprint.samples as f64,
        footprint.registry_value_bytes
    );
    assert!(per_sample <= 4.0, "{per_sample} bytes per sample");
}

#[tokio::test]
async fn the_identity_is_written_once_per_bucket_and_the_seen_value_on_every_commit() {
    let etcd = EtcdHarness::start().await;
    let store = TelemetryStore::new(
        etcd.client().await,
        StoreConfig {
            prefix: unique_prefix("registry-writes"),
            ..StoreConfig::default()
        },
    );
    let rows = real_rows();
    let hour = store.leases().bucket_us();
    let first_bucket = store.leases().bucket_of(now_us() - 3 * hour);
    let second_bucket = first_bucket + hour;
    // Five passes 1 s apart in one bucket, then three in the next: eight commits per GPU.
    let first_starts: Vec<i64> = (0..5).map(|p| first_bucket + (1 + p) * 1_000_000).collect();
    let second_starts: Vec<i64> = (0..3)
        .map(|p| second_bucket + (1 + p) * 1_000_000)
        .collect();
    assert_eq!(
        write_passes(&store, 5, first_starts[0], 1_000_000).await,
        5 * 2_470
    );

    let records = store.list_gpus().await.unwrap();
    assert_eq!(records, expected_records(&rows, &first_starts));
    let lease = bucket_lease(&store, first_bucket).await;
    let mut identity_bytes = 0;
    let mut seen_bytes = 0;
    for record in &records {
        let uuid = &record.info.uuid;
        assert_eq!(store.gpu(uuid).await.unwrap().as_ref(), Some(record));
        let (identity, seen) = registry_kvs(&store, uuid).await;
        let (identity, seen) = (identity.unwrap(), seen.unwrap());
        assert_eq!(
            (identity.version(), seen.version()),
            (1, 5),
            "{uuid}: identity written once, seen value on each of the 5 commits"
        );
        assert_eq!((identity.lease(), seen.lease()), (lease, lease), "{uuid}");
        identity_bytes += identity.value().len();
        seen_bytes += seen.value().len();
    }
    println!(
        "registry of 247 GPUs: identity {identity_bytes} bytes, seen {seen_bytes} bytes ({:.1} per GPU)",
        seen_bytes as f64 / 247.0
    );
    // The per-commit part is small: ten metrics in well under 13 bytes each.
    assert!(seen_bytes < 247 * 130, "{seen_bytes} bytes of seen values");

    // A fresh writer (cold cache) continues into the next bucket: the identity moves to that
    // bucket's lease once, the seen value follows every commit.
    assert_eq!(
        write_passes(&store, 3, second_starts[0], 1_000_000).await,
        3 * 2_470
    );
    let all_starts: Vec<i64> = first_starts.iter().chain(&second_starts).copied().collect();
    let records = store.list_gpus().await.unwrap();
    assert_eq!(records, expected_records(&rows, &all_starts));
    let lease = bucket_lease(&store, second_bucket).await;
    for record in &records {
        let uuid = &record.info.uuid;
        let (identity, seen) = registry_kvs(&store, uuid).await;
        let (identity, seen) = (identity.unwrap(), seen.unwrap());
        assert_eq!((identity.version(), seen.version()), (2, 8), "{uuid}");
        assert_eq!((identity.lease(), seen.lease()), (lease, lease), "{uuid}");
    }
}

/// One registry step: metadata, samples, and the (identity, seen) versions expected after it.
type Step<'a> = (&'a GpuInfo, Vec<(&'a MetricName, i64, f64)>, (i64, i64));

#[tokio::test]
async fn a_new_metric_newer_labels_or_an_earlier_sample_rewrite_the_identity() {
    let etcd = EtcdHarness::start().await;
    let store = TelemetryStore::new(
        etcd.client().await,
        StoreConfig {
            prefix: unique_prefix("registry-changes"),
            ..StoreConfig::default()
        },
    );
    let util = MetricName::parse("DCGM_FI_DEV_GPU_UTIL").unwrap();
    let temp = MetricName::parse("DCGM_FI_DEV_GPU_TEMP").unwrap();
    let t = now_us() - 60_000_000;
    // The same steps through the collector's writer and through idempotent (HTTP) writes, on a
    // GPU each; expected (identity, seen) versions after each step.
    for through_writer in [true, false] {
        let uuid = GpuUuid::parse(if through_writer { "GPU-w" } else { "GPU-h" }).unwrap();
        let info = GpuInfo::new(uuid.clone());
        let mut labelled = info.clone();
        labelled.labels.insert("pod".into(), "trainer-0".into());
        let steps: Vec<Step> = vec![
            (&info, vec![(&util, t, 1.0)], (1, 1)),
            (&info, vec![(&util, t + 1, 2.0)], (1, 2)),
            (&info, vec![(&temp, t + 2, 40.0)], (2, 3)),
            (&labelled, vec![(&util, t + 3, 3.0)], (3, 4)),
            // Earlier than anything seen: first_seen moves, the latest values do not; the seen
            // key is rewritten with the identity all the same (its revision fences both).
            (&labelled, vec![(&util, t - 10, 0.5)], (4, 5)),
            // An old sample again: the registry has nothing new to store.
            (&labelled, vec![(&util, t + 1, 2.0)], (4, 5)),
            (
                &labelled,
                vec![(&util, t + 4, 4.0), (&temp, t + 4, 41.0)],
                (4, 6),
            ),
            // A late batch with the old metadata (say, a replay): the newest batch's labels stay.
            (&info, vec![(&util, t + 2, 2.5)], (4, 6)),
        ];
        let mut writer = StoreWriter::new(store.clone());
        let mut expected = GpuRecord::new(info.clone(), TimestampMicros(t));
        for (step, (info, samples, versions)) in steps.into_iter().enumerate() {
            let gpu = GpuSamples {
                info: info.clone(),
                samples: samples
                    .iter()
                    .map(|(m, ts, v)| ((*m).clone(), TimestampMicros(*ts), *v))
                    .collect(),
            };
            expected.observe_batch(info, gpu.samples.iter().map(|(m, t, v)| (m, *t, *v)));
            let gpus = BTreeMap::from([(uuid.clone(), gpu)]);
            if through_writer {
                let prepared = writer.prepare(&gpus).await.unwrap();
                assert!(apply(store.client(), &mut writer, prepared).await);
            } else {
                store
                    .write_idempotent(event(&step.to_string()), &gpus)
                    .await
                    .unwrap();
            }
            assert_eq!(
                store.gpu(&uuid).await.unwrap().as_ref(),
                Some(&expected),
                "{uuid} step {step}"
            );
            let (identity, seen) = registry_kvs(&store, &uuid).await;
            assert_eq!(
                (identity.unwrap().version(), seen.unwrap().version()),
                versions,
                "{uuid} step {step}: (identity, seen) versions"
            );
        }
        assert_eq!(
            expected.latest.keys().collect::<Vec<_>>(),
            vec![&temp, &util]
        );
        assert_eq!(expected.info, labelled);
    }
    assert_eq!(store.list_gpus().await.unwrap().len(), 2);
}

#[tokio::test]
async fn both_registry_keys_expire_together_with_the_last_data() {
    let etcd = EtcdHarness::start().await;
    let store = TelemetryStore::new(
        etcd.client().await,
        StoreConfig {
            prefix: unique_prefix("registry-retention"),
            retention: Duration::from_secs(3),
            bucket: Duration::from_secs(1),
            ..StoreConfig::default()
        },
    );
    let rows = real_rows();
    let t0 = now_us();
    let starts: Vec<i64> = (0..3).map(|p| t0 + p * 600_000).collect();
    assert_eq!(write_passes(&store, 3, t0, 600_000).await, 3 * 2_470);
    // Each GPU's identity is written once per bucket its last sighting moved into.
    let snapshot = registry_snapshot(&store).await;
    assert_eq!(snapshot.len(), 247);
    let mut leases = BTreeMap::new();
    let mut rewrites = 0;
    for record in expected_records(&rows, &starts) {
        let uuid = &record.info.uuid;
        let mut buckets: Vec<i64> = starts
            .iter()
            .map(|&start| {
                let last = pass(&rows, start)[uuid].samples.last().unwrap().1;
                store.leases().bucket_of(last.0)
            })
            .collect();
        buckets.dedup();
        let (identity, seen) = &snapshot[uuid.as_str()];
        let (identity, seen) = (identity.as_ref().unwrap(), seen.as_ref().unwrap());
        assert_eq!(
            (identity.version(), seen.version()),
            (buckets.len() as i64, 3),
            "{uuid}"
        );
        assert_eq!(identity.lease(), seen.lease(), "{uuid}");
        let last_bucket = *buckets.last().unwrap();
        let lease = match leases.get(&last_bucket) {
            Some(lease) => *lease,
            None => *leases
                .entry(last_bucket)
                .or_insert(bucket_lease(&store, last_bucket).await),
        };
        assert_eq!(identity.lease(), lease, "{uuid}");
        rewrites += buckets.len() - 1;
    }
    assert!(rewrites > 0, "1.2 s of passes cross a 1 s bucket boundary");
    // etcd deletes both keys of a GPU at once, and only with the GPU's last chunk.
    wait_until("the registry expires", Duration::from_secs(30), || async {
        let snapshot = registry_snapshot(&store).await;
        assert!(
            snapshot.values().all(|(i, s)| i.is_some() && s.is_some()),
            "identity and seen keys expire together"
        );
        if !snapshot.is_empty() {
            return false;
        }
        assert_eq!(
            store.footprint().await.unwrap().chunks,
            0,
            "no data outlives its GPU"
        );
        true
    })
    .await;
    assert!(store.list_gpus().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_record_without_its_seen_value_reads_as_seen_once_and_heals_on_write() {
    let etcd = EtcdHarness::start().await;
    let store = TelemetryStore::new(
        etcd.client().await,
        StoreConfig {
            prefix: unique_prefix("registry-partial"),
            ..StoreConfig::default()
        },
    );
    let util = MetricName::parse("DCGM_FI_DEV_GPU_UTIL").unwrap();
    let uuid = GpuUuid::parse("GPU-old").unwrap();
    let t = now_us() - 60_000_000;
    // A record as stored before the registry was split in two keys.
    let mut old = GpuRecord::new(GpuInfo::new(uuid.clone()), TimestampMicros(t));
    old.observe(&util, TimestampMicros(t + 5), 7.0);
    let mut client = store.client().clone();
    client
        .put(
            store.keys().gpu(&uuid),
            serde_json::to_vec(&old).unwrap(),
            None,
        )
        .await
        .unwrap();
    let seen_once = GpuRecord::new(old.info.clone(), TimestampMicros(t));
    assert_eq!(store.gpu(&uuid).await.unwrap(), Some(seen_once.clone()));
    assert_eq!(store.list_gpus().await.unwrap(), vec![seen_once]);

    // The collector's next write brings both keys up to date.
    let mut writer = StoreWriter::new(store.clone());
    let gpus = BTreeMap::from([(
        uuid.clone(),
        GpuSamples {
            info: old.info.clone(),
            samples: vec![(util.clone(), TimestampMicros(t + 10), 8.0)],
        },
    )]);
    let prepared = writer.prepare(&gpus).await.unwrap();
    assert!(apply(store.client(), &mut writer, prepared).await);
    let mut expected = GpuRecord::new(old.info.clone(), TimestampMicros(t));
    expected.observe(&util, TimestampMicros(t + 10), 8.0);
    assert_eq!(store.gpu(&uuid).await.unwrap(), Some(expected.clone()));

    // A lost seen value: the identity alone still reads.
    client
        .delete(store.keys().gpu_seen(&uuid), None)
        .await
        .unwrap();
    let record = store.gpu(&uuid).await.unwrap().unwrap();
    assert_eq!(
        (record.first_seen, record.last_seen),
        (TimestampMicros(t), TimestampMicros(t))
    );
    assert!(record.latest.is_empty());
    // The writer's cache still holds the deleted key's revision: the fence refuses, and after a
    // reload the write goes through.
    let again = BTreeMap::from([(
        uuid.clone(),
        GpuSamples {
            info: old.info.clone(),
            samples: vec![(util.clone(), TimestampMicros(t + 20), 9.0)],
        },
    )]);
    let prepared = writer.prepare(&again).await.unwrap();
    assert!(!apply(store.client(), &mut writer, prepared).await);
    let prepared = writer.prepare(&again).await.unwrap();
    assert!(apply(store.client(), &mut writer, prepared).await);
    let mut healed = GpuRecord::new(old.info.clone(), TimestampMicros(t));
    healed.observe(&util, TimestampMicros(t + 20), 9.0);
    assert_eq!(store.gpu(&uuid).await.unwrap(), Some(healed));
}

/// The registry is read in pages (600 GPUs, more than one page holds) and in UUID order, even
/// where a UUID extends another one (`GPU-nest` .. `GPU-nest-1-1`: their keys interleave with
/// the shorter UUID's seen key); listing after a GPU resumes right after it.
#[tokio::test]
async fn the_registry_is_listed_in_pages_in_uuid_order() {
    let etcd = EtcdHarness::start().await;
    let store = TelemetryStore::new(
        etcd.client().await,
        StoreConfig {
            prefix: unique_prefix("registry-pages"),
            ..StoreConfig::default()
        },
    );
    let metric = MetricName::parse("DCGM_FI_DEV_GPU_TEMP").unwrap();
    let t0 = now_us() - 60_000_000;
    let mut names: Vec<String> = (0..600).map(|i| format!("GPU-{i:04}")).collect();
    names.extend(
        [
            "GPU-nest",
            "GPU-nest-1",
            "GPU-nest-1-1",
            "GPU-nest-2",
            "GPU-nesu",
        ]
        .map(String::from),
    );
    let gpus: Vec<(GpuUuid, GpuSamples)> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let uuid = GpuUuid::parse(name).unwrap();
            let samples = GpuSamples {
                info: GpuInfo::new(uuid.clone()),
                samples: vec![(metric.clone(), TimestampMicros(t0 + i as i64), i as f64)],
            };
            (uuid, samples)
        })
        .collect();
    let mut writer = StoreWriter::new(store.clone());
    for group in gpus.chunks(GPUS_PER_COMMIT) {
        let group: BTreeMap<_, _> = group.iter().cloned().collect();
        let prepared = writer.prepare(&group).await.unwrap();
        assert!(apply(store.client(), &mut writer, prepared).await);
    }
    let mut sorted = names.clone();
    sorted.sort();

    let mut pages = store.gpu_pages(None);
    let mut listed = Vec::new();
    let mut page_count = 0;
    while let Some(page) = pages.next_page().await.unwrap() {
        page_count += 1;
        listed.extend(page);
    }
    assert!(page_count > 1, "{page_count} pages");
    let uuids: Vec<&str> = listed.iter().map(|r| r.info.uuid.as_str()).collect();
    assert_eq!(uuids, sorted.iter().map(String::as_str).collect::<Vec<_>>());
    // Every record has its seen value (last value) merged in, nested UUIDs included.
    for record in &listed {
        let i = names
            .iter()
            .position(|n| n == record.info.uuid.as_str())
            .unwrap();
        assert_eq!(
            record.latest[&metric].value, i as f64,
            "{}",
            record.info.uuid
        );
    }
    assert_eq!(store.list_gpus().await.unwrap(), listed);

    let after = GpuUuid::parse("GPU-nest").unwrap();
    let mut resumed = Vec::new();
    let mut pages = store.gpu_pages(Some(&after));
    while let Some(page) = pages.next_page().await.unwrap() {
        resumed.extend(page.into_iter().map(|r| r.info.uuid.to_string()));
    }
    assert_eq!(
        resumed,
        ["GPU-nest-1", "GPU-nest-1-1", "GPU-nest-2", "GPU-nesu"]
    );
}

/// Samples stamped further ahead of the clock than the future bound are rejected and counted on
/// both write paths, never stored (nor seen by the registry), while the rest of the batch is
/// stored exactly; and no retention lease outlives retention plus one bucket, even for a bucket
/// that starts ahead of the clock.
#[tokio::test]
async fn samples_beyond_the_future_bound_are_rejected_and_leases_are_capped() {
    let etcd = EtcdHarness::start().await;
    let client = etcd.client().await;
    let store = TelemetryStore::new(
        client.clone(),
        StoreConfig {
            prefix: unique_prefix("future"),
            retention: Duration::from_secs(120),
            bucket: Duration::from_secs(60),
            max_future: Duration::from_secs(300),
            ..StoreConfig::default()
        },
    );
    let rows = real_rows();
    let now = now_us();
    let (past, ahead) = (now - 1_000_000, now + 60_000_000);
    let stamps = [
        past,
        ahead,
        now + 600_000_000,                    // ten minutes ahead
        now + 300 * 365 * 86_400 * 1_000_000, // three centuries ahead
    ];
    let batch = |gpu: usize| {
        let (info, metric, value) = &rows[gpu * 10];
        let samples = stamps
            .iter()
            .map(|t| (metric.clone(), TimestampMicros(*t), *value))
            .collect();
        BTreeMap::from([(
            info.uuid.clone(),
            GpuSamples {
                info: info.clone(),
                samples,
            },
        )])
    };

    let mut writer = StoreWriter::new(store.clone());
    let fenced = batch(0);
    let prepared = writer.prepare(&fenced).await.unwrap();
    assert_eq!(
        (prepared.samples, prepared.expired, prepared.future),
        (2, 0, 2)
    );
    assert!(apply(&client, &mut writer, prepared).await);
    let idempotent = batch(1);
    let stats = store
        .write_idempotent(event("future"), &idempotent)
        .await
        .unwrap();
    assert_eq!((stats.samples, stats.expired, stats.future), (2, 0, 2));

    for written in [&fenced, &idempotent] {
        let uuid = written.keys().next().unwrap();
        let stored: Vec<i64> = store
            .query(uuid, &SampleQuery::default())
            .await
            .unwrap()
            .samples
            .iter()
            .map(|s| s.timestamp.0)
            .collect();
        assert_eq!(stored, [past, ahead], "{uuid}");
        let record = store.gpu(uuid).await.unwrap().unwrap();
        assert_eq!(record.last_seen, TimestampMicros(ahead), "{uuid}");
    }
    // The bucket of the sample a minute ahead starts after the clock: uncapped, its lease would
    // last more than retention plus a bucket (180 s).
    let lease = bucket_lease(&store, store.leases().bucket_of(ahead)).await;
    let granted = client
        .clone()
        .lease_time_to_live(lease, None)
        .await
        .unwrap()
        .granted_ttl();
    assert_eq!(granted, 180);
    let current = bucket_lease(&store, store.leases().bucket_of(past)).await;
    let granted = client
        .clone()
        .lease_time_to_live(current, None)
        .await
        .unwrap()
        .granted_ttl();
    assert!((120..=180).contains(&granted), "{granted}");
}
