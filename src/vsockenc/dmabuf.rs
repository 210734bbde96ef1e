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
use std::path::PathBuf;

/// `DRM_IOCTL_BASE`, and the numbers of `<drm/drm.h>` and
/// `<drm/virtgpu_drm.h>` (driver ioctls start at `DRM_COMMAND_BASE`).
const DRM_IOCTL_BASE: u8 = b'd';
const DRM_COMMAND_BASE: u8 = 0x40;
const NR_GEM_CLOSE: u8 = 0x09;
const NR_PRIME_FD_TO_HANDLE: u8 = 0x2e;
const NR_VIRTGPU_RESOURCE_INFO: u8 = DRM_COMMAND_BASE + 0x05;

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

// nix builds each request code from the struct it passes, so the number
// and the argument cannot disagree.
nix::ioctl_readwrite!(
    drm_prime_fd_to_handle,
    DRM_IOCTL_BASE,
    NR_PRIME_FD_TO_HANDLE,
    DrmPrimeHandle
);
nix::ioctl_readwrite!(
    drm_virtgpu_resource_info,
    DRM_IOCTL_BASE,
    NR_VIRTGPU_RESOURCE_INFO,
    DrmVirtgpuResourceInfo
);
nix::ioctl_write_ptr!(drm_gem_close, DRM_IOCTL_BASE, NR_GEM_CLOSE, DrmGemClose);

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
        let mut info = DrmVirtgpuResourceInfo::default();
        // SAFETY: each ioctl gets a live, exclusively borrowed instance of
        // the repr(C) struct its request code was built from (the sizes are
        // pinned to the kernel's numbers by a test), on an open DRM node;
        // the kernel touches nothing else. No safe wrapper exists: the
        // `drm` crate covers PRIME and GEM_CLOSE but not virtio-gpu's
        // RESOURCE_INFO, and nix only generates the raw-pointer calls.
        let res = unsafe {
            drm_prime_fd_to_handle(node, &mut prime)?;
            info.bo_handle = prime.handle;
            let res = drm_virtgpu_resource_info(node, &mut info);
            let close = DrmGemClose {
                handle: prime.handle,
                pad: 0,
            };
            let _ = drm_gem_close(node, &close);
            res
        };
        res?;
        if info.res_handle == 0 {
            return Err(io::Error::other("virtio-gpu reported resource id 0"));
        }
        Ok(info.res_handle)
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
        // std opens every file with O_CLOEXEC.
        return OpenOptions::new().read(true).write(true).open(&dev);
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
        use std::mem::size_of;
        // The codes the generated functions use, against <drm/drm.h> and
        // <drm/virtgpu_drm.h> on x86_64 and arm64.
        let prime = nix::request_code_readwrite!(
            DRM_IOCTL_BASE,
            NR_PRIME_FD_TO_HANDLE,
            size_of::<DrmPrimeHandle>()
        );
        let close =
            nix::request_code_write!(DRM_IOCTL_BASE, NR_GEM_CLOSE, size_of::<DrmGemClose>());
        let info = nix::request_code_readwrite!(
            DRM_IOCTL_BASE,
            NR_VIRTGPU_RESOURCE_INFO,
            size_of::<DrmVirtgpuResourceInfo>()
        );
        assert_eq!(prime as u64, 0xc00c_642e);
        assert_eq!(close as u64, 0x4008_6409);
        assert_eq!(info as u64, 0xc010_6445);
    }

    #[test]
    fn a_memfd_is_not_a_virtio_gpu_resource() {
        let mut l = ResourceLookup::default();
        let f = File::open("/proc/self/exe").unwrap();
        assert!(l.resource_id(f.as_raw_fd()).is_err());
    }
}
