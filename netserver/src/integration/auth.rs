//! Who may use the downlink inputs: a bearer token read from a file
//! (`[data] downlink_token_file`), compared in constant time. Without a token file an input
//! may only listen on a loopback address ([`check_exposure`]).
//!
//! The HTTP input takes it as `Authorization: Bearer TOKEN` (checked before the body is read);
//! the UDP input as a `"token"` member of the request's JSON. An unauthenticated UDP datagram
//! gets no answer at all: the input is no reflector and tells nothing about sessions.

use std::fmt;
use std::net::SocketAddr;

use serde::Deserialize;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// The shortest token accepted (a guessable token would be no defence).
pub const MIN_TOKEN_LEN: usize = 16;

/// The downlink inputs' bearer token. Its `Debug` never shows it.
pub struct DownlinkToken(Zeroizing<String>);

impl fmt::Debug for DownlinkToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DownlinkToken(<redacted>)")
    }
}

impl DownlinkToken {
    /// A token from the file's trimmed text: at least [`MIN_TOKEN_LEN`] visible ASCII
    /// characters (it travels in an HTTP header).
    pub fn new(text: &str) -> Result<Self, String> {
        if text.len() < MIN_TOKEN_LEN || !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "the downlink token must be at least {MIN_TOKEN_LEN} visible ASCII characters (e.g. `openssl rand -hex 32`)"
            ));
        }
        Ok(Self(Zeroizing::new(text.to_owned())))
    }

    /// Whether `presented` is the token, in time independent of where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }
}

/// The token of an `Authorization` header value `Bearer TOKEN` (scheme case-insensitive).
pub fn bearer(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
}

/// Whether a UDP request body carries the token (in its `"token"` member).
pub fn udp_request_authenticated(token: &DownlinkToken, body: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Presented {
        token: Option<String>,
    }
    serde_json::from_slice::<Presented>(body)
        .ok()
        .and_then(|p| p.token.map(Zeroizing::new))
        .is_some_and(|t| token.matches(t.as_bytes()))
}

/// Refuses an input on a non-loopback address without a token: anyone who reaches it could
/// queue downlinks.
pub fn check_exposure(
    what: &str,
    addr: SocketAddr,
    token: Option<&DownlinkToken>,
) -> Result<(), String> {
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(format!(
            "{what} on {addr} is not on a loopback address and has no token: set data.downlink_token_file (--downlink-token-file)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "0123456789abcdef0123";

    #[test]
    fn a_token_is_long_visible_and_never_shown() {
        assert!(DownlinkToken::new("short").is_err());
        assert!(DownlinkToken::new("0123456789 abcdef").is_err());
        let t = DownlinkToken::new(T).unwrap();
        assert!(t.matches(T.as_bytes()));
        assert!(!t.matches(&T.as_bytes()[..19]));
        assert!(!t.matches(b"0123456789abcdef0124"));
        assert_eq!(format!("{t:?}"), "DownlinkToken(<redacted>)");
    }

    #[test]
    fn bearer_headers() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abcdef"), None);
        assert_eq!(bearer(b"Bear"), None);
    }

    #[test]
    fn udp_requests_carry_the_token_in_their_json() {
        let t = DownlinkToken::new(T).unwrap();
        let ok = format!(r#"{{"token":"{T}","dev_eui":"0000000000000001","f_port":1,"data":""}}"#);
        assert!(udp_request_authenticated(&t, ok.as_bytes()));
        assert!(!udp_request_authenticated(
            &t,
            br#"{"dev_eui":"0000000000000001"}"#
        ));
        assert!(!udp_request_authenticated(&t, br#"{"token":"nope"}"#));
        assert!(!udp_request_authenticated(&t, b"not json"));
    }

    #[test]
    fn exposure_without_a_token_only_on_loopback() {
        let t = DownlinkToken::new(T).unwrap();
        let lo: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:1".parse().unwrap();
        assert!(check_exposure("x", lo, None).is_ok());
        assert!(check_exposure("x", "[::1]:1".parse().unwrap(), None).is_ok());
        assert!(check_exposure("x", any, Some(&t)).is_ok());
        let e = check_exposure("the HTTP downlink input", any, None).unwrap_err();
        assert!(e.contains("downlink_token_file"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn only_the_exact_token_authenticates(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128), header in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let t = DownlinkToken::new(T).unwrap();
            // Arbitrary input never panics and never authenticates without the token in it.
            let body_has = body.windows(T.len()).any(|w| w == T.as_bytes());
            proptest::prop_assert!(!udp_request_authenticated(&t, &body) || body_has);
            if let Some(tok) = bearer(&header) {
                proptest::prop_assert_eq!(t.matches(tok), tok == T.as_bytes());
            }
        }
    }
}
