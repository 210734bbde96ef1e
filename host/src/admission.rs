//! Which connections the daemon serves when more come than it may serve.
//!
//! A connection starts *pending*: it may say HELLO, CONFIG_REQ and PING,
//! but holds no encoder. Its first frame makes it a *client*, which takes
//! one of the `--max-clients` slots. So the slots are held only by guests
//! that sent a valid frame, and a guest with a valid frame is refused only
//! when every slot is held by another such guest.
//!
//! Pending connections are bounded too (twice `--max-clients`, at least
//! 16), and so are a peer's connections (`max-per-peer`); when either
//! bound is reached, the newcomer is taken and the pending connection that
//! has done least is closed to make room: first one that never completed
//! a message, oldest first, then the oldest pending one. A newcomer is
//! refused only when its peer's connections are all clients.
//!
//! Plain bookkeeping: the caller closes the connections it is told to
//! evict (`H` is its handle to one).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::access::PeerKey;

/// A peer as quotas count it: its listener's number and its key.
pub type PeerId = (usize, PeerKey);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Every slot holds a guest that sent frames.
    Full { max_clients: u32 },
    /// The peer holds its maximum of connections, all of them clients.
    PerPeer { peer: PeerKey, limit: u32 },
}

impl Refusal {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Full { .. } => "max_clients",
            Refusal::PerPeer { .. } => "max_per_peer",
        }
    }
}

#[derive(Debug)]
struct Entry<H> {
    peer: PeerId,
    client: bool,
    /// Completed at least one valid message.
    progressed: bool,
    /// Arrival order.
    seq: u64,
    handle: H,
}

/// The connections being served; see the module documentation.
#[derive(Debug)]
pub struct Admission<H> {
    max_clients: u32,
    max_pending: u32,
    state: Mutex<State<H>>,
}

#[derive(Debug)]
struct State<H> {
    entries: HashMap<u64, Entry<H>>,
    next_seq: u64,
}

/// Connections closed to make room for a newcomer.
pub type Evicted<H> = Vec<H>;

impl<H: Clone> Admission<H> {
    pub fn new(max_clients: u32) -> Self {
        Admission {
            max_clients,
            max_pending: (2 * max_clients).max(16),
            state: Mutex::new(State {
                entries: HashMap::new(),
                next_seq: 0,
            }),
        }
    }

    pub fn max_pending(&self) -> u32 {
        self.max_pending
    }

    /// A new connection `id` from `peer` (which may hold `per_peer`
    /// connections at once). Returns the pending connections to close for
    /// it, or why it is refused.
    pub fn arrive(
        &self,
        id: u64,
        peer: PeerId,
        per_peer: Option<u32>,
        handle: H,
    ) -> Result<Evicted<H>, Refusal> {
        let mut s = self.state.lock().unwrap();
        let mut evicted = Vec::new();
        if let Some(limit) = per_peer {
            let mine = s.entries.values().filter(|e| e.peer == peer).count() as u32;
            if mine >= limit {
                match s.victim(|e| e.peer == peer) {
                    Some(v) => evicted.push(s.entries.remove(&v).unwrap().handle),
                    None => {
                        return Err(Refusal::PerPeer {
                            peer: peer.1.clone(),
                            limit,
                        })
                    }
                }
            }
        }
        if s.pending() >= self.max_pending {
            if let Some(v) = s.victim(|_| true) {
                evicted.push(s.entries.remove(&v).unwrap().handle);
            }
        }
        let seq = s.next_seq;
        s.next_seq += 1;
        s.entries.insert(
            id,
            Entry {
                peer,
                client: false,
                progressed: false,
                seq,
                handle,
            },
        );
        Ok(evicted)
    }

    /// Connection `id` completed a valid message.
    pub fn progressed(&self, id: u64) {
        if let Some(e) = self.state.lock().unwrap().entries.get_mut(&id) {
            e.progressed = true;
        }
    }

    /// Connection `id` sent its first frame: it becomes a client if a slot
    /// is free. `Ok` for a connection that already is one.
    pub fn promote(&self, id: u64) -> Result<(), Refusal> {
        let mut s = self.state.lock().unwrap();
        let clients = s.clients();
        let Some(e) = s.entries.get_mut(&id) else {
            // Evicted meanwhile: its reader is about to notice.
            return Err(Refusal::Full {
                max_clients: self.max_clients,
            });
        };
        if e.client {
            return Ok(());
        }
        if clients >= self.max_clients {
            return Err(Refusal::Full {
                max_clients: self.max_clients,
            });
        }
        e.client = true;
        e.progressed = true;
        Ok(())
    }

