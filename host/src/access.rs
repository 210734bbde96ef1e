//! Who may use a listener, and what one guest may ask of it.
//!
//! A listener is written `ADDR[,OPTION=VALUE]...` (see `--help`): rules
//! that let peers in (`cid=`, `uid=`, `gid=`, `from=`, each repeatable) and
//! quotas (`max-per-peer=`, `pixel-rate=`). A listener without rules lets
//! everyone in, as the daemon always did; with rules, a peer must match
//! one of them. Rules name what the transport itself vouches for: the
//! vsock CID the hypervisor assigned, the Unix peer's uid and primary gid
//! (`SO_PEERCRED`), the TCP source address.
//!
//! A *peer* is what quotas count per: one CID, one Unix uid, one TCP source
//! address (every port of it).

use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::str::FromStr;

use ipnet::IpNet;

use crate::listen::ListenAddr;
use crate::peer::Peer;

/// One rule that lets peers in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    Cid(RangeInclusive<u32>),
    Uid(u32),
    Gid(u32),
    From(IpNet),
}

impl Rule {
    fn matches(&self, peer: &Peer) -> bool {
        match (self, peer) {
            (Rule::Cid(r), Peer::Vsock { cid, .. }) => r.contains(cid),
            (Rule::Uid(u), Peer::Unix(Some(c))) => c.uid == *u,
            (Rule::Gid(g), Peer::Unix(Some(c))) => c.gid == *g,
            (Rule::From(net), Peer::Tcp(a)) => net.contains(&canonical(a.ip())),
            _ => false,
        }
    }

    /// The transport the rule is about, for the error of a misplaced rule.
    fn transport(&self) -> &'static str {
        match self {
            Rule::Cid(_) => "vsock",
            Rule::Uid(_) | Rule::Gid(_) => "unix",
            Rule::From(_) => "tcp",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Cid(r) if r.start() == r.end() => write!(f, "cid={}", r.start()),
            Rule::Cid(r) => write!(f, "cid={}-{}", r.start(), r.end()),
            Rule::Uid(u) => write!(f, "uid={u}"),
            Rule::Gid(g) => write!(f, "gid={g}"),
            Rule::From(n) => write!(f, "from={n}"),
        }
    }
}

/// An IPv4 peer seen through a dual-stack socket (`::ffff:a.b.c.d`) is
/// matched and counted as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// What a listener lets in and what one peer may ask of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Empty: everyone.
    pub allow: Vec<Rule>,
    /// Connections one peer may hold at once (`None`: only `--max-clients`).
    pub max_per_peer: Option<u32>,
    /// Pixels per second one peer may have encoded (`None`: unlimited).
    pub pixel_rate: Option<u64>,
}

/// Why a peer is not let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// For the log: the peer and the rules it failed.
    pub log: String,
    /// For the guest: says why, without listing who else is allowed.
    pub guest: String,
}

impl Policy {
    /// Whether `peer` may use the listener at `addr`.
    pub fn admit(&self, addr: &ListenAddr, peer: &Peer) -> Result<(), Denied> {
        if self.allow.is_empty() || self.allow.iter().any(|r| r.matches(peer)) {
            return Ok(());
        }
        let who = PeerKey::of(peer);
        let rules: Vec<String> = self.allow.iter().map(Rule::to_string).collect();
        Err(Denied {
            log: format!(
                "{who} is not allowed on {addr} (allowed: {})",
                rules.join(", ")
            ),
            guest: format!(
                "vsockenc-host does not serve {who} on this address: access rules of the host; ask the host's operator"
            ),
        })
    }

