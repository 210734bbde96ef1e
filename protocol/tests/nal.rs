//! NAL chunk normalisation to Annex-B (PROTOCOL.md, FRAME_RESPONSE): chunks
//! with start codes kept, AVCC chunks converted, bare NAL units prefixed,
//! and the ambiguous byte strings settled as documented in `hxfr::nal`.

mod common;

use common::hex;
use hxfr::nal::{
    first_sps, has_idr, is_avcc, nal_types, normalize_chunk, rbsp, split_annexb, Sps, START_CODE,
};
use hxfr::{Level, Profile};

fn normalized(chunk: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    normalize_chunk(chunk, &mut out);
    out
}

#[test]
fn four_byte_start_code_chunk_is_kept() {
    let au = hex("00 00 00 01 67 42 c0 1f  00 00 00 01 68 ce 3c 80  00 00 00 01 65 88 84 00");
    assert_eq!(normalized(&au), au);
}

#[test]
fn three_byte_start_code_chunk_is_kept() {
    let au = hex("00 00 01 09 f0  00 00 01 41 9a 02");
    assert_eq!(normalized(&au), au);
}

#[test]
fn avcc_chunk_is_converted() {
    let chunk = hex("00 00 00 02 09 f0  00 00 00 04 67 42 c0 1f  00 00 00 03 65 88 84");
    assert!(is_avcc(&chunk));
    assert_eq!(
        normalized(&chunk),
        hex("00 00 00 01 09 f0  00 00 00 01 67 42 c0 1f  00 00 00 01 65 88 84")
    );
}

#[test]
fn bare_nal_is_prefixed() {
    let nal = hex("65 88 84 00 21 ff");
    assert!(!is_avcc(&nal));
    assert_eq!(normalized(&nal), hex("00 00 00 01 65 88 84 00 21 ff"));
    // A one-byte NAL unit (end of sequence).
    assert_eq!(normalized(&[0x0a]), hex("00 00 00 01 0a"));
}

#[test]
fn empty_chunk_adds_nothing() {
    assert!(normalized(&[]).is_empty());
    assert!(!is_avcc(&[]));
}

#[test]
fn chunks_append_to_what_is_there() {
    let mut out = START_CODE.to_vec();
    out.push(0x09);
    normalize_chunk(&hex("00 00 00 01 41"), &mut out);
    normalize_chunk(&hex("00 00 00 01 06"), &mut out);
    normalize_chunk(&hex("42"), &mut out);
    assert_eq!(
        out,
        hex("00 00 00 01 09  00 00 00 01 41  00 00 00 01 06  00 00 00 01 42")
    );
}

/// Almost-AVCC is not AVCC: a length that runs past the end, a zero
/// length, or stray bytes after the last unit make it a bare NAL.
#[test]
fn inexact_length_prefixes_are_not_avcc() {
    for chunk in [
        hex("00 00 00 05 65 88"),       // runs past the end
        hex("00 00 00 00"),             // zero-length unit
        hex("00 00 00 02 09 f0 00 00"), // 2 stray bytes
        hex("00 00 00"),                // shorter than a length field
    ] {
        assert!(!is_avcc(&chunk), "{chunk:02x?}");
    }
    // Not AVCC and no start code: one bare NAL (even if it is nonsense).
    let chunk = hex("00 00 00 05 65 88");
    assert_eq!(normalized(&chunk), hex("00 00 00 01 00 00 00 05 65 88"));
}

/// Ambiguous: `00 00 00 01 xx` is a 4-byte start code or an AVCC unit of
/// one byte. A one-byte unit never opens an access unit, so the start code
/// wins even when the whole chunk would also parse as AVCC.
#[test]
fn ambiguous_four_byte_start_code_versus_one_byte_avcc_unit() {
    // As AVCC: [09] then a unit of 2 bytes [41 9a]. As Annex-B: AUD, slice.
    let chunk = hex("00 00 00 01 09  00 00 00 02 41 9a");
    assert!(is_avcc(&chunk));
    assert_eq!(normalized(&chunk), chunk);
}

