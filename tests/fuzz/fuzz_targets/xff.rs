//! Client address from `X-Forwarded-For`, and `X-Forwarded-Proto`. Input: first line the
//! peer address (not an address: a trusted proxy, 10.0.0.1), second line garbage `G`, then
//! header values. Trusted: 10.0.0.0/8, 192.168.0.0/16, fd00::/8, 127.0.0.1/32.
//! Properties: `client_ip` returns the peer or an address present in the header; an
//! untrusted peer is the client whatever the header says; once the walk from the right stops
//! at an untrusted entry, `G` written left of everything (as its own header or joined with a
//! comma) changes nothing. `forwarded_https` is true only for a trusted peer whose last
//! value says `https`, and `G` on the left changes nothing.
#![no_main]
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use wetrials_gateway::fuzzing::{client_ip, forwarded_https};
use wetrials_gateway_fuzz::lines;

fn trusted() -> &'static [IpNet] {
    static T: OnceLock<Vec<IpNet>> = OnceLock::new();
    T.get_or_init(|| {
        ["10.0.0.0/8", "192.168.0.0/16", "fd00::/8", "127.0.0.1/32"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect()
    })
}

fn is_trusted(ip: &IpAddr) -> bool {
    trusted().iter().any(|n| n.contains(ip))
}

/// Every entry of the header values that reads as an address (with or without a port).
fn entries(values: &[&[u8]]) -> Vec<IpAddr> {
    values
        .iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .filter_map(|p| {
            let s = std::str::from_utf8(p).ok()?.trim();
            s.parse::<IpAddr>()
                .ok()
                .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let l = lines(data, 8);
    if l.len() < 3 {
        return;
    }
    let peer: IpAddr = std::str::from_utf8(l[0])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(IpAddr::from([10, 0, 0, 1]));
    let garbage = l[1];
    let values = &l[2..];
    let ip = |vs: &[&[u8]]| client_ip(Some(peer), vs.iter().copied(), trusted()).unwrap();
    let got = ip(values);
    assert!(
        got == peer || entries(values).contains(&got),
        "{got} is neither the peer nor in the header"
    );
    if !is_trusted(&peer) {
        assert_eq!(got, peer, "header believed from an untrusted peer");
    }
    assert_eq!(client_ip(None, values.iter().copied(), trusted()), None);
    let joined: Vec<u8> = [garbage, &b", "[..], values[0]].concat();
    let mut with_joined: Vec<&[u8]> = vec![&joined];
    with_joined.extend_from_slice(&values[1..]);
    let mut with_header: Vec<&[u8]> = vec![garbage];
    with_header.extend_from_slice(values);
    if !is_trusted(&got) {
        assert_eq!(
            ip(&with_header),
            got,
            "garbage in an earlier header changed the client"
        );
        assert_eq!(
            ip(&with_joined),
            got,
            "garbage left of the client changed it"
        );
    }
    // X-Forwarded-Proto.
    let https = forwarded_https(Some(peer), values.iter().copied(), trusted());
    if https {
        assert!(is_trusted(&peer));
        let last = values.last().unwrap();
        let v = last.rsplit(|&b| b == b',').next().unwrap();
        assert!(v.trim_ascii().eq_ignore_ascii_case(b"https"));
    }
    assert_eq!(
        forwarded_https(Some(peer), with_header.iter().copied(), trusted()),
        https
    );
    assert_eq!(
        forwarded_https(Some(peer), with_joined.iter().copied(), trusted()),
        https
    );
});
