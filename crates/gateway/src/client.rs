//! Who the client is, as far as the network says: the address of the peer, or, when the peer is
//! a proxy the gateway is told to trust, the address that proxy saw.
//!
//! Only trusted proxies' `X-Forwarded-For` is believed: anyone else could write any address in
//! it and escape per-address limits. Each proxy appends the address it received from, so the
//! list is read from the right, skipping trusted proxies; the first address that is not one is
//! the client. (`Forwarded`, RFC 7239, is not read: the proxies this runs behind, nginx,
//! HAProxy, Envoy and cloud load balancers, all send `X-Forwarded-For`.)

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The client's address for a request from `peer` carrying `headers`.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    let hops =
        headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(','));
    let hops: Vec<&str> = hops.map(str::trim).collect();
    for hop in hops.iter().rev() {
        // A hop that is not an address ends what can be believed.
        let Ok(ip) = hop.parse::<IpAddr>() else { break };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in xff {
            map.append("x-forwarded-for", value.parse().unwrap());
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const TRUSTED: &str = "10.0.0.0/8";

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let trusted = [TRUSTED.parse().unwrap()];
        assert_eq!(client_address(ip("203.0.113.7"), &headers(&["1.2.3.4"]), &trusted), ip("203.0.113.7"));
        assert_eq!(client_address(ip("203.0.113.7"), &headers(&["1.2.3.4"]), &[]), ip("203.0.113.7"));
    }

    #[test]
    fn a_trusted_proxy_names_the_client() {
        let trusted = [TRUSTED.parse().unwrap()];
        assert_eq!(client_address(ip("10.0.0.2"), &headers(&["198.51.100.4"]), &trusted), ip("198.51.100.4"));
    }

    #[test]
    fn a_trusted_proxy_without_the_header_is_the_client() {
        let trusted = [TRUSTED.parse().unwrap()];
        assert_eq!(client_address(ip("10.0.0.2"), &headers(&[]), &trusted), ip("10.0.0.2"));
    }

    #[test]
    fn a_chain_is_read_from_the_right_up_to_the_first_untrusted_hop() {
        let trusted = [TRUSTED.parse().unwrap()];
        // The client wrote a fake first hop; two of our proxies appended what they saw.
        let chain = headers(&["6.6.6.6, 198.51.100.4", "10.1.1.1"]);
        assert_eq!(client_address(ip("10.0.0.2"), &chain, &trusted), ip("198.51.100.4"));
        // Garbage ends the walk at the last address that could be believed.
        let garbage = headers(&["not-an-ip, 10.1.1.1"]);
        assert_eq!(client_address(ip("10.0.0.2"), &garbage, &trusted), ip("10.1.1.1"));
    }
}
