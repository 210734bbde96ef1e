//! The codecs this daemon encodes, and per codec the encoders it knows:
//! the order `auto` tries them in (hardware first), how each is set up for
//! low latency, how its bitrate is set, and the parser its output goes
//! through.
//!
//! H.264 is what every guest gets unless it asks for another codec (the
//! CODEC extension); its encoder is required at startup. H.265 and AV1 are
//! optional: a daemon without an encoder for one refuses the guests that
//! ask for it, saying why ([`Encoders::for_codec`]).
//!
//! Every known encoder is set up the same way: no B-frames or lookahead
//! (each frame's access unit comes out before the next frame goes in), a
//! constant bitrate from the guest's CONFIG_REQ, keyframes when the guest
//! asks for them (force-key-unit; they come out as IDR pictures, H.265
//! GOPs are closed so the encoder's own keyframes are IDRs too) and at
//! the encoder's own long maximum interval otherwise.

use anyhow::{anyhow, bail};
use gst::glib;
use gst::prelude::*;
use hxfr::Codec;
use tracing::debug;

use crate::encoder::Params;

/// The order in which `auto` tries encoders for `codec`: hardware first
/// (VideoToolbox, NVENC, VA, VA-API, Quick Sync), then software.
pub fn auto_order(codec: Codec) -> &'static [&'static str] {
    match codec {
        Codec::H264 => &[
            "vtenc_h264_hw",
            "nvh264enc",
            "vah264enc",
            "vaapih264enc",
            "qsvh264enc",
            "x264enc",
            "openh264enc",
        ],
        Codec::H265 => &[
            "vtenc_h265_hw",
            "nvh265enc",
            "vah265enc",
            "vaapih265enc",
            "qsvh265enc",
            "x265enc",
        ],
        // SVT-AV1 is the fastest software AV1 encoder; libaom (av1enc) in
        // its realtime mode next; rav1e last.
        Codec::Av1 => &[
            "nvav1enc",
            "vaav1enc",
            "qsvav1enc",
            "svtav1enc",
            "av1enc",
            "rav1enc",
        ],
    }
}

/// The Debian packages of the software encoders, for the error that says
/// none is usable.
fn install_hint(codec: Codec) -> &'static str {
    match codec {
        Codec::H264 => {
            "Install x264enc (gstreamer1.0-plugins-ugly) or openh264enc (gstreamer1.0-plugins-bad)"
        }
        Codec::H265 => "Install x265enc (gstreamer1.0-plugins-bad)",
        Codec::Av1 => "Install av1enc (gstreamer1.0-plugins-bad) or svtav1enc",
    }
}

/// The parser after the encoder: it writes the parameter sets into every
/// keyframe and hands out whole access (temporal) units.
pub fn parser(codec: Codec) -> gst::Element {
    let made = match codec {
        Codec::H264 => gst::ElementFactory::make("h264parse")
            .property("config-interval", -1i32)
            .build(),
        Codec::H265 => gst::ElementFactory::make("h265parse")
            .property("config-interval", -1i32)
            .build(),
        Codec::Av1 => gst::ElementFactory::make("av1parse").build(),
    };
    made.unwrap_or_else(|_| panic!("the {codec} parser is checked at startup"))
}

fn parser_name(codec: Codec) -> &'static str {
    match codec {
        Codec::H264 => "h264parse",
        Codec::H265 => "h265parse",
        Codec::Av1 => "av1parse",
    }
}

/// The caps of what the parser hands out (and the guest gets).
pub fn output_caps(codec: Codec) -> gst::Caps {
    let (format, alignment) = codec.stream_format();
    gst::Caps::builder(codec.media_type())
        .field("stream-format", format)
        .field("alignment", alignment)
        .build()
}

#[derive(Debug, Clone)]
pub struct EncoderChoice {
    pub factory: String,
    pub codec: Codec,
    /// It makes a keyframe when asked (see `crate::keyframes`).
    pub forces_keyframes: bool,
    /// Why this encoder, for the startup log.
    pub reason: String,
}

