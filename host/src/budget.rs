//! One memory budget for everything the daemon buffers for its guests:
//! frames read ahead and waiting in the encoders, the reference frames of
//! compact frames, and an estimate of each encoding session's own memory.
//!
//! Each client opens an [`Account`]; each buffer it holds is a [`Grant`]
//! that gives its bytes back when dropped (a frame's grant travels with its
//! pixels into GStreamer and is dropped when the encoder lets go of them).
//! A grant is given when the budget has room *and* the client stays within
//! its fair share, the budget divided by the clients holding accounts (a
//! client holding nothing may always take one buffer if the budget has
//! room), so one guest cannot take the memory of the others. A request
//! that does not fit waits a short while for memory to come back (the
//! client's own frames being encoded), which paces a guest that sends
//! faster than it is encoded; then it is refused, and the frame gets an
//! ERROR naming the budget.
//!
//! Freed memory goes back to the operating system when a client leaves
//! ([`return_freed_memory`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Smallest budget the default picks, whatever the machine.
const MIN_DEFAULT: u64 = 256 << 20;

pub struct Budget {
    limit: u64,
    state: Mutex<State>,
    freed: Condvar,
}

#[derive(Default)]
struct State {
    used: u64,
    /// Bytes held per account.
    held: HashMap<u64, u64>,
    next_account: u64,
}

/// Why a request was not granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Short {
    pub wanted: u64,
    pub in_use: u64,
    pub limit: u64,
    pub held: u64,
    pub share: u64,
}

impl fmt::Display for Short {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} more would exceed the memory budget (--memory-budget {}: {} in use, this guest holds {} of its share of {})",
            bytes(self.wanted),
            bytes(self.limit),
            bytes(self.in_use),
            bytes(self.held),
            bytes(self.share)
        )
    }
}

/// `123.4 MiB`.
pub fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

impl Budget {
    pub fn new(limit: u64) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            state: Mutex::default(),
            freed: Condvar::new(),
        })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn in_use(&self) -> u64 {
        self.state.lock().unwrap().used
    }

    /// A new account, counted in the fair share until dropped.
    pub fn open(self: &Arc<Self>) -> Account {
        let mut s = self.state.lock().unwrap();
        let id = s.next_account;
        s.next_account += 1;
        s.held.insert(id, 0);
        Account {
            budget: self.clone(),
            id,
        }
    }

    fn try_grant(self: &Arc<Self>, account: u64, n: u64) -> Result<Grant, Short> {
        let mut s = self.state.lock().unwrap();
        let share = self.limit / s.held.len().max(1) as u64;
        let held = s.held.get(&account).copied().unwrap_or(0);
        let fits = s.used + n <= self.limit && (held == 0 || held + n <= share);
        if !fits {
            return Err(Short {
                wanted: n,
                in_use: s.used,
                limit: self.limit,
                held,
                share,
            });
        }
        s.used += n;
        *s.held.entry(account).or_default() += n;
        Ok(Grant {
            budget: self.clone(),
            account,
            bytes: n,
        })
    }

    fn release(&self, account: u64, n: u64) {
        let mut s = self.state.lock().unwrap();
        s.used -= n;
        if let Some(h) = s.held.get_mut(&account) {
            *h -= n;
        }
        self.freed.notify_all();
    }
}

/// One client's standing with the budget.
pub struct Account {
    budget: Arc<Budget>,
    id: u64,
}

impl Account {
    /// `n` bytes now, or why not.
    pub fn try_take(&self, n: u64) -> Result<Grant, Short> {
        self.budget.try_grant(self.id, n)
    }

