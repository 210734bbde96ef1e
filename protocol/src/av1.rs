//! What a guest and a host need from an AV1 temporal unit in the
//! low-overhead OBU stream (`video/x-av1, stream-format=obu-stream,
//! alignment=tu`; AV1 specification §5): whether it is a keyframe
//! ([`is_keyframe`]) and what its sequence header says
//! ([`SequenceHeader`], [`sequence_header`]).
//!
//! A keyframe is a temporal unit a decoder can start from: it carries a
//! sequence header OBU and its frame is a `KEY_FRAME` that is shown at once
//! (`show_frame`). A key frame that is not shown (a "forward keyframe",
//! displayed later through `show_existing_frame`) is not a place to start
//! for a live receiver, and encoders set up for low latency never write
//! one.

use crate::nal::BitReader;

/// `obu_type` values this module looks at.
pub mod obu_type {
    pub const SEQUENCE_HEADER: u8 = 1;
    pub const TEMPORAL_DELIMITER: u8 = 2;
    pub const FRAME_HEADER: u8 = 3;
    pub const FRAME: u8 = 6;
}

/// One OBU of a temporal unit: its type and payload (header and size field
/// not included; a payload cut short by the end of the data is what is
/// there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Obu<'a> {
    pub obu_type: u8,
    pub payload: &'a [u8],
}

/// The OBUs of a temporal unit in the low-overhead format, in order. Stops
/// at the first malformed OBU header (forbidden bit set, size field cut
/// short, or an OBU without a size field that is not the last).
pub fn obus(tu: &[u8]) -> impl Iterator<Item = Obu<'_>> + '_ {
    let mut rest = tu;
    std::iter::from_fn(move || {
        let (&header, after) = rest.split_first()?;
        if header & 0x80 != 0 {
            rest = &[];
            return None;
        }
        let obu_type = (header >> 3) & 0x0f;
        let has_extension = header & 0x04 != 0;
        let has_size = header & 0x02 != 0;
        let mut body = after;
        if has_extension {
            body = body.get(1..)?;
        }
        let payload;
        if has_size {
            let (size, n) = leb128(body)?;
            let start = &body[n..];
            let len = usize::try_from(size).ok()?.min(start.len());
            payload = &start[..len];
            rest = &start[len..];
        } else {
            payload = body;
            rest = &[];
        }
        Some(Obu { obu_type, payload })
    })
}

/// An unsigned LEB128 value (at most 8 bytes, as the specification allows)
/// and the bytes it took.
fn leb128(b: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &byte) in b.iter().take(8).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// What the element and the daemon read from a sequence header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceHeader {
    /// `seq_profile`: 0 Main, 1 High, 2 Professional.
    pub profile: u8,
    /// `seq_level_idx` of the first operating point (0 is level 2.0, 31
    /// no limit).
    pub level_idx: u8,
    /// `seq_tier` of the first operating point.
    pub high_tier: bool,
    pub reduced_still_picture_header: bool,
    pub bit_depth: u8,
    pub mono_chrome: bool,
    /// 4:2:0 is (1, 1), 4:2:2 (1, 0), 4:4:4 (0, 0).
    pub subsampling: (u8, u8),
}

