//! The slots a connection's guest has handed to the daemon and not got
//! back yet. A slot is held from the SHM_FRAME that names it until the
//! buffer that wrapped it is freed; while held, its id cannot be named
//! again. Slots may overlap: the daemon only reads them, and a guest that
//! sends one picture twice (a frozen image, a repeated frame) need not
//! copy it.

use std::collections::HashMap;

/// Most slots one connection may have held at once: more frames than any
/// encoder keeps in flight.
pub const MAX_HELD: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    frame_index: u32,
}

#[derive(Debug, Default)]
pub struct HeldSlots {
    held: HashMap<u32, Held>,
}

impl HeldSlots {
    /// Takes slot `slot` for frame `frame_index`; `Err` says why it cannot
    /// be taken, and nothing changes.
    pub fn take(&mut self, slot: u32, frame_index: u32) -> Result<(), String> {
        if let Some(h) = self.held.get(&slot) {
            return Err(format!(
                "slot {slot} is still held by frame {} (wait for its SHM_RELEASE)",
                h.frame_index
            ));
        }
        if self.held.len() >= MAX_HELD {
            return Err(format!(
                "{MAX_HELD} slots are held already (wait for their SHM_RELEASE)"
            ));
        }
        self.held.insert(slot, Held { frame_index });
        Ok(())
    }

    /// Gives slot `slot` back; the frame index that held it.
    pub fn release(&mut self, slot: u32) -> Option<u32> {
        self.held.remove(&slot).map(|h| h.frame_index)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_slots_cannot_be_named_again() {
        let mut s = HeldSlots::default();
        s.take(1, 10).unwrap();
        let e = s.take(1, 11).unwrap_err();
        assert!(e.contains("slot 1 is still held by frame 10"), "{e}");
        s.take(2, 11).unwrap();
        assert_eq!(s.release(1), Some(10));
        assert_eq!(s.release(1), None);
        s.take(1, 13).unwrap();
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn held_slots_are_bounded() {
        let mut s = HeldSlots::default();
        for i in 0..MAX_HELD as u32 {
            s.take(i, i).unwrap();
        }
        assert!(s.take(999, 0).unwrap_err().contains("held already"));
    }
}
