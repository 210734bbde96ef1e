//! Hostile neighbours (issue 13): each numbered case, bounded, with a
//! healthy guest streaming alongside whose every frame is checked (its own
//! pts, in order, decoding to what it sent); access rules and quotas
//! allowed and denied; the metrics endpoint scraped and parsed.
//!
//! The full-size versions with figures are `scripts/hostile.sh`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hxfr::compact::{CompactEncoder, Compression, Delta, Frame};
use hxfr::ext::{ext_bits, ExtMessage, Hello};
use hxfr::{error_code, Decoded, Decoder, FrameLayout, FrameRequest, Limits, Message, WireFormat};

fn hello(ext: u32) -> Vec<u8> {
    ExtMessage::Hello(Hello {
        version: 1,
        extensions: ext,
        tile_width: 64,
        tile_height: 64,
        agent: "hostile-test".into(),
        ..Default::default()
    })
    .encode(1)
}

/// Case 1: clients trickling bytes hold no slot and are closed by the
/// deadlines; a guest coming meanwhile is served at once.
#[test]
fn slowloris_tricklers_are_closed_and_never_keep_a_guest_out() {
    let d = Daemon::start(&[
        "--listen",
        "tcp:127.0.0.1:0",
        "--encoder",
        "x264enc",
        "--max-clients",
        "2",
        "--handshake-timeout",
        "3",
        "--message-timeout",
        "3",
    ]);
    let addr = d.tcp();
    let stop = Arc::new(AtomicBool::new(false));
    // Two trickle their first message; two say HELLO properly and then
    // trickle a 4K frame (its deadline: 3 s floor, 32 MiB at 1 MiB/s).
    let mut tricklers = Vec::new();
    for i in 0..4 {
        let stop = stop.clone();
        tricklers.push(std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
            if i >= 2 {
                s.write_all(&hello(ext_bits::ERROR_PTS)).unwrap();
            }
            let req = FrameRequest {
                width: 3840,
                height: 2160,
                format: WireFormat::Bgra.fourcc(),
                stride: 3840 * 4,
                ..Default::default()
            };
            let mut bytes = req.encode_prefix(1, Some(3840 * 2160 * 4)).to_vec();
            bytes.extend(std::iter::repeat_n(0u8, 4096));
            let t = Instant::now();
            let mut probe = s.try_clone().unwrap();
            probe.set_nonblocking(true).unwrap();
            for b in bytes {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                if s.write_all(&[b]).is_err() {
                    // Closed by the daemon (a reset shows here first).
                    return Some(t.elapsed());
                }
                let mut buf = [0u8; 1024];
                match probe.read(&mut buf) {
                    Ok(0) => return Some(t.elapsed()),
                    Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => {
                        return Some(t.elapsed())
                    }
                    _ => {}
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            None
        }));
    }
    std::thread::sleep(Duration::from_millis(500));
    let healthy = Healthy::start(addr);
    std::thread::sleep(Duration::from_secs(2));
    let first = healthy
        .first_answer_after()
        .expect("the guest was answered");
    assert!(
        first < Duration::from_secs(3),
        "first answer after {first:?}"
    );
    let closed: Vec<_> = tricklers.into_iter().map(|t| t.join().unwrap()).collect();
    stop.store(true, Ordering::SeqCst);
    for (i, c) in closed.iter().enumerate() {
        let c = c.unwrap_or_else(|| panic!("trickler {i} was never closed:\n{}", d.log()));
        // 3 s deadline plus the 200 ms poll of the reader and the probe.
        assert!(
            c < Duration::from_secs(8),
            "trickler {i} closed after {c:?}"
        );
    }
    assert!(healthy.finish() >= 10);
    let log = d.log();
    assert!(
        log.contains("(--handshake-timeout); closing the connection"),
        "{log}"
    );
    assert!(log.contains("is arriving too slowly"), "{log}");
    assert!(!log.contains("refused"), "{log}");
}

