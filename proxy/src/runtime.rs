//! Runtime sizing from the container's real CPU quota (cgroup v2 `cpu.max`
//! or v1 `cpu.cfs_quota_us`), not the host's core count.

use std::path::Path;

/// Worker threads to run: `configured` if given, else the CPU quota, never
/// more than the CPUs this process may run on, at least one.
pub fn worker_threads(configured: Option<usize>) -> usize {
    if let Some(threads) = configured {
        return threads.max(1);
    }
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    cgroup_cpu_limit(Path::new("/sys/fs/cgroup"))
        .map_or(available, |quota| quota.min(available))
        .max(1)
}

/// Whole CPUs the cgroup under `root` allows, rounded up; `None` if unlimited.
pub fn cgroup_cpu_limit(root: &Path) -> Option<usize> {
    if let Ok(text) = std::fs::read_to_string(root.join("cpu.max")) {
        return parse_cpu_max(&text);
    }
    for dir in ["cpu", "cpu,cpuacct"] {
        let quota = std::fs::read_to_string(root.join(dir).join("cpu.cfs_quota_us"));
        let period = std::fs::read_to_string(root.join(dir).join("cpu.cfs_period_us"));
        if let (Ok(quota), Ok(period)) = (quota, period) {
            return parse_v1(&quota, &period);
        }
    }
    None
}

/// cgroup v2: `"max 100000"` (unlimited) or `"<quota> <period>"`.
fn parse_cpu_max(text: &str) -> Option<usize> {
    let mut fields = text.split_whitespace();
    let quota = fields.next()?;
    let period: u64 = fields.next()?.parse().ok()?;
    if quota == "max" {
        return None;
    }
    cpus(quota.parse().ok()?, period)
}

/// cgroup v1: quota `-1` is unlimited.
fn parse_v1(quota: &str, period: &str) -> Option<usize> {
    let quota: i64 = quota.trim().parse().ok()?;
    let period: u64 = period.trim().parse().ok()?;
    cpus(u64::try_from(quota).ok()?, period)
}

fn cpus(quota: u64, period: u64) -> Option<usize> {
    if quota == 0 || period == 0 {
        return None;
    }
    usize::try_from(quota.div_ceil(period)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_quota_rounds_up_and_max_is_unlimited() {
        assert_eq!(parse_cpu_max("200000 100000\n"), Some(2));
        assert_eq!(parse_cpu_max("150000 100000"), Some(2));
        assert_eq!(parse_cpu_max("50000 100000"), Some(1));
        assert_eq!(parse_cpu_max("max 100000"), None);
        assert_eq!(parse_cpu_max("garbage"), None);
    }

    #[test]
    fn v1_quota_minus_one_is_unlimited() {
        assert_eq!(parse_v1("-1\n", "100000\n"), None);
        assert_eq!(parse_v1("400000", "100000"), Some(4));
    }

    #[test]
    fn reads_a_cgroup_tree() {
        let dir = std::env::temp_dir().join(format!("ferry-cgroup-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("cpu")).expect("mkdir");
        std::fs::write(dir.join("cpu/cpu.cfs_quota_us"), "300000").expect("write");
        std::fs::write(dir.join("cpu/cpu.cfs_period_us"), "100000").expect("write");
        assert_eq!(cgroup_cpu_limit(&dir), Some(3), "v1");
        std::fs::write(dir.join("cpu.max"), "100000 100000").expect("write");
        assert_eq!(cgroup_cpu_limit(&dir), Some(1), "v2 wins");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(worker_threads(Some(5)), 5, "configured wins");
        assert!(worker_threads(None) >= 1);
    }
}
