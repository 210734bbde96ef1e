//! Normalising the NAL chunks of a FRAME_RESPONSE to Annex-B, and reading
//! what a guest needs from an access unit: whether it holds an IDR slice
//! ([`has_idr`]) and its sequence parameter set ([`first_sps`], [`Sps`]).
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

use crate::profile::{Level, Profile};

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

/// The offset just after the next start code (`00 00 01`) at or after
/// `from`.
fn next_start(au: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i + 3 <= au.len() {
        match au[i + 2] {
            // `00 00 01` ends here.
            1 if au[i] == 0 && au[i + 1] == 0 => return Some(i + 3),
            // A byte that cannot be in the middle of a start code lets the
            // search skip ahead.
            0 => i += 1,
            _ => i += 3,
        }
    }
    None
}

/// The NAL units of an Annex-B access unit before its first slice, and
/// that slice's first `header_len` bytes (the slice is recognised by
/// `is_slice`, given the NAL unit from its header on): what a caller looking
/// for parameter sets or the picture type needs, found without scanning
/// the slice data (most of an access unit). Serves H.264 here and H.265
/// (`crate::h265::up_to_first_slice`): only the NAL header differs.
pub(crate) fn up_to_first_slice<'a>(
    au: &'a [u8],
    header_len: usize,
    is_slice: impl Fn(&[u8]) -> bool + 'a,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut next = next_start(au, 0);
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let s = next?;
        let nal = au.get(s..).filter(|n| !n.is_empty())?;
        if is_slice(nal) {
            // A slice: report its header only, and stop.
            done = true;
            return Some(&nal[..header_len.min(nal.len())]);
        }
        next = next_start(au, s);
        let mut end = next.map_or(au.len(), |n| n - 3);
        while end > s && next.is_some() && au[end - 1] == 0 {
            end -= 1;
        }
        Some(&au[s..end])
    })
}

/// [`up_to_first_slice`] for H.264: a slice is NAL type 1 or 5, its header
/// one byte.
fn before_first_slice(au: &[u8]) -> impl Iterator<Item = &[u8]> + '_ {
    up_to_first_slice(au, 1, |n| matches!(n[0] & 0x1f, 1 | 5))
}

/// Whether an Annex-B access unit holds an IDR slice (type 5). All slices
/// of a picture are IDR or none are, so the first slice decides; the slice
/// data is not scanned.
pub fn has_idr(au: &[u8]) -> bool {
    before_first_slice(au).any(|n| n.first().is_some_and(|h| h & 0x1f == 5))
}

/// The RBSP of a NAL unit: its bytes with every emulation prevention byte
/// (the `03` of `00 00 03`) removed. Borrows when there is none.
pub fn rbsp(nal: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let escaped = nal.windows(3).any(|w| w == [0, 0, 3]);
    if !escaped {
        return std::borrow::Cow::Borrowed(nal);
    }
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    std::borrow::Cow::Owned(out)
}

/// What `vsockenc` and `vsockenc-host` read from a sequence parameter set:
/// the profile and level (for caps and profile negotiation) and the chroma
/// format and bit depths (to tell a 4:2:0 8-bit stream from others).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sps {
    /// `profile_idc` and the `constraint_set` flags byte.
    pub profile: Profile,
    /// `level_idc` as written; see [`Sps::level`] for the level it means.
    pub level_idc: u8,
    pub sps_id: u32,
    /// 0 monochrome, 1 4:2:0, 2 4:2:2, 3 4:4:4 (1 unless a High-family
    /// profile says otherwise).
    pub chroma_format_idc: u32,
    pub bit_depth_luma: u8,
    pub bit_depth_chroma: u8,
}

/// profile_idc values whose SPS carries chroma_format_idc and bit depths.
const PROFILES_WITH_CHROMA_INFO: [u8; 12] =
    [100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134];

impl Sps {
    /// Parses an SPS NAL unit (header byte included, start code not,
    /// emulation prevention bytes as they are in the stream). `None` if it
    /// is not an SPS or its fields are cut short or out of range.
    pub fn parse(nal: &[u8]) -> Option<Sps> {
        if nal.first()? & 0x1f != 7 {
            return None;
        }
        let data = rbsp(&nal[1..]);
        let mut r = BitReader::new(&data);
        let profile = Profile::new(r.byte()?, r.byte()?);
        let level_idc = r.byte()?;
        let sps_id = r.ue()?;
        let (mut chroma_format_idc, mut bit_depth_luma, mut bit_depth_chroma) = (1, 8, 8);
        if PROFILES_WITH_CHROMA_INFO.contains(&profile.idc) {
            chroma_format_idc = r.ue()?;
            if chroma_format_idc == 3 {
                r.bit()?; // separate_colour_plane_flag
            }
            bit_depth_luma = 8 + r.ue()?;
            bit_depth_chroma = 8 + r.ue()?;
        }
        if sps_id > 31 || chroma_format_idc > 3 || bit_depth_luma > 14 || bit_depth_chroma > 14 {
            return None;
        }
        Some(Sps {
            profile,
            level_idc,
            sps_id,
            chroma_format_idc,
            bit_depth_luma: bit_depth_luma as u8,
            bit_depth_chroma: bit_depth_chroma as u8,
        })
    }

