//! Ranges of a region handed out as slots: first fit, page aligned, so a
//! mix of frame sizes (a caps change, pool buffers next to copy slots)
//! shares one region without a fixed geometry.

/// Slots start on page boundaries.
pub const ALIGN: usize = 4096;

/// The free and used bytes of `start..end`.
#[derive(Debug)]
pub struct Ranges {
    start: usize,
    end: usize,
    /// Ranges in use, sorted by start.
    used: Vec<(usize, usize)>,
}

impl Ranges {
    pub fn new(start: usize, end: usize) -> Ranges {
        Ranges {
            start: start.next_multiple_of(ALIGN),
            end,
            used: Vec::new(),
        }
    }

    /// The first free range of `len` bytes (rounded up to [`ALIGN`]).
    pub fn alloc(&mut self, len: usize) -> Option<(usize, usize)> {
        let len = len.max(1).checked_next_multiple_of(ALIGN)?;
        let mut at = self.start;
        let mut pos = 0;
        for (i, &(s, e)) in self.used.iter().enumerate() {
            if s >= at && s - at >= len {
                break;
            }
            at = at.max(e);
            pos = i + 1;
        }
        let end = at.checked_add(len)?;
        if end > self.end {
            return None;
        }
        self.used.insert(pos, (at, end));
        Some((at, end))
    }

    pub fn free(&mut self, range: (usize, usize)) {
        if let Some(i) = self.used.iter().position(|r| *r == range) {
            self.used.remove(i);
        }
    }

    /// Bytes in use.
    pub fn used(&self) -> usize {
        self.used.iter().map(|(s, e)| e - s).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_reuses_freed_ranges_and_stops_at_the_end() {
        let mut r = Ranges::new(100, 5 * ALIGN);
        let a = r.alloc(10).unwrap();
        assert_eq!(a, (ALIGN, 2 * ALIGN));
        let b = r.alloc(ALIGN + 1).unwrap();
        assert_eq!(b, (2 * ALIGN, 4 * ALIGN));
        assert_eq!(r.alloc(2 * ALIGN), None, "only one page left");
        let c = r.alloc(ALIGN).unwrap();
        assert_eq!(c, (4 * ALIGN, 5 * ALIGN));
        r.free(a);
        assert_eq!(r.alloc(ALIGN), Some(a), "the hole is reused");
        r.free(b);
        assert_eq!(r.used(), 2 * ALIGN);
        assert_eq!(r.alloc(2 * ALIGN), Some(b));
        assert_eq!(r.alloc(usize::MAX), None);
    }
}
