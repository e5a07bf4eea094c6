//! What a process costs, read from Linux's `/proc`: resident memory from
//! `/proc/<pid>/status` and CPU time (user + system) from `/proc/<pid>/stat`.
//!
//! CPU time is counted in clock ticks; their length comes from
//! `getconf CLK_TCK` once per process (100 per second when that fails, which
//! is what Linux uses nearly everywhere).

use std::sync::OnceLock;
use std::time::Duration;

/// Why a process could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum ProcStatError {
    #[error("reading /proc/{pid}/{file}: {source}")]
    Read {
        pid: u32,
        file: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("/proc/{pid}/{file} has no {field} we understand")]
    Field {
        pid: u32,
        file: &'static str,
        field: &'static str,
    },
}

/// One reading of a process's memory and CPU time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcSample {
    /// Resident set size, bytes (`VmRSS`).
    pub rss_bytes: u64,
    /// User plus system CPU time since the process started.
    pub cpu: Duration,
}

impl ProcSample {
    pub fn rss_mib(&self) -> f64 {
        self.rss_bytes as f64 / (1024.0 * 1024.0)
    }
}

/// Reads `pid`'s resident memory and CPU time now.
pub fn sample(pid: u32) -> Result<ProcSample, ProcStatError> {
    let read = |file: &'static str| {
        std::fs::read_to_string(format!("/proc/{pid}/{file}"))
            .map_err(|source| ProcStatError::Read { pid, file, source })
    };
    let rss_bytes = rss_from_status(&read("status")?).ok_or(ProcStatError::Field {
        pid,
        file: "status",
        field: "VmRSS",
    })?;
    let ticks = cpu_ticks_from_stat(&read("stat")?).ok_or(ProcStatError::Field {
        pid,
        file: "stat",
        field: "utime and stime",
    })?;
    Ok(ProcSample {
        rss_bytes,
        cpu: Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second() as f64),
    })
}

/// `VmRSS:   12345 kB` in bytes.
pub fn rss_from_status(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line.split_whitespace().skip(1);
    let value: u64 = words.next()?.parse().ok()?;
    let unit = match words.next() {
        Some("kB") | None => 1024,
        Some("mB") => 1024 * 1024,
        Some(_) => return None,
    };
    Some(value * unit)
}

/// utime + stime (fields 14 and 15) of `/proc/<pid>/stat`, in clock ticks.
/// The command name (field 2) may hold spaces and parentheses, so fields are
/// counted after its last `)`.
pub fn cpu_ticks_from_stat(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // After the name: state is field 3, so utime (14) is the 12th word here.
    let mut words = after_name.split_whitespace().skip(11);
    let utime: u64 = words.next()?.parse().ok()?;
    let stime: u64 = words.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`, else 100).
pub fn clock_ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .filter(|ticks| *ticks > 0)
            .unwrap_or(100)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_read_in_bytes() {
        let status = "Name:\tx\nVmPeak:\t 9 kB\nVmRSS:\t    2048 kB\nThreads: 3\n";
        assert_eq!(rss_from_status(status), Some(2048 * 1024));
        assert_eq!(rss_from_status("Name: x\n"), None);
    }

    #[test]
    fn cpu_ticks_survive_odd_command_names() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 1 1 1";
        assert_eq!(cpu_ticks_from_stat(stat), Some(12));
    }

    #[test]
    fn this_process_can_be_measured() {
        let now = sample(std::process::id()).unwrap_or_else(|e| panic!("{e}"));
        assert!(now.rss_bytes > 0);
        assert!(clock_ticks_per_second() > 0);
    }
}
