//! Test and benchmark support: a real etcd member started on free loopback ports, unique key
//! prefixes per test, and the JSON report writer used by every benchmark.

mod bench_report;
mod cargo_build;
mod etcd;
mod http;
mod wait;

pub use bench_report::{median, millis, percentile, BenchReport};
pub use cargo_build::cargo_build;
pub use etcd::{unique_prefix, EtcdHarness};
pub use http::{http_request, HttpResponse};
pub use wait::{free_port, wait_until};
