//! Property defaults and the `Settings` the element reads when it starts.

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use super::transport::Address;

pub const DEFAULT_SOCKET_PATH: Option<&str> = None;
pub const DEFAULT_TCP_HOST: Option<&str> = None;
/// The port the legacy helix host listened on.
pub const DEFAULT_TCP_PORT: u32 = 15937;
/// `VMADDR_CID_HOST`.
pub const DEFAULT_CID: u32 = 2;
pub const DEFAULT_PORT: u32 = 5000;
pub const DEFAULT_KEYFRAME_INTERVAL: i32 = 60;
/// kbit/s.
pub const DEFAULT_BITRATE: i32 = 4000;
pub const MAX_BITRATE: i32 = 2_000_000;
/// Milliseconds.
pub const DEFAULT_RESPONSE_TIMEOUT: u32 = 2000;
pub const MIN_RESPONSE_TIMEOUT: u32 = 10;
pub const MAX_RESPONSE_TIMEOUT: u32 = 600_000;
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 4;
pub const MAX_MAX_IN_FLIGHT: u32 = 64;
/// Milliseconds.
pub const DEFAULT_CONNECT_TIMEOUT: u32 = 3000;
pub const MIN_CONNECT_TIMEOUT: u32 = 10;
pub const MAX_CONNECT_TIMEOUT: u32 = 600_000;
pub const DEFAULT_RECONNECT: bool = true;
/// Milliseconds.
pub const DEFAULT_RECONNECT_INTERVAL: u32 = 1000;
pub const MIN_RECONNECT_INTERVAL: u32 = 10;
pub const MAX_RECONNECT_INTERVAL: u32 = 3_600_000;
pub const DEFAULT_WAIT_FOR_HOST: bool = false;
/// Milliseconds; legacy hosts drop a client that is silent for 30 s.
pub const DEFAULT_KEEPALIVE_INTERVAL: u32 = 10_000;
pub const MAX_KEEPALIVE_INTERVAL: u32 = 3_600_000;
/// Announce the protocol extensions (HELLO) and use what the host accepts.
pub const DEFAULT_EXTENSIONS: bool = true;
/// Ask the host for a checksum of every frame it encodes (tests, debugging).
pub const DEFAULT_VERIFY_FRAMES: bool = false;
/// Share frames through memory with hosts that can (extension SHM).
pub const DEFAULT_SHARED_MEMORY: bool = true;
/// The ivshmem device: found in sysfs when not set.
pub const DEFAULT_SHM_DEVICE: Option<&str> = None;

#[derive(Debug, Clone)]
pub struct Settings {
    pub socket_path: Option<String>,
    pub tcp_host: Option<String>,
    pub tcp_port: u32,
    pub cid: u32,
    pub port: u32,
    pub keyframe_interval: i32,
    pub bitrate_kbps: i32,
    pub response_timeout_ms: u32,
    pub max_in_flight: u32,
    pub connect_timeout_ms: u32,
    pub reconnect: bool,
    pub reconnect_interval_ms: u32,
    pub wait_for_host: bool,
    pub keepalive_interval_ms: u32,
    pub extensions: bool,
    pub verify_frames: bool,
    pub shared_memory: bool,
    pub shm_device: Option<String>,
    /// The element's codec (its class's, not a property): asked for in
    /// every HELLO.
    pub codec: hxfr::Codec,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            socket_path: DEFAULT_SOCKET_PATH.map(String::from),
            tcp_host: DEFAULT_TCP_HOST.map(String::from),
            tcp_port: DEFAULT_TCP_PORT,
            cid: DEFAULT_CID,
            port: DEFAULT_PORT,
            keyframe_interval: DEFAULT_KEYFRAME_INTERVAL,
            bitrate_kbps: DEFAULT_BITRATE,
            response_timeout_ms: DEFAULT_RESPONSE_TIMEOUT,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT,
            reconnect: DEFAULT_RECONNECT,
            reconnect_interval_ms: DEFAULT_RECONNECT_INTERVAL,
            wait_for_host: DEFAULT_WAIT_FOR_HOST,
            keepalive_interval_ms: DEFAULT_KEEPALIVE_INTERVAL,
            extensions: DEFAULT_EXTENSIONS,
            verify_frames: DEFAULT_VERIFY_FRAMES,
            shared_memory: DEFAULT_SHARED_MEMORY,
            shm_device: DEFAULT_SHM_DEVICE.map(String::from),
            codec: hxfr::Codec::H264,
        }
    }
}

