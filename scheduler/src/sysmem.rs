//! What the machine can spare, and what the process has used: the inputs of a default budget
//! and the `peak_memory_bytes` the tools report.

/// Bytes this process may still allocate without pressure. Linux: the smaller of the system's
/// `MemAvailable` (`/proc/meminfo`) and the room left under the process's memory cgroup (v1 or
/// v2, found from `/proc/self/cgroup`; see [`cgroup_room`]) when it has a limit. iOS:
/// `os_proc_available_memory()` (what the app may still allocate before jetsam). `None` on
/// other platforms, or when nothing can be read.
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

/// The memory cgroup a process is in, from the text of `/proc/<pid>/cgroup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnCgroup<'a> {
    /// cgroup v1: the path in the `memory` controller's hierarchy
    /// (`/sys/fs/cgroup/memory<path>`).
    V1(&'a str),
    /// cgroup v2 (unified): the path in the unified hierarchy (`/sys/fs/cgroup<path>`).
    V2(&'a str),
}

/// Finds the process's memory cgroup in a `/proc/self/cgroup` text: the v1 line whose
/// controller list holds `memory` (`4:memory:/a/b`) wins over the unified v2 line (`0::/a/b`),
/// because on hybrid systems the memory controller lives in v1.
pub fn parse_own_cgroup(proc_cgroup: &str) -> Option<OwnCgroup<'_>> {
    let mut v2 = None;
    for line in proc_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_id), Some(ctrl), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if ctrl.is_empty() {
            v2 = Some(OwnCgroup::V2(path));
        } else if ctrl.split(',').any(|c| c == "memory") {
            return Some(OwnCgroup::V1(path));
        }
    }
    v2
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
pub fn parse_meminfo_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut f = line.split_whitespace().skip(1);
    let n: u64 = f.next()?.parse().ok()?;
    match f.next() {
        None => Some(n),
        Some(u) if u.eq_ignore_ascii_case("kb") => n.checked_mul(1024),
        Some(_) => None,
    }
}

/// Limits at or above this are "no limit" (cgroup v1 writes `PAGE_COUNTER_MAX` pages as bytes).
const NO_LIMIT: u64 = 1 << 60;

/// The room under a memory cgroup from the texts of its files: `limit` (v2 `memory.max`, v1
/// `memory.limit_in_bytes`), `usage` (`memory.current`, `memory.usage_in_bytes`) and,
/// when given, `stat` (`memory.stat`). Room is limit minus usage plus the inactive file cache
/// (`inactive_file`, v1 `total_inactive_file`), which the kernel reclaims before the cgroup
/// runs out, so page cache from reading the model does not count as used. `None` when there is
/// no limit (`max`, or v1's huge number) or a text does not parse.
pub fn cgroup_room(limit: &str, usage: &str, stat: Option<&str>) -> Option<u64> {
    let limit = limit.trim();
    if limit == "max" {
        return None;
    }
    let limit: u64 = limit.parse().ok()?;
    if limit >= NO_LIMIT {
        return None;
    }
    let usage: u64 = usage.trim().parse().ok()?;
    let inactive = stat.map_or(0, |s| {
        let field = |name: &str| {
            s.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == name).then(|| v.trim().parse::<u64>().ok()).flatten()
            })
        };
        field("total_inactive_file")
            .or_else(|| field("inactive_file"))
            .unwrap_or(0)
    });
    Some(limit.saturating_sub(usage.saturating_sub(inactive)))
}

#[cfg(target_os = "linux")]
mod linux {
    use std::fs;

    pub fn mem_available() -> Option<u64> {
        super::parse_meminfo_available(&fs::read_to_string("/proc/meminfo").ok()?)
    }