impl SequenceHeader {
    /// Parses the payload of a sequence header OBU; `None` when it is cut
    /// short.
    pub fn parse(payload: &[u8]) -> Option<SequenceHeader> {
        let mut r = BitReader::new(payload);
        let profile = r.bits(3)? as u8;
        r.bit()?; // still_picture
        let reduced = r.bit()? == 1;
        let (level_idx, high_tier);
        if reduced {
            level_idx = r.bits(5)? as u8;
            high_tier = false;
        } else {
            let timing_info_present = r.bit()? == 1;
            let mut decoder_model_info_present = false;
            let mut buffer_delay_length = 0;
            if timing_info_present {
                r.bits(32)?; // num_units_in_display_tick
                r.bits(32)?; // time_scale
                if r.bit()? == 1 {
                    uvlc(&mut r)?; // num_ticks_per_picture_minus_1
                }
                decoder_model_info_present = r.bit()? == 1;
                if decoder_model_info_present {
                    buffer_delay_length = r.bits(5)? + 1;
                    r.bits(32)?; // num_units_in_decoding_tick
                    r.bits(5)?; // buffer_removal_time_length_minus_1
                    r.bits(5)?; // frame_presentation_time_length_minus_1
                }
            }
            let initial_display_delay_present = r.bit()? == 1;
            let operating_points = r.bits(5)? + 1;
            let mut first = None;
            for _ in 0..operating_points {
                r.bits(12)?; // operating_point_idc
                let idx = r.bits(5)? as u8;
                let tier = idx > 7 && r.bit()? == 1;
                if decoder_model_info_present && r.bit()? == 1 {
                    r.bits(buffer_delay_length)?; // decoder_buffer_delay
                    r.bits(buffer_delay_length)?; // encoder_buffer_delay
                    r.bit()?; // low_delay_mode_flag
                }
                if initial_display_delay_present && r.bit()? == 1 {
                    r.bits(4)?;
                }
                first.get_or_insert((idx, tier));
            }
            (level_idx, high_tier) = first?;
        }
        let width_bits = r.bits(4)? + 1;
        let height_bits = r.bits(4)? + 1;
        r.bits(width_bits)?;
        r.bits(height_bits)?;
        if !reduced && r.bit()? == 1 {
            r.bits(4)?; // delta_frame_id_length_minus_2
            r.bits(3)?; // additional_frame_id_length_minus_1
        }
        r.bits(3)?; // use_128x128_superblock, enable_filter_intra, enable_intra_edge_filter
        if !reduced {
            r.bits(4)?; // interintra, masked compound, warped motion, dual filter
            let order_hint = r.bit()? == 1;
            if order_hint {
                r.bits(2)?; // enable_jnt_comp, enable_ref_frame_mvs
            }
            let choose_screen_content_tools = r.bit()? == 1;
            let force_screen_content_tools = if choose_screen_content_tools {
                2
            } else {
                r.bit()?
            };
            if force_screen_content_tools > 0 && r.bit()? == 0 {
                r.bit()?; // seq_force_integer_mv
            }
            if order_hint {
                r.bits(3)?; // order_hint_bits_minus_1
            }
        }
        r.bits(3)?; // enable_superres, enable_cdef, enable_restoration
                    // color_config()
        let high_bitdepth = r.bit()? == 1;
        let bit_depth = match (profile, high_bitdepth) {
            (2, true) => {
                if r.bit()? == 1 {
                    12
                } else {
                    10
                }
            }
            (_, true) => 10,
            (_, false) => 8,
        };
        let mono_chrome = profile != 1 && r.bit()? == 1;
        let (mut primaries, mut transfer, mut matrix) = (2, 2, 2);
        if r.bit()? == 1 {
            primaries = r.byte()?;
            transfer = r.byte()?;
            matrix = r.byte()?;
        }
        let subsampling = if mono_chrome {
            (1, 1)
        } else if primaries == 1 && transfer == 13 && matrix == 0 {
            (0, 0) // sRGB: 4:4:4
        } else {
            r.bit()?; // color_range
            match profile {
                0 => (1, 1),
                1 => (0, 0),
                _ if bit_depth == 12 => {
                    let x = r.bit()? as u8;
                    let y = if x == 1 { r.bit()? as u8 } else { 0 };
                    (x, y)
                }
                _ => (1, 0),
            }
        };
        Some(SequenceHeader {
            profile,
            level_idx,
            high_tier,
            reduced_still_picture_header: reduced,
            bit_depth,
            mono_chrome,
            subsampling,
        })
    }

    /// The chroma format as H.264 and H.265 number it: 0 monochrome, 1
    /// 4:2:0, 2 4:2:2, 3 4:4:4.
    pub fn chroma_format_idc(&self) -> u32 {
        match (self.mono_chrome, self.subsampling) {
            (true, _) => 0,
            (false, (1, 1)) => 1,
            (false, (1, 0)) => 2,
            _ => 3,
        }
    }
}

