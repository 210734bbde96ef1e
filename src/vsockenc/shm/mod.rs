//! Shared-memory frames on the element's side (extension SHM, see
//! `hxfr::shm` and `docs/protocol.md`): the region, the pool of slots
//! offered upstream, the per-connection handshake and the slots the host
//! holds, and how a frame is described instead of sent.
//!
//! * `region.rs`: the memfd or ivshmem device, its header and slots.
//! * `alloc.rs`: ranges of the region (first fit).
//! * `pool.rs`: the buffer pool for upstream (`propose_allocation`).
//! * `link.rs`: one connection's offer and held slots.
//! * `place.rs`: a frame as a slot description: zero-copy when upstream
//!   wrote into the region, else copied once into a slot.

mod alloc;
mod link;
mod place;
mod pool;
mod region;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use link::{Offer, ShmLink};
pub use place::{place, InputPlane, Placed};
pub use pool::pool;
pub use region::Region;

use super::settings::Settings;
use super::transport::Address;

/// The shared memory of one run of the element (start to stop).
#[derive(Default)]
pub struct GuestShm {
    pub region: Option<Arc<Region>>,
    /// Why there is none, for the one log line.
    pub unavailable: Option<String>,
    /// The fallback to the socket path was logged.
    reported: AtomicBool,
}

impl GuestShm {
    /// The region for a connection to `addr`: a memfd over a Unix socket
    /// (unless `shm-device` names a device), the ivshmem device otherwise.
    pub fn open(settings: &Settings, addr: &Address) -> GuestShm {
        if !settings.shared_memory || !settings.extensions {
            return GuestShm {
                unavailable: Some("shared-memory=false".into()),
                ..Default::default()
            };
        }
        let device = settings.shm_device.as_deref().filter(|d| !d.is_empty());
        let r = match (addr, device) {
            (Address::Unix(_), None) => Region::memfd(region::MEMFD_SIZE),
            (_, device) => Region::device(device),
        };
        match r {
            Ok(r) => GuestShm {
                region: Some(Arc::new(r)),
                ..Default::default()
            },
            Err(why) => GuestShm {
                unavailable: Some(why),
                ..Default::default()
            },
        }
    }

    /// The extension bit to ask for.
    pub fn requested(&self) -> u32 {
        if self.region.is_some() {
            hxfr::ext::ext_bits::SHM
        } else {
            0
        }
    }

    /// True the first time only: the fallback is logged once per run.
    pub fn first_fallback(&self) -> bool {
        !self.reported.swap(true, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hxfr::ext::ext_bits;

    #[test]
    fn the_region_follows_the_settings_and_the_transport() {
        let unix = Address::Unix("/run/x.sock".into());
        let on = GuestShm::open(&Settings::default(), &unix);
        let r = on.region.as_ref().expect("a memfd over a Unix socket");
        assert_eq!(r.name, "memfd");
        assert_eq!(on.requested(), ext_bits::SHM);
        for s in [
            Settings {
                shared_memory: false,
                ..Settings::default()
            },
            Settings {
                extensions: false,
                ..Settings::default()
            },
        ] {
            let off = GuestShm::open(&s, &unix);
            assert!(off.region.is_none());
            assert_eq!(off.requested(), 0);
        }
        // Over TCP it needs a device: a file that is not there is named.
        let tcp = Address::Tcp {
            host: "10.0.2.2".into(),
            port: 15937,
        };
        let missing = GuestShm::open(
            &Settings {
                shm_device: Some("/nonexistent/resource2".into()),
                ..Settings::default()
            },
            &tcp,
        );
        assert!(missing.region.is_none());
        assert!(
            missing
                .unavailable
                .as_deref()
                .unwrap()
                .contains("/nonexistent/resource2"),
            "{:?}",
            missing.unavailable
        );
        assert!(missing.first_fallback());
        assert!(!missing.first_fallback(), "logged once");
    }
}
