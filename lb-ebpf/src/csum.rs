//! Internet checksum helpers (RFC 1071 sums, RFC 1624 incremental updates). Words are
//! read from the packet in native order: one's-complement sums do not care, as long as
//! the checksum field is read and written the same way.

/// Folds a 64-bit one's-complement sum into 16 bits (not complemented).
#[inline(always)]
fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Checksum of a 20-byte IPv4 header (checksum field zero), as five native-order 32-bit
/// words: their sum folds to the sum of the ten 16-bit words.
#[inline(always)]
pub fn ipv4_header(words: &[u32; 5]) -> u16 {
    let mut sum = 0u64;
    let mut i = 0;
    while i < 5 {
        sum += words[i] as u64;
        i += 1;
    }
    // Below 2^35: three 16-bit folds leave at most 0xffff (`fold`'s first, 32-bit one
    // is not needed).
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The change a rewrite makes to a checksummed region: accumulate (old, new) words, then
/// apply to a checksum field.
#[derive(Clone, Copy)]
pub struct Delta(u64);

impl Delta {
    #[inline(always)]
    pub fn new() -> Self {
        Delta(0)
    }

    #[inline(always)]
    pub fn word(&mut self, old: u16, new: u16) {
        self.0 += (!old) as u64 + new as u64;
    }

    #[inline(always)]
    pub fn word32(&mut self, old: u32, new: u32) {
        self.word(old as u16, new as u16);
        self.word((old >> 16) as u16, (new >> 16) as u16);
    }

    #[inline(always)]
    pub fn addr(&mut self, old: &[u32; 4], new: &[u32; 4], v6: bool) {
        self.word32(old[0], new[0]);
        if v6 {
            self.word32(old[1], new[1]);
            self.word32(old[2], new[2]);
            self.word32(old[3], new[3]);
        }
    }

    /// The checksum field after the change (RFC 1624: HC' = ~(~HC + ~m + m')).
    #[inline(always)]
    pub fn apply(&self, check: u16) -> u16 {
        !fold((!check) as u64 + self.0)
    }

    /// Adds another delta's changes.
    #[inline(always)]
    pub fn plus(&self, other: &Delta) -> Delta {
        Delta(fold(self.0) as u64 + fold(other.0) as u64)
    }
}
