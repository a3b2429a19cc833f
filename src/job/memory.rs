//! The memory limit of a process, and the input bytes each cycle may read under it.
//!
//! In: the limit (`--memory-limit`, env `STRATUS_MEMORY_LIMIT`; by default 80 % of the
//! container's memory limit, cgroup v2 `memory.max`, or of the machine's memory when there is
//! none), the resident set before each cycle, and its peak over the cycles since the last
//! measurement (Linux `/proc/self/status`, `VmRSS` and `VmHWM`, the peak started again through
//! `/proc/self/clear_refs`).
//!
//! Out: each cycle's byte budget — the room left under the limit divided by how much the
//! resident set grew per input byte in the cycles before, shared among the process's run loops
//! (a worker's shards), never above `commit.max_bytes` and never below [`MIN_CYCLE_BYTES`], so
//! a pipeline always moves on.
//!
//! What a cycle holds (its events decoded, the windows they close, the rows on their way to
//! Delta and Kafka) grows with its input, and that is what the budget bounds. The state (open
//! windows, carried history, detectors) does not shrink with it: when the state alone fills the
//! limit, cycles stay at their least and the run says so in its log (and
//! `stratus_resident_memory_bytes` stands near `stratus_memory_limit_bytes`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The least a cycle may read, whatever the room: a pipeline always moves on.
pub const MIN_CYCLE_BYTES: usize = 256 * 1024;

/// Resident growth per input byte assumed before a cycle has been measured: above what
/// decoding, windowing and writing a cycle of JSON events takes (`stratus bench`), so a first
/// cycle stays under the limit and measures the figure.
const FIRST_GUESS: f64 = 32.0;

/// The share of the limit cycles are sized to fill: the rest is for what does not grow with a
/// cycle's input (a compaction beside the appends, a checkpoint being written, the tables'
/// logs).
const TARGET: f64 = 0.9;

/// Below this many bytes read since the last measurement, growth is noise, not a figure.
const MEASURABLE: u64 = 1 << 20;

/// The resident set of the process `pid` (this one if `None`), from `/proc/PID/status`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resident {
    /// Bytes resident now (`VmRSS`).
    pub now: u64,
    /// The most resident since start or since [`restart_peak`] (`VmHWM`).
    pub peak: u64,
}

impl Resident {
    /// The process's figures; `None` where `/proc` cannot tell (not Linux, process gone).
    pub fn of(pid: Option<u32>) -> Option<Resident> {
        let path = match pid {
            Some(pid) => format!("/proc/{pid}/status"),
            None => "/proc/self/status".to_string(),
        };
        let status = std::fs::read_to_string(path).ok()?;
        let field = |name: &str| -> Option<u64> {
            let line = status.lines().find_map(|l| l.strip_prefix(name))?;
            let kib: u64 = line.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kib * 1024)
        };
        Some(Resident {
            now: field("VmRSS:")?,
            peak: field("VmHWM:")?,
        })
    }
}

/// Starts a new peak for this process: `VmHWM` becomes the resident set now (Linux
/// `clear_refs`, value 5). False where that cannot be done: peaks are then since start.
pub fn restart_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The limit unless one is given: a share of the memory there is.
pub const DEFAULT_LIMIT: &str = "80%";

/// The memory there is: the container's limit (cgroup v2 `memory.max`), or the machine's
/// (`MemTotal`) when there is none; `None` where neither can be read.
pub fn available() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let machine = || {
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = info.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
        let kib: u64 = line.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    };
    cgroup.or_else(machine)
}

/// A limit as written: `none`, a share of the memory there is (`80%`, see [`available`]), or a
/// size (`2GiB`, as `commit.max_bytes` is written). `Ok(None)`: no limit.
pub fn parse_limit(text: &str) -> Result<Option<u64>, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    if let Some(percent) = t.strip_suffix('%') {
        let share: f64 = percent
            .trim()
            .parse()
            .ok()
            .filter(|p: &f64| *p > 0.0 && *p <= 100.0)
            .ok_or_else(|| format!("{text:?}: a share is from 1% to 100%"))?;
        let total = available().ok_or_else(|| {
            format!(
                "{text:?}: the memory there is cannot be read (/sys/fs/cgroup/memory.max, \
                 /proc/meminfo); give a size such as 2GiB"
            )
        })?;
        return Ok(Some((total as f64 * share / 100.0) as u64));
    }
    crate::size::parse_size(t)
        .map(|bytes| Some(bytes as u64))
        .map_err(|e| format!("{e}, a share such as 80%, or none"))
}

