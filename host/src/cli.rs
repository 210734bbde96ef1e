//! Command-line interface.

use std::time::Duration;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use std::net::SocketAddr;

use crate::access::{self, ListenSpec};
use crate::log::{Format, Level};

pub const DEFAULT_VSOCK_PORT: u32 = 5000;
pub const DEFAULT_TCP: &str = "tcp:127.0.0.1:15937";

const ABOUT: &str = "Host-side H.264, H.265 and AV1 encoder daemon for vsockenc guests.

Guests (the vsockenc GStreamer element, or the legacy gstvsockenc) send raw
frames over AF_VSOCK, TCP or a Unix socket using the HXFR protocol; the daemon
encodes each connection's frames with its own GStreamer encoding session and
sends the encoded access units back, in request order, on the same connection.";

const AFTER_HELP: &str = "\
Listen addresses (--listen, repeatable):
  unix:/path/to/socket   Unix stream socket. Firecracker, cloud-hypervisor and
                         vhost-device-vsock map a guest's AF_VSOCK connection to
                         host port P onto the Unix socket <uds_path>_P, so for a
                         guest connecting to port 5000 listen on
                         unix:<uds_path>_5000. A lock file <path>.lock is held
                         while the daemon runs; a socket file left by a crashed
                         daemon is detected (lock free, connect refused) and
                         replaced; the socket file is removed on shutdown.
  tcp:HOST:PORT          TCP, e.g. tcp:127.0.0.1:15937 (QEMU user networking
                         guests reach it as 10.0.2.2:15937). Frames cross the
                         socket unencrypted: binding anything but loopback is
                         allowed but warned about. Port 0 picks a free port.
  vsock:PORT             AF_VSOCK, any CID (Linux hosts, with the vhost_vsock
                         module).
  vsock:CID:PORT         AF_VSOCK, one local CID.
  Without --listen: vsock:5000 when the host has AF_VSOCK (an AF_VSOCK socket
  can be opened and bound; never on macOS, whose AF_VSOCK does not reach QEMU
  or UTM guests), and tcp:127.0.0.1:15937.

Access rules and quotas per listener: ADDR,OPTION=VALUE,... (repeat an
option to allow more). Without rules a listener serves every peer, as
before; with rules only the peers matching one of them, the others get
ERROR -10 (refused) and are closed.
  cid=N, cid=N-M        vsock: the guest's CID (assigned by the hypervisor)
  uid=U, gid=G          unix: the connecting process's user or primary
                        group (SO_PEERCRED), a number or a name
  from=ADDR[/PREFIX]    tcp: the source address
  max-per-peer=N        connections one peer (one CID, one uid, one source
                        address) may hold at once (default --max-per-peer)
  pixel-rate=N          pixels per second one peer may have encoded, e.g.
                        124M (1080p at 60 fps); a faster guest is paced, not
                        refused (default --pixel-rate)
  e.g. --listen vsock:5000,cid=3,cid=4,max-per-peer=2,pixel-rate=124M
       --listen unix:/run/vsockenc-host/vm1.vsock_5000,uid=firecracker

Hostile neighbours: a connection starts pending (it may say HELLO,
CONFIG_REQ, PING) and takes one of the --max-clients slots with its first
frame, so slots are held only by guests that sent a valid frame. Pending
connections are bounded too (twice --max-clients, at least 16): a newcomer
closes the pending connection that has done least (none of its messages
complete, oldest first). A connection must complete a valid message within
--handshake-timeout, and every message must arrive within
--message-timeout or at --min-receive-rate, whichever allows longer.
Frames, reference copies and encoding sessions are paid from one
--memory-budget, each client at most its fair share (the budget divided by
the clients); a frame that does not fit within 2 s gets ERROR -10 naming
the budget. Out of file descriptors, new guests get ERROR -10 saying so
(the soft limit is raised to the hard one at start).

Shared memory: a guest whose pixels are in memory the daemon can map sends
only a short description per frame. Over a Unix socket the guest passes a
sealed memfd; QEMU/KVM guests use an ivshmem-plain device whose backing file
the operator binds here, never a path the guest names:
  --ivshmem unix:/run/vm1.vsock_5000=/dev/shm/vm1-vsockenc
  --ivshmem tcp:127.0.0.1:15940=/dev/shm/vm2-vsockenc  (one port per VM)
  --ivshmem cid=4=/dev/shm/vm4-vsockenc                 (kernel vhost-vsock)
The guest proves it sees the same region (a random header it wrote there)
before any frame uses it; every slot it names is checked against the region.
Log lines: 'shared memory in use: ...' per connection, and the statistics
count 'shared-memory frames'.

