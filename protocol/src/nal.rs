//! Normalising the NAL chunks of a FRAME_RESPONSE to Annex-B.
//!
//! Hosts differ: the current helix host sends one chunk holding the whole
//! access unit with start codes; an older one sent VideoToolbox's AVCC form
//! (4-byte big-endian lengths); a sloppy one may send bare NAL units. Each
//! chunk is kept if it starts with a start code, converted if it parses
//! exactly as a length-prefixed sequence, and otherwise prefixed with a start
//! code as one bare NAL unit.
//!
//! Some byte strings are valid in two of these forms; the order of the checks
//! in [`normalize_chunk`] settles them:
//!
//! * `00 00 00 01 …` is a 4-byte start code, or an AVCC chunk whose first NAL
//!   unit is one byte long. Only end-of-sequence/end-of-stream NAL units are
//!   one byte, and they never open an access unit, so this is Annex-B.
//! * `00 00 01 …` is a 3-byte start code, or an AVCC chunk whose first NAL
//!   unit is 256 to 511 bytes long (a small P slice: common on a static
//!   desktop). No known host sends 3-byte start codes, so such a chunk is
//!   AVCC when it parses exactly as AVCC with every NAL header's forbidden
//!   bit clear, and Annex-B otherwise.
//! * A bare NAL unit starts with its header byte (non-zero), so read as AVCC
//!   its first length would be at least 16 MiB: it never parses as AVCC
//!   unless the chunk is that large, and never looks like a start code.

/// The 4-byte Annex-B start code.
pub const START_CODE: [u8; 4] = [0, 0, 0, 1];

/// Whether `b` begins with a 3- or 4-byte start code.
pub fn starts_with_start_code(b: &[u8]) -> bool {
    b.starts_with(&[0, 0, 1]) || b.starts_with(&START_CODE)
}

/// Whether `chunk` is exactly a sequence of 4-byte big-endian
/// length-prefixed, non-empty NAL units.
pub fn is_avcc(chunk: &[u8]) -> bool {
    let mut rest = chunk;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        if rest.len() < 4 {
            return false;
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len == 0 || len > rest.len() - 4 {
            return false;
        }
        rest = &rest[4 + len..];
    }
    true
}

/// Appends `chunk` to `out` in Annex-B form. Empty chunks add nothing.
pub fn normalize_chunk(chunk: &[u8], out: &mut Vec<u8>) {
    if chunk.is_empty() {
        return;
    }
    let avcc = if chunk.starts_with(&START_CODE) {
        false
    } else if chunk.starts_with(&[0, 0, 1]) {
        is_avcc(chunk) && avcc_headers_plausible(chunk)
    } else {
        is_avcc(chunk)
    };
    if avcc {
        let mut rest = chunk;
        while !rest.is_empty() {
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            out.extend_from_slice(&START_CODE);
            out.extend_from_slice(&rest[4..4 + len]);
            rest = &rest[4 + len..];
        }
    } else if starts_with_start_code(chunk) {
        out.extend_from_slice(chunk);
    } else {
        out.extend_from_slice(&START_CODE);
        out.extend_from_slice(chunk);
    }
}

/// Whether every NAL unit of an AVCC `chunk` (already checked with
/// [`is_avcc`]) has its forbidden_zero_bit clear, as real NAL headers do.
fn avcc_headers_plausible(chunk: &[u8]) -> bool {
    let mut rest = chunk;
    while rest.len() > 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if rest[4] & 0x80 != 0 {
            return false;
        }
        rest = &rest[4 + len..];
    }
    true
}

/// Splits an Annex-B byte stream into its NAL units (without start codes).
pub fn split_annexb(au: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= au.len() {
        if au[i] == 0 && au[i + 1] == 0 && au[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut nals = Vec::with_capacity(starts.len());
    for (k, &s) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map(|&n| n - 3).unwrap_or(au.len());
        // A 4-byte start code leaves a zero byte that belongs to the next
        // start code, not to this NAL unit.
        while end > s && k + 1 < starts.len() && au[end - 1] == 0 {
            end -= 1;
        }
        nals.push(&au[s..end]);
    }
    nals
}

/// H.264 `nal_unit_type` of each NAL unit of an Annex-B access unit.
pub fn nal_types(au: &[u8]) -> Vec<u8> {
    split_annexb(au)
        .into_iter()
        .filter(|n| !n.is_empty())
        .map(|n| n[0] & 0x1f)
        .collect()
}

/// Whether an Annex-B access unit holds an IDR slice (type 5).
pub fn has_idr(au: &[u8]) -> bool {
    nal_types(au).contains(&5)
}