/// Picks the encoder for `codec` from `spec` (`auto` or a factory name).
pub fn choose(spec: &str, codec: Codec) -> anyhow::Result<EncoderChoice> {
    if gst::ElementFactory::find(parser_name(codec)).is_none() {
        bail!(
            "{} is not installed (gstreamer1.0-plugins-bad): {codec} output cannot be parsed",
            parser_name(codec)
        );
    }
    if spec != "auto" {
        usable(spec, codec).map_err(|why| anyhow!("encoder {spec:?} cannot be used: {why}"))?;
        return Ok(EncoderChoice {
            factory: spec.to_string(),
            codec,
            forces_keyframes: true,
            reason: "chosen on the command line".into(),
        });
    }
    let order = auto_order(codec);
    let mut skipped = Vec::new();
    for name in order {
        match usable(name, codec) {
            Ok(()) => {
                let mut reason = format!("auto: first usable of {}", order.join(", "));
                if !skipped.is_empty() {
                    reason.push_str(&format!("; skipped {}", skipped.join("; ")));
                }
                return Ok(EncoderChoice {
                    factory: name.to_string(),
                    codec,
                    forces_keyframes: true,
                    reason,
                });
            }
            Err(why) => skipped.push(format!("{name} ({why})")),
        }
    }
    bail!(
        "no usable {codec} encoder ({}). {}, or name one with --{}",
        skipped.join("; "),
        install_hint(codec),
        match codec {
            Codec::H264 => "encoder",
            Codec::H265 => "h265-encoder",
            Codec::Av1 => "av1-encoder",
        }
    )
}

fn usable(name: &str, codec: Codec) -> Result<(), String> {
    let factory = gst::ElementFactory::find(name).ok_or("not installed")?;
    let wanted = gst::Caps::builder(codec.media_type()).build();
    let makes_it = factory
        .static_pad_templates()
        .iter()
        .any(|t| t.direction() == gst::PadDirection::Src && t.caps().can_intersect(&wanted));
    if !makes_it {
        return Err(format!("does not produce {}", codec.media_type()));
    }
    let element = factory
        .create()
        .build()
        .map_err(|e| format!("cannot be created: {e}"))?;
    let ready = element.set_state(gst::State::Ready);
    let _ = element.set_state(gst::State::Null);
    ready.map_err(|_| "cannot start (no device or driver?)".to_string())?;
    Ok(())
}

/// The encoder of each codec, or why there is none.
#[derive(Debug, Clone)]
pub struct Encoders {
    pub h264: EncoderChoice,
    pub h265: Result<EncoderChoice, String>,
    pub av1: Result<EncoderChoice, String>,
}

impl Encoders {
    /// Encoders from the command line: `h264` must be usable; `h265` and
    /// `av1` are `auto` (the first usable, or none), `none`, or a factory,
    /// which must then be usable.
    pub fn choose(h264: &str, h265: &str, av1: &str) -> anyhow::Result<Encoders> {
        let optional =
            |spec: &str, codec: Codec| -> anyhow::Result<Result<EncoderChoice, String>> {
                match spec {
                    "none" => Ok(Err(format!(
                        "this host's {codec} encoding is switched off (--{}-encoder none)",
                        flag_name(codec)
                    ))),
                    "auto" => Ok(choose(spec, codec)
                        .map_err(|e| format!("this host has no {codec} encoder ({e:#})"))),
                    factory => choose(factory, codec).map(Ok),
                }
            };
        Ok(Encoders {
            h264: choose(h264, Codec::H264)?,
            h265: optional(h265, Codec::H265)?,
            av1: optional(av1, Codec::Av1)?,
        })
    }

    /// The encoder for `codec`, or why this host has none.
    pub fn for_codec(&self, codec: Codec) -> Result<&EncoderChoice, &str> {
        match codec {
            Codec::H264 => Ok(&self.h264),
            Codec::H265 => self.h265.as_ref().map_err(String::as_str),
            Codec::Av1 => self.av1.as_ref().map_err(String::as_str),
        }
    }
}

/// The `--h265-encoder` / `--av1-encoder` spelling of a codec.
fn flag_name(codec: Codec) -> &'static str {
    match codec {
        Codec::H264 => "h264",
        Codec::H265 => "h265",
        Codec::Av1 => "av1",
    }
}

