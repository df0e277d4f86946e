//! Descriptions and units of the DCGM fields that dcgm-exporter publishes (from its
//! `default-counters.csv`, `dcp-metrics-included.csv` and `1.x-compatibility-metrics.csv`, active
//! and commented-out entries), so `GET /api/v1/metrics` can say what a metric name means.

/// The Prometheus type dcgm-exporter gives a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    Gauge,
    Counter,
    /// Exported as a label, not as a value.
    Label,
}

impl FieldKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FieldKind::Gauge => "gauge",
            FieldKind::Counter => "counter",
            FieldKind::Label => "label",
        }
    }
}

/// One known DCGM field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DcgmField {
    pub name: &'static str,
    pub kind: FieldKind,
    /// dcgm-exporter's help text.
    pub help: &'static str,
    /// Unit of the value (`%`, `MiB`, `celsius`, `MHz`, `W`, `mJ`, `ns`, `bytes/s`, `ratio`), if any.
    pub unit: Option<&'static str>,
}

/// The field called `name`, if dcgm-exporter knows it.
pub fn dcgm_field(name: &str) -> Option<&'static DcgmField> {
    DCGM_FIELDS
        .binary_search_by(|field| field.name.cmp(name))
        .ok()
        .map(|i| &DCGM_FIELDS[i])
}

