//! How many libtorch threads fit the CPU adpo actually gets, when the host has not fixed a count.
//!
//! libtorch starts one OpenMP thread per core it may run on, and its OpenMP (GNU libgomp) spins
//! while a thread waits for the next parallel region. When another process keeps a core busy,
//! the spinning threads compete with it and with adpo's own working thread, and the scheduler
//! makes a thread that spun a lot wait its turn at every barrier: measured on the 2-core build
//! machine, the demo's RL step (SmolLM2, LoRA, 32 rows) took 51.6 s with 2 threads beside one
//! busy process, against 8.4 s with 1 thread and 4.8 s with 2 on the quiet machine
//! (benches/cpu_sharing.py). libgomp reads its wait policy (OMP_WAIT_POLICY) once, when the
//! process loads it, before any adpo code runs, so adpo cannot change it; it can choose the
//! thread count at each call instead.
//!
//! The ceiling is libtorch's own default (the cores this process may run on), lowered to the
//! cgroup's CPU quota (a container limited to 2 CPUs on a 64-core host). Below it, on Linux,
//! adpo looks at /proc/stat and /proc/self/stat at most every `RESAMPLE` and uses the cores
//! that other processes left idle since the last look, rounded down (a core 80% free counts),
//! and more threads only once two intervals in a row left room for them.
//! Work of the host's own threads in this process is not seen as load: a host that runs heavy
//! work beside adpo in one process should fix the count with adpo_set_num_threads.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the load is looked at again; calls in between keep the last choice.
const RESAMPLE: Duration = Duration::from_millis(250);

/// The share of a core that counts as one whole core for a thread.
const WHOLE_CORE: f64 = 0.8;

/// CPU time counters, in clock ticks (USER_HZ, the unit of both /proc files).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuTimes {
    /// Busy time of all CPUs (user, nice, system, irq, softirq, steal).
    pub busy: u64,
    /// Busy and idle time of all CPUs.
    pub total: u64,
    /// CPUs the machine has (the `cpuN` lines).
    pub cpus: usize,
    /// This process's user and system time.
    pub own: u64,
}

/// The busy and total ticks and the CPU count of /proc/stat's text.
pub fn parse_proc_stat(text: &str) -> Option<(u64, u64, usize)> {
    let first = text.lines().next()?;
    let mut fields = first.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = fields.map(|f| f.parse().ok()).collect::<Option<_>>()?;
    if v.len() < 8 {
        return None;
    }
    // user nice system idle iowait irq softirq steal [guest guest_nice: already in user, nice]
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    let total = busy + v[3] + v[4];
    let cpus = text
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    Some((busy, total, cpus.max(1)))
}

/// utime + stime of /proc/self/stat's text (fields 14 and 15; the command name in parentheses
/// may hold spaces, so fields are counted after its closing parenthesis).
pub fn parse_self_stat(text: &str) -> Option<u64> {
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The CPUs a cgroup v2 `cpu.max` ("QUOTA PERIOD" or "max PERIOD") grants; None without a quota.
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut fields = text.split_whitespace();
    let quota: f64 = fields.next()?.parse().ok()?;
    let period: f64 = fields.next()?.parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// The CPUs this process's cgroup grants (v2, then v1), None when unlimited or unknown.
fn cgroup_cpus() -> Option<f64> {
    if let Ok(text) = std::fs::read_to_string("/sys/fs/cgroup/cpu.max") {
        return parse_cpu_max(&text);
    }
    let read = |f: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/cpu/{f}")).ok();
    parse_cpu_max(&format!(
        "{} {}",
        read("cpu.cfs_quota_us")?,
        read("cpu.cfs_period_us")?
    ))
}

/// libtorch's default count lowered to the cgroup's quota (at least 1).
pub fn ceiling(libtorch_default: i32) -> i32 {
    match cgroup_cpus() {
        Some(cpus) => libtorch_default.min((cpus + 1.0 - WHOLE_CORE).floor().max(1.0) as i32),
        None => libtorch_default,
    }
    .max(1)
}

/// The threads to use between two looks at the counters: the cores other processes left idle
/// (their busy time is the machine's less this process's), at most `ceiling`, at least 1.
pub fn threads_between(before: &CpuTimes, after: &CpuTimes, ceiling: i32) -> i32 {
    let ticks = after.total.saturating_sub(before.total);
    if ticks == 0 {
        return ceiling;
    }
    let busy = after.busy.saturating_sub(before.busy);
    let others = busy.saturating_sub(after.own.saturating_sub(before.own));
    let others_cpus = others as f64 / ticks as f64 * after.cpus as f64;
    let free = after.cpus as f64 - others_cpus;
    ((free + 1.0 - WHOLE_CORE).floor() as i32).clamp(1, ceiling.max(1))
}

fn read_times() -> Option<CpuTimes> {
    let (busy, total, cpus) = parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)?;
    let own = parse_self_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    Some(CpuTimes {
        busy,
        total,
        cpus,
        own,
    })
}

