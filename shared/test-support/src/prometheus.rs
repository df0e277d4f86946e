//! A real Prometheus server (Debian's `prometheus` package, 2.42) for differential tests and
//! benchmarks: OpenMetrics text backfilled with `promtool tsdb create-blocks-from openmetrics`,
//! served on a free loopback port with nothing to scrape, killed (and its data removed) on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::http::{http_request, HttpResponse};
use crate::wait::{free_port, wait_until};

const INSTALL_HINT: &str = "prometheus and promtool are required by this test but were not \
found on PATH. Install them with `apt-get install -y prometheus` (or run `.ci/install-deps test` \
as root).";

/// A running Prometheus serving backfilled data.
#[derive(Debug)]
pub struct PrometheusHarness {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl PrometheusHarness {
    /// Backfills `openmetrics` (OpenMetrics text ending in `# EOF`, each series' samples in time
    /// order; keep them older than the last two hours so they land in blocks) and starts a server
    /// on it, waiting until it is ready.
    pub async fn start_with_openmetrics(openmetrics: &str) -> PrometheusHarness {
        let prometheus = find_binary("prometheus");
        let promtool = find_binary("promtool");
        let mut dir = tempfile::Builder::new()
            .prefix("prometheus-harness-")
            .tempdir()
            .expect("create temp dir for prometheus");
        let input = dir.path().join("backfill.om.txt");
        let data = dir.path().join("data");
        std::fs::write(&input, openmetrics).expect("write the OpenMetrics file");
        let backfill = Command::new(&promtool)
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(&input)
            .arg(&data)
            .output()
            .expect("run promtool");
        assert!(
            backfill.status.success(),
            "promtool tsdb create-blocks-from openmetrics failed: {}",
            String::from_utf8_lossy(&backfill.stderr)
        );
        std::fs::remove_file(&input).ok();
        let config = dir.path().join("prometheus.yml");
        // No scrape jobs, no rule files, no alerting, no remote storage: nothing leaves the host.
        std::fs::write(&config, "global:\n  scrape_interval: 1h\n").expect("write config");

        for attempt in 0..3 {
            let port = free_port();
            let log = std::fs::File::create(dir.path().join(format!("prometheus-{attempt}.log")))
                .expect("create prometheus log");
            let child = Command::new(&prometheus)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", data.display()))
                .arg("--storage.tsdb.retention.time=3650d")
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start prometheus");
            let mut harness = PrometheusHarness { child, port, dir };
            let ready_url = format!("{}/-/ready", harness.url());
            let mut exited = false;
            wait_until("prometheus to be ready", Duration::from_secs(60), || {
                let ready_url = ready_url.clone();
                exited = matches!(harness.child.try_wait(), Ok(Some(_)));
                let give_up = exited;
                async move {
                    give_up
                        || http_request("GET", &ready_url, &[], Vec::new())
                            .await
                            .is_ok_and(|r| r.status == 200)
                }
            })
            .await;
            if !exited {
                return harness;
            }
            eprintln!("prometheus exited on attempt {attempt} (port {port} taken?); retrying");
            dir = std::mem::replace(&mut harness.dir, TempDir::new().expect("temp dir"));
        }
        panic!("prometheus failed to start 3 times; see its log in the harness directory");
    }

    /// The base URL, e.g. `http://127.0.0.1:39090`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A GET of `path` (e.g. `/api/v1/query`) with URL-encoded `params` (a name may repeat, as
    /// `match[]` does).
    pub async fn get(&self, path: &str, params: &[(&str, &str)]) -> HttpResponse {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        let url = format!("{}{path}?{query}", self.url());
        http_request("GET", &url, &[], Vec::new())
            .await
            .unwrap_or_else(|e| panic!("prometheus request failed: {e}"))
    }
}

impl Drop for PrometheusHarness {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_binary(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("{INSTALL_HINT}"))
}
