//! Whether an encoder makes a keyframe when it is asked for one
//! (force-key-unit). Not all do: `av1enc` of GStreamer 1.22 ignores the
//! request (it only places keyframes itself). A guest depends on forced
//! keyframes (its `keyframe-interval`, and recovery after a dropped frame,
//! which waits for the next keyframe), so for such an encoder the client
//! starts a new session for every keyframe asked for: a session's first
//! frame is always a keyframe.
//!
//! Found out once at startup, by the encoder itself: three small frames in
//! a throw-away session, a keyframe asked for the third.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hxfr::{Decoder, FrameLayout, Message, WireFormat};

use crate::budget::Charged;
use crate::codecs::EncoderChoice;
use crate::encoder::{Job, Params, Session, SessionKey};
use crate::stats::ClientStats;

const SIZE: u32 = 64;

/// Whether `choice` turns a forced keyframe into a keyframe of its codec;
/// `Err` when the trial itself fails.
pub fn honoured(choice: &EncoderChoice, timeout: Duration) -> Result<bool, String> {
    let key = SessionKey {
        format: WireFormat::Nv12,
        width: SIZE,
        height: SIZE,
    };
    let params = Params {
        bitrate_kbps: 500,
        fps_n: 30,
        fps_d: 1,
    };
    let mut session = Session::new(
        choice,
        key,
        params,
        None,
        Arc::new(ClientStats::default()),
        "keyframe trial".into(),
    )
    .map_err(|e| format!("{e:#}"))?;
    let bytes = WireFormat::Nv12.frame_bytes(SIZE, SIZE) as usize;
    let layout =
        FrameLayout::new(WireFormat::Nv12, SIZE, SIZE, SIZE, bytes).map_err(|e| e.to_string())?;
    let mut answers = Vec::new();
    for i in 0..3u8 {
        let (reply, answer) = mpsc::sync_channel(1);
        let job = Job {
            pts: i as i64,
            session_id: 0,
            reply,
            arrived: Instant::now(),
        };
        // Frames that differ, so that nothing but the request makes the
        // third one a keyframe.
        // Startup, before any guest: not charged to the memory budget.
        let pixels = Charged::new(vec![64 + 40 * i; bytes], None);
        session
            .encode(&layout, pixels, job, i == 2)
            .map_err(|(_, why)| why)?;
        answers.push(answer);
    }
    session.flush(timeout)?;
    let third = match answers[2].try_recv() {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => return Err(e.message),
        Err(_) => return Err("no output for the trial frames".into()),
    };
    match Decoder::default().decode(&mut &third[..]) {
        Ok(Some((_, Message::FrameResponse(r)))) => {
            Ok(choice.codec.is_keyframe(&r.unit(choice.codec)))
        }
        _ => Err("unreadable output for the trial frames".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codecs::choose;
    use hxfr::Codec;

    #[test]
    fn x265_honours_forced_keyframes_and_the_answer_comes_from_the_encoder() {
        gst::init().unwrap();
        let x265 = choose("x265enc", Codec::H265).unwrap();
        assert_eq!(honoured(&x265, Duration::from_secs(30)), Ok(true));
        // Whatever av1enc does here, the trial says it and does not fail.
        let aom = choose("av1enc", Codec::Av1).unwrap();
        assert!(honoured(&aom, Duration::from_secs(30)).is_ok());
    }
}
