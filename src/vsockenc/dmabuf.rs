//! virtio-gpu resource ids for DMA-BUF input.
//!
//! Inside a VM whose display is virtio-gpu, a DMA-BUF is backed by a host
//! resource the host can read directly; sending its id instead of the pixels
//! saves copying a whole frame through the socket. The lookup is the legacy
//! guest's: `DRM_IOCTL_PRIME_FD_TO_HANDLE` on a virtio-gpu render node turns
//! the DMA-BUF into a GEM handle, `DRM_IOCTL_VIRTGPU_RESOURCE_INFO` gives its
//! `res_handle`, `DRM_IOCTL_GEM_CLOSE` releases the handle. The render node
//! is opened once and cached. Any failure makes the caller send pixels.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

const DRM_IOCTL_BASE: u64 = b'd' as u64;
const DRM_COMMAND_BASE: u64 = 0x40;

const fn iowr(nr: u64, size: u64) -> u64 {
    (3 << 30) | (size << 16) | (DRM_IOCTL_BASE << 8) | nr
}

const fn iow(nr: u64, size: u64) -> u64 {
    (1 << 30) | (size << 16) | (DRM_IOCTL_BASE << 8) | nr
}

#[repr(C)]
#[derive(Default)]
struct DrmPrimeHandle {
    handle: u32,
    flags: u32,
    fd: i32,
}

#[repr(C)]
#[derive(Default)]
struct DrmGemClose {
    handle: u32,
    pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct DrmVirtgpuResourceInfo {
    bo_handle: u32,
    res_handle: u32,
    size: u32,
    blob_mem: u32,
}

const DRM_IOCTL_PRIME_FD_TO_HANDLE: u64 = iowr(0x2e, std::mem::size_of::<DrmPrimeHandle>() as u64);
const DRM_IOCTL_GEM_CLOSE: u64 = iow(0x09, std::mem::size_of::<DrmGemClose>() as u64);
const DRM_IOCTL_VIRTGPU_RESOURCE_INFO: u64 = iowr(
    DRM_COMMAND_BASE + 0x05,
    std::mem::size_of::<DrmVirtgpuResourceInfo>() as u64,
);

/// Caches the virtio-gpu render node between frames.
#[derive(Debug, Default)]
pub struct ResourceLookup {
    node: Option<File>,
    /// Set after the first failure so the caller logs it once.
    pub failure_reported: bool,
}

impl ResourceLookup {
    /// The virtio-gpu resource id behind a DMA-BUF.
    pub fn resource_id(&mut self, dmabuf_fd: RawFd) -> io::Result<u32> {
        if self.node.is_none() {
            self.node = Some(open_virtio_render_node()?);
        }
        let node = self.node.as_ref().unwrap().as_raw_fd();
        let mut prime = DrmPrimeHandle {
            fd: dmabuf_fd,
            ..Default::default()
        };
        ioctl(node, DRM_IOCTL_PRIME_FD_TO_HANDLE, &mut prime)?;
        let mut info = DrmVirtgpuResourceInfo {
            bo_handle: prime.handle,
            ..Default::default()
        };
        let res = ioctl(node, DRM_IOCTL_VIRTGPU_RESOURCE_INFO, &mut info);
        let mut close = DrmGemClose {
            handle: prime.handle,
            pad: 0,
        };
        let _ = ioctl(node, DRM_IOCTL_GEM_CLOSE, &mut close);
        res?;
        if info.res_handle == 0 {
            return Err(io::Error::other("virtio-gpu reported resource id 0"));
        }
        Ok(info.res_handle)
    }
}

fn ioctl<T>(fd: RawFd, req: u64, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` is the repr(C) struct the request number encodes.
    let r = unsafe { libc::ioctl(fd, req as _, arg as *mut T) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The first DRM render node whose driver is virtio_gpu.
fn open_virtio_render_node() -> io::Result<File> {
    let mut nodes: Vec<PathBuf> = std::fs::read_dir("/sys/class/drm")
        .map_err(|e| io::Error::new(e.kind(), format!("no DRM devices ({e})")))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("renderD"))
        })
        .collect();
    nodes.sort();
    for sys in nodes {
        let driver = std::fs::read_link(sys.join("device/driver")).ok();
        let is_virtio = driver
            .as_ref()
            .and_then(|d| d.file_name())
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.contains("virtio"));
        if !is_virtio {
            continue;
        }
        let dev = PathBuf::from("/dev/dri").join(sys.file_name().unwrap());
        return OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&dev);
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "no virtio-gpu render node (not a virtio-gpu VM)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        assert_eq!(DRM_IOCTL_PRIME_FD_TO_HANDLE, 0xc00c_642e);
        assert_eq!(DRM_IOCTL_GEM_CLOSE, 0x4008_6409);
        assert_eq!(DRM_IOCTL_VIRTGPU_RESOURCE_INFO, 0xc010_6445);
    }

    #[test]
    fn a_memfd_is_not_a_virtio_gpu_resource() {
        let mut l = ResourceLookup::default();
        let f = File::open("/proc/self/exe").unwrap();
        assert!(l.resource_id(f.as_raw_fd()).is_err());
    }
}
