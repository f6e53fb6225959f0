//! bascule's VRRP adverts checked by an independent implementation, scapy (Debian's
//! python3-scapy, installed by `cargo xtask setup`): what bascule encodes, scapy decodes
//! with the same fields and finds the checksum it would compute itself (pseudo-header for
//! v3, none for v2); what scapy encodes, bascule decodes with its checksum accepted.

use std::{
    io::Write,
    net::{IpAddr, Ipv6Addr},
    process::{Command, Stdio},
    time::Duration,
};

use bascule::vrrp::packet::{self, Advert, Auth, Version, MULTICAST_V4, MULTICAST_V6};

/// A Python with scapy: Debian's first (a pyenv or venv `python3` may lack it).
fn python_with_scapy() -> &'static str {
    for python in ["/usr/bin/python3", "python3"] {
        let ok = Command::new(python)
            .args(["-c", "import scapy.layers.vrrp"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return python;
        }
    }
    panic!("no python3 with scapy: install python3-scapy (`cargo xtask setup` does)");
}

fn run_python(script: &str, input: &str) -> String {
    let mut child = Command::new(python_with_scapy())
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("python3 output");
    assert!(
        out.status.success(),
        "scapy script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The whole IP packet bascule sends for `advert` from `src` to `dst`.
fn ip_packet(advert: &Advert, src: IpAddr, dst: IpAddr) -> Vec<u8> {
    let message = advert.encode(src, dst);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut p = packet::ipv4_header(s, d, message.len()).to_vec();
            p.extend_from_slice(&message);
            p
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut p = vec![0x60, 0, 0, 0];
            p.extend_from_slice(&(message.len() as u16).to_be_bytes());
            p.extend_from_slice(&[packet::PROTO_VRRP, packet::TTL]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&message);
            p
        }
        _ => unreachable!(),
    }
}

struct Case {
    name: &'static str,
    advert: Advert,
    src: IpAddr,
    dst: IpAddr,
}

