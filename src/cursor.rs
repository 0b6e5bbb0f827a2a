//! Positions in the hub's event sequence.
//!
//! A cursor pairs the hub's epoch with a sequence number. The epoch is drawn at random when a
//! hub starts, so a cursor handed out before a restart can never be mistaken for one of the new
//! history. Clients treat the text form, `<epoch as 16 hex digits>-<sequence>`, as opaque.

use std::fmt;
use std::str::FromStr;

/// A position in the hub-wide event sequence: the event with this sequence number has been seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cursor {
    /// Identifies one run of one history; it changes whenever history is lost.
    pub epoch: u64,
    /// Sequence number of the last event seen; `0` means "before the first event".
    pub seq: u64,
}

/// Why a cursor string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cursor {value:?}: pass a cursor exactly as the server sent it")]
pub struct CursorError {
    pub value: String,
}

impl Cursor {
    /// Cursor of the given epoch, at the given sequence number.
    pub fn new(epoch: u64, seq: u64) -> Self {
        Self { epoch, seq }
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{}", self.epoch, self.seq)
    }
}

impl FromStr for Cursor {
    type Err = CursorError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || CursorError {
            value: text.chars().take(64).collect(),
        };
        let (epoch, seq) = text.split_once('-').ok_or_else(invalid)?;
        if epoch.len() != 16 || !epoch.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid());
        }
        if seq.is_empty() || seq.len() > 20 || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        let epoch = u64::from_str_radix(epoch, 16).map_err(|_| invalid())?;
        let seq = seq.parse().map_err(|_| invalid())?;
        Ok(Self { epoch, seq })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_through_text() {
        let cursor = Cursor::new(0xdead_beef_0000_0001, 42);
        let text = cursor.to_string();
        assert_eq!(text, "deadbeef00000001-42");
        assert_eq!(text.parse::<Cursor>(), Ok(cursor));
    }

    #[test]
    fn malformed_cursors_are_rejected() {
        for text in [
            "",
            "42",
            "deadbeef-42",
            "deadbeef00000001-",
            "deadbeef00000001-x",
            "deadbeef00000001--1",
            "zzzzzzzzzzzzzzzz-1",
            "deadbeef00000001-99999999999999999999999",
        ] {
            assert!(text.parse::<Cursor>().is_err(), "{text:?} parsed");
        }
    }
}
