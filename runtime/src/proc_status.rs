//! Memory fields of a `/proc/<pid>/status` file (`VmHWM:`, `VmRSS:`, ...),
//! which the kernel gives in KiB: read by PID 1 for its own peak, by the
//! VMM for its stats line and by the benchmark harness for other VMMs.

use std::path::Path;

/// The value of the `key` line (`"VmHWM:"`) of a status file's text, in KiB.
pub fn field_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The `key` line of the status file at `path`; `None` when it cannot be
/// read (the process is gone) or has no such line.
pub fn read_field_kib(path: &Path, key: &str) -> Option<u64> {
    field_kib(&std::fs::read_to_string(path).ok()?, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_by_their_key() {
        let status = "Name:\tinit\nVmPeak:\t   10000 kB\nVmHWM:\t    2345 kB\nVmRSS:\t 2000 kB\n";
        assert_eq!(field_kib(status, "VmHWM:"), Some(2345));
        assert_eq!(field_kib(status, "VmRSS:"), Some(2000));
        assert_eq!(field_kib("Name: x\n", "VmHWM:"), None);
        assert_eq!(field_kib("VmHWM:\tlots kB\n", "VmHWM:"), None);
        // This process has one.
        let own = read_field_kib(Path::new("/proc/self/status"), "VmHWM:");
        assert!(own.is_some_and(|k| k > 0));
        assert_eq!(read_field_kib(Path::new("/proc/0/status"), "VmHWM:"), None);
    }
}