Encoders (--encoder auto): the first usable of vtenc_h264_hw, nvh264enc,
vah264enc, vaapih264enc, qsvh264enc, x264enc, openh264enc. Guests that ask for
H.265 (vsockh265enc) get --h265-encoder: the first usable of vtenc_h265_hw,
nvh265enc, vah265enc, vaapih265enc, qsvh265enc, x265enc; guests that ask for
AV1 (vsockav1enc) get --av1-encoder: nvav1enc, vaav1enc, qsvav1enc, svtav1enc,
av1enc, rav1enc. Without one (or with 'none') those guests are refused with
the reason, and the startup log says so. Each known encoder is set up for low
latency (no B-frames, zero-latency tuning, bitrate from the guest's CONFIG_REQ
or --bitrate, keyframes on request as IDR / key frames).

Frames: BGRA/BGRx, RGBA/RGBx and NV12 pixels (resource_id 0). Frames naming a
virtio-gpu resource get an ERROR: this daemon cannot read guest GPU memory.
H.264 4:2:0 has no odd sizes: an odd width or height is padded by one
repeated column/row. A client holds at most --max-in-flight frames of memory.

Logs: every line about a client names it as tcp:ADDR#N, unix:PATH#N or
vsock:CID:PORT#N, where N numbers the connections since start. Each such
line belongs to the connection's span `conn`, whose fields are conn (N),
client (the name above), listener, peer, and uid, gid, pid (Unix peers) or
cid (vsock peers). --log-filter (or VSOCKENC_HOST_LOG) refines --log-level
with comma-separated directives:
  LEVEL                       the level of everything else (replaces
                              --log-level)
  TARGET=LEVEL                a module and those below it: vsockenc_host
                              (everything), vsockenc_host::client (guests'
                              requests), vsockenc_host::encoder,
                              vsockenc_host::listen, vsockenc_host::stats,
                              vsockenc_host::shutdown
  [conn{FIELD=VALUE}]=LEVEL   lines of the matching connections
