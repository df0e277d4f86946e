//! The depth key KEDA watches in the deployment artefacts is the key this crate writes. The key is
//! built in one place (`QueueKeys::depth`); this test compares the manifests against it.

use etcd_queue::{QueueConfig, QueueKeys};

fn repo_file(relative: &str) -> String {
    let path = test_support::repo_path(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn yaml_value<'a>(text: &'a str, field: &str) -> Vec<&'a str> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().trim_matches('"'))
        .collect()
}

#[test]
fn knative_scaled_object_watches_the_depth_key_the_queue_writes() {
    let defaults = QueueConfig::default();
    let depth = QueueKeys::new(&defaults.prefix, &defaults.topic)
        .unwrap()
        .depth();
    let manifest = repo_file("knative/21-collector-scaledobject.yaml");
    assert_eq!(yaml_value(&manifest, "watchKey"), vec![depth.as_str()]);
}

#[test]
fn chart_defaults_build_the_same_depth_key() {
    let defaults = QueueConfig::default();
    let values = repo_file("helm/gpu-telemetry/values.yaml");
    assert_eq!(
        yaml_value(&values, "telemetryPrefix"),
        vec![defaults.prefix.as_str()]
    );
    assert_eq!(yaml_value(&values, "topic"), vec![defaults.topic.as_str()]);
    let helpers = repo_file("helm/gpu-telemetry/templates/_helpers.tpl");
    assert!(
        helpers.contains(r#"/queue/"#) && helpers.contains(r#"/depth"#),
        "the chart's depth-key template must be <prefix>/queue/<topic>/depth like QueueKeys::depth"
    );
}