/// uvlc(): leading zeros, then that many bits.
fn uvlc(r: &mut BitReader<'_>) -> Option<u32> {
    let mut zeros = 0;
    while r.bit()? == 0 {
        zeros += 1;
        if zeros >= 32 {
            return Some(u32::MAX);
        }
    }
    let rest = r.bits(zeros)?;
    Some(((1u64 << zeros) - 1 + rest as u64).min(u32::MAX as u64) as u32)
}

/// The first sequence header of a temporal unit that parses.
pub fn sequence_header(tu: &[u8]) -> Option<SequenceHeader> {
    obus(tu)
        .filter(|o| o.obu_type == obu_type::SEQUENCE_HEADER)
        .find_map(|o| SequenceHeader::parse(o.payload))
}

/// Whether the temporal unit is a keyframe: a sequence header and a shown
/// `KEY_FRAME` (see the module doc).
pub fn is_keyframe(tu: &[u8]) -> bool {
    let mut seq = None;
    for o in obus(tu) {
        match o.obu_type {
            obu_type::SEQUENCE_HEADER => seq = SequenceHeader::parse(o.payload),
            obu_type::FRAME | obu_type::FRAME_HEADER => {
                let Some(seq) = seq else {
                    return false;
                };
                if seq.reduced_still_picture_header {
                    return true;
                }
                let mut r = BitReader::new(o.payload);
                // show_existing_frame, frame_type (0: KEY_FRAME), show_frame
                return matches!((r.bit(), r.bits(2), r.bit()), (Some(0), Some(0), Some(1)));
            }
            _ => {}
        }
    }
    false
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The start of the first two temporal units libaom 3.6 wrote (through
    /// av1parse) for 320x240 I420, realtime: temporal delimiter, sequence
    /// header (Main, level 2.0) and a KEY_FRAME; then an INTER frame.
    pub(crate) const AOM_KEY: &[u8] = &[
        0x12, 0x00, 0x0a, 0x0c, 0x00, 0x00, 0x00, 0x04, 0x3c, 0xff, 0xbf, 0x81, 0xb5, 0xf2, 0x00,
        0x80, 0x32, 0xbc, 0x48, 0x13, 0x5f, 0x58, 0x01,
    ];
    pub(crate) const AOM_INTER: &[u8] = &[0x12, 0x00, 0x32, 0xb4, 0x36, 0x39, 0xaf, 0xb0];

    #[test]
    fn obus_walk_the_low_overhead_format() {
        let types: Vec<u8> = obus(AOM_KEY).map(|o| o.obu_type).collect();
        assert_eq!(
            types,
            [
                obu_type::TEMPORAL_DELIMITER,
                obu_type::SEQUENCE_HEADER,
                obu_type::FRAME
            ]
        );
        assert_eq!(leb128(&[0xbc, 0x48]), Some((0x3c + (0x48 << 7), 2)));
        assert_eq!(leb128(&[0x80; 9]), None);
        assert_eq!(obus(&[0x92, 0x00]).count(), 0, "forbidden bit set");
    }

    #[test]
    fn a_key_frame_with_its_sequence_header_is_a_keyframe() {
        assert!(is_keyframe(AOM_KEY));
        assert!(!is_keyframe(AOM_INTER));
        let seq = sequence_header(AOM_KEY).expect("libaom's sequence header parses");
        assert_eq!(seq.profile, 0);
        assert_eq!(seq.level_idx, 0, "level 2.0");
        assert_eq!(seq.bit_depth, 8);
        assert_eq!(seq.chroma_format_idc(), 1);
        // The same key frame without its sequence header is no place to
        // start.
        let without: Vec<u8> = [&AOM_KEY[..2], &AOM_KEY[16..]].concat();
        assert!(!is_keyframe(&without));
        assert!(!is_keyframe(&[]));
    }

    #[test]
    fn a_cut_sequence_header_is_refused() {
        assert!(SequenceHeader::parse(&AOM_KEY[4..9]).is_none());
    }
}
