//! Onboarding secrets: API keys and owner tokens. Both are random, shown once, and stored only as
//! SHA-256 hashes; every comparison is constant-time.

use protocol::ids::DevEui;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The prefix of every API key, so a leaked key is recognisable (secret scanners).
pub const API_KEY_PREFIX: &str = "jsk_";

/// An API key in clear: exists only between its creation and the moment it is printed, or while
/// a request is authenticated. `Debug` never shows it.
pub struct ApiKeySecret(String);

impl std::fmt::Debug for ApiKeySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKeySecret(<redacted>)")
    }
}

impl ApiKeySecret {
    /// A new random key: the prefix and 32 random bytes in hex.
    pub fn generate() -> Self {
        let mut b = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut b);
        Self(format!("{API_KEY_PREFIX}{}", hex::encode(b)))
    }

    /// Wraps a key read from a request or a file.
    pub fn from_text(s: &str) -> Self {
        Self(s.trim().to_owned())
    }

    /// The key, to print it once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the key: what the store holds and looks up.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_bytes()).into()
    }
}

/// A new random owner token: 16 random bytes as 32 uppercase hex digits (a valid TR005
/// OwnerToken: no `:`, printable).
pub fn generate_owner_token() -> String {
    hex::encode_upper(generate_owner_token_bytes())
}

/// The 16 random bytes of a new owner token (its text is their uppercase hex); kept this way
/// while an import runs, at a fifth of the text's memory.
pub fn generate_owner_token_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

/// The stored form of a device's owner token: SHA-256 over a domain label, the DevEUI and the
/// token, so equal tokens on two devices hash differently.
pub fn owner_token_hash(dev_eui: DevEui, token: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"joinserver owner token v1\0");
    h.update(dev_eui.as_u64().to_be_bytes());
    h.update(token.trim().as_bytes());
    h.finalize().into()
}

/// Constant-time equality of two hashes (or any byte strings of public length).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_tokens_are_random_and_redacted() {
        let a = ApiKeySecret::generate();
        let b = ApiKeySecret::generate();
        assert_ne!(a.expose(), b.expose());
        assert!(a.expose().starts_with(API_KEY_PREFIX));
        assert_eq!(a.expose().len(), API_KEY_PREFIX.len() + 64);
        assert!(!format!("{a:?}").contains(&a.expose()[4..]));
        assert_eq!(
            ApiKeySecret::from_text(&format!(" {} \n", a.expose())).hash(),
            a.hash()
        );
        let t = generate_owner_token();
        assert_eq!(t.len(), 32);
        assert_ne!(t, generate_owner_token());
        let d = DevEui::new(1);
        assert!(ct_eq(&owner_token_hash(d, &t), &owner_token_hash(d, &t)));
        assert!(!ct_eq(
            &owner_token_hash(d, &t),
            &owner_token_hash(DevEui::new(2), &t)
        ));
        assert!(!ct_eq(&[1, 2], &[1, 2, 3]));
    }
}
