//! The slots a connection's guest has handed to the daemon and not got
//! back yet. A slot is held from the SHM_FRAME that names it until the
//! buffer that wrapped it is freed; while held, its id cannot be named
//! again and no other slot of the same region may overlap it.

use std::collections::HashMap;

/// Most slots one connection may have held at once: more frames than any
/// encoder keeps in flight.
pub const MAX_HELD: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    /// Which region of the connection (a new offer starts a new one).
    region: u32,
    start: usize,
    end: usize,
    frame_index: u32,
}

#[derive(Debug, Default)]
pub struct HeldSlots {
    held: HashMap<u32, Held>,
}

impl HeldSlots {
    /// Takes slot `slot` (`start..end` of region `region`) for frame
    /// `frame_index`; `Err` says why it cannot be taken, and nothing changes.
    pub fn take(
        &mut self,
        slot: u32,
        region: u32,
        (start, end): (usize, usize),
        frame_index: u32,
    ) -> Result<(), String> {
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
        if let Some((other, h)) = self
            .held
            .iter()
            .find(|(_, h)| h.region == region && h.start < end && start < h.end)
        {
            return Err(format!(
                "slot {slot} (bytes {start}..{end}) overlaps slot {other} (bytes {}..{}), still held by frame {}",
                h.start, h.end, h.frame_index
            ));
        }
        self.held.insert(
            slot,
            Held {
                region,
                start,
                end,
                frame_index,
            },
        );
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
    fn held_slots_cannot_be_named_again_or_overlapped() {
        let mut s = HeldSlots::default();
        s.take(1, 0, (4096, 8192), 10).unwrap();
        let e = s.take(1, 0, (20000, 30000), 11).unwrap_err();
        assert!(e.contains("slot 1 is still held by frame 10"), "{e}");
        let e = s.take(2, 0, (8000, 9000), 11).unwrap_err();
        assert!(e.contains("overlaps slot 1"), "{e}");
        // Another region may use the same bytes.
        s.take(2, 1, (4096, 8192), 11).unwrap();
        s.take(3, 0, (8192, 9000), 12).unwrap();
        assert_eq!(s.release(1), Some(10));
        assert_eq!(s.release(1), None);
        s.take(1, 0, (4096, 8192), 13).unwrap();
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn held_slots_are_bounded() {
        let mut s = HeldSlots::default();
        for i in 0..MAX_HELD as u32 {
            s.take(i, 0, (i as usize * 10, i as usize * 10 + 10), i)
                .unwrap();
        }
        assert!(s
            .take(999, 1, (0, 1), 0)
            .unwrap_err()
            .contains("held already"));
    }
}
