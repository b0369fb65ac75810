//! Who is calling: each network server is a peer known by NetID, authenticated by a client
//! certificate that chains to its CA (mTLS) and/or a bearer token of its own. Both, when both are
//! presented, must name the same peer.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use httpsec::tls::ClientCa;
use protocol::ids::NetId;
use rustls_pki_types::CertificateDer;

use super::tokens::{PeerToken, TokenStore};

/// Why a caller is not a peer. [`AuthError::kind`] is the `reason` label of
/// `joinserver_bi_refused_total`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Neither a client certificate nor an `Authorization` header.
    #[error("no credential: present a client certificate or an Authorization header")]
    NoCredential,
    /// The bearer token is no peer's.
    #[error("unknown bearer token")]
    UnknownToken,
    /// The client certificate chains to no peer's CA.
    #[error("the client certificate is no peer's")]
    UnknownCertificate,
    /// The certificate and the token are of different peers, or the NetID is no longer a peer.
    #[error("the credentials do not name one peer")]
    Mismatch,
    /// The token store could not be read.
    #[error("token lookup failed")]
    Store,
}

impl AuthError {
    /// A short stable label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NoCredential => "no_credential",
            Self::UnknownToken => "unknown_token",
            Self::UnknownCertificate => "unknown_certificate",
            Self::Mismatch => "credential_mismatch",
            Self::Store => "store",
        }
    }
}

/// What a peer may do besides joining its devices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerOptions {
    /// Its application server's `SenderID` (of `AppSKeyReq`), besides its NetID.
    pub as_id: Option<String>,
    /// Owners whose devices' AppSKey it receives in clear.
    pub clear_app_s_key_owners: HashSet<String>,
}

/// The peers of the listener.
#[derive(Debug)]
pub struct Peers {
    /// The join server's link peers, who alone may authenticate (replaced while the server runs
    /// when a peer is added).
    pub link: crate::live::Live<crate::link::Peers>,
    /// The options `[[backend_interfaces.peers]]` gives peers (the others have the defaults).
    pub options: HashMap<NetId, PeerOptions>,
    /// Per peer with a CA: the CA.
    pub cas: Vec<(NetId, ClientCa)>,
    /// Bearer tokens, by hash.
    pub tokens: Mutex<TokenStore>,
}

impl Peers {
    fn by_certificate(&self, chain: &[CertificateDer<'static>]) -> Result<NetId, AuthError> {
        self.cas
            .iter()
            .find(|(_, ca)| ca.accepts(chain))
            .map(|(n, _)| *n)
            .ok_or(AuthError::UnknownCertificate)
    }

    fn by_token(&self, authorization: &str) -> Result<NetId, AuthError> {
        let token = PeerToken::from_authorization(authorization);
        let mut store = self.tokens.lock().map_err(|_| AuthError::Store)?;
        store
            .find(&token)
            .map_err(|_| AuthError::Store)?
            .ok_or(AuthError::UnknownToken)
    }

    /// The peer that `authorization` (the header's value) and `chain` (the client certificate
    /// chain) authenticate.
    pub fn identify(
        &self,
        authorization: Option<&str>,
        chain: Option<&[CertificateDer<'static>]>,
    ) -> Result<NetId, AuthError> {
        let by_cert = chain.map(|c| self.by_certificate(c)).transpose()?;
        let by_token = authorization.map(|a| self.by_token(a)).transpose()?;
        let peer = match (by_cert, by_token) {
            (None, None) => return Err(AuthError::NoCredential),
            (Some(a), Some(b)) if a != b => return Err(AuthError::Mismatch),
            (Some(n), _) | (None, Some(n)) => n,
        };
        let id = protocol::link::PeerId::from_net_id(peer);
        if self.link.load().keys_for(id).is_empty() {
            return Err(AuthError::Mismatch);
        }
        Ok(peer)
    }
}
