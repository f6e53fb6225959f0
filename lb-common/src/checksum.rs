//! The Internet checksum (RFC 1071) over byte slices, for userspace and tests: IPv4
//! headers, ICMP, and (with a pseudo-header added first) TCP, UDP, ICMPv6 and VRRP. The
//! datapath keeps its own word-wise sums and incremental updates (`lb-ebpf/src/csum.rs`),
//! written for the verifier.

/// A running one's-complement sum of 16-bit big-endian words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checksum(u32);

impl Checksum {
    pub fn new() -> Checksum {
        Checksum(0)
    }

    /// Adds `bytes` as big-endian words; an odd last byte is padded with a zero byte, so
    /// only the last slice added may have an odd length.
    pub fn add_bytes(self, bytes: &[u8]) -> Checksum {
        let mut sum = self.0;
        let mut words = bytes.chunks_exact(2);
        for w in &mut words {
            sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
            // Keep the carry bounded, whatever the length.
            sum = (sum & 0xffff) + (sum >> 16);
        }
        if let [last] = words.remainder() {
            sum += u32::from(*last) << 8;
        }
        Checksum(sum)
    }

    /// The checksum field's value: the sum folded to 16 bits and complemented. Over data
    /// that holds a correct checksum, 0.
    pub fn finish(self) -> u16 {
        let mut sum = self.0;
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }
}

/// The Internet checksum of `bytes` (their checksum field zero to compute one, as it is
/// to verify one: 0 when right).
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    Checksum::new().add_bytes(bytes).finish()
}

#[cfg(test)]
mod tests {
    use super::{internet_checksum, Checksum};

    #[test]
    fn sums_words_with_end_around_carry() {
        // RFC 1071's example words: 0001 f203 f4f5 f6f7 sum to 0x2ddf0, folded 0xddf2.
        assert_eq!(
            internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        assert_eq!(internet_checksum(&[0xff, 0xff, 0x00, 0x01]), !0x0001);
        // A header holding its checksum sums to 0.
        let mut header = [
            0x45, 0, 0, 0x1c, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        let c = internet_checksum(&header);
        header[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(internet_checksum(&header), 0);
    }

    #[test]
    fn an_odd_last_byte_is_padded_with_zero() {
        assert_eq!(internet_checksum(&[0x01]), !0x0100);
        assert_eq!(
            Checksum::new()
                .add_bytes(&[0x12, 0x34])
                .add_bytes(&[0x56])
                .finish(),
            internet_checksum(&[0x12, 0x34, 0x56])
        );
    }

    #[test]
    fn long_inputs_do_not_overflow() {
        // 70,000 words of 0xffff (more than a u32 holds unfolded): the folded sum is
        // 0xffff.
        assert_eq!(internet_checksum(&[0xff; 140_000]), 0);
        assert_eq!(internet_checksum(&[0; 100]), 0xffff);
    }
}
