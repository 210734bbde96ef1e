//! The guest's shared-memory region: a memfd the element creates (Unix
//! socket connections: it is passed to the daemon with `SCM_RIGHTS`), or
//! the BAR 2 of an `ivshmem-plain` PCI device (QEMU/KVM guests: the
//! daemon maps the device's backing file, bound to this guest by its
//! operator).
//!
//! The element writes a [`RegionHeader`] with a fresh random nonce at
//! offset 0; the daemon accepts the region only when it reads the same
//! header, so both sides provably see the same memory. One element at a
//! time uses a device (an exclusive `flock`): a second element in the same
//! guest sends its pixels over the socket.

use std::fs::{File, OpenOptions};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use hxfr::shm::{RegionHeader, RegionKind, ShmOffer, DATA_OFFSET};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use parking_lot::Mutex;

use super::alloc::Ranges;

/// Size of the memfd the element creates. It is sparse: only the pages of
/// slots that were written cost memory.
pub const MEMFD_SIZE: usize = 1 << 30;

/// PCI ids of QEMU's ivshmem device.
const IVSHMEM_VENDOR: &str = "0x1af4";
const IVSHMEM_DEVICE: &str = "0x1110";

pub struct Region {
    ptr: NonNull<u8>,
    len: usize,
    pub kind: RegionKind,
    /// For messages: "memfd" or the device path.
    pub name: String,
    nonce: [u8; 16],
    memfd: Option<OwnedFd>,
    /// Held while the element uses a device.
    _lock: Option<Flock<File>>,
    ranges: Mutex<Ranges>,
}

// SAFETY: plain shared memory, alive until `Drop`; writers are the owners
// of disjoint slots.
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl Region {
    /// A new sealed memfd region of `len` bytes.
    pub fn memfd(len: usize) -> Result<Region, String> {
        use nix::fcntl::{fcntl, FcntlArg, SealFlag};
        use nix::sys::memfd::{memfd_create, MFdFlags};
        let fd = memfd_create(
            "vsockenc-frames",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(|e| format!("memfd_create: {e}"))?;
        nix::unistd::ftruncate(&fd, len as i64).map_err(|e| format!("sizing the memfd: {e}"))?;
        // The daemon maps it: it must never shrink under that mapping.
        fcntl(
            &fd,
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
            ),
        )
        .map_err(|e| format!("sealing the memfd: {e}"))?;
        let ptr = map(&fd, len, 0)?;
        Region::init(ptr, len, RegionKind::Memfd, "memfd".into(), Some(fd), None)
    }

    /// The ivshmem device: `path` (a sysfs `resource2`, a UIO device, or
    /// any file mappable from offset 0), or the first ivshmem-plain device
    /// found in sysfs.
    pub fn device(path: Option<&str>) -> Result<Region, String> {
        let path = match path {
            Some(p) => PathBuf::from(p),
            None => find_ivshmem(Path::new("/sys/bus/pci/devices"))?,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let (len, offset) = device_size(&path, &file)?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            format!(
                "{} is in use by another vsockenc element ({e})",
                path.display()
            )
        })?;
        let ptr = map(&*lock, len, offset)?;
        Region::init(
            ptr,
            len,
            RegionKind::Bound,
            path.display().to_string(),
            None,
            Some(lock),
        )
    }

    fn init(
        ptr: NonNull<u8>,
        len: usize,
        kind: RegionKind,
        name: String,
        memfd: Option<OwnedFd>,
        lock: Option<Flock<File>>,
    ) -> Result<Region, String> {
        if (len as u64) < DATA_OFFSET * 2 {
            // SAFETY: the mapping just made.
            let _ = unsafe { munmap(ptr.cast(), len) };
            return Err(format!("{name} is too small ({len} bytes)"));
        }
        let mut nonce = [0u8; 16];
        File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut nonce))
            .map_err(|e| format!("cannot read /dev/urandom for the region's nonce: {e}"))?;
        let region = Region {
            ptr,
            len,
            kind,
            name,
            nonce,
            memfd,
            _lock: lock,
            ranges: Mutex::new(Ranges::new(DATA_OFFSET as usize, len)),
        };
        let header = RegionHeader {
            region_size: len as u64,
            nonce,
        }
        .to_bytes();
        // SAFETY: inside the mapping, which is writable.
        unsafe { std::ptr::copy_nonoverlapping(header.as_ptr(), ptr.as_ptr(), header.len()) };
        Ok(region)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The memfd to pass with the offer.
    pub fn memfd_fd(&self) -> Option<BorrowedFd<'_>> {
        self.memfd.as_ref().map(|f| f.as_fd())
    }

    pub fn offer(&self, token: u64) -> ShmOffer {
        ShmOffer {
            token,
            kind: self.kind,
            region_size: self.len as u64,
            nonce: self.nonce,
        }
    }

    /// The offset of `len` bytes at `ptr` if they lie inside the region.
    pub fn offset_of(&self, ptr: *const u8, len: usize) -> Option<usize> {
        let base = self.ptr.as_ptr() as usize;
        let p = ptr as usize;
        (p >= base + DATA_OFFSET as usize && p.checked_add(len)? <= base + self.len)
            .then(|| p - base)
    }

    /// A free range of `len` bytes, given back when the guard drops.
    pub fn alloc(self: &Arc<Self>, len: usize) -> Option<Slot> {
        let range = self.ranges.lock().alloc(len)?;
        Some(Slot {
            region: self.clone(),
            range,
        })
    }

    /// Bytes of the region in slots now.
    pub fn used(&self) -> usize {
        self.ranges.lock().used()
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping of `init`; every slot held an Arc of this.
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}

