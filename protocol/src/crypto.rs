//! The AES-128 and AES-CMAC primitives every LoRaWAN crypto path is built from.
//!
//! `protocol` is the only crate in the workspace that touches AES/CMAC; everything above this
//! module works with role-typed keys. The `aes` crate detects AES-NI at run time.

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use cmac::digest::crypto_common::InnerInit;
use aes::Aes128;
use cmac::{Cmac, Mac};

use crate::keys::Mic;

/// `aes128_encrypt(key, block)`: one AES-128-ECB block encryption.
pub(crate) fn aes128_encrypt(key: &[u8; 16], block: &[u8; 16]) -> [u8; 16] {
    let cipher = Aes128::new(key.into());
    let mut b = (*block).into();
    cipher.encrypt_block(&mut b);
    b.into()
}

/// Encrypts each 16-byte block of `data` in place (ECB). `data.len()` must be a multiple of 16.
pub(crate) fn aes128_encrypt_blocks(key: &[u8; 16], data: &mut [u8]) {
    debug_assert_eq!(data.len() % 16, 0);
    let cipher = Aes128::new(key.into());
    for chunk in data.chunks_exact_mut(16) {
        cipher.encrypt_block(chunk.into());
    }
}

/// Decrypts each 16-byte block of `data` in place (ECB). `data.len()` must be a multiple of 16.
pub(crate) fn aes128_decrypt_blocks(key: &[u8; 16], data: &mut [u8]) {
    debug_assert_eq!(data.len() % 16, 0);
    let cipher = Aes128::new(key.into());
    for chunk in data.chunks_exact_mut(16) {
        cipher.decrypt_block(chunk.into());
    }
}

/// `aes128_cmac(key, parts[0] | parts[1] | …)`: RFC 4493 over the concatenation of `parts`.
pub(crate) fn aes128_cmac(key: &[u8; 16], parts: &[&[u8]]) -> [u8; 16] {
    let mut mac = <Cmac<Aes128> as KeyInit>::new(key.into());
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// One AES-128 key, expanded once: the encryption and decryption round keys, ready for ECB
/// blocks and for AES-CMAC.
///
/// A join touches its root key four or five times (Join-request MIC, two derivations,
/// Join-accept MIC, Join-accept encryption); expanding the key schedule once and cloning the
/// expanded cipher into each CMAC avoids four re-expansions. The round keys are zeroized on drop
/// (the `aes` crate's `zeroize` feature).
#[derive(Clone)]
pub(crate) struct KeySchedule {
    aes: Aes128,
}

impl KeySchedule {
    /// Expands `key`.
    pub(crate) fn new(key: &[u8; 16]) -> Self {
        Self {
            aes: Aes128::new(key.into()),
        }
    }

    /// Encrypts each 16-byte block of `data` in place (ECB); a trailing partial block is left
    /// untouched, so callers pass whole blocks.
    pub(crate) fn encrypt_blocks(&self, data: &mut [u8]) {
        debug_assert_eq!(data.len() % 16, 0);
        for chunk in data.chunks_exact_mut(16) {
            self.aes.encrypt_block(chunk.into());
        }
    }

    /// Decrypts each 16-byte block of `data` in place (ECB); a trailing partial block is left
    /// untouched, so callers pass whole blocks.
    pub(crate) fn decrypt_blocks(&self, data: &mut [u8]) {
        debug_assert_eq!(data.len() % 16, 0);
        for chunk in data.chunks_exact_mut(16) {
            self.aes.decrypt_block(chunk.into());
        }
    }

    /// A fresh CMAC state over this key, without re-expanding it.
    pub(crate) fn cmac_state(&self) -> Cmac<Aes128> {
        Cmac::from_core(cmac::CmacCore::inner_init(self.aes.clone()))
    }

    /// `aes128_cmac(key, parts[0] | parts[1] | …)`.
    pub(crate) fn cmac(&self, parts: &[&[u8]]) -> [u8; 16] {
        let mut mac = self.cmac_state();
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }
}

/// The first four bytes of a CMAC, as a LoRaWAN MIC.
pub(crate) fn mic_of(cmac: &[u8; 16]) -> Mic {
    Mic([cmac[0], cmac[1], cmac[2], cmac[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    // FIPS-197 appendix C.1 and RFC 4493 §4 example 2.
    #[test]
    fn aes_and_cmac_known_answers() {
        let key: [u8; 16] = hex::decode("000102030405060708090a0b0c0d0e0f")
            .unwrap()
            .try_into()
            .unwrap();
        let pt: [u8; 16] = hex::decode("00112233445566778899aabbccddeeff")
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(
            hex::encode(aes128_encrypt(&key, &pt)),
            "69c4e0d86a7b0430d8cdb78070b4c55a"
        );
        let mut blocks = [pt, pt].concat();
        aes128_encrypt_blocks(&key, &mut blocks);
        aes128_decrypt_blocks(&key, &mut blocks);
        assert_eq!(blocks, [pt, pt].concat());

        let k: [u8; 16] = hex::decode("2b7e151628aed2a6abf7158809cf4f3c")
            .unwrap()
            .try_into()
            .unwrap();
        let msg = hex::decode("6bc1bee22e409f96e93d7e117393172a").unwrap();
        let (a, b) = msg.split_at(5);
        assert_eq!(
            hex::encode(aes128_cmac(&k, &[a, b])),
            "070a16b46b4d4144f79bdd9dd04a287c"
        );
        assert_eq!(
            mic_of(&aes128_cmac(&k, &[&msg])).0,
            [0x07, 0x0a, 0x16, 0xb4]
        );

        // The expanded schedule gives the same answers as the one-shot functions.
        let ks = KeySchedule::new(&k);
        assert_eq!(ks.cmac(&[a, b]), aes128_cmac(&k, &[&msg]));
        let mut one = pt;
        ks.encrypt_blocks(&mut one);
        assert_eq!(one, aes128_encrypt(&k, &pt));
        let mut blocks = [pt, pt].concat();
        ks.decrypt_blocks(&mut blocks);
        ks.encrypt_blocks(&mut blocks);
        assert_eq!(blocks, [pt, pt].concat());
        // RFC 4493 example 1: the empty message.
        assert_eq!(
            hex::encode(ks.cmac(&[])),
            "bb1d6929e95937287fa37d129b756746"
        );
    }
}
