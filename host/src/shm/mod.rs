//! Shared-memory frames on the daemon's side (extension SHM, see
//! `hxfr::shm`): which region a connection may use, the handshake that
//! proves it, the checks of every slot description, and the slot wrapped
//! in a GStreamer buffer without a copy, given back to the guest only when
//! that buffer is freed.
//!
//! * `binding.rs`: `--ivshmem`, which file belongs to which guest.
//! * `region.rs`: the read-only mapping and its checks.
//! * `slots.rs`: the slots a connection holds.
//! * `frame.rs`: a checked slot as a buffer for the encoder, and its
//!   release.
//! * `release.rs`: the thread that sends SHM_RELEASE.

mod binding;
mod frame;
mod region;
pub mod release;
mod slots;

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use hxfr::ext::ext_bits;
use hxfr::shm::{RegionKind, ShmAck, ShmFrame, ShmOffer, ShmRelease};

pub use binding::{Binding, Bindings};
pub use frame::SlotFrame;
use region::Region;
use slots::HeldSlots;

/// What one connection may use.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// A Unix socket: the guest can pass a memfd.
    pub fd_passing: bool,
    /// The file the operator bound to this guest, if any.
    pub bound: Option<PathBuf>,
}

/// The shared-memory state of one connection.
pub struct HostShm {
    access: Access,
    /// The region in use, once an offer was accepted.
    region: Option<Arc<Region>>,
    held: Arc<Mutex<HeldSlots>>,
    /// Where the SHM_RELEASE of a freed slot goes (the connection's
    /// release writer), once a region was accepted.
    releases: Option<Sender<ShmRelease>>,
}

impl HostShm {
    pub fn new(access: Access) -> HostShm {
        HostShm {
            access,
            region: None,
            held: Arc::default(),
            releases: None,
        }
    }

    /// The extension bit this connection can honour (0: none).
    pub fn supported(&self) -> u32 {
        if self.access.fd_passing || self.access.bound.is_some() {
            ext_bits::SHM
        } else {
            0
        }
    }

    /// Whether a release writer must be started before frames are taken.
    pub fn needs_release_writer(&self) -> bool {
        self.releases.is_none()
    }

    pub fn set_release_writer(&mut self, tx: Sender<ShmRelease>) {
        self.releases = Some(tx);
    }

    /// Answers an SHM_OFFER; `fd` is the descriptor that came with it, if
    /// any. On acceptance the region replaces the previous one (slots of
    /// the old one stay held until their buffers are freed).
    pub fn on_offer(&mut self, offer: &ShmOffer, fd: Option<OwnedFd>) -> ShmAck {
        let result = self.map(offer, fd).and_then(|r| {
            r.verify(offer)?;
            Ok(r)
        });
        match result {
            Ok(r) => {
                self.region = Some(Arc::new(r));
                ShmAck {
                    token: offer.token,
                    accepted: true,
                    reason: String::new(),
                }
            }
            Err(reason) => ShmAck {
                token: offer.token,
                accepted: false,
                reason,
            },
        }
    }

    fn map(&self, offer: &ShmOffer, fd: Option<OwnedFd>) -> Result<Region, String> {
        match offer.kind {
            RegionKind::Memfd => {
                if !self.access.fd_passing {
                    return Err("memfd regions need a Unix socket connection".into());
                }
                let fd = fd.ok_or("no descriptor came with the memfd offer")?;
                Region::from_memfd(fd, offer.region_size)
            }
            RegionKind::Bound => {
                let path = self.access.bound.as_ref().ok_or(
                    "no region is bound to this guest on the host (vsockenc-host --ivshmem)",
                )?;
                Region::from_file(path)
            }
        }
    }

    /// Describes the region in use, for log lines.
    pub fn describe(&self) -> Option<String> {
        self.region
            .as_ref()
            .map(|r| format!("{} of {} MiB", r.name, r.len() >> 20))
    }

    /// Checks frame `index` and takes its slot. `Err` says what is wrong;
    /// nothing else changes then.
    pub fn take_frame(
        &mut self,
        f: &ShmFrame,
        index: u32,
        formats: bool,
    ) -> Result<SlotFrame, String> {
        let Some(region) = &self.region else {
            return Err("no shared-memory region was accepted on this connection".into());
        };
        let layout = f
            .validate(region.len() as u64, formats)
            .map_err(|e| e.to_string())?;
        self.held.lock().unwrap().take(f.slot, index)?;
        let release = frame::Release {
            slot: f.slot,
            held: self.held.clone(),
            to: self.releases.clone(),
        };
        Ok(SlotFrame::new(region.clone(), layout, release))
    }
}