    /// Connection `id` ended (or was evicted: then nothing happens).
    pub fn leave(&self, id: u64) {
        self.state.lock().unwrap().entries.remove(&id);
    }

    /// Whether `id` is still admitted (not evicted).
    pub fn holds(&self, id: u64) -> bool {
        self.state.lock().unwrap().entries.contains_key(&id)
    }

    /// (clients, pending connections).
    pub fn counts(&self) -> (u32, u32) {
        let s = self.state.lock().unwrap();
        (s.clients(), s.pending())
    }
}

impl<H> State<H> {
    fn clients(&self) -> u32 {
        self.entries.values().filter(|e| e.client).count() as u32
    }

    fn pending(&self) -> u32 {
        self.entries.values().filter(|e| !e.client).count() as u32
    }

    /// The pending connection to close first among those `pick` selects:
    /// one that never completed a message, else any; the oldest.
    fn victim(&self, pick: impl Fn(&Entry<H>) -> bool) -> Option<u64> {
        self.entries
            .iter()
            .filter(|(_, e)| !e.client && pick(e))
            .min_by_key(|(_, e)| (e.progressed, e.seq))
            .map(|(id, _)| *id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u32) -> PeerId {
        (0, PeerKey::Cid(n))
    }

    #[test]
    fn slots_go_to_guests_that_send_frames() {
        let a: Admission<u64> = Admission::new(2);
        // Four silent connections do not take the two slots.
        for id in 0..4 {
            assert_eq!(a.arrive(id, peer(id as u32), None, id), Ok(vec![]));
        }
        assert_eq!(a.counts(), (0, 4));
        a.arrive(10, peer(10), None, 10).unwrap();
        a.arrive(11, peer(11), None, 11).unwrap();
        assert_eq!(a.promote(10), Ok(()));
        assert_eq!(a.promote(10), Ok(()), "already a client");
        assert_eq!(a.promote(11), Ok(()));
        assert_eq!(a.counts(), (2, 4));
        // A third guest with a frame: every slot holds a frame sender.
        a.arrive(12, peer(12), None, 12).unwrap();
        assert_eq!(a.promote(12), Err(Refusal::Full { max_clients: 2 }));
        a.leave(10);
        assert_eq!(a.promote(12), Ok(()));
    }

    #[test]
    fn a_full_pending_pool_closes_the_least_useful_oldest_first() {
        let a: Admission<u64> = Admission::new(1);
        assert_eq!(a.max_pending(), 16);
        for id in 0..16 {
            a.arrive(id, peer(1), None, id).unwrap();
        }
        // 0 and 1 said something valid; 2 is the oldest that did not.
        a.progressed(0);
        a.progressed(1);
        assert_eq!(a.arrive(100, peer(2), None, 100), Ok(vec![2]));
        assert!(!a.holds(2));
        // Once only talkers are left, the oldest of them goes.
        for id in 3..16 {
            a.progressed(id);
        }
        a.progressed(100);
        assert_eq!(a.arrive(101, peer(2), None, 101), Ok(vec![0]));
        // Clients are never evicted.
        assert_eq!(a.promote(1), Ok(()));
        for id in 102..140 {
            let ev = a.arrive(id, peer(3), None, id).unwrap();
            assert!(!ev.contains(&1), "a client was evicted");
        }
        assert!(a.holds(1));
    }

    #[test]
    fn a_peer_over_its_limit_makes_room_from_its_own_pending_connections() {
        let a: Admission<u64> = Admission::new(16);
        a.arrive(1, peer(3), Some(2), 1).unwrap();
        a.arrive(2, peer(3), Some(2), 2).unwrap();
        // Another peer is not affected.
        assert_eq!(a.arrive(3, peer(4), Some(2), 3), Ok(vec![]));
        // The third of CID 3 closes its oldest pending one.
        assert_eq!(a.arrive(4, peer(3), Some(2), 4), Ok(vec![1]));
        // Two clients: a third connection is refused.
        a.promote(2).unwrap();
        a.promote(4).unwrap();
        assert_eq!(
            a.arrive(5, peer(3), Some(2), 5),
            Err(Refusal::PerPeer {
                peer: PeerKey::Cid(3),
                limit: 2
            })
        );
        a.leave(2);
        assert_eq!(a.arrive(5, peer(3), Some(2), 5), Ok(vec![]));
    }
}