/// Case 2: connections that say HELLO and close, from several threads;
/// a guest starting meanwhile is answered within a second (3 s here, for
/// a loaded machine).
#[test]
fn churn_never_keeps_a_new_guest_waiting() {
    let d = Daemon::start(&["--listen", "tcp:127.0.0.1:0", "--encoder", "x264enc"]);
    let addr = d.tcp();
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let churners: Vec<_> = (0..4)
        .map(|_| {
            let (stop, made) = (stop.clone(), made.clone());
            std::thread::spawn(move || {
                let h = hello(ext_bits::ERROR_PTS);
                let t = Instant::now();
                while !stop.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(30) {
                    if let Ok(mut s) = TcpStream::connect(addr) {
                        let _ = s.write_all(&h);
                    }
                    made.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    let healthy = Healthy::start(addr);
    let t = Instant::now();
    while healthy.first_answer_after().is_none() && t.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(10));
    }
    let first = healthy.first_answer_after().expect("answered");
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    for c in churners {
        c.join().unwrap();
    }
    let n = healthy.finish();
    let churned = made.load(Ordering::Relaxed);
    assert!(churned > 200, "only {churned} churn connections");
    assert!(
        first < Duration::from_secs(3),
        "first answer after {first:?} ({churned} churn connections)"
    );
    assert!(n >= 10);
    let mut d = d;
    d.assert_alive();
    assert!(!d.log().contains("refused: "), "{}", d.log());
}

/// One guest flooding compact frames at 1080p: 30 frames, each all tiles
/// changed, LZ4 (a few KiB each on the wire, 8 MiB rebuilt each).
fn compact_flood(addr: SocketAddr) -> (u32, u32, Option<String>) {
    let (w, h) = (1920u32, 1080u32);
    let stride = w * 4;
    let a = vec![0x10u8; (stride * h) as usize];
    let b = vec![0x80u8; (stride * h) as usize];
    let layout = FrameLayout::new(WireFormat::Bgra, w, h, stride, a.len()).unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&hello(
        ext_bits::COMPACT | ext_bits::LZ4 | ext_bits::ERROR_PTS,
    ))
    .unwrap();
    let mut r = s.try_clone().unwrap();
    let answers = std::thread::spawn(move || {
        let mut dec = Decoder::with_extensions(Limits::default());
        let (mut ok, mut err, mut first) = (0u32, 0u32, None);
        while ok + err < 31 {
            match dec.read_from_ext(&mut r) {
                Ok(Some(Decoded::Legacy(_, Message::FrameResponse(_)))) => ok += 1,
                Ok(Some(Decoded::Ext(_, ExtMessage::ErrorPts(e)))) => {
                    err += 1;
                    first.get_or_insert(e.message);
                }
                Ok(Some(_)) => {}
                other => panic!("the flood's connection ended: {other:?}"),
            }
        }
        (ok, err, first)
    });
    let req = |pts: i64| FrameRequest {
        width: w,
        height: h,
        format: WireFormat::Bgra.fourcc(),
        stride,
        pts,
        duration: 33_333_333,
        ..Default::default()
    };
    hxfr::write::write_frame_request(&mut s, 1, &req(0), &[&a]).unwrap();
    let mut enc = CompactEncoder::new(64, 64, Compression::Always);
    let fa = Frame::from_wire(&layout, &a).unwrap();
    let fb = Frame::from_wire(&layout, &b).unwrap();
    for i in 1..=30u32 {
        let (prev, cur) = if i % 2 == 1 { (&fa, &fb) } else { (&fb, &fa) };
        let Delta::Compact(mut m) = enc.encode(prev, cur, &req(i as i64), i - 1, 1) else {
            panic!("a compact frame")
        };
        assert!(m.wire_len < 200_000, "{}", m.wire_len);
        m.write_to(&mut s).unwrap();
    }
    answers.join().unwrap()
}

/// Case 3: compact frames rebuild full frames from small messages; what
/// they make the daemon hold stays within the budget, and memory comes
/// back when the guests leave.
#[test]
fn compact_amplification_stays_within_the_memory_budget() {
    const BUDGET_MIB: u64 = 240;
    let d = Daemon::start(&[
        "--listen",
        "tcp:127.0.0.1:0",
        "--encoder",
        "x264enc",
        "--memory-budget",
        &format!("{BUDGET_MIB}M"),
    ]);
    let addr = d.tcp();
    // "Before they came": a daemon that has served a guest (its encoder
    // and conversion libraries are loaded), idle again.
    let mut warm = Client::tcp(addr);
    let f = test_frame(Fmt::Bgrx, 64, 48, 256, 0, 1);
    assert_eq!(stream_frames(&mut warm, &[(f, 1, false)], 1).len(), 1);
    drop(warm);
    d.wait_log("disconnected; frames in 1 out 1");
    std::thread::sleep(Duration::from_millis(500));
    let idle_before = d.rss_kib();
    let peak = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop, pid) = (peak.clone(), stop.clone(), d.pid());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    let kib: u64 = s
                        .lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.split_whitespace().next())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let healthy = Healthy::start(addr);
    let floods: Vec<_> = (0..3)
        .map(|_| std::thread::spawn(move || compact_flood(addr)))
        .collect();
    let results: Vec<_> = floods.into_iter().map(|f| f.join().unwrap()).collect();
    assert!(healthy.finish() >= 10);
    stop.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    // Every frame of the floods was answered: encoded, or refused naming
    // the budget.
    for (ok, err, first) in &results {
        assert_eq!(ok + err, 31);
        if let Some(e) = first {
            assert!(
                e.contains("memory budget (--memory-budget 240.0 MiB"),
                "{e}"
            );
        }
    }
    let peak = peak.load(Ordering::Relaxed);
    let held = peak.saturating_sub(idle_before);
    assert!(
        held <= BUDGET_MIB * 1024 * 11 / 10,
        "the floods made the daemon hold {} MiB over its idle {} MiB; budget {BUDGET_MIB} MiB\n{results:?}",
        held / 1024,
        idle_before / 1024
    );
    // Memory comes back once they are gone.
    d.wait_log_count("disconnected; frames in 31", 3);
    let t = Instant::now();
    let mut idle_after = d.rss_kib();
    while idle_after > idle_before * 12 / 10 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
        idle_after = d.rss_kib();
    }
    assert!(
        idle_after <= idle_before * 12 / 10,
        "idle RSS {idle_after} KiB after the floods, {idle_before} KiB before"
    );
}

