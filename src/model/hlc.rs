//! The hybrid logical clock: 48 bits of wall-clock milliseconds, a 16-bit
//! counter, and the site id as tie-break. Stamps are totally ordered and a
//! site's stamps only grow, even when its wall clock steps back.

use std::fmt;

use super::ids::SiteId;

/// One stamp. Ordering is (wall, counter, site): the derive relies on the
/// field order below.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hlc {
    wall_ms: u64,
    counter: u16,
    site: SiteId,
}

/// The source of wall-clock time, so tests and simulations control it.
pub trait Clock {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// Why a stamp's text form was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a clinicsync clock stamp (48 lowercase hex digits)")]
pub struct HlcParseError {
    text: String,
}

impl Hlc {
    /// The largest wall-clock value 48 bits can hold.
    pub const MAX_WALL: u64 = (1 << 48) - 1;

    /// Builds a stamp; a wall value past 48 bits is clamped.
    pub fn new(wall_ms: u64, counter: u16, site: SiteId) -> Hlc {
        Hlc { wall_ms: wall_ms.min(Self::MAX_WALL), counter, site }
    }

    pub fn wall_ms(&self) -> u64 {
        self.wall_ms
    }

    pub fn counter(&self) -> u16 {
        self.counter
    }

    pub fn site(&self) -> SiteId {
        self.site
    }

    /// The text form: 12 hex digits of wall time, 4 of counter, 32 of site.
    /// Lexical order of the text equals the order of the stamps.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(48);
        self.push_encoded(&mut out);
        out
    }

    /// Appends the text form to `out` without allocating.
    pub fn push_encoded(&self, out: &mut String) {
        super::ids::push_hex_fixed(out, self.wall_ms, 12);
        super::ids::push_hex_fixed(out, u64::from(self.counter), 4);
        super::ids::write_hex_bytes(out, self.site.as_bytes());
    }

    pub fn parse(text: &str) -> Result<Hlc, HlcParseError> {
        let err = || HlcParseError { text: text.chars().take(64).collect() };
        let lower_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if text.len() != 48 || !lower_hex(text) {
            return Err(err());
        }
        let wall_ms = u64::from_str_radix(&text[..12], 16).map_err(|_| err())?;
        let counter = u16::from_str_radix(&text[12..16], 16).map_err(|_| err())?;
        let site = SiteId::parse(&text[16..]).map_err(|_| err())?;
        Ok(Hlc { wall_ms, counter, site })
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hlc({}.{}@{})", self.wall_ms, self.counter, self.site.short())
    }
}

/// One site's clock state: the highest (wall, counter) it has issued or seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HlcClock {
    site: SiteId,
    wall_ms: u64,
    counter: u16,
}

impl HlcClock {
    pub fn new(site: SiteId, wall_ms: u64, counter: u16) -> HlcClock {
        HlcClock { site, wall_ms, counter }
    }

    pub fn site(&self) -> SiteId {
        self.site
    }

    /// The state to persist: (wall, counter).
    pub fn state(&self) -> (u64, u16) {
        (self.wall_ms, self.counter)
    }

    /// Issues a new stamp, strictly greater than every stamp issued or
    /// observed before.
    pub fn stamp(&mut self, now_ms: u64) -> Hlc {
        let now = now_ms.min(Hlc::MAX_WALL);
        if now > self.wall_ms {
            self.wall_ms = now;
            self.counter = 0;
        } else if self.counter == u16::MAX {
            // The counter is spent within one millisecond: borrow the next
            // millisecond rather than wrap.
            self.wall_ms = (self.wall_ms + 1).min(Hlc::MAX_WALL);
            self.counter = 0;
        } else {
            self.counter += 1;
        }
        Hlc::new(self.wall_ms, self.counter, self.site)
    }

    /// Advances past a stamp seen from another site (one that was accepted,
    /// not one held back for clock skew).
    pub fn observe(&mut self, seen: Hlc) {
        if (seen.wall_ms, seen.counter) > (self.wall_ms, self.counter) {
            self.wall_ms = seen.wall_ms;
            self.counter = seen.counter;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(n: u8) -> SiteId {
        SiteId::from_bytes([n; 16])
    }

    #[test]
    fn stamps_grow_even_when_the_wall_clock_steps_back() {
        let mut clock = HlcClock::new(site(1), 0, 0);
        let a = clock.stamp(1_000);
        let b = clock.stamp(500);
        let c = clock.stamp(1_000);
        assert!(a < b && b < c, "{a:?} {b:?} {c:?}");
    }

    #[test]
    fn observing_a_later_stamp_moves_past_it() {
        let mut clock = HlcClock::new(site(1), 0, 0);
        let remote = Hlc::new(9_000, 7, site(2));
        clock.observe(remote);
        let next = clock.stamp(10);
        assert!(next > remote);
    }

    #[test]
    fn counter_overflow_borrows_the_next_millisecond() {
        let mut clock = HlcClock::new(site(1), 5, u16::MAX);
        let s = clock.stamp(5);
        assert_eq!((s.wall_ms(), s.counter()), (6, 0));
    }

    #[test]
    fn text_form_round_trips_and_sorts_like_the_stamps() {
        let a = Hlc::new(0x0123_4567_89ab, 2, site(3));
        let b = Hlc::new(0x0123_4567_89ab, 10, site(1));
        assert_eq!(Hlc::parse(&a.encode()).unwrap(), a);
        assert_eq!(a < b, a.encode() < b.encode());
        assert!(Hlc::parse("zz").is_err());
        assert!(Hlc::parse(&a.encode().to_uppercase()).is_err());
    }
}