fn cases() -> Vec<Case> {
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    vec![
        Case {
            name: "v3-ipv4-multicast",
            advert: Advert {
                version: Version::V3,
                vrid: 51,
                priority: 150,
                interval: Duration::from_millis(1000),
                addresses: vec![ip("10.111.0.100"), ip("10.111.0.101")],
                auth: Auth::None,
            },
            src: ip("10.111.0.2"),
            dst: IpAddr::V4(MULTICAST_V4),
        },
        Case {
            name: "v3-ipv4-unicast-priority0-centiseconds",
            advert: Advert {
                version: Version::V3,
                vrid: 255,
                priority: 0,
                interval: Duration::from_millis(40_950),
                addresses: vec![ip("192.0.2.1")],
                auth: Auth::None,
            },
            src: ip("192.0.2.7"),
            dst: ip("192.0.2.8"),
        },
        Case {
            name: "v3-ipv6-multicast",
            advert: Advert {
                version: Version::V3,
                vrid: 7,
                priority: 255,
                interval: Duration::from_millis(20),
                addresses: vec![ip("fe80::100"), ip("fd00:111::100")],
                auth: Auth::None,
            },
            src: ip("fe80::2"),
            dst: IpAddr::V6(MULTICAST_V6),
        },
        Case {
            name: "v2-ipv4-pass",
            advert: Advert {
                version: Version::V2,
                vrid: 52,
                priority: 100,
                interval: Duration::from_secs(3),
                addresses: vec![ip("10.111.0.100")],
                auth: Auth::pass("secret"),
            },
            src: ip("10.111.0.3"),
            dst: IpAddr::V4(MULTICAST_V4),
        },
        Case {
            name: "v2-ipv4-no-auth",
            advert: Advert {
                version: Version::V2,
                vrid: 1,
                priority: 254,
                interval: Duration::from_secs(1),
                addresses: vec![ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3")],
                auth: Auth::None,
            },
            src: ip("10.0.0.9"),
            dst: IpAddr::V4(MULTICAST_V4),
        },
    ]
}

/// Reads `FAMILY HEX` lines; prints, per packet, the fields scapy decoded, the checksum
/// found and the one scapy computes when it builds the same packet itself.
const DECODE: &str = r#"
import sys
from scapy.all import IP, IPv6
from scapy.layers.vrrp import VRRP, VRRPv3
for line in sys.stdin:
    family, data = line.split()
    outer = IP if family == "4" else IPv6
    pkt = outer(bytes.fromhex(data))
    layer = VRRPv3 if pkt.haslayer(VRRPv3) else VRRP
    v = pkt[layer]
    again = pkt.copy()
    again[layer].chksum = None
    recomputed = outer(bytes(again))[layer].chksum
    addrs = ",".join(str(a) for a in v.addrlist)
    hlim = pkt.ttl if family == "4" else pkt.hlim
    if layer is VRRP:
        extra = "authtype=%d auth=%s adv=%d" % (
            v.authtype, (v.auth1.to_bytes(4, "big") + v.auth2.to_bytes(4, "big")).hex(), v.adv)
    else:
        extra = "adv=%d" % v.adv
    print("version=%d type=%d vrid=%d priority=%d ipcount=%d ttl=%d chksum=%d recomputed=%d addrs=%s %s"
          % (v.version, v.type, v.vrid, v.priority, v.ipcount, hlim, v.chksum, recomputed, addrs, extra))
"#;

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

#[test]
fn scapy_decodes_what_bascule_sends_with_correct_checksums() {
    let cases = cases();
    let input: String = cases
        .iter()
        .map(|c| {
            let family = if c.src.is_ipv4() { "4" } else { "6" };
            format!("{family} {}\n", hex(&ip_packet(&c.advert, c.src, c.dst)))
        })
        .collect();
    let output = run_python(DECODE, &input);
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len(), cases.len(), "{output}");
    for (c, line) in cases.iter().zip(lines) {
        let a = &c.advert;
        println!("{}: {line}", c.name);
        assert_eq!(
            field(line, "chksum"),
            field(line, "recomputed"),
            "{}: checksum",
            c.name
        );
        assert_eq!(
            field(line, "version"),
            a.version.number().to_string(),
            "{}",
            c.name
        );
        assert_eq!(field(line, "type"), "1", "{}", c.name);
        assert_eq!(field(line, "vrid"), a.vrid.to_string(), "{}", c.name);
        assert_eq!(
            field(line, "priority"),
            a.priority.to_string(),
            "{}",
            c.name
        );
        assert_eq!(field(line, "ttl"), "255", "{}", c.name);
        assert_eq!(
            field(line, "ipcount"),
            a.addresses.len().to_string(),
            "{}",
            c.name
        );
        let addrs: Vec<String> = a.addresses.iter().map(ToString::to_string).collect();
        assert_eq!(field(line, "addrs"), addrs.join(","), "{}", c.name);
        match a.version {
            Version::V3 => assert_eq!(
                field(line, "adv"),
                (a.interval.as_millis() / 10).to_string(),
                "{}: centiseconds",
                c.name
            ),
            Version::V2 => {
                assert_eq!(
                    field(line, "adv"),
                    a.interval.as_secs().to_string(),
                    "{}",
                    c.name
                );
                let (authtype, data) = match a.auth {
                    Auth::None => ("0", [0u8; 8]),
                    Auth::Pass(d) => ("1", d),
                    Auth::Other(_) => unreachable!(),
                };
                assert_eq!(field(line, "authtype"), authtype, "{}", c.name);
                assert_eq!(field(line, "auth"), hex(&data), "{}", c.name);
            }
        }
    }
}