/// The memory limit of this process and what its run loops have measured under it; one per
/// process, shared by every run loop in it.
#[derive(Debug)]
pub struct MemoryLimit {
    /// Bytes the resident set is to stay below; `None`: no limit (only `commit.max_bytes`).
    limit: Option<u64>,
    growth: Mutex<Growth>,
    /// The highest peak seen before a new one was started.
    peak: AtomicU64,
}

#[derive(Debug)]
struct Growth {
    /// Peak resident growth per input byte, as last measured (the larger of a new figure and
    /// a decaying old one: a big cycle is remembered, a small one trusted slowly).
    per_byte: f64,
    /// The resident set when the peak was last started, and what every loop read since.
    base: u64,
    read: u64,
    /// Run loops sharing the room.
    loops: usize,
    /// Whether the last budget found the resident set over the limit (said once per spell).
    over: bool,
}

impl MemoryLimit {
    /// A limit of `limit` bytes (`None`: none).
    pub fn new(limit: Option<u64>) -> MemoryLimit {
        if limit.is_some() {
            restart_peak();
        }
        MemoryLimit {
            limit,
            growth: Mutex::new(Growth {
                per_byte: FIRST_GUESS,
                base: Resident::of(None).map_or(0, |r| r.now),
                read: 0,
                loops: 0,
                over: false,
            }),
            peak: AtomicU64::new(0),
        }
    }

    /// The process's peak resident set since this limit was made (`None` where `/proc` cannot
    /// tell): what stayed below the limit, or did not.
    pub fn peak(&self) -> Option<u64> {
        let now = Resident::of(None)?.peak;
        Some(now.max(self.peak.load(Ordering::Relaxed)))
    }

