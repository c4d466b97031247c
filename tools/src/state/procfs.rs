//! What /proc says about a process: its CPU time, its resident set and the processes under it.

use std::collections::BTreeMap;

/// CPU seconds (user + system) of a process so far, from /proc/<pid>/stat.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    Some((utime + stime) / ticks)
}

/// CPU seconds of each process now (summed over its replicas).
pub fn cpu_times(pids: &BTreeMap<String, Vec<u32>>) -> BTreeMap<String, f64> {
    pids.iter()
        .filter_map(|(name, pids)| {
            let seconds: Vec<f64> = pids.iter().filter_map(|p| cpu_seconds(*p)).collect();
            (!seconds.is_empty()).then(|| (name.clone(), seconds.iter().sum()))
        })
        .collect()
}

/// Resident set of a process now, in MB (VmRSS of /proc/<pid>/status).
pub fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// `root` and every process under it, by name (`/proc/<pid>/comm`). Each thread lists its own
/// children: a replica started by a worker thread is not the main thread's child.
pub fn processes_under(root: u32) -> BTreeMap<String, Vec<u32>> {
    let mut found: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        if let Ok(name) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
            found.entry(name.trim().to_owned()).or_default().push(pid);
        }
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
            if let Ok(children) = std::fs::read_to_string(task.path().join("children")) {
                queue.extend(children.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn reads_our_own_cpu_time_and_resident_set() {
        let me = std::process::id();
        let before = cpu_seconds(me).unwrap();
        let busy = Instant::now();
        let mut x = 0u64;
        while busy.elapsed() < Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        assert!(cpu_seconds(me).unwrap() > before, "100 ms of work shows in /proc");
        assert!(rss_mb(me).unwrap() > 0.0);
        assert_eq!(cpu_seconds(u32::MAX), None, "no such process");
    }
}