    /// The level, with level 1b as [`Level::L1B`] however it was written.
    pub fn level(&self) -> Level {
        Level::from_sps(self.level_idc, self.profile)
    }

    /// GStreamer's caps name of the profile (`constrained-baseline`,
    /// `main`, `high`, …).
    pub fn profile_name(&self) -> Option<&'static str> {
        self.profile.name()
    }

    /// GStreamer's caps name of the level (`1b`, `3.1`, …).
    pub fn level_name(&self) -> Option<&'static str> {
        self.level().name()
    }
}

/// The first SPS of an Annex-B access unit that parses.
pub fn first_sps(au: &[u8]) -> Option<Sps> {
    // Parameter sets come before the slices of their access unit.
    before_first_slice(au)
        .filter(|n| n.first().is_some_and(|h| h & 0x1f == 7))
        .find_map(Sps::parse)
}

/// Reads bits most significant first, and Exp-Golomb codes.
pub(crate) struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        BitReader { data, pos: 0 }
    }

    pub(crate) fn bit(&mut self) -> Option<u32> {
        let b = *self.data.get(self.pos / 8)?;
        let v = (b >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(v as u32)
    }

    pub(crate) fn bits(&mut self, n: u32) -> Option<u32> {
        (0..n).try_fold(0u32, |acc, _| Some(acc << 1 | self.bit()?))
    }

    pub(crate) fn byte(&mut self) -> Option<u8> {
        self.bits(8).map(|v| v as u8)
    }

    /// ue(v); values above 2^31 - 2 are refused.
    pub(crate) fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let rest = self.bits(zeros)?;
        ((1u64 << zeros) - 1 + rest as u64).try_into().ok()
    }
}

#[cfg(test)]
mod sps_tests {
    use super::*;

    #[test]
    fn the_first_slice_decides_and_the_slice_data_is_not_read() {
        // AUD, SPS, PPS, then an IDR slice whose data happens to hold what
        // looks like a start code and a non-IDR slice header: not reached.
        let au = [
            0, 0, 0, 1, 0x09, 0xf0, //
            0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1e, 0xda, //
            0, 0, 1, 0x68, 0xce, //
            0, 0, 1, 0x65, 0x88, 0x84, 0, 0, 1, 0x41, 0x9a,
        ];
        assert!(has_idr(&au));
        let parts: Vec<&[u8]> = before_first_slice(&au).collect();
        assert_eq!(parts.len(), 4, "AUD, SPS, PPS and the slice header");
        assert_eq!(parts[1], &[0x67, 0x42, 0xc0, 0x1e, 0xda]);
        assert_eq!(parts[3], &[0x65]);
        assert!(!has_idr(&[
            0, 0, 1, 0x09, 0xf0, 0, 0, 1, 0x41, 0x9a, 0, 0, 1, 0x65
        ]));
        assert!(!has_idr(&[]));
        assert!(!has_idr(&[0, 0, 1]));
    }

    #[test]
    fn start_codes_are_found_wherever_they_are() {
        let au = [7, 0, 0, 0, 0, 1, 9, 1, 0, 0, 1, 5, 0];
        assert_eq!(next_start(&au, 0), Some(6));
        assert_eq!(next_start(&au, 6), Some(11));
        assert_eq!(next_start(&au, 11), None);
        assert_eq!(next_start(&[0, 1, 0, 0, 1], 0), Some(5));
    }

    #[test]
    fn rbsp_drops_emulation_prevention_bytes_only() {
        assert_eq!(&*rbsp(&[1, 2, 3]), &[1, 2, 3]);
        assert!(matches!(rbsp(&[0, 0, 1]), std::borrow::Cow::Borrowed(_)));
        assert_eq!(&*rbsp(&[0, 0, 3, 1]), &[0, 0, 1]);
        assert_eq!(&*rbsp(&[0, 0, 3, 0, 0, 3]), &[0, 0, 0, 0]);
        // 00 00 03 03: the first 03 is the escape, the second data.
        assert_eq!(&*rbsp(&[0, 0, 3, 3, 0]), &[0, 0, 3, 0]);
        assert_eq!(&*rbsp(&[5, 0, 3, 0, 0, 3, 2]), &[5, 0, 3, 0, 0, 2]);
    }

    #[test]
    fn exp_golomb() {
        // 1 | 010 | 011 | 00100 | 0001000 -> 0, 1, 2, 3, 7
        let data = [0b1010_0110, 0b0100_0001, 0b0000_0000];
        let mut r = BitReader::new(&data);
        assert_eq!(
            (r.ue(), r.ue(), r.ue(), r.ue(), r.ue()),
            (Some(0), Some(1), Some(2), Some(3), Some(7))
        );
        assert_eq!(BitReader::new(&[0, 0, 0, 0, 0]).ue(), None);
    }
}
