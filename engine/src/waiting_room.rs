//! Connections that have not proven themselves yet (the pair's secret, or `AUTH`), bounded:
//! when the room is full, the one that has waited longest is turned out to make room. A flood
//! of idle connections thus costs at most a bounded amount of memory and can never keep the
//! pair's own processes (which prove themselves at once) from getting in.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Clone)]
pub struct WaitingRoom {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    next_id: u64,
    waiting: VecDeque<(u64, Arc<Notify>)>,
    max: usize,
}

/// A connection's place in the room; leaving it (drop) frees the place.
pub struct Ticket {
    room: Arc<Mutex<Inner>>,
    id: u64,
    kick: Arc<Notify>,
}

impl WaitingRoom {
    pub fn new(max: usize) -> WaitingRoom {
        WaitingRoom {
            inner: Arc::new(Mutex::new(Inner {
                next_id: 0,
                waiting: VecDeque::new(),
                max,
            })),
        }
    }

    /// A place for a new connection, turning out the oldest waiter if the room is full.
    /// Returns the ticket and whether someone was turned out.
    pub fn enter(&self) -> (Ticket, bool) {
        let mut inner = self.inner.lock().expect("waiting room lock");
        let mut evicted = false;
        while inner.waiting.len() >= inner.max.max(1) {
            if let Some((_, kick)) = inner.waiting.pop_front() {
                kick.notify_one();
                evicted = true;
            }
        }
        inner.next_id += 1;
        let id = inner.next_id;
        let kick = Arc::new(Notify::new());
        inner.waiting.push_back((id, kick.clone()));
        let ticket = Ticket {
            room: self.inner.clone(),
            id,
            kick,
        };
        (ticket, evicted)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().expect("waiting room lock").waiting.len()
    }
}

impl Ticket {
    /// Resolves when this connection is turned out to make room.
    pub async fn turned_out(&self) {
        self.kick.notified().await
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut inner = self.room.lock().expect("waiting room lock");
        inner.waiting.retain(|(id, _)| *id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_room_turns_out_the_oldest_and_a_leaver_frees_its_place() {
        let room = WaitingRoom::new(2);
        let (first, _) = room.enter();
        let (second, _) = room.enter();
        let (third, evicted) = room.enter();
        assert!(evicted);
        first.turned_out().await; // its permit is stored: resolves at once
        assert_eq!(room.len(), 2);
        drop(second);
        assert_eq!(room.len(), 1);
        let (_fourth, evicted) = room.enter();
        assert!(!evicted);
        drop(third);
        drop(first);
        assert_eq!(room.len(), 1);
    }
}