/// Sets a property only when the element has it, parsing `value` for the
/// property's own type (so `"0"` suits an int or a uint, a nick an enum).
pub fn set_if_present(element: &gst::Element, name: &str, value: &str) {
    let Some(pspec) = element.find_property(name) else {
        return;
    };
    match glib::Value::deserialize_with_pspec(value, &pspec) {
        Ok(v) => element.set_property_from_value(name, &v),
        Err(_) => crate::warn_limited!(
            crate::encoder::OUTPUT_WARNINGS,
            "{}: cannot set {name}={value}",
            element.factory().map(|f| f.name()).unwrap_or_default()
        ),
    }
}

/// The bitrate property of an encoder and whether it counts bit/s (else
/// kbit/s).
fn bitrate_property(factory: &str) -> (&'static str, bool) {
    match factory {
        "openh264enc" => ("bitrate", true),
        "rav1enc" => ("bitrate", true),
        "av1enc" | "svtav1enc" => ("target-bitrate", false),
        _ => ("bitrate", false),
    }
}

/// Whether a new bitrate reaches a running encoder: its bitrate property
/// is documented as changeable in PLAYING (x264enc, x265enc, openh264enc),
/// or it has none (nothing to change). Otherwise a change takes a new
/// session.
pub fn bitrate_is_live(element: &gst::Element, factory: &str) -> bool {
    element
        .find_property(bitrate_property(factory).0)
        .is_none_or(|p| p.flags().contains(gst::PARAM_FLAG_MUTABLE_PLAYING))
}

pub fn set_bitrate(element: &gst::Element, factory: &str, kbps: u32) {
    let (name, bps) = bitrate_property(factory);
    let value = if bps {
        (kbps as u64 * 1000).min(u32::MAX as u64)
    } else {
        kbps as u64
    };
    set_if_present(element, name, &value.to_string());
}

