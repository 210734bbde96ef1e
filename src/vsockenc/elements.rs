//! The three elements: thin subclasses of [`super::VsockBaseEnc`] that say
//! which codec they ask the host for, and carry that codec's pad templates
//! and metadata. Everything else is the base's (see the module doc of
//! `vsockenc`).

use gst::glib;

/// One element: its imp type (in a module of its own), GType name, codec
/// and wrapper.
macro_rules! codec_element {
    ($module:ident, $imp:ident, $gtype:literal, $codec:expr, $(#[$doc:meta])* $wrapper:ident) => {
        mod $module {
            use gst::glib;
            use gst::subclass::prelude::*;
            use hxfr::Codec;

            use crate::vsockenc::{imp, VsockBaseEncImpl};

            #[derive(Default)]
            pub struct $imp;

            #[glib::object_subclass]
            impl ObjectSubclass for $imp {
                const NAME: &'static str = $gtype;
                type Type = super::$wrapper;
                type ParentType = crate::vsockenc::VsockBaseEnc;
            }

            impl ObjectImpl for $imp {}
            impl GstObjectImpl for $imp {}

            impl ElementImpl for $imp {
                fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
                    static META: std::sync::LazyLock<gst::subclass::ElementMetadata> =
                        std::sync::LazyLock::new(|| imp::metadata($codec));
                    Some(&*META)
                }

                fn pad_templates() -> &'static [gst::PadTemplate] {
                    static TEMPLATES: std::sync::LazyLock<Vec<gst::PadTemplate>> =
                        std::sync::LazyLock::new(|| imp::pad_templates($codec));
                    TEMPLATES.as_ref()
                }
            }

            // Required of every subclass of an encoder; its vfuncs are never
            // installed (see `VsockBaseEnc`'s class init in mod.rs).
            impl gst_video::subclass::prelude::VideoEncoderImpl for $imp {}

            impl VsockBaseEncImpl for $imp {
                const CODEC: Codec = $codec;
            }
        }

        glib::wrapper! {
            $(#[$doc])*
            pub struct $wrapper(ObjectSubclass<$module::$imp>)
                @extends super::VsockBaseEnc, gst_video::VideoEncoder, gst::Element, gst::Object;
        }
    };
}

codec_element!(
    h264,
    VsockEnc,
    "GstVsockEnc",
    hxfr::Codec::H264,
    /// `vsockenc`: H.264, the element legacy pipelines name.
    VsockEnc
);
codec_element!(
    h265,
    VsockH265Enc,
    "GstVsockH265Enc",
    hxfr::Codec::H265,
    /// `vsockh265enc`: H.265.
    VsockH265Enc
);
codec_element!(
    av1,
    VsockAv1Enc,
    "GstVsockAv1Enc",
    hxfr::Codec::Av1,
    /// `vsockav1enc`: AV1.
    VsockAv1Enc
);
