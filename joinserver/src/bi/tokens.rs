//! Bearer tokens of the Backend Interfaces peers: random, printed once by
//! `joinserver peers token --net-id N`, stored only as SHA-256 hashes in the join server's store
//! (table `bi_peer_tokens` of the SQLite file or of PostgreSQL, [`PeerTokens`]), looked up by
//! hash and compared in constant time.

use protocol::ids::NetId;
use rand::RngCore;
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::store::{SqliteStore, StoreError};

/// The prefix of every peer token, so that a leaked one is recognisable (secret scanners).
pub const TOKEN_PREFIX: &str = "jsbi_";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS bi_peer_tokens (
    token_hash BLOB PRIMARY KEY,   -- SHA-256 of the token; the token itself is never stored
    net_id     INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
) STRICT;
";

/// A peer token in clear: exists only between its creation and the moment it is printed, or
/// while a request is authenticated. `Debug` never shows it.
pub struct PeerToken(String);

impl std::fmt::Debug for PeerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerToken(<redacted>)")
    }
}

impl PeerToken {
    /// A new random token: the prefix and 32 random bytes in hex.
    pub fn generate() -> Self {
        let mut b = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut b);
        Self(format!("{TOKEN_PREFIX}{}", hex::encode(b)))
    }

    /// The token of an `Authorization` header: `Bearer <token>` (any case of the scheme), or the
    /// bare token, as ChirpStack's `authorization_header` sends whatever it is given.
    pub fn from_authorization(value: &str) -> Self {
        let v = value.trim();
        let bare = match v.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ => v,
        };
        Self(bare.to_owned())
    }

    /// The token, to print it once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the token: what the store holds and looks up.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_bytes()).into()
    }
}

fn ensure_schema(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(SCHEMA)?;
    Ok(())
}

/// Where the peer tokens' hashes live: the embedded SQLite file or the PostgreSQL store shared by
/// every join server (where a token created once works at every instance).
pub trait PeerTokens: Send + std::fmt::Debug {
    /// Stores the hash of a new token of the peer `net_id`.
    fn insert_peer_token(
        &mut self,
        hash: &[u8; 32],
        net_id: NetId,
        created_ms: u64,
    ) -> Result<(), StoreError>;

    /// The stored hash equal to `hash` and its NetID, looked up by index (the caller compares
    /// the hash in constant time).
    fn peer_token(&mut self, hash: &[u8; 32]) -> Result<Option<(Vec<u8>, u32)>, StoreError>;
}

impl PeerTokens for SqliteStore {
    fn insert_peer_token(
        &mut self,
        hash: &[u8; 32],
        net_id: NetId,
        created_ms: u64,
    ) -> Result<(), StoreError> {
        let conn = self.conn_mut();
        ensure_schema(conn)?;
        conn.execute(
            "INSERT INTO bi_peer_tokens (token_hash, net_id, created_ms) VALUES (?1, ?2, ?3)",
            params![&hash[..], net_id.as_u32(), created_ms as i64],
        )?;
        Ok(())
    }

    fn peer_token(&mut self, hash: &[u8; 32]) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        Ok(self
            .conn_mut()
            .prepare_cached("SELECT token_hash, net_id FROM bi_peer_tokens WHERE token_hash = ?1")?
            .query_row(params![&hash[..]], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }
}

/// Creates a token for the peer `net_id`, stores its hash, and returns it (to print once).
pub fn create(
    store: &mut dyn PeerTokens,
    net_id: NetId,
    now_ms: u64,
) -> Result<PeerToken, StoreError> {
    let token = PeerToken::generate();
    store.insert_peer_token(&token.hash(), net_id, now_ms)?;
    Ok(token)
}

/// Looks peer tokens up on a store handle of its own.
#[derive(Debug)]
pub struct TokenStore {
    store: Box<dyn PeerTokens>,
}

impl TokenStore {
    /// Opens the data directory's embedded store (creating the table if needed).
    pub fn open(data_dir: &std::path::Path) -> Result<Self, StoreError> {
        let mut store = SqliteStore::open(data_dir)?;
        ensure_schema(store.conn_mut())?;
        Ok(Self::new(Box::new(store)))
    }

    /// Over `store` (a PostgreSQL store, say).
    pub fn new(store: Box<dyn PeerTokens>) -> Self {
        Self { store }
    }

    /// The NetID a token was created for, if any.
    pub fn find(&mut self, token: &PeerToken) -> Result<Option<NetId>, StoreError> {
        let hash = token.hash();
        let row = self.store.peer_token(&hash)?;
        Ok(row
            .filter(|(h, _)| bool::from(h.as_slice().ct_eq(&hash[..])))
            .and_then(|(_, n)| NetId::new(n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stored_hashed_and_found_by_their_clear_text() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(tmp.path()).unwrap();
        let net = NetId::new(0x13).unwrap();
        let t = create(&mut store, net, 1).unwrap();
        assert!(t.expose().starts_with(TOKEN_PREFIX));
        assert_eq!(t.expose().len(), TOKEN_PREFIX.len() + 64);
        assert_eq!(format!("{t:?}"), "PeerToken(<redacted>)");
        let mut ts = TokenStore::open(tmp.path()).unwrap();
        let header = format!("Bearer {}", t.expose());
        assert_eq!(
            ts.find(&PeerToken::from_authorization(&header)).unwrap(),
            Some(net)
        );
        let lower = format!("bearer  {}", t.expose());
        assert_eq!(
            ts.find(&PeerToken::from_authorization(&lower)).unwrap(),
            Some(net)
        );
        assert_eq!(
            ts.find(&PeerToken::from_authorization(t.expose())).unwrap(),
            Some(net)
        );
        assert_eq!(
            ts.find(&PeerToken::from_authorization("Bearer jsbi_00"))
                .unwrap(),
            None
        );
        // Only the hash is in the file.
        let db = std::fs::read(tmp.path().join(crate::store::DB_FILE)).unwrap();
        let wal = std::fs::read(tmp.path().join(format!("{}-wal", crate::store::DB_FILE)))
            .unwrap_or_default();
        let clear = t.expose().as_bytes();
        for bytes in [&db, &wal] {
            assert!(!bytes.windows(clear.len()).any(|w| w == clear));
        }
    }
}