/// Every known field, sorted by name (byte order) for binary search.
#[rustfmt::skip]
pub static DCGM_FIELDS: &[DcgmField] = &[
    DcgmField { name: "DCGM_FI_DEV_BOARD_LIMIT_VIOLATION", kind: FieldKind::Counter, help: "Throttling duration due to board limit constraints (in ns).", unit: Some("ns") },
    DcgmField { name: "DCGM_FI_DEV_BRAND", kind: FieldKind::Label, help: "Device Brand", unit: None },
    DcgmField { name: "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", kind: FieldKind::Counter, help: "Number of remapped rows for correctable errors", unit: None },
    DcgmField { name: "DCGM_FI_DEV_DEC_UTIL", kind: FieldKind::Gauge, help: "Decoder utilization (in %).", unit: Some("%") },
    DcgmField { name: "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", kind: FieldKind::Counter, help: "Total number of double-bit persistent ECC errors.", unit: None },
    DcgmField { name: "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", kind: FieldKind::Counter, help: "Total number of double-bit volatile ECC errors.", unit: None },
    DcgmField { name: "DCGM_FI_DEV_ECC_INFOROM_VER", kind: FieldKind::Label, help: "ECC inforom version", unit: None },
    DcgmField { name: "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", kind: FieldKind::Counter, help: "Total number of single-bit persistent ECC errors.", unit: None },
    DcgmField { name: "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", kind: FieldKind::Counter, help: "Total number of single-bit volatile ECC errors.", unit: None },
    DcgmField { name: "DCGM_FI_DEV_ENC_UTIL", kind: FieldKind::Gauge, help: "Encoder utilization (in %).", unit: Some("%") },
    DcgmField { name: "DCGM_FI_DEV_FB_FREE", kind: FieldKind::Gauge, help: "Framebuffer memory free (in MiB).", unit: Some("MiB") },
    DcgmField { name: "DCGM_FI_DEV_FB_RESERVED", kind: FieldKind::Gauge, help: "Framebuffer memory reserved (in MiB).", unit: Some("MiB") },
    DcgmField { name: "DCGM_FI_DEV_FB_USED", kind: FieldKind::Gauge, help: "Framebuffer memory used (in MiB).", unit: Some("MiB") },
    DcgmField { name: "DCGM_FI_DEV_GPU_TEMP", kind: FieldKind::Gauge, help: "GPU temperature (in C).", unit: Some("celsius") },
    DcgmField { name: "DCGM_FI_DEV_GPU_UTIL", kind: FieldKind::Gauge, help: "GPU utilization (in %).", unit: Some("%") },
    DcgmField { name: "DCGM_FI_DEV_INFOROM_IMAGE_VER", kind: FieldKind::Label, help: "Inforom image version", unit: None },
    DcgmField { name: "DCGM_FI_DEV_LOW_UTIL_VIOLATION", kind: FieldKind::Counter, help: "Throttling duration due to low utilization (in ns).", unit: Some("ns") },
    DcgmField { name: "DCGM_FI_DEV_MEMORY_TEMP", kind: FieldKind::Gauge, help: "Memory temperature (in C).", unit: Some("celsius") },
    DcgmField { name: "DCGM_FI_DEV_MEM_CLOCK", kind: FieldKind::Gauge, help: "Memory clock frequency (in MHz).", unit: Some("MHz") },
    DcgmField { name: "DCGM_FI_DEV_MEM_COPY_UTIL", kind: FieldKind::Gauge, help: "Memory utilization (in %).", unit: Some("%") },
    DcgmField { name: "DCGM_FI_DEV_NVLINK_BANDWIDTH_L0", kind: FieldKind::Counter, help: "The number of bytes of active NVLink rx or tx data including both header and payload.", unit: None },
    DcgmField { name: "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", kind: FieldKind::Counter, help: "Total number of NVLink bandwidth counters for all lanes.", unit: None },
    DcgmField { name: "DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL", kind: FieldKind::Counter, help: "Total number of NVLink data CRC errors.", unit: None },
    DcgmField { name: "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL", kind: FieldKind::Counter, help: "Total number of NVLink flow-control CRC errors.", unit: None },
    DcgmField { name: "DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL", kind: FieldKind::Counter, help: "Total number of NVLink recovery errors.", unit: None },
    DcgmField { name: "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL", kind: FieldKind::Counter, help: "Total number of NVLink retries.", unit: None },
    DcgmField { name: "DCGM_FI_DEV_OEM_INFOROM_VER", kind: FieldKind::Label, help: "OEM inforom version", unit: None },
    DcgmField { name: "DCGM_FI_DEV_PCIE_REPLAY_COUNTER", kind: FieldKind::Counter, help: "Total number of PCIe retries.", unit: None },
    DcgmField { name: "DCGM_FI_DEV_POWER_INFOROM_VER", kind: FieldKind::Label, help: "Power management object inforom version", unit: None },
    DcgmField { name: "DCGM_FI_DEV_POWER_USAGE", kind: FieldKind::Gauge, help: "Power draw (in W).", unit: Some("W") },
    DcgmField { name: "DCGM_FI_DEV_POWER_VIOLATION", kind: FieldKind::Counter, help: "Throttling duration due to power constraints (in ns).", unit: Some("ns") },
    DcgmField { name: "DCGM_FI_DEV_RELIABILITY_VIOLATION", kind: FieldKind::Counter, help: "Throttling duration due to reliability constraints (in ns).", unit: Some("ns") },
    DcgmField { name: "DCGM_FI_DEV_RETIRED_DBE", kind: FieldKind::Counter, help: "Total number of retired pages due to double-bit errors.", unit: None },
    DcgmField { name: "DCGM_FI_DEV_RETIRED_PENDING", kind: FieldKind::Counter, help: "Total number of pages pending retirement.", unit: None },
    DcgmField { name: "DCGM_FI_DEV_RETIRED_SBE", kind: FieldKind::Counter, help: "Total number of retired pages due to single-bit errors.", unit: None },
    DcgmField { name: "DCGM_FI_DEV_ROW_REMAP_FAILURE", kind: FieldKind::Gauge, help: "Whether remapping of rows has failed", unit: None },
    DcgmField { name: "DCGM_FI_DEV_SERIAL", kind: FieldKind::Label, help: "Device Serial Number", unit: None },
    DcgmField { name: "DCGM_FI_DEV_SM_CLOCK", kind: FieldKind::Gauge, help: "SM clock frequency (in MHz).", unit: Some("MHz") },
    DcgmField { name: "DCGM_FI_DEV_SYNC_BOOST_VIOLATION", kind: FieldKind::Counter, help: "Throttling duration due to sync-boost constraints (in ns).", unit: Some("ns") },
    DcgmField { name: "DCGM_FI_DEV_THERMAL_VIOLATION", kind: FieldKind::Counter, help: "Throttling duration due to thermal constraints (in ns).", unit: Some("ns") },
    DcgmField { name: "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", kind: FieldKind::Counter, help: "Total energy consumption since boot (in mJ).", unit: Some("mJ") },
    DcgmField { name: "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", kind: FieldKind::Counter, help: "Number of remapped rows for uncorrectable errors", unit: None },
    DcgmField { name: "DCGM_FI_DEV_VBIOS_VERSION", kind: FieldKind::Label, help: "VBIOS version of the device", unit: None },
    DcgmField { name: "DCGM_FI_DEV_VGPU_LICENSE_STATUS", kind: FieldKind::Gauge, help: "vGPU License status", unit: None },
    DcgmField { name: "DCGM_FI_DEV_XID_ERRORS", kind: FieldKind::Gauge, help: "Value of the last XID error encountered.", unit: None },
    DcgmField { name: "DCGM_FI_DRIVER_VERSION", kind: FieldKind::Label, help: "Driver Version", unit: None },
    DcgmField { name: "DCGM_FI_NVML_VERSION", kind: FieldKind::Label, help: "NVML Version", unit: None },
    DcgmField { name: "DCGM_FI_PROF_DRAM_ACTIVE", kind: FieldKind::Gauge, help: "Ratio of cycles the device memory interface is active sending or receiving data.", unit: Some("ratio") },
    DcgmField { name: "DCGM_FI_PROF_GR_ENGINE_ACTIVE", kind: FieldKind::Gauge, help: "Ratio of time the graphics engine is active.", unit: Some("ratio") },
    DcgmField { name: "DCGM_FI_PROF_PCIE_RX_BYTES", kind: FieldKind::Gauge, help: "The rate of data received over the PCIe bus - including both protocol headers and data payloads - in bytes per second.", unit: Some("bytes/s") },
    DcgmField { name: "DCGM_FI_PROF_PCIE_TX_BYTES", kind: FieldKind::Gauge, help: "The rate of data transmitted over the PCIe bus - including both protocol headers and data payloads - in bytes per second.", unit: Some("bytes/s") },
    DcgmField { name: "DCGM_FI_PROF_PIPE_FP16_ACTIVE", kind: FieldKind::Gauge, help: "Ratio of cycles the fp16 pipes are active.", unit: Some("ratio") },
    DcgmField { name: "DCGM_FI_PROF_PIPE_FP32_ACTIVE", kind: FieldKind::Gauge, help: "Ratio of cycles the fp32 pipes are active.", unit: Some("ratio") },
    DcgmField { name: "DCGM_FI_PROF_PIPE_FP64_ACTIVE", kind: FieldKind::Gauge, help: "Ratio of cycles the fp64 pipes are active.", unit: Some("ratio") },
    DcgmField { name: "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", kind: FieldKind::Gauge, help: "Ratio of cycles the tensor (HMMA) pipe is active.", unit: Some("ratio") },
    DcgmField { name: "DCGM_FI_PROF_SM_ACTIVE", kind: FieldKind::Gauge, help: "The ratio of cycles an SM has at least 1 warp assigned.", unit: Some("ratio") },
    DcgmField { name: "DCGM_FI_PROF_SM_OCCUPANCY", kind: FieldKind::Gauge, help: "The ratio of number of warps resident on an SM.", unit: Some("ratio") },
    DcgmField { name: "dcgm_board_limit_violation", kind: FieldKind::Counter, help: "Throttling duration due to board limit constraints (in ns).", unit: Some("ns") },
    DcgmField { name: "dcgm_dec_utilization", kind: FieldKind::Gauge, help: "Decoder utilization (in %).", unit: Some("%") },
    DcgmField { name: "dcgm_ecc_dbe_aggregate_total", kind: FieldKind::Counter, help: "Total number of double-bit persistent ECC errors.", unit: None },
    DcgmField { name: "dcgm_ecc_dbe_volatile_total", kind: FieldKind::Counter, help: "Total number of double-bit volatile ECC errors.", unit: None },
    DcgmField { name: "dcgm_ecc_sbe_aggregate_total", kind: FieldKind::Counter, help: "Total number of single-bit persistent ECC errors.", unit: None },
    DcgmField { name: "dcgm_ecc_sbe_volatile_total", kind: FieldKind::Counter, help: "Total number of single-bit volatile ECC errors.", unit: None },
    DcgmField { name: "dcgm_enc_utilization", kind: FieldKind::Gauge, help: "Encoder utilization (in %).", unit: Some("%") },
    DcgmField { name: "dcgm_fb_free", kind: FieldKind::Gauge, help: "Framebuffer memory free (in MiB).", unit: Some("MiB") },
    DcgmField { name: "dcgm_fb_used", kind: FieldKind::Gauge, help: "Framebuffer memory used (in MiB).", unit: Some("MiB") },
    DcgmField { name: "dcgm_fi_prof_dram_active", kind: FieldKind::Gauge, help: "Ratio of cycles the device memory interface is active sending or receiving data (in %).", unit: Some("%") },
    DcgmField { name: "dcgm_fi_prof_gr_engine_active", kind: FieldKind::Gauge, help: "Ratio of time the graphics engine is active (in %).", unit: Some("%") },
    DcgmField { name: "dcgm_fi_prof_pcie_rx_bytes", kind: FieldKind::Counter, help: "Total number of bytes received through PCIe RX via NVML.", unit: None },
    DcgmField { name: "dcgm_fi_prof_pcie_tx_bytes", kind: FieldKind::Counter, help: "Total number of bytes transmitted through PCIe TX via NVML.", unit: None },
    DcgmField { name: "dcgm_fi_prof_pipe_tensor_active", kind: FieldKind::Gauge, help: "Ratio of cycles the tensor (HMMA) pipe is active (in %).", unit: Some("%") },
    DcgmField { name: "dcgm_fi_prof_sm_active", kind: FieldKind::Gauge, help: "The ratio of cycles an SM has at least 1 warp assigned (in %).", unit: Some("%") },
    DcgmField { name: "dcgm_fi_prof_sm_occupancy", kind: FieldKind::Gauge, help: "The ratio of number of warps resident on an SM (in %).", unit: Some("%") },
    DcgmField { name: "dcgm_gpu_temp", kind: FieldKind::Gauge, help: "GPU temperature (in C).", unit: Some("celsius") },
    DcgmField { name: "dcgm_gpu_utilization", kind: FieldKind::Gauge, help: "GPU utilization (in %).", unit: Some("%") },
    DcgmField { name: "dcgm_low_util_violation", kind: FieldKind::Counter, help: "Throttling duration due to low utilization (in ns).", unit: Some("ns") },
    DcgmField { name: "dcgm_mem_copy_utilization", kind: FieldKind::Gauge, help: "Memory utilization (in %).", unit: Some("%") },
    DcgmField { name: "dcgm_memory_clock", kind: FieldKind::Gauge, help: "Memory clock frequency (in MHz).", unit: Some("MHz") },
    DcgmField { name: "dcgm_memory_temp", kind: FieldKind::Gauge, help: "Memory temperature (in C).", unit: Some("celsius") },
    DcgmField { name: "dcgm_nvlink_bandwidth_total", kind: FieldKind::Counter, help: "Total number of NVLink bandwidth counters for all lanes", unit: None },
    DcgmField { name: "dcgm_nvlink_data_crc_error_count_total", kind: FieldKind::Counter, help: "Total number of NVLink data CRC errors.", unit: None },
    DcgmField { name: "dcgm_nvlink_flit_crc_error_count_total", kind: FieldKind::Counter, help: "Total number of NVLink flow-control CRC errors.", unit: None },
    DcgmField { name: "dcgm_nvlink_recovery_error_count_total", kind: FieldKind::Counter, help: "Total number of NVLink recovery errors.", unit: None },
    DcgmField { name: "dcgm_nvlink_replay_error_count_total", kind: FieldKind::Counter, help: "Total number of NVLink retries.", unit: None },
    DcgmField { name: "dcgm_pcie_replay_counter", kind: FieldKind::Counter, help: "Total number of PCIe retries.", unit: None },
    DcgmField { name: "dcgm_power_usage", kind: FieldKind::Gauge, help: "Power draw (in W).", unit: Some("W") },
    DcgmField { name: "dcgm_power_violation", kind: FieldKind::Counter, help: "Throttling duration due to power constraints (in ns).", unit: Some("ns") },
    DcgmField { name: "dcgm_reliability_violation", kind: FieldKind::Counter, help: "Throttling duration due to reliability constraints (in ns).", unit: Some("ns") },
    DcgmField { name: "dcgm_retired_pages_dbe", kind: FieldKind::Counter, help: "Total number of retired pages due to double-bit errors.", unit: None },
    DcgmField { name: "dcgm_retired_pages_pending", kind: FieldKind::Counter, help: "Total number of pages pending retirement.", unit: None },
    DcgmField { name: "dcgm_retired_pages_sbe", kind: FieldKind::Counter, help: "Total number of retired pages due to single-bit errors.", unit: None },
    DcgmField { name: "dcgm_sm_clock", kind: FieldKind::Gauge, help: "SM clock frequency (in MHz).", unit: Some("MHz") },
    DcgmField { name: "dcgm_sync_boost_violation", kind: FieldKind::Counter, help: "Throttling duration due to sync-boost constraints (in ns).", unit: Some("ns") },
    DcgmField { name: "dcgm_thermal_violation", kind: FieldKind::Counter, help: "Throttling duration due to thermal constraints (in ns).", unit: Some("ns") },
    DcgmField { name: "dcgm_total_energy_consumption", kind: FieldKind::Counter, help: "Total energy consumption since boot (in mJ).", unit: Some("mJ") },
    DcgmField { name: "dcgm_xid_errors", kind: FieldKind::Gauge, help: "Value of the last XID error encountered.", unit: None },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_and_unique() {
        for pair in DCGM_FIELDS.windows(2) {
            assert!(
                pair[0].name < pair[1].name,
                "{} / {}",
                pair[0].name,
                pair[1].name
            );
        }
        assert_eq!(DCGM_FIELDS.len(), 96);
    }

    #[test]
    fn the_ten_fields_of_the_data_set_are_described() {
        let expect = [
            ("DCGM_FI_DEV_DEC_UTIL", Some("%")),
            ("DCGM_FI_DEV_ENC_UTIL", Some("%")),
            ("DCGM_FI_DEV_FB_FREE", Some("MiB")),
            ("DCGM_FI_DEV_FB_USED", Some("MiB")),
            ("DCGM_FI_DEV_GPU_TEMP", Some("celsius")),
            ("DCGM_FI_DEV_GPU_UTIL", Some("%")),
            ("DCGM_FI_DEV_MEM_CLOCK", Some("MHz")),
            ("DCGM_FI_DEV_MEM_COPY_UTIL", Some("%")),
            ("DCGM_FI_DEV_POWER_USAGE", Some("W")),
            ("DCGM_FI_DEV_SM_CLOCK", Some("MHz")),
        ];
        for (name, unit) in expect {
            let field = dcgm_field(name).unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(field.unit, unit, "{name}");
            assert_eq!(field.kind, FieldKind::Gauge, "{name}");
            assert!(!field.help.is_empty());
        }
        assert_eq!(
            dcgm_field("DCGM_FI_DEV_GPU_UTIL").unwrap().help,
            "GPU utilization (in %)."
        );
        assert_eq!(
            dcgm_field("DCGM_FI_DRIVER_VERSION").unwrap().kind,
            FieldKind::Label
        );
        assert_eq!(dcgm_field("NOT_A_FIELD"), None);
    }
}