    /// The rules and quotas in words, for the start-up log; `None` when the
    /// listener has neither.
    pub fn describe(&self) -> Option<String> {
        let mut parts = Vec::new();
        if !self.allow.is_empty() {
            let rules: Vec<String> = self.allow.iter().map(Rule::to_string).collect();
            parts.push(format!("only {}", rules.join(", ")));
        }
        if let Some(n) = self.max_per_peer {
            parts.push(format!("at most {n} connections per peer"));
        }
        if let Some(r) = self.pixel_rate {
            parts.push(format!("at most {} pixels/s per peer", si(r)));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// `1500000` as `1.5M`, for log lines.
pub fn si(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{}G", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// What quotas count per: one vsock CID, one Unix uid, one TCP address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerKey {
    Cid(u32),
    Uid(u32),
    /// A Unix peer whose credentials the kernel would not give.
    UnknownLocal,
    Ip(IpAddr),
}

impl PeerKey {
    pub fn of(peer: &Peer) -> PeerKey {
        match peer {
            Peer::Vsock { cid, .. } => PeerKey::Cid(*cid),
            Peer::Unix(Some(c)) => PeerKey::Uid(c.uid),
            Peer::Unix(None) => PeerKey::UnknownLocal,
            Peer::Tcp(a) => PeerKey::Ip(canonical(a.ip())),
        }
    }
}

impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerKey::Cid(c) => write!(f, "CID {c}"),
            PeerKey::Uid(u) => write!(f, "uid {u}"),
            PeerKey::UnknownLocal => write!(f, "an unknown local process"),
            PeerKey::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl PeerKey {
    /// The label value in metrics: `cid:3`, `uid:1000`, `127.0.0.1`.
    pub fn label(&self) -> String {
        match self {
            PeerKey::Cid(c) => format!("cid:{c}"),
            PeerKey::Uid(u) => format!("uid:{u}"),
            PeerKey::UnknownLocal => "unknown".into(),
            PeerKey::Ip(ip) => ip.to_string(),
        }
    }
}

/// A `--listen` value: the address and its policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSpec {
    pub addr: ListenAddr,
    pub policy: Policy,
}

/// The option names after a listen address.
const OPTIONS: [&str; 6] = ["cid", "uid", "gid", "from", "max-per-peer", "pixel-rate"];

impl FromStr for ListenSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        // Options start at the first comma followed by a known `NAME=`: a
        // Unix path may hold commas of its own.
        let split = s.match_indices(',').map(|(i, _)| i).find(|&i| {
            let rest = &s[i + 1..];
            OPTIONS
                .iter()
                .any(|o| rest.strip_prefix(o).is_some_and(|r| r.starts_with('=')))
        });
        let (addr, opts) = match split {
            Some(i) => (&s[..i], Some(&s[i + 1..])),
            None => (s, None),
        };
        let addr: ListenAddr = addr.parse()?;
        let mut policy = Policy::default();
        for opt in opts.into_iter().flat_map(|o| o.split(',')) {
            let (k, v) = opt
                .split_once('=')
                .ok_or_else(|| format!("{s:?}: option {opt:?} is not NAME=VALUE"))?;
            let bad = |why: String| format!("{s:?}: {k}={v}: {why}");
            match k {
                "cid" => policy.allow.push(Rule::Cid(parse_range(v).map_err(bad)?)),
                "uid" => policy.allow.push(Rule::Uid(parse_uid(v).map_err(bad)?)),
                "gid" => policy.allow.push(Rule::Gid(parse_gid(v).map_err(bad)?)),
                "from" => policy.allow.push(Rule::From(parse_net(v).map_err(bad)?)),
                "max-per-peer" => {
                    let n: u32 = v.parse().map_err(|e| bad(format!("{e}")))?;
                    if n == 0 {
                        return Err(bad("must be at least 1".into()));
                    }
                    policy.max_per_peer = Some(n);
                }
                "pixel-rate" => policy.pixel_rate = Some(parse_rate(v).map_err(bad)?),
                _ => {
                    return Err(format!(
                        "{s:?}: unknown option {k:?} (known: {})",
                        OPTIONS.join(", ")
                    ))
                }
            }
        }
        let transport = match &addr {
            ListenAddr::Unix(_) => "unix",
            ListenAddr::Tcp { .. } => "tcp",
            ListenAddr::Vsock { .. } => "vsock",
        };
        if let Some(r) = policy.allow.iter().find(|r| r.transport() != transport) {
            return Err(format!(
                "{s:?}: {r} is a rule for {} listeners, not {transport} ones (cid= for vsock, uid=/gid= for unix, from= for tcp)",
                r.transport()
            ));
        }
        Ok(ListenSpec { addr, policy })
    }
}

fn parse_range(v: &str) -> Result<RangeInclusive<u32>, String> {
    let num = |x: &str| x.parse::<u32>().map_err(|e| format!("{x:?}: {e}"));
    let r = match v.split_once('-') {
        Some((a, b)) => num(a)?..=num(b)?,
        None => num(v)?..=num(v)?,
    };
    if r.is_empty() {
        return Err("an empty range".into());
    }
    Ok(r)
}

fn parse_uid(v: &str) -> Result<u32, String> {
    if let Ok(n) = v.parse() {
        return Ok(n);
    }
    match nix::unistd::User::from_name(v) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        Ok(None) => Err("no such user".into()),
        Err(e) => Err(format!("cannot look the user up: {e}")),
    }
}

fn parse_gid(v: &str) -> Result<u32, String> {
    if let Ok(n) = v.parse() {
        return Ok(n);
    }
    match nix::unistd::Group::from_name(v) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err("no such group".into()),
        Err(e) => Err(format!("cannot look the group up: {e}")),
    }
}

fn parse_net(v: &str) -> Result<IpNet, String> {
    if let Ok(n) = v.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    v.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| "expected an address or ADDRESS/PREFIX (e.g. 192.168.122.0/24)".into())
}

