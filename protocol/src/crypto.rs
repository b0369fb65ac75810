//! The AES-128 and AES-CMAC primitives every LoRaWAN crypto path is built from.
//!
//! `protocol` is the only crate in the workspace that touches AES/CMAC; everything above this
//! module works with role-typed keys. The `aes` crate detects AES-NI at run time.

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use aes::{Aes128, Aes128Dec, Aes128Enc};
use cmac::{Cmac, Mac};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// A 4-byte message integrity code. Equality is constant-time.
#[derive(Clone, Copy)]
pub struct Mic(pub [u8; 4]);

impl PartialEq for Mic {
    /// Constant-time comparison.
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}
impl Eq for Mic {}

impl std::fmt::Debug for Mic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mic({})", hex::encode(self.0))
    }
}

/// An AES-128 key schedule for the FRMPayload / FOpts keystream, expanded once.
///
/// Build one per session, not per frame. `Debug` is redacted; the round keys are wiped on drop.
#[derive(Clone)]
pub struct PayloadCipher(pub(crate) Aes128Enc);

impl std::fmt::Debug for PayloadCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PayloadCipher(<redacted>)")
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

/// One AES-128 key, expanded once: the encryption and decryption round keys and the two CMAC
/// subkeys, ready for ECB blocks and for AES-CMAC.
///
/// A join touches its root key four or five times (Join-request MIC, two derivations,
/// Join-accept MIC, Join-accept encryption). Expanding the key schedule and the CMAC subkeys
/// once per key, instead of once per operation as `Cmac::new` / `Aes128::new` would, is what
/// keeps the join path close to the bare cost of its AES blocks (`benches/join.rs`).
///
/// The CMAC is RFC 4493 written out over the expanded cipher, because the `cmac` crate can only
/// take the cipher by value (a clone of the round keys per MAC) and recomputes the subkeys on
/// every MAC. It is checked against the `cmac` crate and RFC 4493's examples in the tests below.
///
/// The round keys (and the decryption round keys derived for a Join-accept) are zeroized on drop
/// (the `aes` crate's `zeroize` feature), the subkeys by this type's `Drop`.
#[derive(Clone)]
pub(crate) struct KeySchedule {
    /// Encryption round keys only: CMAC, derivation and the device side need nothing else, and
    /// the decryption round keys cost as much again to compute (see [`Self::decrypt_blocks`]).
    /// Held as a [`PayloadCipher`] so that a LoRaWAN 1.0 session's FPort 0 keystream, under
    /// the same NwkSKey, uses these round keys instead of expanding the key a second time.
    aes: PayloadCipher,
    /// CMAC subkey K1 (RFC 4493 §2.3).
    k1: [u8; 16],
    /// CMAC subkey K2.
    k2: [u8; 16],
}

/// RFC 4493 §2.3 doubling in GF(2^128): shift left by one bit, XOR `0x87` into the last byte if
/// the bit shifted out was set.
fn dbl(b: &[u8; 16]) -> [u8; 16] {
    let v = u128::from_be_bytes(*b);
    let carry = (v >> 127) as u8;
    let mut out = (v << 1).to_be_bytes();
    out[15] ^= 0x87 & 0u8.wrapping_sub(carry);
    out
}

fn xor_into(acc: &mut [u8; 16], x: &[u8; 16]) {
    for (a, b) in acc.iter_mut().zip(x) {
        *a ^= b;
    }
}

impl KeySchedule {
    /// Expands `key` and derives the CMAC subkeys.
    pub(crate) fn new(key: &[u8; 16]) -> Self {
        let aes = PayloadCipher(Aes128Enc::new(key.into()));
        let mut l = [0u8; 16].into();
        aes.0.encrypt_block(&mut l);
        let mut l: [u8; 16] = l.into();
        let k1 = dbl(&l);
        let k2 = dbl(&k1);
        l.zeroize();
        Self { aes, k1, k2 }
    }

    fn encrypt_in_place(&self, block: &mut [u8; 16]) {
        self.aes.0.encrypt_block(block.into());
    }

    /// The expanded key as a keystream cipher (FRMPayload / FOpts encryption).
    pub(crate) fn cipher(&self) -> &PayloadCipher {
        &self.aes
    }

    /// Encrypts each 16-byte block of `data` in place (ECB); a trailing partial block is left
    /// untouched, so callers pass whole blocks.
    pub(crate) fn encrypt_blocks(&self, data: &mut [u8]) {
        debug_assert_eq!(data.len() % 16, 0);
        for chunk in data.chunks_exact_mut(16) {
            self.aes.0.encrypt_block(chunk.into());
        }
    }

