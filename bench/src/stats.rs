//! Percentiles and process memory.

use std::time::Duration;

/// p50, p90, p99 and max of `samples`.
pub struct Percentiles {
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Percentiles {
    pub fn of(samples: &mut [Duration]) -> Self {
        samples.sort_unstable();
        let at = |q: f64| {
            let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
            samples.get(index).copied().unwrap_or_default()
        };
        Self { p50: at(0.50), p90: at(0.90), p99: at(0.99), max: at(1.0) }
    }

    pub fn row(&self) -> String {
        let us = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
        format!("{} | {} | {} | {}", us(self.p50), us(self.p90), us(self.p99), us(self.max))
    }
}

/// CPU time and minor page faults of a process so far, from /proc.
#[derive(Clone, Copy, Default)]
pub struct ProcCpu {
    pub user: Duration,
    pub system: Duration,
    pub minor_faults: u64,
}

impl ProcCpu {
    /// `pid` is a process id or `self`. Zero when /proc cannot be read.
    pub fn of(pid: &str) -> Self {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the `)` that ends the command name: minflt is the 8th,
        // utime and stime the 12th and 13th, in clock ticks (100 a second).
        let fields: Vec<&str> =
            stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
        let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        Self {
            user: Duration::from_millis(number(11) * 10),
            system: Duration::from_millis(number(12) * 10),
            minor_faults: number(7),
        }
    }

    pub fn total(&self) -> Duration {
        self.user + self.system
    }

    /// What was used between `earlier` and `self`.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
            minor_faults: self.minor_faults.saturating_sub(earlier.minor_faults),
        }
    }
}

/// The proportional set size of process `pid`, in bytes: like RSS, but a
/// page mapped several times (every instance maps its party's copy-on-write
/// memory image, whose pages it only reads) counts once in all, not once
/// per mapping, so it is the memory the process really holds.
///
/// # Errors
/// When `/proc/<pid>/smaps_rollup` cannot be read.
pub fn pss_bytes(pid: u32) -> anyhow::Result<u64> {
    proc_kib(pid, "smaps_rollup", "Pss:").map(|kib| kib * 1024)
}

/// Resident memory of process `pid`, in bytes.
///
/// # Errors
/// When `/proc/<pid>/status` cannot be read.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    proc_kib(pid, "status", "VmRSS:").map(|kib| kib * 1024)
}

/// The `field` line of `/proc/<pid>/<file>`, in kB.
fn proc_kib(pid: u32, file: &str, field: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}"))?;
    text.lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no {field} in /proc/{pid}/{file}"))
}