/// Case 4: out of descriptors, new guests are refused at once with an
/// ERROR that says so; no GStreamer CRITICAL, no half-made session.
#[test]
fn running_out_of_descriptors_refuses_with_an_error_not_a_stall() {
    let d = Daemon::start_limited(
        &["--listen", "tcp:127.0.0.1:0", "--encoder", "x264enc"],
        Some(48),
    );
    let addr = d.tcp();
    // The healthy guest is served before the crowd comes.
    let healthy = Healthy::start(addr);
    let t = Instant::now();
    while healthy.first_answer_after().is_none() && t.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(10));
    }
    let t0 = Instant::now();
    let clients: Vec<_> = (0..40)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = Client::tcp(addr);
                let f = test_frame(Fmt::Nv12, 64, 48, 64, i, 3);
                c.send_frame(&f.request(i as i64, false), &f.pixels);
                let got = match c.recv_or_closed() {
                    Some((_, Message::FrameResponse(r))) => {
                        assert_eq!(r.pts, i as i64);
                        Ok(())
                    }
                    Some((_, Message::Error(e))) => Err(e),
                    other => panic!("client {i}: {other:?}"),
                };
                let after = t0.elapsed();
                // Hold the connection (and its descriptors) a moment.
                std::thread::sleep(Duration::from_millis(1500));
                (got, after)
            })
        })
        .collect();
    let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let served = results.iter().filter(|(r, _)| r.is_ok()).count();
    let refused: Vec<_> = results
        .iter()
        .filter_map(|(r, _)| r.clone().err())
        .collect();
    assert!(served >= 1, "none served");
    assert!(!refused.is_empty(), "48 descriptors cannot serve 40 guests");
    for e in &refused {
        assert_eq!(e.code, error_code::REFUSED, "{e:?}");
        assert!(e.message.contains("out of file descriptors"), "{e:?}");
    }
    let slowest = results.iter().map(|(_, t)| *t).max().unwrap();
    assert!(
        slowest < Duration::from_secs(15),
        "slowest answer after {slowest:?}"
    );
    assert!(healthy.finish() >= 10);
    let log = d.log();
    assert!(!log.contains("CRITICAL"), "{log}");
    assert!(!log.contains("accept failed"), "{log}");
    assert!(
        log.contains(" ERROR ") && log.contains("out of file descriptors (limit 48"),
        "{log}"
    );
    // Rate-limited: a few ERROR lines, not one per refused guest.
    let errors = log
        .lines()
        .filter(|l| l.contains(" ERROR ") && l.contains("out of file descriptors"))
        .count();
    assert!(
        errors <= 6,
        "{errors} ERROR lines for {} refusals",
        refused.len()
    );
    // Every session the log announced answered its frame (the healthy
    // guest's frames are 80x64).
    let sessions = log.matches(": encoding 64x48").count();
    assert_eq!(sessions, served, "{log}");
}

