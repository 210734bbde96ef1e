//! The buffer pool offered upstream: its buffers are slots of the region,
//! so `videoconvert`, `videoscale` or an `appsrc` that takes buffers from
//! downstream's pool write their pixels straight into shared memory.
//!
//! It is a plain `GstVideoBufferPool` (strides, plane offsets, VideoMeta)
//! whose allocator hands out slots. When the region is full the allocator
//! hands out ordinary memory instead, so upstream never waits on the host;
//! such a buffer is copied into a slot (or sent over the socket) later.

use std::sync::{Arc, OnceLock};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::region::Region;

mod imp {
    use super::*;

    #[derive(Default)]
    pub struct ShmAllocator {
        pub region: OnceLock<Arc<Region>>,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for ShmAllocator {
        const NAME: &'static str = "GstVsockEncShmAllocator";
        type Type = super::ShmAllocator;
        type ParentType = gst::Allocator;
    }

    impl ObjectImpl for ShmAllocator {}
    impl GstObjectImpl for ShmAllocator {}

    unsafe impl AllocatorImpl for ShmAllocator {
        unsafe fn alloc(
            &self,
            size: usize,
            _params: &gst::AllocationParams,
        ) -> *mut gst::ffi::GstMemory {
            use glib::translate::IntoGlibPtr;
            // Slots are page aligned, which satisfies any alignment a
            // video pool asks for.
            let mem = match self.region.get().and_then(|r| r.alloc(size)) {
                Some(slot) => {
                    let mut mem = gst::Memory::from_mut_slice(slot);
                    mem.get_mut().unwrap().resize(..size);
                    mem
                }
                None => gst::Memory::with_size(size),
            };
            mem.into_glib_ptr()
        }
    }
}

glib::wrapper! {
    pub struct ShmAllocator(ObjectSubclass<imp::ShmAllocator>)
        @extends gst::Allocator, gst::Object;
}

impl ShmAllocator {
    pub fn new(region: Arc<Region>) -> ShmAllocator {
        let a: ShmAllocator = glib::Object::new();
        let _ = a.imp().region.set(region);
        a
    }
}

/// A video pool for `caps` whose buffers live in the region, its buffer
/// size, and its allocator (which upstream must be told about too: a
/// source configures the pool with the allocator of the query).
pub fn pool(
    region: &Arc<Region>,
    caps: &gst::Caps,
) -> Option<(gst::BufferPool, u32, gst::Allocator)> {
    let info = gst_video::VideoInfo::from_caps(caps).ok()?;
    let size = u32::try_from(info.size()).ok()?;
    let pool = gst_video::VideoBufferPool::new();
    let allocator = ShmAllocator::new(region.clone());
    let mut config = pool.config();
    // No upper bound: a pool that blocks upstream while the host holds its
    // buffers could stall the pipeline; more buffers come from ordinary
    // memory once the region is full.
    config.set_params(Some(caps), size, 0, 0);
    config.set_allocator(Some(allocator.upcast_ref::<gst::Allocator>()), None);
    config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META.as_ref());
    pool.set_config(config).ok()?;
    Some((pool.upcast(), size, allocator.upcast()))
}
