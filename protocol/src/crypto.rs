//! The AES-128 and AES-CMAC primitives every LoRaWAN crypto path is built from.
//!
//! `protocol` is the only crate in the workspace that touches AES/CMAC; everything above this
//! module works with role-typed keys. The `aes` crate detects AES-NI at run time.

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
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
    }
}