/// Case 5: access rules, each allowed and denied.
#[test]
fn access_rules_let_the_allowed_in_and_keep_the_others_out() {
    let dir = scratch("access");
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    let open_sock = dir.join("mine.sock");
    let gid_sock = dir.join("group.sock");
    let shut_sock = dir.join("other.sock");
    let d = Daemon::start(&[
        "--listen",
        "tcp:127.0.0.1:0,from=127.0.0.0/8",
        "--listen",
        "tcp:127.0.0.1:0,from=10.0.0.0/8,from=::1",
        "--listen",
        &format!("unix:{},uid={uid}", open_sock.display()),
        "--listen",
        &format!("unix:{},gid={gid}", gid_sock.display()),
        "--listen",
        &format!(
            "unix:{},uid={},gid={}",
            shut_sock.display(),
            uid + 1,
            gid + 1
        ),
        "--encoder",
        "x264enc",
    ]);
    let tcp: Vec<SocketAddr> = d
        .listening
        .iter()
        .filter_map(|a| a.strip_prefix("tcp:"))
        .map(|a| a.parse().unwrap())
        .collect();
    let served = |mut c: Client| {
        assert_eq!(
            stream_frames(
                &mut c,
                &[(test_frame(Fmt::Bgrx, 32, 32, 128, 0, 4), 5, false)],
                1
            )[0]
            .pts,
            5
        );
    };
    let denied = |mut c: Client| {
        // Told at once, before sending anything, and closed.
        let e = c.recv_error();
        assert_eq!(e.code, error_code::REFUSED, "{e:?}");
        assert!(e.message.contains("does not serve"), "{e:?}");
        assert!(c.recv_or_closed().is_none());
    };
    let healthy = Healthy::start(tcp[0]);
    served(Client::tcp(tcp[0]));
    denied(Client::tcp(tcp[1]));
    served(Client::unix(&open_sock));
    served(Client::unix(&gid_sock));
    denied(Client::unix(&shut_sock));
    assert!(healthy.finish() >= 10);
    let log = d.log();
    assert!(log.contains("only from=127.0.0.0/8"), "{log}");
    assert!(
        log.contains("127.0.0.1 is not allowed on tcp:127.0.0.1:"),
        "{log}"
    );
    assert!(
        log.contains(&format!("uid {uid} is not allowed on unix:")),
        "{log}"
    );
}

