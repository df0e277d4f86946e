//! Reading a running process's memory from `/proc/<pid>/status`, for tests and benchmarks that
//! bound or report what a real process used.

/// The value, in KiB, of the `field` line (`VmHWM`: peak resident memory, `VmRSS`: resident
/// now) of process `pid`'s `/proc` status. Panics if the process or the line is missing.
pub fn process_memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_peak_at_least_its_resident_memory() {
        let pid = std::process::id();
        let resident = process_memory_kib(pid, "VmRSS");
        assert!(resident > 0);
        assert!(process_memory_kib(pid, "VmHWM") >= resident);
    }
}
