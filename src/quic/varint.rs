//! QUIC variable-length integers (RFC 9000, section 16).

use bytes::{Buf, BufMut};

/// Largest value a variable-length integer holds.
pub const MAX: u64 = (1 << 62) - 1;

/// Number of bytes `value` takes when encoded.
pub fn len(value: u64) -> usize {
    match value {
        0..=63 => 1,
        64..=16_383 => 2,
        16_384..=1_073_741_823 => 4,
        _ => 8,
    }
}

/// Appends `value`, which must not exceed [`MAX`].
pub fn put(buf: &mut impl BufMut, value: u64) {
    debug_assert!(value <= MAX);
    match len(value) {
        1 => buf.put_u8(value as u8),
        2 => buf.put_u16(0x4000 | value as u16),
        4 => buf.put_u32(0x8000_0000 | value as u32),
        _ => buf.put_u64(0xc000_0000_0000_0000 | value),
    }
}

/// Reads one value, or `None` when `buf` ends first.
pub fn get(buf: &mut impl Buf) -> Option<u64> {
    if !buf.has_remaining() {
        return None;
    }
    let first = buf.chunk()[0];
    let size = 1usize << (first >> 6);
    if buf.remaining() < size {
        return None;
    }
    let value = match size {
        1 => u64::from(buf.get_u8() & 0x3f),
        2 => u64::from(buf.get_u16() & 0x3fff),
        4 => u64::from(buf.get_u32() & 0x3fff_ffff),
        _ => buf.get_u64() & 0x3fff_ffff_ffff_ffff,
    };
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trips() {
        for value in [0, 63, 64, 16_383, 16_384, 1_073_741_823, 1_073_741_824, MAX] {
            let mut buf = Vec::new();
            put(&mut buf, value);
            assert_eq!(buf.len(), len(value));
            assert_eq!(get(&mut &buf[..]), Some(value));
        }
    }

    #[test]
    fn truncated_varint_is_none() {
        assert_eq!(get(&mut &[0x40u8][..]), None);
        assert_eq!(get(&mut &[][..]), None);
    }
}