struct Look {
    at: Instant,
    times: CpuTimes,
    /// What the interval before this look left room for.
    room: i32,
    /// The count chosen at this look.
    threads: i32,
}

static LAST: Mutex<Option<Look>> = Mutex::new(None);

/// The count of the last look (0 before any), for calls that find another one looking.
static CHOSEN: AtomicI32 = AtomicI32::new(0);

/// The thread count for the call about to run: the ceiling until two looks at the counters
/// `RESAMPLE` apart exist, then what the last two intervals left free. Where the counters
/// cannot be read (not Linux), the ceiling.
pub fn threads_now(ceiling: i32) -> i32 {
    // A call on another thread is looking: use the last choice rather than wait.
    let Ok(mut last) = LAST.try_lock() else {
        return match CHOSEN.load(Ordering::Relaxed) {
            0 => ceiling,
            n => n.min(ceiling),
        };
    };
    let now = Instant::now();
    if let Some(look) = last.as_ref() {
        if now.duration_since(look.at) < RESAMPLE {
            return look.threads.min(ceiling);
        }
    }
    let Some(times) = read_times() else {
        return ceiling;
    };
    // Fewer threads at once when the room shrinks; more only when two intervals in a row had
    // the room, so that a passing burst of load does not make the count flap.
    let (room, threads) = match last.as_ref() {
        Some(look) => {
            let room = threads_between(&look.times, &times, ceiling);
            (room, room.min(look.room))
        }
        None => (ceiling, ceiling),
    };
    *last = Some(Look {
        at: now,
        times,
        room,
        threads,
    });
    CHOSEN.store(threads, Ordering::Relaxed);
    threads
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        let stat = "cpu  100 5 50 1000 20 1 2 3 0 0\ncpu0 50 2 25 500 10 0 1 1 0 0\ncpu1 50 3 25 500 10 1 1 2 0 0\nintr 1\n";
        assert_eq!(parse_proc_stat(stat), Some((161, 1181, 2)));
        assert_eq!(parse_proc_stat("intr 1\n"), None);
        let own = "4242 (my (odd) prog) R 1 2 3 4 5 6 7 8 9 10 70 30 0 0 20 0";
        assert_eq!(parse_self_stat(own), Some(100));
        assert_eq!(parse_self_stat("4242 (x) R 1"), None);
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
    }

    fn times(busy: u64, total: u64, own: u64) -> CpuTimes {
        CpuTimes {
            busy,
            total,
            cpus: 2,
            own,
        }
    }

    #[test]
    fn the_cores_others_leave_idle() {
        let t0 = times(0, 0, 0);
        // 2 CPUs for 100 ticks each: 200 ticks. adpo alone used 180 of them: both cores.
        assert_eq!(threads_between(&t0, &times(180, 200, 180), 2), 2);
        // Another process kept one core busy (100 ticks) and adpo used 90: one core.
        assert_eq!(threads_between(&t0, &times(190, 200, 90), 2), 1);
        // Another process used 30% of a core: a core 70% free does not count as one.
        assert_eq!(threads_between(&t0, &times(30, 200, 0), 2), 1);
        // 15% of a core: both count.
        assert_eq!(threads_between(&t0, &times(15, 200, 0), 2), 2);
        // Both cores busy elsewhere: still one thread; never above the ceiling.
        assert_eq!(threads_between(&t0, &times(200, 200, 0), 2), 1);
        assert_eq!(threads_between(&t0, &times(0, 200, 0), 1), 1);
        assert_eq!(threads_between(&t0, &t0, 2), 2);
    }
}