/// Quotas: connections per peer, allowed and denied.
#[test]
fn max_per_peer_bounds_the_connections_of_one_peer() {
    let dir = scratch("perpeer");
    let sock = dir.join("host.sock");
    let d = Daemon::start(&[
        "--listen",
        &format!("unix:{},max-per-peer=2", sock.display()),
        "--listen",
        "tcp:127.0.0.1:0",
        "--encoder",
        "x264enc",
    ]);
    let frame = |c: &mut Client, pts| {
        let f = test_frame(Fmt::Bgrx, 32, 32, 128, 0, 4);
        assert_eq!(stream_frames(c, &[(f, pts, false)], 1)[0].pts, pts);
    };
    // Two clients of one uid: allowed.
    let mut a = Client::unix(&sock);
    let mut b = Client::unix(&sock);
    frame(&mut a, 1);
    frame(&mut b, 2);
    // A third: refused, both being clients.
    let mut c = Client::unix(&sock);
    let e = c.recv_error();
    assert_eq!(e.code, error_code::REFUSED);
    assert!(
        e.message.contains("already serves 2 connections of uid"),
        "{e:?}"
    );
    // The limit is per listener: the TCP one has none.
    let mut t = Client::tcp(d.tcp());
    frame(&mut t, 3);
    // A pending connection (no frame yet) makes room for a newcomer.
    drop(b);
    d.wait_log("disconnected; frames in 1 out 1");
    let mut idle = Client::unix(&sock);
    idle.ping(4);
    let mut fresh = Client::unix(&sock);
    frame(&mut fresh, 5);
    assert!(
        idle.recv_or_closed().is_none(),
        "the idle one was closed for it"
    );
    frame(&mut a, 6);
}

