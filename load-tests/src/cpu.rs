//! CPU time spent while a run is timed, by this process and by the whole machine.
//!
//! The throughput benchmark runs the measured service inside the load generator's process,
//! and the broker runs beside it on the same machine (the local stack). What the service costs
//! is this process's CPU time per record; what the whole path costs, broker included, is the
//! machine's busy time per record. When the machine is busy on all its cores during both the
//! reference run and the service's, the ratio of their rates is the ratio of those costs, not
//! a matter of waiting: the figures printed with the rates say which case a run was.
//!
//! Read from `/proc` (Linux); elsewhere there is no sample and nothing is printed. `/proc`
//! counts in USER_HZ ticks, which the kernel fixes at 100 per second for user space on the
//! architectures this project builds for: a 10 ms resolution, 1 % of a 1 s run on one core.

/// USER_HZ: the unit of the CPU times in `/proc/stat` and `/proc/self/stat`.
const TICKS_PER_S: f64 = 100.0;

/// Cumulative CPU counters at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// This process's user + system time, seconds.
    process_s: f64,
    /// Every core's non-idle time (user, nice, system, irq, softirq, steal), seconds.
    machine_busy_s: f64,
    /// Every core's time, idle and I/O wait included, seconds.
    machine_s: f64,
}

/// CPU used between two samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Used {
    pub process_s: f64,
    pub machine_busy_s: f64,
    /// The machine's busy fraction over the interval, 0 to 1 (of all its cores).
    pub busy: f64,
}

/// CPU per record over a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PerRecord {
    /// Microseconds of this process's CPU.
    pub process_us: f64,
    /// Microseconds of the machine's CPU (every process, the broker included).
    pub machine_us: f64,
    /// The machine's busy fraction over the run.
    pub busy: f64,
}

impl Used {
    /// Divided by the `records` of the run.
    pub fn per_record(&self, records: u64) -> PerRecord {
        let n = records.max(1) as f64;
        PerRecord {
            process_us: self.process_s * 1e6 / n,
            machine_us: self.machine_busy_s * 1e6 / n,
            busy: self.busy,
        }
    }
}

impl Sample {
    /// Now, or `None` when `/proc` cannot be read.
    pub fn now() -> Option<Self> {
        let machine = std::fs::read_to_string("/proc/stat").ok()?;
        let process = std::fs::read_to_string("/proc/self/stat").ok()?;
        let (machine_busy, machine_all) = parse_machine(&machine)?;
        Some(Self {
            process_s: parse_process(&process)? / TICKS_PER_S,
            machine_busy_s: machine_busy / TICKS_PER_S,
            machine_s: machine_all / TICKS_PER_S,
        })
    }

    /// What was used from `earlier` to `self`.
    pub fn since(&self, earlier: &Self) -> Used {
        let all = self.machine_s - earlier.machine_s;
        let busy = self.machine_busy_s - earlier.machine_busy_s;
        Used {
            process_s: self.process_s - earlier.process_s,
            machine_busy_s: busy,
            busy: if all > 0.0 {
                (busy / all).clamp(0.0, 1.0)
            } else {
                0.0
            },
        }
    }
}

/// The aggregate `cpu` line of `/proc/stat`: (busy, all) ticks. Guest time is already inside
/// user time, so it is not added again.
fn parse_machine(stat: &str) -> Option<(f64, f64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 5 {
        return None;
    }
    let all: f64 = v.iter().sum();
    let idle = v[3] + v[4];
    Some((all - idle, all))
}

/// utime + stime of `/proc/self/stat`, in ticks. The command name (field 2) may hold spaces
/// and parentheses, so fields are counted from its last `)`.
fn parse_process(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_line_splits_busy_from_idle_and_iowait() {
        let stat = "cpu  100 5 50 800 40 3 2 0 0 0\ncpu0 50 2 25 400 20 1 1 0 0 0\n";
        assert_eq!(parse_machine(stat), Some((160.0, 1000.0)));
        assert_eq!(parse_machine("intr 1 2 3\n"), None);
        assert_eq!(parse_machine("cpu  1 2 x 4 5\n"), None);
    }

    #[test]
    fn the_process_line_is_read_after_a_name_with_spaces_and_parentheses() {
        let stat =
            "4242 (tokio (rt) worker) S 1 4242 4242 0 -1 4194560 500 0 0 0 1234 56 0 0 20 0 9 0";
        assert_eq!(parse_process(stat), Some(1290.0));
        assert_eq!(parse_process("4242 (x) S 1 2"), None);
    }

    #[test]
    fn a_busy_loop_shows_in_this_process_and_on_the_machine() {
        let Some(before) = Sample::now() else {
            panic!("/proc/stat or /proc/self/stat unreadable on this Linux machine");
        };
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let used = Sample::now().expect("read once").since(&before);
        // 300 ms on one core, at 10 ms resolution.
        assert!(used.process_s >= 0.25, "{used:?}");
        assert!(used.machine_busy_s >= used.process_s - 0.05, "{used:?}");
        assert!(used.busy > 0.0 && used.busy <= 1.0, "{used:?}");
        let per = used.per_record(1000);
        assert!(
            (per.process_us - used.process_s * 1e3).abs() < 1e-6,
            "{per:?}"
        );
        assert!(per.machine_us >= per.process_us - 50.0, "{per:?}");
        assert_eq!(per.busy, used.busy);
    }
}