/// Ambiguous: `00 00 01 xx` is a 3-byte start code or an AVCC unit of 256
/// to 511 bytes (a small P slice). A chunk that parses exactly as AVCC with
/// valid NAL headers is AVCC; no known host sends 3-byte start codes.
#[test]
fn ambiguous_three_byte_start_code_versus_avcc_unit_of_256_to_511_bytes() {
    for len in [256usize, 300, 511] {
        let mut slice = vec![0x41, 0x9a];
        slice.resize(len, 0x5c);
        let chunk = [(len as u32).to_be_bytes().as_slice(), &slice].concat();
        assert_eq!(&chunk[..3], &[0, 0, 1], "looks like a start code");
        let mut want = START_CODE.to_vec();
        want.extend_from_slice(&slice);
        assert_eq!(normalized(&chunk), want, "AVCC unit of {len} bytes");

        // Followed by a second unit in the same chunk.
        let two = [chunk.as_slice(), &hex("00 00 00 02 09 f0")].concat();
        want.extend_from_slice(&hex("00 00 00 01 09 f0"));
        assert_eq!(normalized(&two), want);
    }
}

/// ...but a 3-byte start-code chunk that does not parse exactly as AVCC, or
/// whose AVCC reading has an impossible NAL header (forbidden bit set), is
/// kept as Annex-B.
#[test]
fn three_byte_start_code_chunks_that_are_not_avcc_stay_annexb() {
    let au = hex("00 00 01 65 88 84 00 21");
    assert!(!is_avcc(&au));
    assert_eq!(normalized(&au), au);

    // Exactly 4 + 0x165 bytes: parses as AVCC, but the unit it would start
    // with has header byte 0x88 (forbidden_zero_bit set).
    let mut au = hex("00 00 01 65 88 84");
    au.resize(4 + 0x165, 0x11);
    assert!(is_avcc(&au));
    assert_eq!(normalized(&au), au);
}

#[test]
fn split_annexb_finds_units_and_strips_start_code_zeros() {
    let au = hex("00 00 00 01 09 f0  00 00 01 67 42  00 00 00 01 65 88 84");
    let units = split_annexb(&au);
    assert_eq!(
        units,
        vec![&hex("09 f0")[..], &hex("67 42")[..], &hex("65 88 84")[..]]
    );
    assert_eq!(nal_types(&au), vec![9, 7, 5]);
    assert!(has_idr(&au));
    assert!(!has_idr(&hex("00 00 00 01 41 9a")));
    assert!(split_annexb(&[]).is_empty());
    assert!(split_annexb(&hex("65 88")).is_empty());
}

/// Whatever the chunk, the output is Annex-B that contains the chunk's
/// units: normalising it again changes nothing.
#[test]
fn normalising_is_idempotent() {
    let mut rng = common::Rng::new(3);
    for _ in 0..2000 {
        let n = rng.below(40);
        let mut chunk = rng.bytes(n);
        if rng.chance(1, 3) && chunk.len() >= 4 {
            // Make it AVCC-shaped.
            let len = (chunk.len() - 4) as u32;
            chunk[..4].copy_from_slice(&len.to_be_bytes());
        }
        let once = normalized(&chunk);
        if chunk.is_empty() {
            assert!(once.is_empty());
            continue;
        }
        assert!(once.starts_with(&[0, 0, 1]) || once.starts_with(&START_CODE));
        assert_eq!(normalized(&once), once, "{chunk:02x?}");
    }
}

/// SPS bytes x264 wrote (GStreamer 1.22, x264 build 164) for 1280x720 at
/// 30 fps, asked for high, constrained-baseline and main: each has `00 00
/// 03` emulation prevention in its VUI.
const X264_HIGH: &str =
    "67 64 00 1f ac b4 02 80 2d d8 0b 50 10 10 14 00 00 03 00 04 00 00 03 00 f2 3c 60 ca 80";
const X264_CONSTRAINED_BASELINE: &str =
    "67 42 c0 1f da 01 40 16 ec 05 a8 08 08 0a 00 00 03 00 02 00 00 03 00 79 1e 30 65 40";
const X264_MAIN: &str =
    "67 4d 40 1f da 01 40 16 ec 05 a8 08 08 0a 00 00 03 00 02 00 00 03 00 79 1e 30 65 40";

