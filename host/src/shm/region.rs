//! A guest's region as the daemon maps it: read-only, whole, and checked
//! before it is trusted.
//!
//! * A memfd passed over a Unix socket must be sealed against shrinking
//!   (`F_SEAL_SHRINK`): a guest that could shrink it after the daemon
//!   mapped it would turn the daemon's next read into a SIGBUS.
//! * A bound region is a file the operator named on the command line
//!   (the backing file of the guest's ivshmem device), never a path the
//!   guest sends.
//!
//! The mapping is `PROT_READ`: the daemon never writes into guest memory.

use std::fs::File;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::ptr::NonNull;

use hxfr::shm::{RegionHeader, ShmOffer, REGION_HEADER_LEN};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

/// Largest memfd region a guest may offer. The daemon maps it whole
/// (address space only: pages are read only where frames are).
pub const MAX_MEMFD_REGION: u64 = 4 << 30;

/// A read-only shared mapping.
pub struct Region {
    ptr: NonNull<u8>,
    len: usize,
    /// "memfd" or the bound file's path, for log lines.
    pub name: String,
}

// SAFETY: the mapping is plain memory that lives until `Drop`; the daemon
// only reads it (through raw pointers and GStreamer buffers).
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl Region {
    /// Maps a memfd the guest passed, of at least `declared` bytes.
    pub fn from_memfd(fd: OwnedFd, declared: u64) -> Result<Region, String> {
        check_sealed(&fd)?;
        if declared > MAX_MEMFD_REGION {
            return Err(format!(
                "a memfd region of {declared} bytes is larger than the {MAX_MEMFD_REGION} this daemon maps"
            ));
        }
        let size = File::from(fd.try_clone().map_err(|e| e.to_string())?)
            .metadata()
            .map_err(|e| format!("cannot stat the memfd: {e}"))?
            .len();
        if size < declared {
            return Err(format!(
                "the memfd has {size} bytes, the offer says {declared}"
            ));
        }
        Region::map(&fd, declared, "memfd".into())
    }

    /// Maps the file the operator bound to this guest, whole.
    pub fn from_file(path: &Path) -> Result<Region, String> {
        let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let meta = file
            .metadata()
            .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
        if !meta.is_file() {
            return Err(format!("{} is not a regular file", path.display()));
        }
        Region::map(&file, meta.len(), path.display().to_string())
    }

    fn map<F: AsFd>(fd: &F, len: u64, name: String) -> Result<Region, String> {
        let len = usize::try_from(len).map_err(|_| format!("{name}: {len} bytes do not fit"))?;
        let n = NonZeroUsize::new(len).ok_or_else(|| format!("{name} is empty"))?;
        // SAFETY: a fresh shared read-only mapping of a whole file; nothing
        // else refers to the address range.
        let ptr = unsafe { mmap(None, n, ProtFlags::PROT_READ, MapFlags::MAP_SHARED, fd, 0) }
            .map_err(|e| format!("cannot map {name} ({len} bytes): {e}"))?;
        Ok(Region {
            ptr: ptr.cast(),
            len,
            name,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The header the guest wrote at offset 0, if any.
    pub fn header(&self) -> Option<RegionHeader> {
        if self.len < REGION_HEADER_LEN {
            return None;
        }
        let mut b = [0u8; REGION_HEADER_LEN];
        // SAFETY: inside the mapping; a volatile-free copy is fine since a
        // guest racing with it only spoils its own handshake.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr(), b.as_mut_ptr(), b.len()) };
        RegionHeader::parse(&b)
    }

    /// Whether this mapping shows the header the guest's offer announces:
    /// the proof that both sides see the same memory.
    pub fn verify(&self, offer: &ShmOffer) -> Result<(), String> {
        if offer.region_size > self.len as u64 {
            return Err(format!(
                "the guest's region has {} bytes, {} has {}",
                offer.region_size, self.name, self.len
            ));
        }
        match self.header() {
            Some(h) if h.nonce == offer.nonce && h.region_size == offer.region_size => Ok(()),
            Some(_) => Err(format!(
                "{} holds another region header than the guest announced: it is not the memory this guest sees",
                self.name
            )),
            None => Err(format!(
                "{} holds no region header: it is not the memory this guest sees",
                self.name
            )),
        }
    }

    /// `len` bytes at `offset`, which the caller checked lie inside.
    ///
    /// # Safety
    /// `offset + len <= self.len()`. The guest may change the bytes at any
    /// time: the slice must only be read as pixels (never trusted for
    /// lengths or offsets).
    pub unsafe fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        debug_assert!(offset + len <= self.len);
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(offset), len) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`; every buffer that pointed into
        // it held an `Arc` of this region and is gone.
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn check_sealed(fd: &OwnedFd) -> Result<(), String> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    let seals = fcntl(fd, FcntlArg::F_GET_SEALS)
        .map_err(|e| format!("the descriptor passed is not a sealable memfd ({e})"))?;
    if !SealFlag::from_bits_retain(seals).contains(SealFlag::F_SEAL_SHRINK) {
        return Err("the memfd is not sealed against shrinking (F_SEAL_SHRINK)".into());
    }
    Ok(())
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn check_sealed(_fd: &OwnedFd) -> Result<(), String> {
    Err("memfd regions exist only on Linux hosts".into())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MFdFlags};

    fn memfd(len: u64, seal: bool) -> OwnedFd {
        let fd = memfd_create("t", MFdFlags::MFD_ALLOW_SEALING).unwrap();
        nix::unistd::ftruncate(&fd, len as i64).unwrap();
        if seal {
            fcntl(&fd, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK)).unwrap();
        }
        fd
    }

    #[test]
    fn an_unsealed_memfd_is_refused() {
        let e = Region::from_memfd(memfd(8192, false), 8192).err().unwrap();
        assert!(e.contains("F_SEAL_SHRINK"), "{e}");
        let e = Region::from_memfd(memfd(8192, true), 9000).err().unwrap();
        assert!(e.contains("8192 bytes, the offer says 9000"), "{e}");
    }

    #[test]
    fn the_header_proves_the_region() {
        let fd = memfd(8192, true);
        let h = RegionHeader {
            region_size: 8192,
            nonce: [9; 16],
        };
        nix::sys::uio::pwrite(&fd, &h.to_bytes(), 0).unwrap();
        let r = Region::from_memfd(fd, 8192).unwrap();
        let offer = ShmOffer {
            token: 1,
            kind: hxfr::shm::RegionKind::Memfd,
            region_size: 8192,
            nonce: [9; 16],
        };
        assert_eq!(r.verify(&offer), Ok(()));
        let wrong = ShmOffer {
            nonce: [8; 16],
            ..offer
        };
        assert!(r
            .verify(&wrong)
            .unwrap_err()
            .contains("another region header"));
    }
}
