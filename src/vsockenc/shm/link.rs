//! One connection's shared memory: whether the host took the region, and
//! the slots it holds. A slot comes back (its buffer returns to upstream's
//! pool, or its range to the region) when the host's SHM_RELEASE names it,
//! or when the connection ends.

use std::collections::HashMap;
use std::sync::Arc;

use super::region::{Region, Slot};

/// Where the offer of the region stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Not sent (the host has not accepted SHM, or there is no region).
    None,
    Sent(u64),
    Accepted,
    Refused,
}

/// What keeps a slot's pixels from being overwritten while the host reads
/// them (held for its `Drop` alone).
#[allow(dead_code)]
pub enum Held {
    /// Upstream's buffer, a slot of the pool: back to the pool on release.
    Buffer(gst::Buffer),
    /// A range the frame was copied into.
    Copy(Slot),
}

pub struct ShmLink {
    pub region: Option<Arc<Region>>,
    pub offer: Offer,
    held: HashMap<u32, Held>,
    next_slot: u32,
}

impl ShmLink {
    pub fn new(region: Option<Arc<Region>>) -> ShmLink {
        ShmLink {
            region,
            offer: Offer::None,
            held: HashMap::new(),
            next_slot: 0,
        }
    }

    /// The region frames may use now.
    pub fn usable(&self) -> Option<&Arc<Region>> {
        self.region
            .as_ref()
            .filter(|_| self.offer == Offer::Accepted)
    }

    /// Records a slot handed to the host; returns its id.
    pub fn hold(&mut self, held: Held) -> u32 {
        let id = self.next_slot;
        self.next_slot = self.next_slot.wrapping_add(1);
        self.held.insert(id, held);
        id
    }

    /// The host gave slot `id` back.
    pub fn release(&mut self, id: u32) -> Option<Held> {
        self.held.remove(&id)
    }

    /// Slots the host holds now.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The connection ended: every slot comes back.
    pub fn clear(&mut self) -> Vec<Held> {
        self.held.drain().map(|(_, h)| h).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_come_back_by_id_once() {
        gst::init().unwrap();
        let region = Arc::new(Region::memfd(1 << 20).unwrap());
        let mut l = ShmLink::new(Some(region.clone()));
        assert!(l.usable().is_none(), "not before the host accepted it");
        l.offer = Offer::Accepted;
        assert!(l.usable().is_some());
        let a = l.hold(Held::Copy(region.alloc(100).unwrap()));
        let b = l.hold(Held::Buffer(gst::Buffer::new()));
        assert_ne!(a, b);
        assert_eq!(region.used(), 4096);
        assert!(l.release(a).is_some());
        assert!(l.release(a).is_none());
        assert_eq!(region.used(), 0, "the copy's range is free again");
        assert_eq!(l.held(), 1);
        assert_eq!(l.clear().len(), 1);
    }
}
