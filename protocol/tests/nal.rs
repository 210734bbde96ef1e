//! NAL chunk normalisation to Annex-B (PROTOCOL.md, FRAME_RESPONSE): chunks
//! with start codes kept, AVCC chunks converted, bare NAL units prefixed,
//! and the ambiguous byte strings settled as documented in `hxfr::nal`.

mod common;

use common::hex;
use hxfr::nal::{has_idr, is_avcc, nal_types, normalize_chunk, split_annexb, START_CODE};

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