    /// The limit, if there is one.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// A run loop starts sharing the room; it stops when the guard is dropped.
    pub fn join(self: &std::sync::Arc<Self>) -> LoopGuard {
        self.lock().loops += 1;
        LoopGuard(self.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Growth> {
        self.growth.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The input bytes the next cycle of `pipeline` may read: `max_bytes` when there is room,
    /// less when the limit is near, [`MIN_CYCLE_BYTES`] at the least.
    pub fn budget(&self, pipeline: &str, max_bytes: usize) -> usize {
        let Some(limit) = self.limit else {
            return max_bytes;
        };
        let Some(now) = Resident::of(None).map(|r| r.now) else {
            return max_bytes;
        };
        let mut g = self.lock();
        let budget = share(limit, now, g.per_byte, g.loops, max_bytes);
        let over = now >= limit;
        if over && !g.over {
            tracing::warn!(
                "pipeline {pipeline}: the resident set ({} MiB) is over the memory limit ({} MiB) \
                 before a cycle reads anything: what the pipeline keeps (open windows, carried \
                 history, detectors) fills it. Cycles read {} KiB each until it is back under; \
                 raise --memory-limit (STRATUS_MEMORY_LIMIT), or run the pipeline on more \
                 workers (`stratus run --cluster`) so each holds fewer keys",
                now >> 20,
                limit >> 20,
                MIN_CYCLE_BYTES >> 10
            );
        } else if !over && g.over {
            tracing::info!(
                "pipeline {pipeline}: the resident set ({} MiB) is under the memory limit \
                 ({} MiB) again",
                now >> 20,
                limit >> 20
            );
        }
        g.over = over;
        budget
    }

    /// A cycle read `bytes` and has committed: measures the resident growth per input byte
    /// since the last measurement, once enough was read to tell, and starts a new peak.
    pub fn cycle_done(&self, bytes: usize) {
        if self.limit.is_none() {
            return;
        }
        let mut g = self.lock();
        g.read += bytes as u64;
        if g.read < MEASURABLE {
            return;
        }
        let Some(resident) = Resident::of(None) else {
            return;
        };
        let sample = resident.peak.saturating_sub(g.base) as f64 / g.read as f64;
        g.per_byte = learn(g.per_byte, sample);
        self.peak.fetch_max(resident.peak, Ordering::Relaxed);
        if restart_peak() {
            g.base = resident.now;
        }
        g.read = 0;
    }
}

/// A loop's budget: the room between `now` and [`TARGET`] of `limit`, at `per_byte` resident
/// bytes per byte read, shared by `loops`, within [`MIN_CYCLE_BYTES`] and `max_bytes`.
fn share(limit: u64, now: u64, per_byte: f64, loops: usize, max_bytes: usize) -> usize {
    let target = (limit as f64 * TARGET) as u64;
    let room = target.saturating_sub(now) as f64 / per_byte / loops.max(1) as f64;
    (room as usize).clamp(MIN_CYCLE_BYTES.min(max_bytes), max_bytes)
}

/// The growth figure after measuring `sample`: a larger one at once, a smaller one a fifth of
/// the way, never below one byte resident per byte read.
fn learn(per_byte: f64, sample: f64) -> f64 {
    let next = if sample > per_byte {
        sample
    } else {
        0.8 * per_byte + 0.2 * sample
    };
    next.max(1.0)
}

/// A run loop's share of [`MemoryLimit`]'s room; given back when dropped.
#[derive(Debug)]
pub struct LoopGuard(std::sync::Arc<MemoryLimit>);

impl Drop for LoopGuard {
    fn drop(&mut self) {
        let mut g = self.0.lock();
        g.loops = g.loops.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_resident_and_its_peak_is_at_least_its_size() {
        let r = Resident::of(None).unwrap();
        assert!(r.now > 0 && r.peak >= r.now, "{r:?}");
        assert!(Resident::of(Some(u32::MAX)).is_none());
    }

    #[test]
    fn growth_rises_at_once_and_falls_slowly() {
        assert_eq!(learn(8.0, 20.0), 20.0);
        assert!((learn(20.0, 10.0) - 18.0).abs() < 1e-9);
        assert_eq!(learn(1.1, 0.0), 1.0);
    }

    #[test]
    fn the_budget_is_the_room_per_byte_of_growth_shared_among_loops() {
        const MIB: u64 = 1 << 20;
        let max = 64 << 20;
        // Plenty of room: the pipeline's own bound.
        assert_eq!(share(8192 * MIB, 100 * MIB, 8.0, 1, max), max);
        // 80 MiB of room under 90 % of a 200 MiB limit, at 8 bytes resident per byte read:
        // 10 MiB, 5 MiB each for two loops.
        assert_eq!(share(200 * MIB, 100 * MIB, 8.0, 1, max), 10 << 20);
        assert_eq!(share(200 * MIB, 100 * MIB, 8.0, 2, max), 5 << 20);
        // Over the limit: the least, never nothing, and never above the pipeline's bound.
        assert_eq!(share(50 * MIB, 100 * MIB, 8.0, 1, max), MIN_CYCLE_BYTES);
        assert_eq!(share(50 * MIB, 100 * MIB, 8.0, 1, 1000), 1000);
        // No limit: the pipeline's own bound, whatever is resident.
        assert_eq!(MemoryLimit::new(None).budget("p", max), max);
        // Over a limit of one byte: the least.
        assert_eq!(MemoryLimit::new(Some(1)).budget("p", max), MIN_CYCLE_BYTES);
    }

    #[test]
    fn a_measured_cycle_sets_the_growth_figure() {
        let limit = MemoryLimit::new(Some(u64::MAX / 2));
        // Too little read to tell: the first guess stands.
        limit.cycle_done(1000);
        assert_eq!(limit.lock().per_byte, FIRST_GUESS);
        // 256 MiB made resident while 4 MiB were read: 64 bytes per byte (at least 32, whatever
        // the tests running beside this one free meanwhile).
        let held = vec![1u8; 256 << 20];
        std::hint::black_box(&held);
        limit.cycle_done(4 << 20);
        let per_byte = limit.lock().per_byte;
        assert!(per_byte >= 32.0, "{per_byte}");
        drop(held);
    }

    #[test]
    fn a_limit_is_none_a_share_or_a_size() {
        assert_eq!(parse_limit("none"), Ok(None));
        assert_eq!(parse_limit("2GiB"), Ok(Some(2 << 30)));
        assert_eq!(parse_limit(" 512 MiB "), Ok(Some(512 << 20)));
        let total = available().unwrap() as f64;
        let default = parse_limit(DEFAULT_LIMIT).unwrap().unwrap() as f64;
        assert!((default - 0.8 * total).abs() <= 1.0, "{default} of {total}");
        for bad in ["0%", "150%", "lots", "2 parsecs"] {
            let e = parse_limit(bad).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }
}
