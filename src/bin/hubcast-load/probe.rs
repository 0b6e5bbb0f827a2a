//! Stamped payloads and what subscribers count from them.
//!
//! Every payload starts with `hcl:<seq>:<nanos>:`, where `seq` is the publisher's 10-digit
//! sequence number and `nanos` the 19-digit send time in nanoseconds since the Unix epoch,
//! then `x` padding up to the requested size. The marker lets a subscriber find payloads in
//! any framing (JSON envelopes, SSE lines, NATS `MSG` frames, Socket.IO packets, raw lines)
//! by scanning bytes, so every target is measured the same way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use tokio::sync::Notify;

const MARKER: &[u8] = b"hcl:";
const SEQ_DIGITS: usize = 10;
const NANOS_DIGITS: usize = 19;
/// Length of the stamp: marker, sequence number, send time and their separators.
pub const STAMP_LEN: usize = MARKER.len() + SEQ_DIGITS + 1 + NANOS_DIGITS + 1;

pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Builds a payload of `size` bytes (at least the stamp) for sequence number `seq`, stamped
/// with the current time.
pub fn payload(seq: u64, size: usize) -> Vec<u8> {
    let mut out = format!("hcl:{seq:010}:{:019}:", now_nanos()).into_bytes();
    out.resize(size.max(STAMP_LEN), b'x');
    out
}

/// Parses the stamp at the start of `bytes`: the sequence number and send time.
pub fn parse_stamp(bytes: &[u8]) -> Option<(u64, u64)> {
    let stamp = bytes.get(..STAMP_LEN)?;
    if !stamp.starts_with(MARKER) {
        return None;
    }
    let seq_end = MARKER.len() + SEQ_DIGITS;
    let seq = parse_digits(&stamp[MARKER.len()..seq_end])?;
    let nanos = parse_digits(&stamp[seq_end + 1..seq_end + 1 + NANOS_DIGITS])?;
    Some((seq, nanos))
}

fn parse_digits(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |value, &d| {
        d.is_ascii_digit()
            .then(|| value.wrapping_mul(10) + u64::from(d - b'0'))
    })
}

/// Finds stamps in a byte stream that arrives in arbitrary chunks.
#[derive(Default)]
pub struct Scanner {
    /// The end of the previous chunk that may hold the start of a stamp.
    carry: Vec<u8>,
}

impl Scanner {
    /// Calls `found` with the sequence number and send time of each stamp completed by
    /// `chunk`.
    pub fn feed(&mut self, chunk: &[u8], mut found: impl FnMut(u64, u64)) {
        if self.carry.is_empty() {
            let rest = scan(chunk, &mut found);
            self.carry.extend_from_slice(rest);
        } else {
            self.carry.extend_from_slice(chunk);
            let joined = std::mem::take(&mut self.carry);
            let rest = scan(&joined, &mut found);
            self.carry.extend_from_slice(rest);
        }
    }
}

/// Reports every complete stamp in `bytes` and returns the tail that may start one.
fn scan<'a>(bytes: &'a [u8], found: &mut impl FnMut(u64, u64)) -> &'a [u8] {
    let mut at = 0;
    while let Some(offset) = find(&bytes[at..], MARKER) {
        let start = at + offset;
        if bytes.len() - start < STAMP_LEN {
            return &bytes[start..];
        }
        if let Some((seq, nanos)) = parse_stamp(&bytes[start..]) {
            found(seq, nanos);
            at = start + STAMP_LEN;
        } else {
            at = start + 1;
        }
    }
    // A marker cut at the chunk's end: keep its first bytes.
    let keep = (1..MARKER.len())
        .rev()
        .find(|&n| bytes.len() >= n && bytes.ends_with(&MARKER[..n]))
        .unwrap_or(0);
    &bytes[bytes.len() - keep..]
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Latency histograms, one per thread so that recording takes an uncontended lock; each is
/// listed in `HISTOGRAMS` so that `take_latency` can merge them.
static HISTOGRAMS: Mutex<Vec<Arc<Mutex<Histogram<u64>>>>> = Mutex::new(Vec::new());

thread_local! {
    static LOCAL_HISTOGRAM: Arc<Mutex<Histogram<u64>>> = {
        let histogram = Arc::new(Mutex::new(new_histogram()));
        HISTOGRAMS.lock().unwrap().push(histogram.clone());
        histogram
    };
}