/// A range of the region owned by one buffer or one frame in flight.
pub struct Slot {
    region: Arc<Region>,
    range: (usize, usize),
}

impl Slot {
    pub fn offset(&self) -> usize {
        self.range.0
    }

    pub fn len(&self) -> usize {
        self.range.1 - self.range.0
    }
}

impl AsMut<[u8]> for Slot {
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: the range is inside the mapping and owned by this slot
        // alone until it drops.
        unsafe {
            std::slice::from_raw_parts_mut(self.region.ptr.as_ptr().add(self.range.0), self.len())
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.region.ranges.lock().free(self.range);
    }
}

fn map<F: AsFd>(fd: &F, len: usize, offset: i64) -> Result<NonNull<u8>, String> {
    let n = NonZeroUsize::new(len).ok_or("the region is empty")?;
    // SAFETY: a fresh shared mapping; nothing else refers to the range.
    let p = unsafe {
        mmap(
            None,
            n,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            fd,
            offset,
        )
    }
    .map_err(|e| format!("mmap of {len} bytes: {e}"))?;
    Ok(p.cast())
}

/// The first ivshmem-plain device's `resource2` under `devices`.
pub fn find_ivshmem(devices: &Path) -> Result<PathBuf, String> {
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    let mut found: Vec<PathBuf> = std::fs::read_dir(devices)
        .map_err(|e| format!("cannot list {}: {e}", devices.display()))?
        .flatten()
        .map(|d| d.path())
        .filter(|d| {
            read(d.join("vendor")).trim() == IVSHMEM_VENDOR
                && read(d.join("device")).trim() == IVSHMEM_DEVICE
        })
        .map(|d| d.join("resource2"))
        .collect();
    found.sort();
    found.into_iter().next().ok_or_else(|| {
        format!(
            "no ivshmem-plain device (PCI {IVSHMEM_VENDOR}:{IVSHMEM_DEVICE}) in {}",
            devices.display()
        )
    })
}

/// Bytes to map and the offset to map them at: the file's size (a sysfs
/// resource file has the BAR's size), or for `/dev/uioN` its largest map
/// (map N sits at offset N pages).
fn device_size(path: &Path, file: &File) -> Result<(usize, i64), String> {
    if let Some(uio) = path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| n.starts_with("uio"))
    {
        let maps = Path::new("/sys/class/uio").join(uio).join("maps");
        return largest_uio_map(&maps);
    }
    let len = file
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?
        .len();
    Ok((len as usize, 0))
}

fn page_size() -> i64 {
    use nix::unistd::{sysconf, SysconfVar};
    match sysconf(SysconfVar::PAGE_SIZE) {
        Ok(Some(p)) if p > 0 => p,
        _ => 4096,
    }
}

fn largest_uio_map(maps: &Path) -> Result<(usize, i64), String> {
    let page = page_size();
    let mut best: Option<(usize, i64)> = None;
    for entry in std::fs::read_dir(maps)
        .map_err(|e| format!("cannot list {}: {e}", maps.display()))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(index) = name.strip_prefix("map").and_then(|n| n.parse::<i64>().ok()) else {
            continue;
        };
        let size = std::fs::read_to_string(entry.path().join("size")).unwrap_or_default();
        let Ok(size) = usize::from_str_radix(size.trim().trim_start_matches("0x"), 16) else {
            continue;
        };
        if best.is_none_or(|(s, _)| size > s) {
            best = Some((size, index * page));
        }
    }
    best.ok_or_else(|| format!("no memory map in {}", maps.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memfd_region_has_its_header_and_hands_out_slots() {
        let r = Arc::new(Region::memfd(1 << 20).unwrap());
        // SAFETY: the mapping is at least a page long.
        let head = unsafe { std::slice::from_raw_parts(r.ptr.as_ptr(), 40) };
        let h = RegionHeader::parse(head).unwrap();
        assert_eq!(h.region_size, 1 << 20);
        assert_eq!(r.offer(7).nonce, h.nonce);
        let mut s = r.alloc(5000).unwrap();
        assert_eq!(s.offset(), DATA_OFFSET as usize);
        s.as_mut()[4999] = 1;
        let p = s.as_mut().as_ptr();
        assert_eq!(r.offset_of(p, 5000), Some(DATA_OFFSET as usize));
        assert_eq!(r.offset_of(p, 1 << 20), None);
        assert_eq!(r.used(), 8192);
        drop(s);
        assert_eq!(r.used(), 0);
        assert!(r.memfd_fd().is_some());
    }

    #[test]
    fn ivshmem_devices_are_found_by_their_pci_ids() {
        let dir = std::env::temp_dir().join(format!("vsockenc-pci-{}", std::process::id()));
        for (dev, vendor, device) in [
            ("0000:00:03.0", "0x1af4", "0x1000"),
            ("0000:00:05.0", "0x1af4", "0x1110"),
        ] {
            let d = dir.join(dev);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("vendor"), format!("{vendor}\n")).unwrap();
            std::fs::write(d.join("device"), format!("{device}\n")).unwrap();
        }
        assert_eq!(
            find_ivshmem(&dir).unwrap(),
            dir.join("0000:00:05.0/resource2")
        );
        let maps = dir.join("uio0/maps");
        for (m, size) in [("map0", "0x100"), ("map1", "0x4000000")] {
            std::fs::create_dir_all(maps.join(m)).unwrap();
            std::fs::write(maps.join(m).join("size"), size).unwrap();
        }
        let page = page_size();
        assert_eq!(largest_uio_map(&maps).unwrap(), (64 << 20, page));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(find_ivshmem(&dir).is_err());
    }
}