    /// `n` bytes, waiting up to `wait` for memory to come back; `stop`
    /// ends the wait early (the connection or the daemon is going).
    pub fn take(&self, n: u64, wait: Duration, stop: impl Fn() -> bool) -> Result<Grant, Short> {
        let deadline = Instant::now() + wait;
        loop {
            let short = match self.try_take(n) {
                Ok(g) => return Ok(g),
                Err(s) => s,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || stop() {
                return Err(short);
            }
            let s = self.budget.state.lock().unwrap();
            // Checked again under the lock after the wake-up; a release
            // between try_take and here is seen at the next turn (bounded).
            let _ = self
                .budget
                .freed
                .wait_timeout(s, left.min(Duration::from_millis(100)))
                .unwrap();
        }
    }

    #[cfg(test)]
    pub fn held(&self) -> u64 {
        let s = self.budget.state.lock().unwrap();
        s.held.get(&self.id).copied().unwrap_or(0)
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        // Grants outlive their account (pixels still inside an encoder):
        // their bytes stay counted in `used` until they are dropped.
        let mut s = self.budget.state.lock().unwrap();
        s.held.remove(&self.id);
        self.budget.freed.notify_all();
    }
}

/// Bytes held against the budget until dropped.
pub struct Grant {
    budget: Arc<Budget>,
    account: u64,
    bytes: u64,
}

impl Grant {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Grant({})", self.bytes)
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.budget.release(self.account, self.bytes);
    }
}

/// Pixels and the grant that pays for them: the grant is given back when
/// the last user of the pixels (a GStreamer buffer) drops them.
pub struct Charged {
    pub pixels: Vec<u8>,
    _grant: Option<Grant>,
}

impl Charged {
    pub fn new(pixels: Vec<u8>, grant: Option<Grant>) -> Charged {
        Charged {
            pixels,
            _grant: grant,
        }
    }
}

impl Charged {
    /// Other pixels (a padded copy) paid by the same grant.
    pub fn replace(self, pixels: Vec<u8>) -> Charged {
        Charged {
            pixels,
            _grant: self._grant,
        }
    }
}

impl AsRef<[u8]> for Charged {
    fn as_ref(&self) -> &[u8] {
        &self.pixels
    }
}

impl AsMut<[u8]> for Charged {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.pixels
    }
}

/// The default budget: a quarter of the memory this process may use (the
/// machine's, or its cgroup's limit when lower), at least 256 MiB.
pub fn default_limit() -> u64 {
    let total = physical_memory();
    let total = match cgroup_limit() {
        Some(c) if c < total => c,
        _ => total,
    };
    (total / 4).max(MIN_DEFAULT)
}

#[cfg(not(target_os = "macos"))]
fn physical_memory() -> u64 {
    use nix::unistd::{sysconf, SysconfVar};
    let pages = sysconf(SysconfVar::_PHYS_PAGES).ok().flatten();
    let size = sysconf(SysconfVar::PAGE_SIZE).ok().flatten();
    match (pages, size) {
        (Some(p), Some(s)) if p > 0 && s > 0 => p as u64 * s as u64,
        _ => 4 << 30,
    }
}

/// macOS has no `_SC_PHYS_PAGES`; `hw.memsize` is the machine's memory.
/// Asked of sysctl(8) once at startup rather than through an unsafe FFI
/// call.
#[cfg(target_os = "macos")]
fn physical_memory() -> u64 {
    std::process::Command::new("/usr/sbin/sysctl")
        .args(["-n", "hw.memsize"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4 << 30)
}

/// The cgroup v2 memory limit of this process (systemd's `MemoryMax=`).
fn cgroup_limit() -> Option<u64> {
    let cg = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cg.lines().find_map(|l| l.strip_prefix("0::"))?;
    let max = std::fs::read_to_string(format!("/sys/fs/cgroup{path}/memory.max")).ok()?;
    max.trim().parse().ok()
}

/// Parses `--memory-budget`: bytes, or a number with K, M, G or T
/// (binary multiples).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let v = crate::units::scaled(s.trim(), crate::units::BINARY_T)
        .ok_or_else(|| format!("{s:?} is not a size (bytes, or with K, M, G, T)"))?;
    if !(v >= (16u64 << 20) as f64 && v < 1e18) {
        return Err(format!("{s:?}: the budget must be at least 16M"));
    }
    Ok(v as u64)
}

