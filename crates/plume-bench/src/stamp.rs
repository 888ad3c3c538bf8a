//! Send timestamps carried inside messages.
//!
//! Every message the load generator sends carries the time it was sent as `@ts:<nanoseconds>`
//! (nanoseconds since [`Clock`]'s origin, which every connection of the run shares because
//! they all live in this process). The marker sits in the message `content`, which the server
//! copies into `receive_message`, and in the `mobile_ref_id`, which comes back in
//! `message_sent` (Plume) or in the acknowledgement (Socket.IO peer). On receipt the
//! generator finds the first marker in the raw payload bytes, without parsing the JSON, so
//! the cost of measuring is the same for both protocols.

use std::time::Instant;

/// The marker that precedes a timestamp.
pub const MARKER: &[u8] = b"@ts:";

/// The shared time origin of one run.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    /// A clock whose origin is now.
    pub fn new() -> Clock {
        Clock {
            origin: Instant::now(),
        }
    }

    /// Nanoseconds since the origin.
    pub fn now_ns(&self) -> u64 {
        self.ns_at(Instant::now())
    }

    /// Nanoseconds from the origin to `at` (0 before the origin).
    pub fn ns_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The origin.
    pub fn origin(&self) -> Instant {
        self.origin
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// The `content` of a benchmark message: a sequence number, the stamp, then padding up to
/// `len` bytes (ASCII only, so characters and bytes agree and nothing needs escaping).
pub fn content(seq: u64, stamp_ns: u64, len: usize) -> String {
    let mut text = format!("bench {seq} @ts:{stamp_ns} ");
    const FILL: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
    let mut i = 0;
    while text.len() < len {
        text.push(char::from(FILL[i % FILL.len()]));
        i += 1;
    }
    text
}

/// The `mobile_ref_id` of a benchmark message: unique per sender (the sequence number) and
/// carrying the stamp, so the acknowledgement tells when its message was sent.
pub fn mobile_ref_id(seq: u64, stamp_ns: u64) -> String {
    format!("m{seq}@ts:{stamp_ns}")
}

/// The first stamp in `bytes`, if there is one with at least one digit.
pub fn extract(bytes: &[u8]) -> Option<u64> {
    let at = find(bytes, MARKER)?;
    let digits = &bytes[at + MARKER.len()..];
    let mut value: u64 = 0;
    let mut seen = false;
    for &b in digits {
        if !b.is_ascii_digit() {
            break;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        seen = true;
    }
    seen.then_some(value)
}

/// Position of the first occurrence of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let last_start = haystack.len() - needle.len();
    let mut i = 0;
    while i <= last_start {
        // memchr-like skip to the next candidate first byte.
        match haystack[i..=last_start].iter().position(|&b| b == first) {
            None => return None,
            Some(off) => i += off,
        }
        if &haystack[i..i + needle.len()] == needle {
            return Some(i);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn content_carries_the_stamp_and_has_the_requested_length() {
        let c = content(7, 123_456, 64);
        assert_eq!(c.len(), 64);
        assert!(c.starts_with("bench 7 @ts:123456 "));
        assert_eq!(extract(c.as_bytes()), Some(123_456));
        // Shorter than the header: the header is kept whole.
        assert_eq!(content(1, 2, 4), "bench 1 @ts:2 ");
    }

    #[test]
    fn extract_finds_the_first_marker_in_a_payload() {
        let sent = br#"{"mobile_ref_id":"m3@ts:99","status":"sent","chat_id":"7"}"#;
        assert_eq!(extract(sent), Some(99));
        let recv = br#"[null,null,"chat:7","receive_message",{"content":"bench 1 @ts:42 abc"}]"#;
        assert_eq!(extract(recv), Some(42));
        assert_eq!(extract(b"@ts:"), None);
        assert_eq!(extract(b"no marker"), None);
        assert_eq!(extract(b""), None);
        assert_eq!(extract(b"@t@ts:5"), Some(5));
        // Overflow is refused, not wrapped.
        assert_eq!(extract(b"@ts:99999999999999999999999"), None);
        assert_eq!(extract(mobile_ref_id(3, 77).as_bytes()), Some(77));
    }

    #[test]
    fn clock_is_monotonic_from_its_origin() {
        let clock = Clock::new();
        let a = clock.now_ns();
        let b = clock.now_ns();
        assert!(b >= a);
        assert_eq!(clock.ns_at(clock.origin()), 0);
    }
}