fn record_latency(sent_nanos: u64) {
    let micros = (now_nanos().saturating_sub(sent_nanos) / 1000).max(1);
    LOCAL_HISTOGRAM.with(|h| h.lock().unwrap().saturating_record(micros));
}

/// Merges and resets the latency samples recorded so far on every thread.
pub fn take_latency() -> Histogram<u64> {
    let mut merged = new_histogram();
    for histogram in HISTOGRAMS.lock().unwrap().iter() {
        let mut histogram = histogram.lock().unwrap();
        merged
            .add(&*histogram)
            .expect("histograms share their bounds");
        histogram.reset();
    }
    merged
}

/// Creates a histogram of microseconds from 1 µs to 10 minutes with 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Deliveries counted by all subscribers of a run, and a wake-up for a publisher waiting
/// for them to reach a count.
pub struct Shared {
    delivered: AtomicU64,
    wake_at: AtomicU64,
    progress: Notify,
}

impl Shared {
    pub fn new() -> Self {
        Self {
            delivered: AtomicU64::new(0),
            wake_at: AtomicU64::new(u64::MAX),
            progress: Notify::new(),
        }
    }

    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Waits until `count` deliveries have been counted, or at most `limit`.
    pub async fn wait_delivered(&self, count: u64, limit: std::time::Duration) {
        self.wake_at.store(count, Ordering::SeqCst);
        if self.delivered.load(Ordering::SeqCst) >= count {
            return;
        }
        let _ = tokio::time::timeout(limit, self.progress.notified()).await;
    }

    fn add_delivery(&self) {
        let delivered = self.delivered.fetch_add(1, Ordering::SeqCst) + 1;
        if delivered >= self.wake_at.load(Ordering::Relaxed) {
            self.wake_at.store(u64::MAX, Ordering::Relaxed);
            self.progress.notify_one();
        }
    }
}

/// Counts of one subscriber: deliveries in order, duplicates and gaps of the sequence.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Distinct sequence numbers received.
    pub received: u64,
    /// Deliveries of a sequence number at or below one already received.
    pub duplicates: u64,
    /// Times the sequence jumped ahead, skipping numbers.
    pub gaps: u64,
    next: u64,
}

impl Tally {
    /// Records one delivery of `seq`, sent at `sent_nanos`.
    pub fn record(&mut self, shared: &Shared, seq: u64, sent_nanos: u64) {
        if seq < self.next {
            self.duplicates += 1;
            return;
        }
        if seq > self.next {
            self.gaps += 1;
        }
        self.next = seq + 1;
        self.record_unordered(shared, sent_nanos);
    }

    /// Records a delivery whose order is not checked, such as telemetry from several
    /// publishers.
    pub fn record_unordered(&mut self, shared: &Shared, sent_nanos: u64) {
        self.received += 1;
        shared.add_delivery();
        record_latency(sent_nanos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_requested_size_and_stamp() {
        let bytes = payload(42, 100);
        assert_eq!(bytes.len(), 100);
        let (seq, nanos) = parse_stamp(&bytes).expect("stamp parses");
        assert_eq!(seq, 42);
        assert!(nanos > 0);
    }

    #[test]
    fn scanner_finds_stamps_across_chunks() {
        let mut stream = Vec::new();
        for seq in 0..5 {
            stream.extend_from_slice(b"{\"payload\":\"");
            stream.extend_from_slice(&payload(seq, 60));
            stream.extend_from_slice(b"\"}\n");
        }
        for chunk_size in [1, 3, 7, 50, stream.len()] {
            let mut scanner = Scanner::default();
            let mut seen = Vec::new();
            for chunk in stream.chunks(chunk_size) {
                scanner.feed(chunk, |seq, _| seen.push(seq));
            }
            assert_eq!(seen, vec![0, 1, 2, 3, 4], "chunk size {chunk_size}");
        }
    }

    #[test]
    fn tally_counts_gaps_and_duplicates() {
        let shared = Shared::new();
        let mut tally = Tally::default();
        for seq in [0, 1, 3, 3, 2, 4] {
            tally.record(&shared, seq, now_nanos());
        }
        assert_eq!(tally.received, 4);
        assert_eq!(tally.gaps, 1);
        assert_eq!(tally.duplicates, 2);
        assert_eq!(shared.delivered(), 4);
    }
}
