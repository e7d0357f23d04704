//! Runtime sizing from the container's real CPU quota (cgroup v2 `cpu.max`
//! or v1 `cpu.cfs_quota_us`) and memory limit (v2 `memory.max`, v1
//! `memory.limit_in_bytes`), not the host's core count and RAM.

use std::path::Path;

/// The allocator Ferry's binaries use. jemalloc's background thread returns
/// freed pages to the system a few seconds after a burst; glibc's malloc
/// kept a burst's peak (a sidecar held 342 MB after 15 s of 4 MiB reads).
pub use tikv_jemallocator::Jemalloc as Allocator;

/// Starts jemalloc's background purging; returns whether it runs (it does
/// not when the process's allocator is another one).
pub fn return_memory_when_idle() -> bool {
    tikv_jemalloc_ctl::background_thread::write(true).is_ok()
        && tikv_jemalloc_ctl::background_thread::read().unwrap_or(false)
}

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

/// The memory limit of this process's cgroup, if it has one. The cgroup is
/// found through `/proc/self/cgroup`; where that path is not visible (a
/// container without a cgroup namespace), the root of the mount is its own.
pub fn memory_limit() -> Option<u64> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    cgroup_memory_limit(Path::new("/sys/fs/cgroup"), &membership)
}

/// The memory limit under cgroup mount `root` for a process whose
/// `/proc/self/cgroup` reads `membership`; `None` if unlimited or unknown.
pub fn cgroup_memory_limit(root: &Path, membership: &str) -> Option<u64> {
    for line in membership.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let relative = path.trim_start_matches('/');
        let (dir, file) = if controllers.is_empty() {
            (root.to_path_buf(), "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            (root.join("memory"), "memory.limit_in_bytes")
        } else {
            continue;
        };
        let own = std::fs::read_to_string(dir.join(relative).join(file));
        if let Ok(text) = own.or_else(|_| std::fs::read_to_string(dir.join(file))) {
            return parse_memory_limit(&text);
        }
    }
    None
}

/// `max` (v2) or a number; v1 writes "unlimited" as a number near `i64::MAX`.
fn parse_memory_limit(text: &str) -> Option<u64> {
    let text = text.trim();
    if text == "max" {
        return None;
    }
    let bytes: u64 = text.parse().ok()?;
    (bytes > 0 && bytes < 1 << 60).then_some(bytes)
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
    fn memory_limits_of_v1_and_v2() {
        assert_eq!(parse_memory_limit("max\n"), None);
        assert_eq!(
            parse_memory_limit("9223372036854771712\n"),
            None,
            "v1 unlimited"
        );
        assert_eq!(parse_memory_limit("268435456\n"), Some(256 << 20));
        assert_eq!(parse_memory_limit("junk"), None);
        let dir = std::env::temp_dir().join(format!("ferry-cgroup-mem-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("memory/pod/app")).expect("mkdir");
        std::fs::write(
            dir.join("memory/pod/app/memory.limit_in_bytes"),
            "134217728",
        )
        .expect("write");
        let v1 = "12:cpu,cpuacct:/pod/app\n7:memory:/pod/app\n";
        assert_eq!(
            cgroup_memory_limit(&dir, v1),
            Some(128 << 20),
            "v1, own cgroup"
        );
        std::fs::create_dir_all(dir.join("kubepods/pod")).expect("mkdir");
        std::fs::write(dir.join("kubepods/pod/memory.max"), "67108864").expect("write");
        assert_eq!(
            cgroup_memory_limit(&dir, "0::/kubepods/pod\n"),
            Some(64 << 20),
            "v2"
        );
        std::fs::write(dir.join("memory.max"), "max").expect("write");
        assert_eq!(
            cgroup_memory_limit(&dir, "0::/elsewhere\n"),
            None,
            "a path not visible here falls back to the mount's root"
        );
        assert_eq!(cgroup_memory_limit(&dir, ""), None);
        let _ = std::fs::remove_dir_all(&dir);
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