/// Builds, with scapy's own encoder and checksum, the packets of `SPEC` lines
/// (`FAMILY VERSION SRC DST VRID PRIORITY ADV ADDR,ADDR [PASSWORD]`) and prints their hex.
const ENCODE: &str = r#"
import sys
from scapy.all import IP, IPv6
from scapy.layers.vrrp import VRRP, VRRPv3
for line in sys.stdin:
    f = line.split()
    family, version, src, dst, vrid, prio, adv, addrs = f[:8]
    addrs = addrs.split(",")
    outer = IP(src=src, dst=dst, ttl=255) if family == "4" else IPv6(src=src, dst=dst, hlim=255)
    if version == "3":
        v = VRRPv3(vrid=int(vrid), priority=int(prio), adv=int(adv), ipcount=len(addrs), addrlist=addrs)
    else:
        pw = (f[8].encode() if len(f) > 8 else b"").ljust(8, b"\0")
        v = VRRP(vrid=int(vrid), priority=int(prio), adv=int(adv), ipcount=len(addrs), addrlist=addrs,
                 authtype=1 if len(f) > 8 else 0,
                 auth1=int.from_bytes(pw[:4], "big"), auth2=int.from_bytes(pw[4:], "big"))
    print(bytes(outer / v).hex())
"#;

#[test]
fn bascule_decodes_what_scapy_builds() {
    let spec = "\
4 3 10.111.0.3 224.0.0.18 51 100 100 10.111.0.100,10.111.0.101
6 3 fe80::3 ff02::12 51 200 35 fd00:111::100
4 2 10.111.0.3 224.0.0.18 52 100 1 10.111.0.100 secret
4 2 10.111.0.4 224.0.0.18 53 1 255 10.111.0.100
";
    let output = run_python(ENCODE, spec);
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len(), 4, "{output}");
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    let expected = [
        Advert {
            version: Version::V3,
            vrid: 51,
            priority: 100,
            interval: Duration::from_secs(1),
            addresses: vec![ip("10.111.0.100"), ip("10.111.0.101")],
            auth: Auth::None,
        },
        Advert {
            version: Version::V3,
            vrid: 51,
            priority: 200,
            interval: Duration::from_millis(350),
            addresses: vec![ip("fd00:111::100")],
            auth: Auth::None,
        },
        Advert {
            version: Version::V2,
            vrid: 52,
            priority: 100,
            interval: Duration::from_secs(1),
            addresses: vec![ip("10.111.0.100")],
            auth: Auth::pass("secret"),
        },
        Advert {
            version: Version::V2,
            vrid: 53,
            priority: 1,
            interval: Duration::from_secs(255),
            addresses: vec![ip("10.111.0.100")],
            auth: Auth::None,
        },
    ];
    for ((line, want), spec) in lines.iter().zip(&expected).zip(spec.lines()) {
        let bytes = unhex(line);
        let (src, dst, ttl, message) = if bytes[0] >> 4 == 4 {
            let p = packet::parse_ipv4(&bytes).expect("an IPv4 packet");
            (
                IpAddr::V4(p.source),
                IpAddr::V4(p.destination),
                p.ttl,
                p.payload.to_vec(),
            )
        } else {
            let s: [u8; 16] = bytes[8..24].try_into().unwrap();
            let d: [u8; 16] = bytes[24..40].try_into().unwrap();
            (
                IpAddr::V6(Ipv6Addr::from(s)),
                IpAddr::V6(Ipv6Addr::from(d)),
                bytes[7],
                bytes[40..].to_vec(),
            )
        };
        assert_eq!(ttl, 255, "{spec}");
        assert_eq!(
            packet::decode(&message, src, dst).as_ref(),
            Ok(want),
            "{spec}: {line}"
        );
        // And one flipped bit is caught.
        let mut bad = message.clone();
        bad[2] ^= 0x40;
        assert_eq!(
            packet::decode(&bad, src, dst),
            Err(packet::Invalid::Checksum),
            "{spec}"
        );
    }
}