/// A count with an optional decimal suffix: `250000000`, `250M`, `1.5G`.
pub fn parse_rate(v: &str) -> Result<u64, String> {
    let total = crate::units::scaled(v, crate::units::DECIMAL)
        .ok_or_else(|| format!("{v:?} is not a number (suffixes K, M, G: thousands)"))?;
    if !(1.0..=1e15).contains(&total) {
        return Err(format!("{v:?} is outside 1..1e15"));
    }
    Ok(total as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::Credentials;

    fn spec(s: &str) -> ListenSpec {
        s.parse().unwrap()
    }

    fn unix(uid: u32, gid: u32) -> Peer {
        Peer::Unix(Some(Credentials {
            uid,
            gid,
            pid: Some(1),
        }))
    }

    #[test]
    fn plain_addresses_have_an_open_policy() {
        let s = spec("vsock:5000");
        assert_eq!(s.addr, "vsock:5000".parse().unwrap());
        assert_eq!(s.policy, Policy::default());
        assert!(s.policy.describe().is_none());
        assert!(s
            .policy
            .admit(&s.addr, &Peer::Vsock { cid: 77, port: 1 })
            .is_ok());
    }

    #[test]
    fn vsock_cids_allow_and_deny() {
        let s = spec("vsock:5000,cid=3,cid=10-12,max-per-peer=2,pixel-rate=62.5M");
        let p = &s.policy;
        assert_eq!(p.max_per_peer, Some(2));
        assert_eq!(p.pixel_rate, Some(62_500_000));
        for cid in [3, 10, 11, 12] {
            assert!(p.admit(&s.addr, &Peer::Vsock { cid, port: 9 }).is_ok());
        }
        let d = p
            .admit(&s.addr, &Peer::Vsock { cid: 4, port: 9 })
            .unwrap_err();
        assert!(
            d.log.contains("CID 4 is not allowed on vsock:5000"),
            "{d:?}"
        );
        assert!(d.log.contains("cid=3, cid=10-12"), "{d:?}");
        assert!(
            !d.guest.contains("cid=3"),
            "the guest is not told the rules"
        );
        assert_eq!(
            p.describe().unwrap(),
            "only cid=3, cid=10-12; at most 2 connections per peer; at most 62.5M pixels/s per peer"
        );
    }

    #[test]
    fn unix_uid_and_gid_allow_and_deny() {
        let s = spec("unix:/run/a,b.sock,uid=1000,gid=36");
        assert_eq!(s.addr, "unix:/run/a,b.sock".parse().unwrap());
        assert!(s.policy.admit(&s.addr, &unix(1000, 5)).is_ok());
        assert!(s.policy.admit(&s.addr, &unix(5, 36)).is_ok());
        assert!(s.policy.admit(&s.addr, &unix(5, 5)).is_err());
        // Unknown credentials never match a rule.
        assert!(s.policy.admit(&s.addr, &Peer::Unix(None)).is_err());
        // Names are looked up.
        let root = spec("unix:/x,uid=root,gid=root");
        assert_eq!(root.policy.allow, vec![Rule::Uid(0), Rule::Gid(0)]);
    }

    #[test]
    fn tcp_sources_allow_and_deny() {
        let s = spec("tcp:0.0.0.0:15937,from=192.168.122.0/24,from=::1");
        let ok: Peer = Peer::Tcp("192.168.122.7:4000".parse().unwrap());
        let mapped: Peer = Peer::Tcp("[::ffff:192.168.122.9]:4000".parse().unwrap());
        let v6: Peer = Peer::Tcp("[::1]:4000".parse().unwrap());
        let no: Peer = Peer::Tcp("192.168.123.7:4000".parse().unwrap());
        assert!(s.policy.admit(&s.addr, &ok).is_ok());
        assert!(s.policy.admit(&s.addr, &mapped).is_ok());
        assert!(s.policy.admit(&s.addr, &v6).is_ok());
        assert!(s.policy.admit(&s.addr, &no).is_err());
        assert_eq!(
            PeerKey::of(&mapped),
            PeerKey::Ip("192.168.122.9".parse().unwrap())
        );
    }

    #[test]
    fn mistakes_are_usage_errors() {
        for bad in [
            "vsock:5000,uid=3",
            "unix:/x,cid=3",
            "tcp:127.0.0.1:1,cid=3",
            "vsock:5000,cid=5-3",
            "vsock:5000,cid=x",
            "unix:/x,uid=no-such-user-here",
            "tcp:127.0.0.1:1,from=300.1.1.1",
            "vsock:5000,max-per-peer=0",
            "vsock:5000,pixel-rate=fast",
            "vsock:5000,pixel-rate=0",
            "vsock:5000,cid=3,colour=red",
        ] {
            assert!(bad.parse::<ListenSpec>().is_err(), "{bad}");
        }
        let e = "unix:/x,cid=3".parse::<ListenSpec>().unwrap_err();
        assert!(e.contains("cid=3 is a rule for vsock listeners"), "{e}");
    }

    #[test]
    fn rates_take_decimal_suffixes() {
        assert_eq!(parse_rate("1000"), Ok(1000));
        assert_eq!(parse_rate("250k"), Ok(250_000));
        assert_eq!(parse_rate("1.5G"), Ok(1_500_000_000));
        assert_eq!(si(62_500_000), "62.5M");
        assert_eq!(si(999), "999");
    }
}