e.g. 'info,[conn{conn=7}]=debug' (debug for connection #7 only),
'off,[conn{conn=7}]=trace' (connection #7's lines and nothing else),
'warn,[conn{cid=3}]=trace' (everything about the vsock guest with CID 3,
only warnings about the others), 'info,vsockenc_host::stats=warn'.
--log-format json writes one JSON object per line (the span's fields under
`span`); journald sends native journal entries with the span's fields as
VSOCKENC_CONN, VSOCKENC_CID, ... (journalctl VSOCKENC_CID=3). The default,
auto, is journald when stderr is the service's journal stream under
systemd, else the plain lines.

Exit status: 0 after a clean shutdown (SIGINT/SIGTERM: stop accepting, finish
in-flight encodes for a bounded time, send their responses, remove socket
files; a second signal exits at once), 1 when the daemon cannot start (an
address is in use, another vsockenc-host already listens on a Unix path, no
encoder), 2 for a usage error.";

#[derive(Debug, Parser)]
#[command(name = "vsockenc-host", version, about = ABOUT, long_about = ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    /// Address to listen on: unix:PATH, tcp:HOST:PORT, vsock:PORT or
    /// vsock:CID:PORT, optionally followed by access rules and quotas
    /// (,cid=3,...; see below) (repeatable; see below for the default).
    #[arg(long = "listen", value_name = "ADDR[,OPTION=VALUE...]")]
    pub listen: Vec<ListenSpec>,

    /// Binds a shared-memory region (the backing file of a guest's
    /// ivshmem-plain device) to the guests of a listener (SCOPE: the
    /// address as given to --listen) or to one vsock CID (SCOPE: cid=N);
    /// repeatable. See below.
    #[arg(long, value_name = "SCOPE=PATH")]
    pub ivshmem: Vec<crate::shm::Binding>,

    /// `auto` or a GStreamer H.264 encoder element factory (e.g. x264enc).
    #[arg(long, value_name = "auto|FACTORY", default_value = "auto")]
    pub encoder: String,

    /// H.265 for guests that ask for it: `auto` (the first usable, or none),
    /// `none`, or a GStreamer H.265 encoder factory (e.g. x265enc).
    #[arg(long, value_name = "auto|none|FACTORY", default_value = "auto")]
    pub h265_encoder: String,

    /// AV1 for guests that ask for it: `auto` (the first usable, or none),
    /// `none`, or a GStreamer AV1 encoder factory (e.g. av1enc).
    #[arg(long, value_name = "auto|none|FACTORY", default_value = "auto")]
    pub av1_encoder: String,

    /// Bitrate in kbit/s for sessions whose guest sent no CONFIG_REQ.
    #[arg(long, value_name = "KBPS", default_value_t = 4000, value_parser = clap::value_parser!(u32).range(1..=2_000_000))]
    pub bitrate: u32,

    /// Most guests served at once (a guest is served from its first
    /// frame on); more are sent an ERROR and closed.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_clients: u32,

    /// Connections one peer (one vsock CID, Unix uid or TCP address) may
    /// hold at once, for listeners without their own max-per-peer
    /// (default: no limit but --max-clients).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_per_peer: Option<u32>,

    /// Pixels per second one peer may have encoded, e.g. 124M, for
    /// listeners without their own pixel-rate (default: no limit).
    #[arg(long, value_name = "N", value_parser = access::parse_rate)]
    pub pixel_rate: Option<u64>,

    /// Memory for frames read ahead, reference copies and encoding
    /// sessions, all guests together, e.g. 2G (default: a quarter of the
    /// machine's memory, or of the service's cgroup limit).
    #[arg(long, value_name = "SIZE", value_parser = crate::budget::parse_size)]
    pub memory_budget: Option<u64>,

    /// Seconds a new connection has to complete a valid message (a vsockenc
    /// guest says HELLO at once; a legacy guest sends its first frame).
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub handshake_timeout: u64,

    /// Seconds any message may take to arrive once its first byte came
    /// (larger messages get longer: see --min-receive-rate).
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub message_timeout: u64,

    /// Bytes per second a message must arrive at, at least (with K, M, G:
    /// binary multiples); a 33 MB 4K frame gets 32 s at the default 1M.
    #[arg(long, value_name = "RATE", default_value = "1M", value_parser = parse_receive_rate)]
    pub min_receive_rate: u64,

    /// Serve Prometheus metrics at http://ADDR/metrics (HOST:PORT or
    /// tcp:HOST:PORT, e.g. 127.0.0.1:9464); off by default.
    #[arg(long, value_name = "ADDR", value_parser = crate::metrics::parse_addr)]
    pub metrics: Option<SocketAddr>,

    /// Largest pixel block of one frame, in bytes; larger frames get an
    /// ERROR and are skipped without being buffered.
    #[arg(long, value_name = "N", default_value_t = 64 << 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_frame_bytes: u32,

    /// Frames (and other responses) one client may have pending; reading
    /// from that client pauses while the limit is reached, which bounds
    /// the memory a client can make the daemon hold.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_in_flight: u32,

    /// Permissions of Unix socket files, in octal.
    #[arg(long, value_name = "OCTAL", default_value = "0600", value_parser = parse_mode)]
    pub socket_mode: u32,

    /// Seconds between per-client statistics lines (0 = only at disconnect).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub stats_interval: u64,

    /// Seconds a client may leave responses unread (its socket buffer full)
    /// before it is disconnected.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub write_timeout: u64,

    /// Seconds to wait for one frame's encoded output before answering it
    /// with an ERROR (encode failed).
    #[arg(long, value_name = "SECS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub encode_timeout: u64,

    /// Seconds a guest may send nothing at all before it is disconnected
    /// (0 = never). Legacy hosts use 30-60 s; vsockenc guests PING while idle.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub idle_timeout: u64,

    /// Seconds to finish in-flight encodes on SIGINT/SIGTERM before exiting.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub shutdown_timeout: u64,

    /// Log level of the lines written.
    #[arg(long, value_enum, value_name = "LEVEL", default_value = "info")]
    pub log_level: Level,

    /// Per-module and per-connection log levels, RUST_LOG-style (see
    /// below), applied on top of --log-level.
    #[arg(long, value_name = "DIRECTIVES", env = "VSOCKENC_HOST_LOG", value_parser = parse_filter)]
    pub log_filter: Option<String>,

    /// How log lines are written: plain lines or JSON objects on stderr,
    /// or journald entries; auto: journald under systemd, else human.
    #[arg(long, value_enum, value_name = "FORMAT", default_value = "auto")]
    pub log_format: Format,
}

impl Cli {
    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout)
    }
    pub fn encode_timeout(&self) -> Duration {
        Duration::from_secs(self.encode_timeout)
    }
    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout > 0).then(|| Duration::from_secs(self.idle_timeout))
    }
    pub fn memory_budget(&self) -> u64 {
        self.memory_budget
            .unwrap_or_else(crate::budget::default_limit)
    }
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout)
    }
    pub fn log_filter(&self) -> EnvFilter {
        crate::log::filter(self.log_level, self.log_filter.as_deref())
            .expect("checked when parsing")
    }
}

/// Checks the directives now, so that a typo is a usage error (status 2).
fn parse_filter(s: &str) -> Result<String, String> {
    crate::log::filter(Level::Info, Some(s))?;
    Ok(s.to_string())
}

fn parse_receive_rate(s: &str) -> Result<u64, String> {
    let v = crate::units::scaled(s.trim(), crate::units::BINARY)
        .ok_or_else(|| format!("{s:?} is not a rate (bytes per second, or with K, M, G)"))?;
    if !(1024.0..1e15).contains(&v) {
        return Err(format!("{s:?}: at least 1K"));
    }
    Ok(v as u64)
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let mode = u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .map_err(|e| format!("{s:?} is not an octal mode: {e}"))?;
    if mode > 0o7777 {
        return Err(format!("{s:?} is larger than 07777"));
    }
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn modes_are_octal() {
        assert_eq!(parse_mode("0600"), Ok(0o600));
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert!(parse_mode("0800").is_err());
    }
}
