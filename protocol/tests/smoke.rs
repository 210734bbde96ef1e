use hxfr::*;

#[test]
fn frame_request_roundtrip_bytewise() {
    let req = FrameRequest {
        width: 2,
        height: 2,
        format: WireFormat::Bgra.fourcc(),
        stride: 8,
        pts: 42,
        duration: 7,
        force_keyframe: true,
        resource_id: 0,
    };
    let pixels = vec![9u8; 16];
    let mut wire = Vec::new();
    hxfr::write::write_frame_request(&mut wire, 1, &req, &[&pixels[..8], &pixels[8..]]).unwrap();
    assert_eq!(wire.len(), 56 + 16);
    let mut dec = Decoder::default();
    for chunk in wire.chunks(5) {
        let mut c = chunk;
        while !c.is_empty() {
            if let Some((h, m)) = dec.decode(&mut c).unwrap() {
                assert_eq!(h.payload_size, 60);
                assert_eq!(
                    m,
                    Message::FrameRequest {
                        request: req,
                        pixels: Some(pixels.clone())
                    }
                );
            }
        }
    }
    assert!(dec.is_idle());
    let mut r = &wire[..];
    let mut dec = Decoder::default();
    let (_, m) = dec.read_from(&mut r).unwrap().unwrap();
    assert!(matches!(m, Message::FrameRequest { .. }));
    assert!(dec.read_from(&mut r).unwrap().is_none());
}

#[test]
fn huge_claim_is_refused() {
    let h = Header::new(msg_type::FRAME_REQUEST, 1, 1, u32::MAX).to_bytes();
    let mut dec = Decoder::default();
    let mut inp = &h[..];
    let e = dec.decode(&mut inp).unwrap_err();
    assert_eq!(
        e.to_string(),
        "payload_size 4294967295 exceeds limit 67108908 for FRAME_REQUEST at stream offset 0"
    );
}