    /// Decrypts each 16-byte block of `data` in place (ECB); a trailing partial block is left
    /// untouched, so callers pass whole blocks.
    ///
    /// The decryption round keys are derived from the encryption ones here, on use: only the
    /// join server's Join-accept encryption needs them, once per join.
    pub(crate) fn decrypt_blocks(&self, data: &mut [u8]) {
        debug_assert_eq!(data.len() % 16, 0);
        let dec = Aes128Dec::from(&self.aes.0);
        for chunk in data.chunks_exact_mut(16) {
            dec.decrypt_block(chunk.into());
        }
    }

    /// `aes128_cmac(key, parts[0] | parts[1] | …)` (RFC 4493 §2.4).
    pub(crate) fn cmac(&self, parts: &[&[u8]]) -> [u8; 16] {
        // `x` is the CBC-MAC chain; `buf[..pos]` the pending block, kept back until more data
        // arrives because the last block is treated differently.
        let mut x = [0u8; 16];
        let mut buf = [0u8; 16];
        let mut pos = 0;
        for part in parts {
            let mut rest: &[u8] = part;
            while !rest.is_empty() {
                if pos == 16 {
                    xor_into(&mut x, &buf);
                    self.encrypt_in_place(&mut x);
                    pos = 0;
                }
                let n = (16 - pos).min(rest.len());
                buf[pos..pos + n].copy_from_slice(&rest[..n]);
                pos += n;
                rest = &rest[n..];
            }
        }
        if pos == 16 {
            xor_into(&mut buf, &self.k1);
        } else {
            buf[pos] = 0x80;
            buf[pos + 1..].fill(0);
            xor_into(&mut buf, &self.k2);
        }
        xor_into(&mut x, &buf);
        self.encrypt_in_place(&mut x);
        x
    }
}

impl Drop for KeySchedule {
    fn drop(&mut self) {
        self.k1.zeroize();
        self.k2.zeroize();
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
        let fips = KeySchedule::new(&key);
        let mut ct = pt;
        fips.encrypt_blocks(&mut ct);
        assert_eq!(hex::encode(ct), "69c4e0d86a7b0430d8cdb78070b4c55a");
        fips.decrypt_blocks(&mut ct);
        assert_eq!(ct, pt);

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
        let mut blocks = [pt, pt].concat();
        ks.decrypt_blocks(&mut blocks);
        ks.encrypt_blocks(&mut blocks);
        assert_eq!(blocks, [pt, pt].concat());
        // RFC 4493 §4, all four examples, split at every position.
        let m = hex::decode(
            "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51\
             30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710",
        )
        .unwrap();
        let examples = [
            (0, "bb1d6929e95937287fa37d129b756746"),
            (16, "070a16b46b4d4144f79bdd9dd04a287c"),
            (40, "dfa66747de9ae63030ca32611497c827"),
            (64, "51f0bebf7e3b9d92fc49741779363cfe"),
        ];
        for (len, tag) in examples {
            let msg = &m[..len];
            for cut in 0..=len {
                let (a, b) = msg.split_at(cut);
                assert_eq!(hex::encode(ks.cmac(&[a, b])), tag, "len {len} cut {cut}");
            }
            assert_eq!(hex::encode(ks.cmac(&[msg])), tag);
        }
        // RFC 4493 §4 subkeys.
        assert_eq!(hex::encode(ks.k1), "fbeed618357133667c85e08f7236a8de");
        assert_eq!(hex::encode(ks.k2), "f7ddac306ae266ccf90bc11ee46d513b");
    }

    proptest::proptest! {
        /// The hand-written CMAC equals the `cmac` crate's for any key and any split message.
        #[test]
        fn cmac_matches_the_cmac_crate(
            key in proptest::prelude::any::<[u8; 16]>(),
            msg in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100),
            cut1 in 0usize..100,
            cut2 in 0usize..100,
        ) {
            let (c1, c2) = (cut1.min(msg.len()), cut2.min(msg.len()));
            let (lo, hi) = (c1.min(c2), c1.max(c2));
            let ks = KeySchedule::new(&key);
            proptest::prop_assert_eq!(
                ks.cmac(&[&msg[..lo], &msg[lo..hi], &msg[hi..]]),
                aes128_cmac(&key, &[&msg])
            );
        }
    }
}
