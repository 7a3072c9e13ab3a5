//! What the machine can spare, and what the process has used: the inputs of a default budget
//! and the `peak_memory_bytes` the tools report.

/// Bytes this process may still allocate without pressure: the smaller of the system's
/// available memory and the room left under the process's memory cgroup (v1 or v2), where
/// those can be read. `None` where the platform offers neither.
pub fn available_memory() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let sys = linux::mem_available();
        let cg = linux::cgroup_room();
        match (sys, cg) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
    #[cfg(target_os = "ios")]
    {
        extern "C" {
            // libSystem, iOS 13+: what the app may allocate before jetsam.
            fn os_proc_available_memory() -> usize;
        }
        // SAFETY: a plain query without arguments.
        let n = unsafe { os_proc_available_memory() };
        (n > 0).then_some(n as u64)
    }
    #[cfg(not(any(target_os = "linux", target_os = "ios")))]
    {
        None
    }
}

/// The default budget: three quarters of [`available_memory`] (`None` if unknown).
pub fn default_budget() -> Option<u64> {
    available_memory().map(|a| a / 4 * 3)
}

/// Peak resident set size of this process so far, in bytes (`getrusage`).
pub fn peak_rss() -> Option<u64> {
    #[cfg(unix)]
    {
        // SAFETY: getrusage fills the struct we pass.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
            return None;
        }
        let v = ru.ru_maxrss.max(0) as u64;
        // Linux reports KiB, Apple platforms bytes.
        if cfg!(any(target_os = "macos", target_os = "ios")) {
            Some(v)
        } else {
            Some(v * 1024)
        }
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Current resident set size in bytes (Linux: `/proc/self/statm`).
pub fn current_rss() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let s = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Some(pages * page.max(4096) as u64)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::fs;

    pub fn mem_available() -> Option<u64> {
        let s = fs::read_to_string("/proc/meminfo").ok()?;
        let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    fn read_u64(path: &str) -> Option<u64> {
        fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    /// Limit minus usage of the process's memory cgroup (v2 `memory.max`, v1
    /// `memory.limit_in_bytes`); `None` when unlimited or unreadable.
    pub fn cgroup_room() -> Option<u64> {
        let own = fs::read_to_string("/proc/self/cgroup").ok()?;
        for line in own.lines() {
            let mut f = line.splitn(3, ':');
            let (_id, ctrl, path) = (f.next()?, f.next()?, f.next()?);
            if ctrl.is_empty() {
                // v2
                let base = format!("/sys/fs/cgroup{path}");
                let max = fs::read_to_string(format!("{base}/memory.max")).ok()?;
                let max: u64 = max.trim().parse().ok()?;
                let cur = read_u64(&format!("{base}/memory.current")).unwrap_or(0);
                return Some(max.saturating_sub(cur));
            }
            if ctrl.split(',').any(|c| c == "memory") {
                let base = format!("/sys/fs/cgroup/memory{path}");
                let max = read_u64(&format!("{base}/memory.limit_in_bytes"))?;
                if max >= (1 << 60) {
                    return None;
                }
                let cur = read_u64(&format!("{base}/memory.usage_in_bytes")).unwrap_or(0);
                return Some(max.saturating_sub(cur));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn readings_are_plausible() {
        #[cfg(target_os = "linux")]
        {
            let a = super::available_memory().expect("linux has /proc/meminfo");
            assert!(a > 1 << 20);
            let p = super::peak_rss().unwrap();
            let c = super::current_rss().unwrap();
            assert!(p >= c / 2 && c > 0, "peak {p} current {c}");
            assert!(super::default_budget().unwrap() <= a);
        }
    }
}