/// Low-latency settings per known encoder (see the module doc), then the
/// bitrate.
pub fn configure(element: &gst::Element, factory: &str, params: Params) {
    let set = |k: &str, v: &str| set_if_present(element, k, v);
    match factory {
        "x264enc" => {
            set("tune", "zerolatency");
            set("speed-preset", "veryfast");
            set("bframes", "0");
            set("b-adapt", "false");
            set("rc-lookahead", "0");
            set("sliced-threads", "true");
        }
        "openh264enc" => {
            set("usage-type", "camera");
            set("rate-control", "bitrate");
            set("complexity", "low");
            set("scene-change-detection", "false");
            set("enable-frame-skip", "false");
        }
        // zerolatency: no B-frames, no lookahead, no frame threads. x265
        // opens its GOPs with CRA pictures by default: closed GOPs make
        // its own keyframes IDRs, which receivers can start from.
        "x265enc" => {
            set("tune", "zerolatency");
            set("speed-preset", "veryfast");
            set("key-int-max", "250");
            set("option-string", "open-gop=0:bframes=0:rc-lookahead=0");
        }
        "nvh264enc" | "nvh265enc" => {
            set("preset", "low-latency-hq");
            set("rc-mode", "cbr");
            set("zerolatency", "true");
            set("bframes", "0");
            set("rc-lookahead", "0");
        }
        "nvav1enc" => {
            set("tune", "ultra-low-latency");
            set("rate-control", "cbr");
            set("rc-lookahead", "0");
            set("zerolatency", "true");
        }
        "vah264enc" | "vah265enc" | "vaav1enc" => {
            set("b-frames", "0");
            set("rate-control", "cbr");
            set("target-usage", "7");
        }
        "vaapih264enc" | "vaapih265enc" => {
            set("max-bframes", "0");
            set("rate-control", "cbr");
        }
        "qsvh264enc" | "qsvh265enc" | "qsvav1enc" => {
            set("b-frames", "0");
            set("rate-control", "cbr");
            set("low-latency", "true");
        }
        // Checked against GStreamer's vtenc_h264_hw documentation (not run
        // here: no macOS): `realtime` (VideoToolbox's RealTime hint: keep
        // up with the clock rather than compress harder), no frame
        // reordering (no B-frames), `bitrate` in kbit/s like x264enc (set
        // below), `max-keyframe-interval` left at 0 (VideoToolbox's own
        // choice; guests ask for keyframes with force-key-unit, which vtenc
        // turns into VideoToolbox's ForceKeyFrame). Its output is avc, which
        // the h264parse after it turns into byte-stream; it takes no BGRx,
        // so BGRA/RGBA guests go through videoconvert to NV12. vtenc_h265_hw
        // has the same properties (hvc1 output, turned into byte-stream by
        // h265parse).
        "vtenc_h264_hw" | "vtenc_h264" | "vtenc_h265_hw" | "vtenc_h265" => {
            set("realtime", "true");
            set("allow-frame-reordering", "false");
        }
        // libaom's realtime mode at its fastest usable speed, no lagged
        // frames, constant bitrate, a keyframe at most every 250 frames
        // (libaom's default is 30) besides those asked for. The quantizer
        // range must be set with CBR: av1enc passes its default (0..0) on,
        // and libaom 3.6 aborts the process on it (an assertion in its rate
        // control).
        "av1enc" => {
            set("usage-profile", "realtime");
            set("cpu-used", "8");
            set("lag-in-frames", "0");
            set("end-usage", "cbr");
            set("min-quantizer", "0");
            set("max-quantizer", "63");
            set("keyframe-max-dist", "250");
            set("row-mt", "true");
        }
        // SVT-AV1: a fast preset and its low-delay prediction structure.
        "svtav1enc" => {
            set("preset", "10");
            set("intra-period-length", "250");
            set("parameters-string", "pred-struct=1:lookahead=0");
        }
        "rav1enc" => {
            set("low-latency", "true");
            set("speed-preset", "10");
            set("max-key-frame-interval", "250");
            set("rdo-lookahead-frames", "0");
        }
        other => debug!("no low-latency settings known for {other}; using its defaults"),
    }
    set_bitrate(element, factory, params.bitrate_kbps);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_bitrate_follows_the_property_flags() {
        gst::init().unwrap();
        let make = |f: &str| gst::ElementFactory::make(f).build().unwrap();
        assert!(bitrate_is_live(&make("x264enc"), "x264enc"));
        assert!(bitrate_is_live(&make("x265enc"), "x265enc"));
        assert!(bitrate_is_live(&make("openh264enc"), "openh264enc"));
        // libav's encoders document bitrate as settable before start only.
        assert!(!bitrate_is_live(&make("avenc_mpeg4"), "avenc_mpeg4"));
        assert!(
            bitrate_is_live(&make("identity"), "identity"),
            "no bitrate: nothing to change"
        );
    }

    #[test]
    fn each_codec_gets_its_own_encoder_and_a_missing_one_is_explained() {
        gst::init().unwrap();
        assert_eq!(choose("auto", Codec::H265).unwrap().factory, "x265enc");
        assert_eq!(choose("auto", Codec::Av1).unwrap().factory, "av1enc");
        let e = choose("x264enc", Codec::H265).unwrap_err().to_string();
        assert!(e.contains("does not produce video/x-h265"), "{e}");
        let encoders = Encoders::choose("auto", "none", "auto").unwrap();
        assert!(encoders
            .for_codec(Codec::H265)
            .unwrap_err()
            .contains("--h265-encoder none"));
        assert_eq!(encoders.for_codec(Codec::Av1).unwrap().codec, Codec::Av1);
        assert!(Encoders::choose("auto", "no-such-enc", "auto").is_err());
    }

    #[test]
    fn encoders_are_set_up_for_low_latency() {
        gst::init().unwrap();
        let x265 = gst::ElementFactory::make("x265enc").build().unwrap();
        configure(
            &x265,
            "x265enc",
            Params {
                bitrate_kbps: 700,
                fps_n: 30,
                fps_d: 1,
            },
        );
        assert_eq!(x265.property::<u32>("bitrate"), 700);
        assert!(x265
            .property::<String>("option-string")
            .contains("open-gop=0"));
        let aom = gst::ElementFactory::make("av1enc").build().unwrap();
        configure(
            &aom,
            "av1enc",
            Params {
                bitrate_kbps: 500,
                fps_n: 30,
                fps_d: 1,
            },
        );
        assert_eq!(aom.property::<u32>("target-bitrate"), 500);
        assert_eq!(aom.property::<u32>("lag-in-frames"), 0);
        assert_eq!(
            aom.property::<u32>("max-quantizer"),
            63,
            "libaom aborts on CBR without a range"
        );
    }
}
