//! Join servers by JoinEUI prefix (`[[join_servers]]`): the longest matching prefix chooses our
//! UDP link or a LoRaWAN Backend Interfaces (TS002) HTTPS join server; a JoinEUI that no entry
//! matches goes to the link (`[join_server]`).

use std::sync::Arc;

use protocol::ids::JoinEui;

use crate::join::client::{JoinServerClient, JoinTransaction};
use crate::join::http::{self, HttpClient, HttpError};
use crate::join::link::{self, LinkClient, LinkSendError};

/// A JoinEUI prefix: the first `bits` bits of `value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinEuiPrefix {
    value: u64,
    bits: u8,
}

impl JoinEuiPrefix {
    /// Parses `"70b3d57ed0000000/40"` (16 hex digits, `/`, 0..=64 bits; bits beyond the prefix
    /// must be zero). `""` is the default prefix `/0`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(Self { value: 0, bits: 0 });
        }
        let (hex, bits) = s
            .split_once('/')
            .ok_or_else(|| format!("join_eui_prefix {s:?}: expected HEX/BITS"))?;
        let value: JoinEui = hex
            .parse()
            .map_err(|e| format!("join_eui_prefix {s:?}: {e}"))?;
        let bits: u8 = bits
            .parse()
            .ok()
            .filter(|b| *b <= 64)
            .ok_or_else(|| format!("join_eui_prefix {s:?}: bits must be 0..=64"))?;
        let p = Self {
            value: value.as_u64(),
            bits,
        };
        if value.as_u64() & !p.mask() != 0 {
            return Err(format!(
                "join_eui_prefix {s:?}: bits set beyond the first {bits}"
            ));
        }
        Ok(p)
    }

    fn mask(self) -> u64 {
        u64::MAX.checked_shl(64 - u32::from(self.bits)).unwrap_or(0)
    }

    /// Whether `eui` starts with this prefix.
    pub fn matches(self, eui: JoinEui) -> bool {
        eui.as_u64() & self.mask() == self.value
    }

    /// Its length in bits.
    pub fn bits(self) -> u8 {
        self.bits
    }
}

/// Where the joins of a prefix go.
#[derive(Debug)]
pub enum Route {
    /// Our UDP link.
    Link,
    /// A TS002 join server over HTTPS.
    Http(Arc<HttpClient>),
}

/// The routing table.
#[derive(Debug)]
pub struct JoinServers {
    /// Longest prefix first.
    routes: Vec<(JoinEuiPrefix, Route)>,
    link: Arc<LinkClient>,
}

impl JoinServers {
    /// A table of `routes` over `link` (the link serves what no route matches).
    pub fn new(mut routes: Vec<(JoinEuiPrefix, Route)>, link: Arc<LinkClient>) -> Self {
        routes.sort_by_key(|(p, _)| std::cmp::Reverse(p.bits()));
        Self { routes, link }
    }

    /// The route of `join_eui`: the longest matching prefix's, or the link.
    pub fn pick(&self, join_eui: JoinEui) -> &Route {
        self.routes
            .iter()
            .find(|(p, _)| p.matches(join_eui))
            .map_or(&Route::Link, |(_, r)| r)
    }

    /// The link client (its receive loop runs on the control runtime).
    pub fn link(&self) -> &Arc<LinkClient> {
        &self.link
    }
}

/// One request in flight, over either transport.
#[derive(Debug)]
pub enum Transaction {
    /// Over the link.
    Link(link::Transaction),
    /// Over HTTPS.
    Http(http::Transaction),
}

/// Why one transmission failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The link's.
    #[error(transparent)]
    Link(#[from] LinkSendError),
    /// HTTPS's.
    #[error(transparent)]
    Http(#[from] HttpError),
}

impl JoinServerClient for JoinServers {
    type Transaction = Transaction;

    fn begin(self: &Arc<Self>, join_eui: JoinEui, body: Vec<u8>) -> Transaction {
        match self.pick(join_eui) {
            Route::Link => Transaction::Link(self.link.begin(body)),
            Route::Http(c) => Transaction::Http(c.begin(body)),
        }
    }
}

impl JoinTransaction for Transaction {
    type Error = SendError;

    fn send(&mut self) -> Result<(), SendError> {
        match self {
            Self::Link(t) => Ok(t.send()?),
            Self::Http(t) => Ok(t.send()?),
        }
    }

    fn is_permanent(e: &SendError) -> bool {
        match e {
            SendError::Link(e) => link::Transaction::is_permanent(e),
            SendError::Http(e) => http::Transaction::is_permanent(e),
        }
    }

    async fn answer_until(&mut self, deadline: tokio::time::Instant) -> Option<Vec<u8>> {
        match self {
            Self::Link(t) => t.answer_until(deadline).await,
            Self::Http(t) => t.answer_until(deadline).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_and_match() {
        let p = JoinEuiPrefix::parse("70b3d57ed0000000/40").unwrap();
        assert_eq!(p.bits(), 40);
        assert!(p.matches(JoinEui::new(0x70B3_D57E_D0FF_FFFF)));
        assert!(!p.matches(JoinEui::new(0x70B3_D57E_D100_0000)));
        let all = JoinEuiPrefix::parse("0000000000000000/0").unwrap();
        assert!(all.matches(JoinEui::new(u64::MAX)));
        assert_eq!(JoinEuiPrefix::parse("").unwrap(), all);
        let exact = JoinEuiPrefix::parse("70B3D57ED0000001/64").unwrap();
        assert!(exact.matches(JoinEui::new(0x70B3_D57E_D000_0001)));
        assert!(!exact.matches(JoinEui::new(0x70B3_D57E_D000_0002)));
        for bad in [
            "70b3d57ed0000000",
            "70b3d57ed0000000/65",
            "70b3d57ed0000001/40",
            "zz/8",
            "70b3d57ed0000000/x",
        ] {
            assert!(JoinEuiPrefix::parse(bad).is_err(), "{bad}");
        }
    }
}
