//! How a stored sample's GPU and metric become a Prometheus series named as dcgm-exporter names
//! it: the one mapping the gateway's Prometheus API and the tests share.

use std::collections::BTreeMap;

use crate::gpu::GpuInfo;

/// The label holding a series' metric name.
pub const METRIC_NAME_LABEL: &str = "__name__";

/// The labels of the series of `metric` on the GPU `info` describes, as dcgm-exporter writes
/// them: `__name__` is the DCGM field, then `UUID`, `gpu` (DCGM's index on the host), `device`,
/// `modelName`, `Hostname`, `container`, `pod` and `namespace` where known, and every other label
/// the row carried (`pci_bus_id`, MIG's `GPU_I_ID` / `GPU_I_PROFILE`, `instance`, `job`,
/// `DCGM_FI_DRIVER_VERSION`, ...) as it came. The GPU's fields win over a row label of the same
/// name; labels with an empty value are left out, as Prometheus leaves them out.
pub fn series_labels(info: &GpuInfo, metric: &str) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = info
        .labels
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    labels.insert(METRIC_NAME_LABEL.to_string(), metric.to_string());
    labels.insert("UUID".to_string(), info.uuid.as_str().to_string());
    let fields = [
        ("gpu", info.gpu_index.map(|i| i.to_string())),
        ("device", info.device.clone()),
        ("modelName", info.model_name.clone()),
        ("Hostname", info.hostname.clone()),
        ("container", info.container.clone()),
        ("pod", info.pod.clone()),
        ("namespace", info.namespace.clone()),
    ];
    for (name, value) in fields {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            labels.insert(name.to_string(), value);
        }
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csv_reader::DcgmCsvReader;
    use crate::ids::GpuUuid;

    #[test]
    fn a_real_row_becomes_the_exporters_series() {
        let csv = "timestamp,metric_name,gpu_id,device,uuid,modelName,Hostname,container,pod,namespace,value,labels_raw\n\
            \"2025-07-18T20:42:34Z\",\"DCGM_FI_DEV_GPU_UTIL\",\"0\",\"nvidia0\",\"GPU-5fd4f087-86f3-7a43-b711-4771313afc50\",\"NVIDIA H100 80GB HBM3\",\"mtv5-dgx1-hgpu-031\",\"\",\"\",\"\",\"0\",\"DCGM_FI_DRIVER_VERSION=\"\"535.129.03\"\",Hostname=\"\"mtv5-dgx1-hgpu-031\"\",UUID=\"\"GPU-5fd4f087-86f3-7a43-b711-4771313afc50\"\",__name__=\"\"DCGM_FI_DEV_GPU_UTIL\"\",device=\"\"nvidia0\"\",gpu=\"\"0\"\",instance=\"\"mtv5-dgx1-hgpu-031:9400\"\",job=\"\"dgx_dcgm_exporter\"\",modelName=\"\"NVIDIA H100 80GB HBM3\"\",pci_bus_id=\"\"00000000:1B:00.0\"\",GPU_I_ID=\"\"2\"\",GPU_I_PROFILE=\"\"1g.10gb\"\"\"\n";
        let row = DcgmCsvReader::new(csv.as_bytes())
            .unwrap()
            .next()
            .unwrap()
            .row()
            .expect("a valid row");
        let labels = series_labels(&row.info, row.metric.as_str());
        let got: Vec<(&str, &str)> = labels
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("DCGM_FI_DRIVER_VERSION", "535.129.03"),
                ("GPU_I_ID", "2"),
                ("GPU_I_PROFILE", "1g.10gb"),
                ("Hostname", "mtv5-dgx1-hgpu-031"),
                ("UUID", "GPU-5fd4f087-86f3-7a43-b711-4771313afc50"),
                ("__name__", "DCGM_FI_DEV_GPU_UTIL"),
                ("device", "nvidia0"),
                ("gpu", "0"),
                ("instance", "mtv5-dgx1-hgpu-031:9400"),
                ("job", "dgx_dcgm_exporter"),
                ("modelName", "NVIDIA H100 80GB HBM3"),
                ("pci_bus_id", "00000000:1B:00.0"),
            ]
        );
    }

    #[test]
    fn fields_win_over_row_labels_and_empty_values_are_left_out() {
        let mut info = GpuInfo::new(GpuUuid::parse("GPU-abc").unwrap());
        info.gpu_index = Some(3);
        info.pod = Some(String::new());
        info.labels.insert("gpu".into(), "5".into());
        info.labels.insert("__name__".into(), "OTHER".into());
        info.labels.insert("empty".into(), String::new());
        let labels = series_labels(&info, "DCGM_FI_DEV_GPU_TEMP");
        let got: Vec<(&str, &str)> = labels
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("UUID", "GPU-abc"),
                ("__name__", "DCGM_FI_DEV_GPU_TEMP"),
                ("gpu", "3"),
            ]
        );
    }
}
