//! Resident memory and CPU time of a process, sampled from /proc.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// How often the sampler reads /proc.
const SAMPLE_PERIOD: Duration = Duration::from_millis(250);

/// Resident set size of `pid` in KiB, from the `VmRSS` line of /proc/PID/status.
pub fn resident_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
}

/// User plus system CPU time of `pid` in seconds, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in field 2 may contain spaces, so count fields after its `)`.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    extern "C" {
        fn sysconf(name: std::os::raw::c_int) -> std::os::raw::c_long;
    }
    /// `_SC_CLK_TCK` in glibc's unistd.h.
    const SC_CLK_TCK: std::os::raw::c_int = 2;
    // SAFETY: sysconf takes an integer and reads a constant of the C library.
    let ticks = unsafe { sysconf(SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Memory and CPU of one process over a measured interval.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcessUsage {
    pub pid: u32,
    pub rss_start_kib: u64,
    pub rss_peak_kib: u64,
    pub rss_end_kib: u64,
    pub cpu_seconds: f64,
    /// CPU time over wall time, in percent of one core.
    pub cpu_percent: f64,
}

/// Samples a process in the background from `start` until `finish`.
pub struct Sampler {
    pid: u32,
    started: Instant,
    cpu_start: f64,
    rss_start: u64,
    peak: Arc<Mutex<u64>>,
    cancel: CancellationToken,
}

impl Sampler {
    /// Starts sampling `pid`; `None` when /proc has no such process.
    pub fn start(pid: u32) -> Option<Self> {
        let rss_start = resident_kib(pid)?;
        let cpu_start = cpu_seconds(pid)?;
        let peak = Arc::new(Mutex::new(rss_start));
        let cancel = CancellationToken::new();
        tokio::spawn({
            let peak = peak.clone();
            let cancel = cancel.clone();
            async move {
                let mut ticker = tokio::time::interval(SAMPLE_PERIOD);
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = ticker.tick() => {}
                    }
                    if let Some(rss) = resident_kib(pid) {
                        let mut peak = peak.lock().unwrap();
                        *peak = (*peak).max(rss);
                    }
                }
            }
        });
        Some(Self {
            pid,
            started: Instant::now(),
            cpu_start,
            rss_start,
            peak,
            cancel,
        })
    }

    /// Stops sampling and returns the usage since `start`.
    pub fn finish(self) -> ProcessUsage {
        self.cancel.cancel();
        let rss_end = resident_kib(self.pid).unwrap_or(0);
        let cpu = cpu_seconds(self.pid).unwrap_or(self.cpu_start) - self.cpu_start;
        let wall = self.started.elapsed().as_secs_f64().max(1e-9);
        let peak = (*self.peak.lock().unwrap()).max(rss_end);
        ProcessUsage {
            pid: self.pid,
            rss_start_kib: self.rss_start,
            rss_peak_kib: peak,
            rss_end_kib: rss_end,
            cpu_seconds: round3(cpu),
            cpu_percent: round3(100.0 * cpu / wall),
        }
    }
}

pub fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}
