//! GStreamer plugin `vsockenc`: H.264, H.265 and AV1 encoding handed to the
//! VM host (`vsockenc`, `vsockh265enc`, `vsockav1enc`).

use gst::glib;

pub mod vsockenc;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    vsockenc::register(plugin)?;
    Ok(())
}

gst::plugin_define!(
    vsockenc,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MPL-2.0",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);
