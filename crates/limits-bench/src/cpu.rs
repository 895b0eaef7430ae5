//! CPU time of a process, read from /proc, so a run can report how much
//! CPU the server (and the client) spent per operation: a figure that does
//! not depend on how the two share the machine's cores.

use std::time::Duration;

/// Clock ticks per second of /proc's utime and stime (USER_HZ). It is 100
/// on every mainstream Linux build; reading it properly needs sysconf, which
/// needs unsafe code, and this crate forbids that.
const USER_HZ: u64 = 100;

/// User + system CPU time of `pid` (all its threads, live or exited).
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the numeric fields start
    // after its closing parenthesis, at field 3 (state).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("malformed /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the name.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(i)
            .ok_or_else(|| anyhow::anyhow!("short /proc/{pid}/stat"))?
            .parse()?)
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_millis(total * 1000 / USER_HZ))
}

/// CPU time all processes of the machine spent busy (every core added up),
/// from the first line of /proc/stat. Set against the client's and the
/// server's own CPU time, it shows how much other work shared the machine
/// during a run, i.e. how noisy the run was.
pub fn machine_busy() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .next()
        .ok_or_else(|| anyhow::anyhow!("empty /proc/stat"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(v.len() >= 8, "short /proc/stat cpu line");
    // user, nice, system, (idle, iowait skipped), irq, softirq, steal.
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    Ok(Duration::from_millis(busy * 1000 / USER_HZ))
}

/// CPU counters read at one instant; unreadable ones are `None`.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    client: Option<Duration>,
    server: Option<Duration>,
    machine: Option<Duration>,
}

impl Sample {
    /// Reads this process's, the server's (if its pid is known) and the
    /// machine's CPU time.
    pub fn take(server_pid: Option<u32>) -> Sample {
        Sample {
            client: cpu_time(std::process::id()).ok(),
            server: server_pid.and_then(|p| cpu_time(p).ok()),
            machine: machine_busy().ok(),
        }
    }
}

/// CPU spent between two samples.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub client: Option<Duration>,
    pub server: Option<Duration>,
    pub machine: Option<Duration>,
}

impl Window {
    pub fn between(a: &Sample, b: &Sample) -> Window {
        let d = |x: Option<Duration>, y: Option<Duration>| Some(y?.saturating_sub(x?));
        Window {
            client: d(a.client, b.client),
            server: d(a.server, b.server),
            machine: d(a.machine, b.machine),
        }
    }

    /// Average cores used by everything but the client and the server over
    /// `wall`; only known when the server's pid was given.
    pub fn other_cores(&self, wall: Duration) -> Option<f64> {
        let others =
            self.machine?.as_secs_f64() - self.client?.as_secs_f64() - self.server?.as_secs_f64();
        Some((others / wall.as_secs_f64()).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_cpu_time_grows_with_work() {
        let before = cpu_time(std::process::id()).unwrap();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = cpu_time(std::process::id()).unwrap();
        assert!(after >= before);
        assert!(machine_busy().unwrap() > Duration::ZERO);
    }
}