/// Makes freed memory come back to the operating system when guests
/// leave. glibc gives each thread an arena of its own (up to 8 per core),
/// and keeps the free top of each one resident until that arena is used
/// again, out of [`return_freed_memory`]'s reach: hundreds of MiB stayed
/// after 4K guests left. So every thread shares the main arena (small
/// allocations are still served from per-thread caches), and blocks of
/// 1 MiB and more (frames, converted pictures, encoder planes) are mapped
/// on their own and given back the moment they are freed, so they never
/// fragment the heap. Measured (`scripts/hostile.sh memory`, 4 guests of
/// 4K compact frames): idle RSS after them 1.12x what it was before; with
/// an 8 MiB threshold 1.36-1.48x. The daemon benchmark (1080p NV12) showed
/// no difference beyond its noise. Call before any thread starts.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; no thread allocates
    // concurrently yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Gives memory the allocator holds but no longer uses back to the
/// operating system. glibc keeps freed memory in its per-thread arenas;
/// after a client with large frames leaves, that is hundreds of MiB.
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;

    #[test]
    fn grants_come_back_when_dropped() {
        let b = Budget::new(100 * M);
        let a = b.open();
        let g = a.try_take(60 * M).unwrap();
        assert_eq!(b.in_use(), 60 * M);
        assert_eq!(a.held(), 60 * M);
        let short = a.try_take(50 * M).unwrap_err();
        assert_eq!(short.in_use, 60 * M);
        assert!(
            short.to_string().contains("--memory-budget 100.0 MiB"),
            "{short}"
        );
        drop(g);
        assert_eq!(b.in_use(), 0);
        assert!(a.try_take(100 * M).is_ok());
    }

    #[test]
    fn one_guest_cannot_take_the_share_of_the_others() {
        let b = Budget::new(100 * M);
        let greedy = b.open();
        let modest = b.open();
        // Share: 50 MiB each.
        let mut held = Vec::new();
        while let Ok(g) = greedy.try_take(10 * M) {
            held.push(g);
        }
        assert_eq!(greedy.held(), 50 * M);
        // The other guest still gets its half.
        let mine: Vec<_> = (0..5).map(|_| modest.try_take(10 * M).unwrap()).collect();
        assert_eq!(b.in_use(), 100 * M);
        drop(mine);
        // A guest holding nothing may take one buffer beyond its share.
        let third = b.open();
        assert!(third.try_take(45 * M).is_ok());
    }

    #[test]
    fn a_waiting_request_is_granted_when_memory_comes_back() {
        let b = Budget::new(10 * M);
        let a = b.open();
        let g = a.try_take(8 * M).unwrap();
        let waiter = {
            let b = b.clone();
            std::thread::spawn(move || {
                let a2 = b.open();
                let t = Instant::now();
                let r = a2
                    .take(5 * M, Duration::from_secs(20), || false)
                    .map(|g| g.bytes());
                (r, t.elapsed())
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        drop(g);
        let (r, waited) = waiter.join().unwrap();
        assert_eq!(r, Ok(5 * M));
        assert!(waited < Duration::from_secs(10), "{waited:?}");
        // And a request that never fits gives up after its wait.
        let t = Instant::now();
        assert!(a
            .take(20 * M, Duration::from_millis(150), || false)
            .is_err());
        assert!(t.elapsed() >= Duration::from_millis(140));
    }

    #[test]
    fn charged_pixels_release_their_grant_when_dropped() {
        let b = Budget::new(10 * M);
        let a = b.open();
        gst::init().unwrap();
        let c = Charged::new(vec![1, 2, 3], Some(a.try_take(M).unwrap()));
        let buf = gst::Buffer::from_mut_slice(c);
        assert_eq!(b.in_use(), M);
        drop(buf);
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert!(parse_size("1K").is_err());
        assert!(parse_size("lots").is_err());
        assert!(default_limit() >= MIN_DEFAULT);
    }
}