    /// Room under the process's memory cgroup (v1 or v2); `None` when unlimited or
    /// unreadable.
    pub fn cgroup_room() -> Option<u64> {
        let own = fs::read_to_string("/proc/self/cgroup").ok()?;
        let (base, limit, usage) = match super::parse_own_cgroup(&own)? {
            super::OwnCgroup::V1(p) => (
                format!("/sys/fs/cgroup/memory{p}"),
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            ),
            super::OwnCgroup::V2(p) => {
                (format!("/sys/fs/cgroup{p}"), "memory.max", "memory.current")
            }
        };
        let read = |f: &str| fs::read_to_string(format!("{base}/{f}")).ok();
        let stat = read("memory.stat");
        super::cgroup_room(&read(limit)?, &read(usage)?, stat.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cgroup_v1_v2_and_hybrid() {
        let v2 = "0::/user.slice/user-1000.slice/session-2.scope\n";
        assert_eq!(
            parse_own_cgroup(v2),
            Some(OwnCgroup::V2("/user.slice/user-1000.slice/session-2.scope"))
        );
        // Hybrid (this is what Docker on a v1 host shows): the memory controller is v1, and
        // the v2 line comes last; controllers may share a line.
        let hybrid = "9:name=systemd:/\n4:memory:/process_api/d1ef\n1:cpu,cpuacct:/\n0::/\n";
        assert_eq!(
            parse_own_cgroup(hybrid),
            Some(OwnCgroup::V1("/process_api/d1ef"))
        );
        assert_eq!(
            parse_own_cgroup("0::/\n5:cpuacct,memory:/x\n"),
            Some(OwnCgroup::V1("/x"))
        );
        // A path with a colon stays whole; no memory controller and no v2 line: none.
        assert_eq!(parse_own_cgroup("0::/a:b"), Some(OwnCgroup::V2("/a:b")));
        assert_eq!(parse_own_cgroup("3:cpu:/\n2:pids:/\n"), None);
        assert_eq!(parse_own_cgroup(""), None);
        assert_eq!(parse_own_cgroup("garbage"), None);
    }

    #[test]
    fn meminfo_available() {
        let t = "MemTotal:       32768000 kB\nMemFree:         1000000 kB\n\
                 MemAvailable:   23362664 kB\nBuffers:          123456 kB\n";
        assert_eq!(parse_meminfo_available(t), Some(23362664 * 1024));
        // Old kernels (before 3.14) have no MemAvailable.
        assert_eq!(
            parse_meminfo_available("MemTotal: 1000 kB\nMemFree: 10 kB\n"),
            None
        );
        assert_eq!(parse_meminfo_available("MemAvailable: lots kB\n"), None);
        assert_eq!(parse_meminfo_available("MemAvailable: 12 MB\n"), None);
    }

    #[test]
    fn cgroup_room_from_texts() {
        // v2 with a limit: limit - usage + inactive file cache.
        let stat2 = "anon 100000000\nfile 300000000\nactive_file 100000000\n\
                     inactive_file 200000000\n";
        assert_eq!(
            cgroup_room("1073741824\n", "500000000\n", Some(stat2)),
            Some(1073741824 - 500000000 + 200000000)
        );
        assert_eq!(
            cgroup_room("1073741824\n", "500000000\n", None),
            Some(1073741824 - 500000000)
        );
        // No limit.
        assert_eq!(cgroup_room("max\n", "500000000\n", Some(stat2)), None);
        assert_eq!(
            cgroup_room("9223372036854771712\n", "4550656\n", None),
            None
        );
        // v1: the hierarchy's total_inactive_file wins over the cgroup's own inactive_file.
        let stat1 = "cache 700000000\ninactive_file 135168\ntotal_cache 700000000\n\
                     total_inactive_file 637685760\n";
        assert_eq!(
            cgroup_room("2147483648", "1500000000", Some(stat1)),
            Some(2147483648 - (1500000000 - 637685760))
        );
        // Usage over the limit (the kernel allows a little): no room, not an underflow.
        assert_eq!(cgroup_room("1000", "5000", None), Some(0));
        assert_eq!(cgroup_room("oops", "5000", None), None);
        assert_eq!(cgroup_room("1000", "", None), None);
    }

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