/// Quotas: the pixel rate, allowed and denied; and the metrics endpoint
/// scraped and parsed.
#[test]
fn pixel_rate_paces_a_greedy_guest_and_metrics_show_it() {
    // 64x64 = 4096 pixels; 20 frames a second.
    let d = Daemon::start(&[
        "--listen",
        "tcp:127.0.0.1:0,pixel-rate=81920",
        "--listen",
        "tcp:127.0.0.1:0,from=10.0.0.1",
        "--listen",
        "tcp:127.0.0.1:0",
        "--encoder",
        "x264enc",
        "--metrics",
        "127.0.0.1:0",
        "--memory-budget",
        "300M",
    ]);
    let tcp: Vec<SocketAddr> = d
        .listening
        .iter()
        .filter_map(|a| a.strip_prefix("tcp:"))
        .map(|a| a.parse().unwrap())
        .collect();
    let frames = |n: u32| -> Vec<_> {
        (0..n)
            .map(|i| (test_frame(Fmt::Nv12, 64, 64, 64, i, 9), i as i64, false))
            .collect()
    };
    // Denied: 60 frames as fast as it can, 20 free (a second's worth),
    // the rest at 20 a second: at least 2 s.
    let mut greedy = Client::tcp(tcp[0]);
    let t = Instant::now();
    let r = stream_frames(&mut greedy, &frames(60), 4);
    let took = t.elapsed();
    assert_eq!(r.len(), 60);
    assert!(took >= Duration::from_millis(1900), "60 frames in {took:?}");
    // Allowed: the same on a listener without a quota is never paced.
    let mut free = Client::tcp(tcp[2]);
    assert_eq!(stream_frames(&mut free, &frames(60), 4).len(), 60);
    // A refused peer, for the refusal counter.
    let _ = Client::tcp(tcp[1]).recv_error();

    let m = d.metrics_addr();
    let s = scrape(m);
    let l0 = format!("tcp:{}", tcp[0]);
    let l2 = format!("tcp:{}", tcp[2]);
    let peer = ("peer", "127.0.0.1");
    let get = |name: &str, listener: &str| {
        sample(&s, name, &[("listener", listener), peer])
            .unwrap_or_else(|| panic!("no {name} for {listener}: {s:?}"))
    };
    assert_eq!(get("vsockenc_host_frames_received_total", &l0), 60.0);
    assert_eq!(get("vsockenc_host_frames_encoded_total", &l0), 60.0);
    assert_eq!(get("vsockenc_host_frames_encoded_total", &l2), 60.0);
    assert_eq!(get("vsockenc_host_encode_latency_seconds_count", &l0), 60.0);
    assert!(get("vsockenc_host_received_bytes_total", &l0) > 60.0 * 6144.0);
    assert!(get("vsockenc_host_sent_bytes_total", &l0) > 0.0);
    // Up to 2 s of waiting: less when a loaded machine sent the frames
    // slower than the rate by itself.
    let paced = get("vsockenc_host_paced_seconds_total", &l0);
    assert!(paced > 0.3, "paced {paced} s");
    assert_eq!(get("vsockenc_host_paced_seconds_total", &l2), 0.0);
    let l1 = format!("tcp:{}", tcp[1]);
    assert_eq!(
        sample(
            &s,
            "vsockenc_host_refusals_total",
            &[("listener", &l1), ("reason", "access")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&s, "vsockenc_host_memory_budget_bytes", &[]),
        Some(300.0 * 1048576.0)
    );
    assert!(sample(&s, "vsockenc_host_open_fds", &[]).unwrap() > 3.0);
    assert_eq!(
        sample(&s, "vsockenc_host_clients", &[("state", "client")]),
        Some(2.0)
    );
    // A refused frame shows up by reason.
    let mut bad = Client::tcp(tcp[2]);
    bad.send_frame(
        &FrameRequest {
            width: 0,
            ..frames(1)[0].0.request(1, false)
        },
        &[0u8; 64],
    );
    assert_eq!(bad.recv_error().code, error_code::INVALID_MESSAGE);
    let s = scrape(m);
    assert_eq!(
        sample(
            &s,
            "vsockenc_host_frames_failed_total",
            &[("listener", &l2), ("reason", "invalid")]
        ),
        Some(1.0)
    );
}

fn proc_count(pid: i32, what: &str) -> u64 {
    match what {
        "fds" => std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count() as u64,
        field => std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap(),
    }
}

/// Case 6 (kept): connection churn leaves no descriptor, thread or memory
/// behind.
#[test]
fn churn_leaves_no_descriptors_threads_or_memory_behind() {
    let d = Daemon::start(&["--listen", "tcp:127.0.0.1:0", "--encoder", "x264enc"]);
    let addr = d.tcp();
    let pid = d.pid();
    // Warm: one guest encoded a frame and left.
    let mut warm = Client::tcp(addr);
    let f = test_frame(Fmt::Nv12, 64, 48, 64, 0, 1);
    assert_eq!(stream_frames(&mut warm, &[(f, 1, false)], 1).len(), 1);
    drop(warm);
    d.wait_log("disconnected; frames in 1 out 1");
    std::thread::sleep(Duration::from_millis(300));
    let (fds0, threads0, rss0) = (
        proc_count(pid, "fds"),
        proc_count(pid, "Threads:"),
        d.rss_kib(),
    );
    let h = hello(ext_bits::ERROR_PTS);
    for i in 0..1000 {
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = s.write_all(&h);
        if i % 100 == 0 {
            // Some also encode a frame.
            let mut c = Client::tcp(addr);
            let f = test_frame(Fmt::Nv12, 64, 48, 64, i, 2);
            assert_eq!(stream_frames(&mut c, &[(f, 7, false)], 1).len(), 1);
        }
    }
    let t = Instant::now();
    loop {
        let (fds, threads, rss) = (
            proc_count(pid, "fds"),
            proc_count(pid, "Threads:"),
            d.rss_kib(),
        );
        if fds <= fds0 && threads <= threads0 && rss <= rss0 * 12 / 10 {
            break;
        }
        assert!(
            t.elapsed() < WAIT,
            "after the churn: fds {fds0} -> {fds}, threads {threads0} -> {threads}, RSS {rss0} -> {rss} KiB"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