impl Settings {
    /// The legacy transport choice: Unix socket, else TCP, else AF_VSOCK.
    pub fn address(&self) -> Address {
        if let Some(path) = self.socket_path.as_deref().filter(|p| !p.is_empty()) {
            Address::Unix(path.into())
        } else if let Some(host) = self.tcp_host.as_deref().filter(|h| !h.is_empty()) {
            Address::Tcp {
                host: host.to_string(),
                port: self.tcp_port.min(u16::MAX as u32) as u16,
            }
        } else {
            Address::Vsock {
                cid: self.cid,
                port: self.port,
            }
        }
    }

    pub fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.response_timeout_ms as u64)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms as u64)
    }

    pub fn reconnect_interval(&self) -> Duration {
        Duration::from_millis(self.reconnect_interval_ms as u64)
    }

    pub fn keepalive_interval(&self) -> Option<Duration> {
        (self.keepalive_interval_ms > 0)
            .then(|| Duration::from_millis(self.keepalive_interval_ms as u64))
    }

    /// The extensions announced in HELLO (0: no HELLO, pure legacy HXFR);
    /// SHM is added by the link when it has a region.
    pub fn requested_extensions(&self) -> u32 {
        use hxfr::ext::ext_bits::*;
        if !self.extensions {
            return 0;
        }
        let verify = if self.verify_frames {
            FRAME_CHECKSUM
        } else {
            0
        };
        COMPACT | LZ4 | ERROR_PTS | DRAIN | PROFILE | FORMATS | verify
    }
}

/// The settings that may change while the element runs (PLAYING
/// included). The element reads them at the moment they matter: the
/// keyframe interval for every frame, the bitrate for every CONFIG_REQ.
#[derive(Debug)]
pub struct Live {
    keyframe_interval: AtomicI32,
    bitrate_kbps: AtomicI32,
}

impl Live {
    pub fn new(s: &Settings) -> Live {
        Live {
            keyframe_interval: AtomicI32::new(s.keyframe_interval),
            bitrate_kbps: AtomicI32::new(s.bitrate_kbps),
        }
    }

    pub fn keyframe_interval(&self) -> i32 {
        self.keyframe_interval.load(Ordering::Relaxed)
    }

    pub fn set_keyframe_interval(&self, v: i32) {
        self.keyframe_interval.store(v, Ordering::Relaxed);
    }

    /// Bits per second for CONFIG_REQ.
    pub fn bitrate_bps(&self) -> u32 {
        kbps_to_bps(self.bitrate_kbps.load(Ordering::Relaxed))
    }

    pub fn set_bitrate_kbps(&self, v: i32) {
        self.bitrate_kbps.store(v, Ordering::Relaxed);
    }
}

fn kbps_to_bps(kbps: i32) -> u32 {
    (kbps.max(0) as u64 * 1000).min(u32::MAX as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_choice_follows_the_legacy_element() {
        let mut s = Settings::default();
        assert_eq!(s.address(), Address::Vsock { cid: 2, port: 5000 });
        s.tcp_host = Some("10.0.2.2".into());
        assert_eq!(
            s.address(),
            Address::Tcp {
                host: "10.0.2.2".into(),
                port: 15937
            }
        );
        s.socket_path = Some("/run/x.sock".into());
        assert_eq!(s.address(), Address::Unix("/run/x.sock".into()));
    }

    #[test]
    fn bitrate_is_kbit_per_second() {
        let live = Live::new(&Settings::default());
        assert_eq!(live.bitrate_bps(), 4_000_000);
        live.set_bitrate_kbps(500);
        assert_eq!(live.bitrate_bps(), 500_000);
    }
}
