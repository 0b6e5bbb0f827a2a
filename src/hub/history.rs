//! Bounded event history, indexed by sequence number.

use std::collections::VecDeque;
use std::sync::Arc;

use super::Message;

/// The newest events, bounded by count and by payload bytes. Sequence numbers are contiguous,
/// so the event with sequence `n` sits at index `n - first_seq`.
pub(super) struct History {
    events: VecDeque<Arc<Message>>,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
    /// Sequence number of the newest event ever published, `0` before the first.
    head: u64,
}

impl History {
    pub(super) fn new(max_events: usize, max_bytes: usize) -> Self {
        Self {
            events: VecDeque::new(),
            bytes: 0,
            max_events,
            max_bytes,
            head: 0,
        }
    }

    pub(super) fn head(&self) -> u64 {
        self.head
    }

    /// Sequence number of the oldest event still kept, or `head + 1` when none is.
    pub(super) fn first_seq(&self) -> u64 {
        self.head + 1 - self.events.len() as u64
    }

    /// Appends the event numbered `head + 1`, evicting the oldest beyond either bound.
    pub(super) fn push(&mut self, message: Arc<Message>) {
        self.head += 1;
        self.bytes += message.payload.len();
        self.events.push_back(message);
        while self.events.len() > self.max_events || self.bytes > self.max_bytes {
            match self.events.pop_front() {
                Some(old) => self.bytes -= old.payload.len(),
                None => break,
            }
        }
    }

    /// Events with sequence numbers from `from` on, oldest first.
    pub(super) fn since(&self, from: u64) -> impl Iterator<Item = &Arc<Message>> {
        let skip = from.saturating_sub(self.first_seq()) as usize;
        self.events.iter().skip(skip)
    }
}
