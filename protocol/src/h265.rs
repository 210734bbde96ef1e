//! What a guest and a host need from an H.265 access unit (Annex-B byte
//! stream, ITU-T H.265 §7.3): whether it is a keyframe ([`has_idr`]) and
//! what its sequence parameter set says ([`Sps`], [`first_sps`]).
//!
//! A keyframe is an access unit whose pictures are IDR (`IDR_W_RADL`, 19,
//! or `IDR_N_LP`, 20). A CRA picture (21) is also a random access point,
//! but only for a decoder that drops the RASL pictures after it, and many
//! receivers (browsers' WebRTC stacks, segmenters) ask for an IDR when they
//! ask for a keyframe: a CRA is therefore *not* a keyframe here, and
//! `vsockenc-host` makes its encoders write IDRs for the keyframes a guest
//! asks for. BLA pictures (16..=18) only appear when streams are spliced,
//! which an encoder never does.

use crate::nal::{rbsp, BitReader};

/// `nal_unit_type` values this module looks at.
pub mod nal_type {
    pub const BLA_W_LP: u8 = 16;
    pub const IDR_W_RADL: u8 = 19;
    pub const IDR_N_LP: u8 = 20;
    pub const CRA_NUT: u8 = 21;
    pub const VPS_NUT: u8 = 32;
    pub const SPS_NUT: u8 = 33;
    pub const PPS_NUT: u8 = 34;
    pub const AUD_NUT: u8 = 35;

    /// Whether `t` is a coded slice (a VCL NAL unit).
    pub fn is_vcl(t: u8) -> bool {
        t < 32
    }
}

/// The `nal_unit_type` of a NAL unit (start code not included).
pub fn nal_unit_type(nal: &[u8]) -> Option<u8> {
    nal.first().map(|h| (h >> 1) & 0x3f)
}

/// The NAL units of an Annex-B access unit up to and including the first
/// slice (its header bytes only): parameter sets come before the slices of
/// their access unit, and every slice of a picture has the same type, so
/// the slice data (most of an access unit) is never scanned.
pub fn up_to_first_slice(au: &[u8]) -> impl Iterator<Item = &[u8]> + '_ {
    crate::nal::up_to_first_slice(au, 2, |n| nal_unit_type(n).is_some_and(nal_type::is_vcl))
}

/// Whether the access unit's picture is an IDR picture (a keyframe; see
/// the module doc for CRA).
pub fn has_idr(au: &[u8]) -> bool {
    up_to_first_slice(au).any(|n| {
        matches!(
            nal_unit_type(n),
            Some(nal_type::IDR_W_RADL | nal_type::IDR_N_LP)
        )
    })
}

/// The type of the access unit's first slice, if it has one.
pub fn picture_type(au: &[u8]) -> Option<u8> {
    up_to_first_slice(au)
        .filter_map(nal_unit_type)
        .find(|t| nal_type::is_vcl(*t))
}

/// What the element and the daemon read from an H.265 SPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sps {
    /// `general_profile_idc`: 1 Main, 2 Main 10, 3 Main Still Picture, 4
    /// the range extensions.
    pub profile_idc: u8,
    /// `general_tier_flag`: the High tier.
    pub high_tier: bool,
    /// `general_level_idc`: 30 × level (93 is level 3.1).
    pub level_idc: u8,
    /// 0 monochrome, 1 4:2:0, 2 4:2:2, 3 4:4:4.
    pub chroma_format_idc: u32,
    pub bit_depth_luma: u8,
    pub bit_depth_chroma: u8,
    pub width: u32,
    pub height: u32,
}

