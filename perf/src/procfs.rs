//! What the kernel says about processes and the machine: CPU time from
//! `/proc/PID/stat`, peak RSS from `/proc/PID/status`, how busy all cores
//! were from `/proc/stat`.

use std::fs;

use anyhow::{bail, Context};
use nix::sys::resource::{getrusage, UsageWho};
use nix::unistd::{sysconf, SysconfVar};

fn clock_ticks() -> f64 {
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

/// The fields of `/proc/PID/stat` after the command name (which may hold
/// spaces and parentheses): state is the first, the parent's pid the second.
fn stat_fields(pid: u32) -> anyhow::Result<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat (has the process exited?)"))?;
    let (_, rest) = stat
        .rsplit_once(") ")
        .with_context(|| format!("/proc/{pid}/stat has no command name: {stat:?}"))?;
    Ok(rest.split_whitespace().map(str::to_owned).collect())
}

/// User + system CPU seconds a live process has used so far.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let f = stat_fields(pid)?;
    // utime and stime: fields 14 and 15 of the whole line.
    let ticks = |i: usize| -> anyhow::Result<f64> {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("/proc/{pid}/stat: no CPU time in field {}", i + 3))
    };
    Ok((ticks(11)? + ticks(12)?) / clock_ticks())
}

/// Peak resident memory (VmHWM) of a live process, in KiB.
pub fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read the peak RSS of pid {pid} (/proc/{pid}/status)"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("/proc/{pid}/status has no VmHWM line"))
}

/// The live children of a process (nginx's workers).
pub fn children(parent: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            stat_fields(pid)
                .ok()
                .and_then(|f| f.get(1)?.parse::<u32>().ok())
                == Some(parent)
        })
        .collect()
}

/// CPU seconds of the finished children of this process so far
/// (`getrusage(RUSAGE_CHILDREN)`): wrk's, once it has been waited for.
pub fn finished_children_cpu() -> anyhow::Result<f64> {
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).context("getrusage(RUSAGE_CHILDREN)")?;
    let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Ok(seconds(usage.user_time()) + seconds(usage.system_time()))
}

/// All cores' CPU ticks from `/proc/stat`'s `cpu` line.
#[derive(Debug, Clone, Copy)]
pub struct MachineTicks {
    /// All but idle and iowait (guest time is already in user).
    busy: u64,
    softirq: u64,
    steal: u64,
    total: u64,
}

impl MachineTicks {
    pub fn now() -> anyhow::Result<MachineTicks> {
        let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let line = stat
            .lines()
            .find(|l| l.starts_with("cpu "))
            .context("/proc/stat has no 'cpu' line")?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        if v.len() < 8 {
            bail!("/proc/stat's cpu line is short: {line:?}");
        }
        let total: u64 = v.iter().sum();
        Ok(MachineTicks {
            busy: total - v[3] - v[4],
            softirq: v[6],
            steal: v[7],
            total,
        })
    }

    /// How busy all cores were since `self`: whether the cores, not one
    /// program, were the limit. Softirq is the loopback network's share,
    /// charged to no process; steal is time the hypervisor gave elsewhere.
    pub fn busy_since(&self) -> anyhow::Result<MachineBusy> {
        let now = MachineTicks::now()?;
        let total = now.total.saturating_sub(self.total);
        if total == 0 {
            bail!("cannot measure the machine's CPU use: /proc/stat did not advance");
        }
        let pct = |a: u64, b: u64| 100.0 * a.saturating_sub(b) as f64 / total as f64;
        Ok(MachineBusy {
            busy_pct: pct(now.busy, self.busy),
            softirq_pct: pct(now.softirq, self.softirq),
            steal_pct: pct(now.steal, self.steal),
        })
    }
}

#[derive(Debug, Clone, Copy)]
pub struct MachineBusy {
    pub busy_pct: f64,
    pub softirq_pct: f64,
    pub steal_pct: f64,
}

impl MachineBusy {
    pub fn busy(&self) -> String {
        format!("{:.0}% of all cores busy", self.busy_pct)
    }

    pub fn detail(&self) -> String {
        format!(
            "(softirq {:.0}%, steal {:.0}%)",
            self.softirq_pct, self.steal_pct
        )
    }
}

impl std::fmt::Display for MachineBusy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.busy(), self.detail())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_a_peak_rss() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        assert!(peak_rss_kib(pid).unwrap() > 0);
    }

    #[test]
    fn the_machine_ticks_advance() {
        let before = MachineTicks::now().unwrap();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_add(1);
        }
        std::hint::black_box(x);
        let busy = before.busy_since().unwrap();
        assert!(busy.busy_pct > 0.0, "{busy}");
    }
}
