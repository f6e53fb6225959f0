//! ICMP and ICMPv6 message types and codes, as the datapath (echo replies, too-big
//! steering), the ping health check, VRRP's neighbour advertisements and the tests' frame
//! builder use them. The protocol numbers are `IPPROTO_ICMP` and `IPPROTO_ICMPV6`.

pub const ECHO_REPLY_V4: u8 = 0;
pub const UNREACHABLE_V4: u8 = 3;
/// Code of "fragmentation needed" under `UNREACHABLE_V4`.
pub const FRAG_NEEDED_CODE: u8 = 4;
pub const ECHO_REQUEST_V4: u8 = 8;
pub const TIME_EXCEEDED_V4: u8 = 11;
pub const UNREACHABLE_V6: u8 = 1;
pub const PACKET_TOO_BIG_V6: u8 = 2;
pub const TIME_EXCEEDED_V6: u8 = 3;
pub const ECHO_REQUEST_V6: u8 = 128;
pub const ECHO_REPLY_V6: u8 = 129;
pub const NEIGHBOUR_ADVERTISEMENT_V6: u8 = 136;
