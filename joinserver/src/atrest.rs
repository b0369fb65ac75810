//! Root keys at rest: RFC 3394 AES key wrap under the master key (`secrets/master.key`).
//!
//! Key wrap has an integrity check, so unwrapping with the wrong master key or a corrupted
//! row fails instead of yielding a wrong key. [`check_value`] (the wrap of a zero block) lets
//! the store detect a master key that differs from the one it was created with.

use protocol::keys::{AppKey, Kek, NwkKey};
use protocol::keywrap;

use crate::secrets::MasterKey;

/// A wrapped key could not be unwrapped: wrong master key or corrupted data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("root key does not unwrap under the master key (wrong master.key or corrupt store)")]
pub struct UnwrapError;

/// Wraps an AppKey for storage.
pub fn seal_app_key(master: &MasterKey, key: &AppKey) -> Vec<u8> {
    keywrap::wrap_key(&master.0, key).to_vec()
}

/// Wraps a NwkKey for storage.
pub fn seal_nwk_key(master: &MasterKey, key: &NwkKey) -> Vec<u8> {
    keywrap::wrap_key(&master.0, key).to_vec()
}

/// Unwraps a stored AppKey.
pub fn open_app_key(master: &MasterKey, wrapped: &[u8]) -> Result<AppKey, UnwrapError> {
    keywrap::unwrap_key(&master.0, wrapped).map_err(|_| UnwrapError)
}

/// Unwraps a stored NwkKey.
pub fn open_nwk_key(master: &MasterKey, wrapped: &[u8]) -> Result<NwkKey, UnwrapError> {
    keywrap::unwrap_key(&master.0, wrapped).map_err(|_| UnwrapError)
}

/// Wraps a link peer's key (its link key or network KEK) for storage.
pub fn seal_peer_key<K: protocol::keys::Key128>(master: &MasterKey, key: &K) -> Vec<u8> {
    keywrap::wrap_key(&master.0, key).to_vec()
}

/// Unwraps a stored link peer's key.
pub fn open_peer_key<K: protocol::keys::Key128>(
    master: &MasterKey,
    wrapped: &[u8],
) -> Result<K, UnwrapError> {
    keywrap::unwrap_key(&master.0, wrapped).map_err(|_| UnwrapError)
}

/// The wrap of an all-zero block: identifies the master key without revealing it.
pub fn check_value(master: &MasterKey) -> Vec<u8> {
    keywrap::wrap_key(&master.0, &Kek::new([0u8; 16])).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3394_vector_and_round_trip() {
        // RFC 3394 §4.1.
        let m = MasterKey(Kek::new(
            hex::decode("000102030405060708090A0B0C0D0E0F")
                .unwrap()
                .try_into()
                .unwrap(),
        ));
        let k = AppKey::new(
            hex::decode("00112233445566778899AABBCCDDEEFF")
                .unwrap()
                .try_into()
                .unwrap(),
        );
        let w = seal_app_key(&m, &k);
        assert_eq!(
            hex::encode_upper(&w),
            "1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5"
        );
        assert_eq!(open_app_key(&m, &w).unwrap(), k);
        let other = MasterKey(Kek::new([7; 16]));
        assert_eq!(open_app_key(&other, &w).unwrap_err(), UnwrapError);
        assert_eq!(open_nwk_key(&m, &w[..16]).unwrap_err(), UnwrapError);
        assert_ne!(check_value(&m), check_value(&other));
    }
}
