//! Test and benchmark support: a real etcd member started on free loopback ports (optionally with
//! authentication or a small quota), a real etcd cluster for leader loss, unique key prefixes per
//! test, waiting on conditions, an ownership log for exclusivity checks, a small HTTP
//! client, building other workspace binaries, paths of the repository's test data, a generated
//! fleet of any number of GPUs, a process's memory, deterministic pseudo-random numbers, the JSON
//! report writer used by every benchmark, and a real Prometheus serving backfilled data
//! (`PrometheusHarness`) with the PromQL table the differential tests run against it
//! (`promql_table`).

mod bench_report;
mod cargo_build;
mod etcd;
mod etcd_cluster;
mod fleet;
mod http;
mod ownership;
mod process;
mod prometheus;
pub mod promql_table;
mod split_mix;
mod testdata;
mod wait;

pub use bench_report::{median, millis, percentile, target_dir, BenchReport};
pub use cargo_build::build_workspace_binaries;
pub use etcd::{unique_prefix, EtcdHarness, EtcdUser};
pub use etcd_cluster::EtcdCluster;
pub use fleet::{Fleet, REAL_GPUS};
pub use http::{http_request, HttpResponse};
pub use ownership::{OwnershipLog, OwnershipSummary};
pub use process::process_memory_kib;
pub use prometheus::PrometheusHarness;
pub use split_mix::SplitMix;
pub use testdata::{repo_path, testdata, REAL_CSV};
pub use wait::{free_port, wait_until};