#[test]
fn real_x264_sps_name_their_profile_and_level() {
    for (text, profile, flags, name) in [
        (X264_HIGH, 100, 0x00, "high"),
        (X264_CONSTRAINED_BASELINE, 66, 0xc0, "constrained-baseline"),
        (X264_MAIN, 77, 0x40, "main"),
    ] {
        let sps = Sps::parse(&hex(text)).expect(name);
        assert_eq!(sps.profile, Profile::new(profile, flags), "{name}");
        assert_eq!(sps.profile_name(), Some(name));
        assert_eq!((sps.level_idc, sps.level_name()), (31, Some("3.1")));
        assert_eq!(sps.level(), Level(31));
        assert_eq!(
            (
                sps.sps_id,
                sps.chroma_format_idc,
                sps.bit_depth_luma,
                sps.bit_depth_chroma
            ),
            (0, 1, 8, 8)
        );
        // The first SPS of an access unit, after an AUD.
        let mut au = hex("00 00 00 01 09 f0 00 00 00 01");
        au.extend_from_slice(&hex(text));
        au.extend_from_slice(&hex("00 00 00 01 68 eb e3 cb 22 c0 00 00 01 65 88 84"));
        assert_eq!(first_sps(&au), Some(sps));
        assert!(has_idr(&au));
    }
}

/// SPS written by hand from H.264 7.3.2.1.1: the fixed bytes, then
/// seq_parameter_set_id and, in High-family profiles, chroma_format_idc
/// and the bit depths as Exp-Golomb codes.
#[test]
fn hand_made_sps_fields() {
    let parse = |t: &str| Sps::parse(&hex(t)).unwrap();
    // Baseline, level 1, sps_id 0 ("1").
    let s = parse("67 42 00 0a 80");
    assert_eq!(s.profile_name(), Some("baseline"));
    assert_eq!(
        (s.level_name(), s.chroma_format_idc, s.bit_depth_luma),
        (Some("1"), 1, 8)
    );
    // Baseline with constraint_set3 and level_idc 11: level 1b.
    let s = parse("67 42 50 0b 80");
    assert_eq!(
        (s.profile_name(), s.level_name()),
        (Some("constrained-baseline"), Some("1b"))
    );
    // High, level 4, sps_id 0 "1", chroma 1 "010", depths 0 "1" "1".
    let s = parse("67 64 00 28 ac");
    assert_eq!(
        (s.profile_name(), s.level_name()),
        (Some("high"), Some("4"))
    );
    assert_eq!(
        (s.chroma_format_idc, s.bit_depth_luma, s.bit_depth_chroma),
        (1, 8, 8)
    );
    // High with level_idc 9: 1b.
    assert_eq!(parse("67 64 00 09 ac").level(), Level::L1B);
    // High 4:2:2, level 3.1: sps_id 0 "1", chroma 2 "011", depths 2 "011"
    // "011" (10 bit).
    let s = parse("67 7a 00 1f b6 c0");
    assert_eq!(s.profile_name(), Some("high-4:2:2"));
    assert_eq!(
        (s.chroma_format_idc, s.bit_depth_luma, s.bit_depth_chroma),
        (2, 10, 10)
    );
    // High 4:4:4, sps_id 0 "1", chroma 3 "00100", separate_colour_plane
    // "0", depths "1" "1".
    let s = parse("67 f4 00 1e 91 80");
    assert_eq!(
        (s.profile_name(), s.chroma_format_idc),
        (Some("high-4:4:4"), 3)
    );
    // sps_id 3 ("00100") in a constrained-high SPS.
    let s = parse("67 64 0c 1f 22 c0");
    assert_eq!((s.sps_id, s.profile_name()), (3, Some("constrained-high")));
}

/// Emulation prevention bytes are removed before the fields are read. In
/// the fields read (up to the bit depths) a valid SPS never has two zero
/// bytes in a row, so the escapes that matter in practice are those of the
/// VUI further on: the parser is handed the NAL unit as it is in the
/// stream, escapes and all.
#[test]
fn sps_are_parsed_as_they_are_in_the_stream() {
    let sps = hex(X264_HIGH);
    let unescaped = rbsp(&sps[1..]);
    assert_eq!(unescaped.len(), sps.len() - 3, "two escapes removed");
    assert!(!unescaped.windows(3).any(|w| w == [0, 0, 3]));
    assert_eq!(Sps::parse(&sps).unwrap().profile_name(), Some("high"));
}

#[test]
fn not_an_sps() {
    assert_eq!(Sps::parse(&hex("68 eb e3 cb")), None, "a PPS");
    assert_eq!(Sps::parse(&hex("67 64 00")), None, "cut short");
    assert_eq!(Sps::parse(&[]), None);
    assert_eq!(first_sps(&hex("00 00 00 01 65 88 84")), None);
    // sps_id 33 ("00000100010"): only 0..=31 exist.
    assert_eq!(Sps::parse(&hex("67 42 00 0a 04 20")), None);
}