impl Sps {
    /// Parses an SPS NAL unit (its 2-byte header included, start code not).
    /// `None` if it is not an SPS or is cut short or out of range.
    pub fn parse(nal: &[u8]) -> Option<Sps> {
        if nal_unit_type(nal)? != nal_type::SPS_NUT || nal.len() < 3 {
            return None;
        }
        let data = rbsp(&nal[2..]);
        let mut r = BitReader::new(&data);
        r.bits(4)?; // sps_video_parameter_set_id
        let max_sub_layers_minus1 = r.bits(3)?;
        r.bit()?; // sps_temporal_id_nesting_flag
                  // profile_tier_level(1, max_sub_layers_minus1)
        r.bits(2)?; // general_profile_space
        let high_tier = r.bit()? == 1;
        let profile_idc = r.bits(5)? as u8;
        r.bits(32)?; // general_profile_compatibility_flag[32]
        r.bits(32)?; // progressive/interlaced/non-packed/frame-only + 44 bits
        r.bits(16)?; //   of constraint flags: 48 bits in all
        let level_idc = r.byte()?;
        let mut sub_profile = [false; 8];
        let mut sub_level = [false; 8];
        for i in 0..max_sub_layers_minus1 as usize {
            sub_profile[i] = r.bit()? == 1;
            sub_level[i] = r.bit()? == 1;
        }
        if max_sub_layers_minus1 > 0 {
            for _ in max_sub_layers_minus1..8 {
                r.bits(2)?; // reserved_zero_2bits
            }
        }
        for i in 0..max_sub_layers_minus1 as usize {
            if sub_profile[i] {
                r.bits(32)?;
                r.bits(32)?;
                r.bits(24)?; // 88 bits of sub-layer profile
            }
            if sub_level[i] {
                r.byte()?;
            }
        }
        let sps_id = r.ue()?;
        let chroma_format_idc = r.ue()?;
        if chroma_format_idc == 3 {
            r.bit()?; // separate_colour_plane_flag
        }
        let width = r.ue()?;
        let height = r.ue()?;
        if r.bit()? == 1 {
            // conformance_window offsets: left, right, top, bottom
            for _ in 0..4 {
                r.ue()?;
            }
        }
        let bit_depth_luma = 8 + r.ue()?;
        let bit_depth_chroma = 8 + r.ue()?;
        if sps_id > 15 || chroma_format_idc > 3 || bit_depth_luma > 16 || bit_depth_chroma > 16 {
            return None;
        }
        Some(Sps {
            profile_idc,
            high_tier,
            level_idc,
            chroma_format_idc,
            bit_depth_luma: bit_depth_luma as u8,
            bit_depth_chroma: bit_depth_chroma as u8,
            width,
            height,
        })
    }
}

/// The first SPS of an Annex-B access unit that parses.
pub fn first_sps(au: &[u8]) -> Option<Sps> {
    up_to_first_slice(au)
        .filter(|n| nal_unit_type(n) == Some(nal_type::SPS_NUT))
        .find_map(Sps::parse)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// VPS, SPS, PPS and the start of an IDR_N_LP slice, as x265 3.5
    /// wrote them for one 320x240 I420 frame (Main, level 2.1).
    pub(crate) const X265_IDR: &[u8] = &[
        0, 0, 0, 1, 0x40, 0x01, 0x0c, 0x01, 0xff, 0xff, 0x01, 0x60, 0x00, 0x00, 0x03, 0x00, 0x90,
        0x00, 0x00, 0x03, 0x00, 0x00, 0x03, 0x00, 0x3f, 0xba, 0x02, 0x40, //
        0, 0, 0, 1, 0x42, 0x01, 0x01, 0x01, 0x60, 0x00, 0x00, 0x03, 0x00, 0x90, 0x00, 0x00, 0x03,
        0x00, 0x00, 0x03, 0x00, 0x3f, 0xa0, 0x0a, 0x08, 0x0f, 0x16, 0x5b, 0xa4, 0xa4, 0xc2, 0xff,
        0xf0, 0x00, 0x10, 0x00, 0x16, 0xa0, 0xc0, 0xc0, 0xc0, 0x80, 0x00, 0x00, 0x03, 0x00, 0x80,
        0x00, 0x00, 0x0f, 0x04, //
        0, 0, 0, 1, 0x44, 0x01, 0xc0, 0x71, 0x83, 0x12, //
        0, 0, 1, 0x28, 0x01, 0xac, 0x3b, 0x10, 0x30, 0x66, 0xc0,
    ];

    #[test]
    fn an_idr_access_unit_is_a_keyframe_and_its_sps_parses() {
        assert!(has_idr(X265_IDR));
        assert_eq!(picture_type(X265_IDR), Some(nal_type::IDR_N_LP));
        let sps = first_sps(X265_IDR).expect("x265's SPS parses");
        assert_eq!(sps.profile_idc, 1);
        assert!(!sps.high_tier);
        assert_eq!(sps.level_idc, 63);
        assert_eq!((sps.chroma_format_idc, sps.bit_depth_luma), (1, 8));
        assert_eq!((sps.width, sps.height), (320, 240));
    }

    #[test]
    fn cra_and_trailing_pictures_are_not_keyframes() {
        let cra = [0, 0, 0, 1, 0x2a, 0x01, 0xaf, 0x00];
        assert!(!has_idr(&cra));
        assert_eq!(picture_type(&cra), Some(nal_type::CRA_NUT));
        let trail = [0, 0, 0, 1, 0x02, 0x01, 0xd0, 0x00, 0, 0, 1, 0x26, 0x01];
        assert!(
            !has_idr(&trail),
            "the first slice decides: an IDR header in slice data is not reached"
        );
        assert!(!has_idr(&[]));
        assert!(first_sps(&trail).is_none());
    }

    #[test]
    fn a_cut_sps_is_refused() {
        let sps = &X265_IDR[32..48];
        assert_eq!(nal_unit_type(sps), Some(nal_type::SPS_NUT));
        assert!(Sps::parse(sps).is_none());
        assert!(Sps::parse(&[0x42]).is_none());
    }
}
