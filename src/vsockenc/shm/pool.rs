//! The buffer pool offered upstream: its buffers are slots of the region,
//! so `videoconvert`, `videoscale` or a source that takes buffers from
//! downstream's pool write their pixels straight into shared memory.
//!
//! * Each buffer carries a VideoMeta with GStreamer's default plane
//!   offsets and strides for the caps (the send path takes any layout).
//! * When the region is full, a buffer of ordinary memory is handed out
//!   instead, so upstream never waits on the host; such a buffer is copied
//!   into a slot (or sent over the socket) when it comes to be sent.
//! * Free buffers are reused last in, first out: the buffer just given
//!   back by the host is the one upstream writes next, still in the cache.
//!   (The base class's queue is first in, first out, which cycles through
//!   every buffer ever allocated: measured, a 1080p BGRx frame cost the
//!   guest twice the CPU.)

use std::sync::{Arc, OnceLock};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use parking_lot::Mutex;

use super::region::Region;

mod imp {
    use super::*;

    #[derive(Default)]
    pub struct ShmPool {
        pub region: OnceLock<Arc<Region>>,
        /// The caps' layout and the buffer size, from the configuration.
        layout: Mutex<Option<(gst_video::VideoInfo, usize)>>,
        /// Free buffers, most recently freed last.
        free: Mutex<Vec<gst::Buffer>>,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for ShmPool {
        const NAME: &'static str = "GstVsockEncShmPool";
        type Type = super::ShmPool;
        type ParentType = gst::BufferPool;
    }

    impl ObjectImpl for ShmPool {}
    impl GstObjectImpl for ShmPool {}

    impl BufferPoolImpl for ShmPool {
        fn options() -> &'static [&'static str] {
            static OPTIONS: OnceLock<[&'static str; 1]> = OnceLock::new();
            OPTIONS.get_or_init(|| [gst_video::BUFFER_POOL_OPTION_VIDEO_META.as_str()])
        }

        fn set_config(&self, config: &mut gst::BufferPoolConfigRef) -> bool {
            let Some((Some(caps), size, _, _)) = config.params() else {
                return false;
            };
            let Ok(info) = gst_video::VideoInfo::from_caps(&caps) else {
                return false;
            };
            let size = (size as usize).max(info.size());
            *self.layout.lock() = Some((info, size));
            self.free.lock().clear();
            self.parent_set_config(config)
        }

        fn alloc_buffer(
            &self,
            _params: Option<&gst::BufferPoolAcquireParams>,
        ) -> Result<gst::Buffer, gst::FlowError> {
            let (info, size) = self
                .layout
                .lock()
                .clone()
                .ok_or(gst::FlowError::NotNegotiated)?;
            let memory = match self.region.get().and_then(|r| r.alloc(size)) {
                Some(slot) => {
                    let mut m = gst::Memory::from_mut_slice(slot);
                    m.get_mut().unwrap().resize(..size);
                    m
                }
                None => gst::Memory::with_size(size),
            };
            let mut buffer = gst::Buffer::new();
            {
                let b = buffer.get_mut().unwrap();
                b.append_memory(memory);
                let offsets: Vec<usize> = info.offset().to_vec();
                gst_video::VideoMeta::add_full(
                    b,
                    gst_video::VideoFrameFlags::empty(),
                    info.format(),
                    info.width(),
                    info.height(),
                    &offsets,
                    info.stride(),
                )
                .map_err(|_| gst::FlowError::Error)?;
            }
            Ok(buffer)
        }

        fn acquire_buffer(
            &self,
            params: Option<&gst::BufferPoolAcquireParams>,
        ) -> Result<gst::Buffer, gst::FlowError> {
            if let Some(b) = self.free.lock().pop() {
                return Ok(b);
            }
            // Allocates a new one (the pool has no maximum).
            self.parent_acquire_buffer(params)
        }

        fn release_buffer(&self, buffer: gst::Buffer) {
            // Only a buffer as the pool made it is reused (the base class's
            // rules): its memory untouched, its size unchanged.
            let size = self.layout.lock().as_ref().map(|(_, s)| *s);
            let intact = !buffer.flags().contains(gst::BufferFlags::TAG_MEMORY)
                && Some(buffer.size()) == size
                && buffer.is_all_memory_writable();
            if intact && self.obj().is_active() {
                self.free.lock().push(buffer);
            }
        }

        fn stop(&self) -> bool {
            self.free.lock().clear();
            self.parent_stop()
        }
    }
}

glib::wrapper! {
    pub struct ShmPool(ObjectSubclass<imp::ShmPool>)
        @extends gst::BufferPool, gst::Object;
}

/// A pool for `caps` whose buffers live in the region, and its buffer size.
pub fn pool(region: &Arc<Region>, caps: &gst::Caps) -> Option<(gst::BufferPool, u32)> {
    let info = gst_video::VideoInfo::from_caps(caps).ok()?;
    let size = u32::try_from(info.size()).ok()?;
    let pool: ShmPool = glib::Object::new();
    let _ = pool.imp().region.set(region.clone());
    let mut config = pool.config();
    // No upper bound: a pool that blocks upstream while the host holds its
    // buffers could stall the pipeline.
    config.set_params(Some(caps), size, 0, 0);
    config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META.as_ref());
    pool.set_config(config).ok()?;
    Some((pool.upcast(), size))
}
