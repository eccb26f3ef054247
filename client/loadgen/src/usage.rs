//! CPU accounting: this process (getrusage, all threads) and, optionally, a local server's.

use std::time::Duration;

/// User + system CPU seconds this process has used (all its threads).
pub fn self_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we own; RUSAGE_SELF is always valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let seconds =
        |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000).as_secs_f64();
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// User + system CPU seconds of process `pid` (all its threads), from /proc; None if unreadable.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no memory effects.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some((utime + stime) / if tick > 0 { tick as f64 } else { 100.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_counters_read_and_grow() {
        let before = self_cpu_seconds();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(self_cpu_seconds() > before);
        assert!(process_cpu_seconds(std::process::id()).is_some());
        assert!(process_cpu_seconds(u32::MAX).is_none());
    }
}
