//! Signed manifests: a manufacturer signs the exact bytes of a manifest with Ed25519 (a detached
//! signature, RFC 8032 "pure" Ed25519); the join server accepts it only under a public key it is
//! configured to trust (`[api] trusted_manifest_keys`, usable by every importer, or
//! `[api.manufacturer_keys]`, each bound to one manufacturer tenant: a manifest signed by a key
//! bound to manufacturer A is refused when manufacturer B imports it).
//!
//! A signature is given as 128 hex digits, as base64 of the 64 bytes, or as the raw 64 bytes (a
//! signature file may hold any of the three); a public key as 64 hex digits.

use base64::Engine as _;
use ed25519_dalek::{Signature, StreamVerifier, VerifyingKey};

/// Why a manifest signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No signature came with the manifest.
    #[error("the manifest is not signed")]
    Missing,
    /// The signature is not 64 bytes in hex, base64 or raw form.
    #[error("the signature is not 64 bytes (hex, base64 or raw)")]
    Malformed,
    /// The join server trusts no manifest key.
    #[error("no trusted manifest keys are configured ([api] trusted_manifest_keys)")]
    NoTrustedKeys,
    /// The signature does not verify under any trusted key: a tampered manifest, or one signed by
    /// an untrusted key.
    #[error("the signature does not verify under any trusted manifest key")]
    Invalid,
    /// The manifest is signed by a key bound to another manufacturer than the importer.
    #[error("the manifest is signed by a key of another manufacturer")]
    OtherManufacturer,
}

impl SignatureError {
    /// A short stable name for audit records and API errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Missing => "signature_missing",
            Self::Malformed => "signature_malformed",
            Self::NoTrustedKeys => "no_trusted_keys",
            Self::Invalid => "signature_invalid",
            Self::OtherManufacturer => "signature_other_manufacturer",
        }
    }
}

/// Parses a signature given as hex, base64 or raw bytes.
pub fn parse_signature(raw: &[u8]) -> Result<Signature, SignatureError> {
    if raw.len() == 64 {
        if let Ok(b) = <[u8; 64]>::try_from(raw) {
            // 64 raw bytes could also be 64 base64/hex characters of a shorter value, which
            // would not be a signature; raw is the only reading of length 64.
            return Ok(Signature::from_bytes(&b));
        }
    }
    let text = std::str::from_utf8(raw).map_err(|_| SignatureError::Malformed)?;
    let text = text.trim();
    let bytes = if text.len() == 128 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(text).map_err(|_| SignatureError::Malformed)?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| SignatureError::Malformed)?
    };
    let b: [u8; 64] = bytes.try_into().map_err(|_| SignatureError::Malformed)?;
    Ok(Signature::from_bytes(&b))
}

/// Parses a public key of 64 hex digits.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let t = text.trim();
    let b: [u8; 32] = hex::decode(t)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| format!("expected 64 hex digits, found {} characters", t.len()))?;
    VerifyingKey::from_bytes(&b).map_err(|_| "not a valid Ed25519 public key".to_owned())
}

/// The trusted manifest keys, each usable by every importer or bound to one manufacturer.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys(Vec<(VerifyingKey, Option<String>)>);

impl TrustedKeys {
    /// Parses the configured keys (64 hex digits each), usable by every importer.
    pub fn parse(keys: &[String]) -> Result<Self, String> {
        Self::parse_with(keys, &std::collections::BTreeMap::new())
    }

    /// Parses the keys every importer may use and those bound to one manufacturer tenant each.
    /// A key listed in both is bound to its manufacturer.
    pub fn parse_with(
        keys: &[String],
        per_manufacturer: &std::collections::BTreeMap<String, Vec<String>>,
    ) -> Result<Self, String> {
        let mut out: Vec<(VerifyingKey, Option<String>)> = Vec::new();
        for (tenant, list) in per_manufacturer {
            for (i, k) in list.iter().enumerate() {
                let key = parse_public_key(k)
                    .map_err(|e| format!("manufacturer_keys.{tenant}[{i}]: {e}"))?;
                if let Some((_, Some(other))) = out.iter().find(|(o, _)| *o == key) {
                    return Err(format!(
                        "manufacturer_keys.{tenant}[{i}]: the key is also bound to {other}"
                    ));
                }
                out.push((key, Some(tenant.clone())));
            }
        }
        for (i, k) in keys.iter().enumerate() {
            let key =
                parse_public_key(k).map_err(|e| format!("trusted_manifest_keys[{i}]: {e}"))?;
            if !out.iter().any(|(o, _)| *o == key) {
                out.push((key, None));
            }
        }
        Ok(Self(out))
    }

    /// Whether any key is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A streaming verifier of `signature` under every trusted key (the manifest does not say
    /// which key signed it): feed it the manifest's bytes as they arrive, then
    /// [`ManifestVerifier::finish`]. Refuses at once a missing or malformed signature, or an
    /// empty trust list.
    pub fn stream(&self, signature: Option<&[u8]>) -> Result<ManifestVerifier, SignatureError> {
        self.stream_for(signature, None)
    }

    /// [`Self::stream`] for an import by the manufacturer tenant `importer` (`None`: an admin or
    /// the operator): a manifest that verifies under a key bound to another manufacturer is
    /// refused ([`SignatureError::OtherManufacturer`]).
    pub fn stream_for(
        &self,
        signature: Option<&[u8]>,
        importer: Option<&str>,
    ) -> Result<ManifestVerifier, SignatureError> {
        let sig = parse_signature(signature.ok_or(SignatureError::Missing)?)?;
        if self.0.is_empty() {
            return Err(SignatureError::NoTrustedKeys);
        }
        // A signature that cannot verify under any key (S not reduced) verifies nothing.
        let verifiers = self
            .0
            .iter()
            .filter_map(|(k, owner)| {
                k.verify_stream(&sig)
                    .ok()
                    .map(|v| (fingerprint(k), owner.clone(), v))
            })
            .collect();
        Ok(ManifestVerifier {
            verifiers,
            importer: importer.map(str::to_owned),
        })
    }

    /// Verifies a detached signature over `manifest` held in memory. Returns the fingerprint of
    /// the key that verified it (the first 16 hex digits of the public key), for the audit log.
    pub fn verify(
        &self,
        manifest: &[u8],
        signature: Option<&[u8]>,
    ) -> Result<String, SignatureError> {
        let mut v = self.stream(signature)?;
        v.update(manifest);
        v.finish()
    }
}

fn fingerprint(k: &VerifyingKey) -> String {
    hex::encode(&k.as_bytes()[..8])
}

/// Ed25519 verification of a manifest that arrives in pieces: one SHA-512 state per trusted key
/// (RFC 8032 hashes R ‖ A ‖ M, so each key needs its own), fed every chunk.
pub struct ManifestVerifier {
    /// Per key: its fingerprint, the manufacturer it is bound to, its SHA-512 state.
    verifiers: Vec<(String, Option<String>, StreamVerifier)>,
    /// The manufacturer tenant importing, if a manufacturer is.
    importer: Option<String>,
}

impl std::fmt::Debug for ManifestVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ManifestVerifier({} keys)", self.verifiers.len())
    }
}

impl ManifestVerifier {
    /// The next bytes of the manifest.
    pub fn update(&mut self, chunk: &[u8]) {
        for (_, _, v) in &mut self.verifiers {
            v.update(chunk);
        }
    }

    /// The fingerprint of the first trusted key under which the whole manifest verifies;
    /// refused if that key is bound to another manufacturer than the importing one.
    pub fn finish(self) -> Result<String, SignatureError> {
        let importer = self.importer;
        let (fp, owner) = self
            .verifiers
            .into_iter()
            .find_map(|(fp, owner, v)| v.finalize_and_verify().is_ok().then_some((fp, owner)))
            .ok_or(SignatureError::Invalid)?;
        match (owner, importer) {
            (Some(owner), Some(importer)) if owner != importer => {
                Err(SignatureError::OtherManufacturer)
            }
            _ => Ok(fp),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    #[test]
    fn only_trusted_untampered_manifests_verify() {
        let sk = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let trusted = TrustedKeys::parse(&[hex::encode(sk.verifying_key().as_bytes())]).unwrap();
        let m = b"dev_eui,join_eui,mac_version,app_key,nwk_key\n".to_vec();
        let sig = sk.sign(&m).to_bytes();
        let fp = trusted
            .verify(&m, Some(hex::encode(sig).as_bytes()))
            .unwrap();
        assert_eq!(fp, hex::encode(&sk.verifying_key().as_bytes()[..8]));
        let b64 = base64::engine::general_purpose::STANDARD.encode(sig);
        assert!(trusted
            .verify(&m, Some(format!("{b64}\n").as_bytes()))
            .is_ok());
        assert!(trusted.verify(&m, Some(&sig)).is_ok());
        let mut tampered = m.clone();
        tampered[0] ^= 1;
        assert_eq!(
            trusted.verify(&tampered, Some(&sig)),
            Err(SignatureError::Invalid)
        );
        let by_other = other.sign(&m).to_bytes();
        assert_eq!(
            trusted.verify(&m, Some(&by_other)),
            Err(SignatureError::Invalid)
        );
        assert_eq!(trusted.verify(&m, None), Err(SignatureError::Missing));
        assert_eq!(
            trusted.verify(&m, Some(b"abc")),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            TrustedKeys::default().verify(&m, Some(&sig)),
            Err(SignatureError::NoTrustedKeys)
        );
        assert!(TrustedKeys::parse(&["00".into()]).is_err());
    }

    #[test]
    fn streaming_verification_in_any_chunks_under_any_trusted_key() {
        let (a, b) = (
            SigningKey::from_bytes(&[1; 32]),
            SigningKey::from_bytes(&[2; 32]),
        );
        let trusted = TrustedKeys::parse(&[
            hex::encode(a.verifying_key().as_bytes()),
            hex::encode(b.verifying_key().as_bytes()),
        ])
        .unwrap();
        let m: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let sig = b.sign(&m).to_bytes();
        for size in [1, 7, 4096, m.len()] {
            let mut v = trusted.stream(Some(&sig)).unwrap();
            m.chunks(size).for_each(|c| v.update(c));
            assert_eq!(
                v.finish().unwrap(),
                hex::encode(&b.verifying_key().as_bytes()[..8]),
                "signed by the second key"
            );
        }
        let mut v = trusted.stream(Some(&sig)).unwrap();
        let mut tampered = m.clone();
        *tampered.last_mut().unwrap() ^= 0x80;
        tampered.chunks(333).for_each(|c| v.update(c));
        assert_eq!(v.finish(), Err(SignatureError::Invalid));
    }

    #[test]
    fn a_key_bound_to_one_manufacturer_signs_for_it_only() {
        use ed25519_dalek::{Signer, SigningKey};
        let (a, b, g) = (
            SigningKey::from_bytes(&[1; 32]),
            SigningKey::from_bytes(&[2; 32]),
            SigningKey::from_bytes(&[3; 32]),
        );
        let hexkey = |k: &SigningKey| hex::encode(k.verifying_key().as_bytes());
        let mut per = std::collections::BTreeMap::new();
        per.insert("acme".to_owned(), vec![hexkey(&a)]);
        per.insert("bolt".to_owned(), vec![hexkey(&b)]);
        // The global list also names acme's key: it stays bound to acme.
        let keys = TrustedKeys::parse_with(&[hexkey(&g), hexkey(&a)], &per).unwrap();
        let m = b"dev_eui,join_eui\n";
        let run = |signer: &SigningKey, importer: Option<&str>| {
            let sig = signer.sign(m).to_bytes();
            let mut v = keys.stream_for(Some(&sig), importer).unwrap();
            v.update(m);
            v.finish()
        };
        assert!(run(&a, Some("acme")).is_ok());
        assert_eq!(
            run(&a, Some("bolt")),
            Err(SignatureError::OtherManufacturer)
        );
        assert_eq!(
            run(&b, Some("acme")),
            Err(SignatureError::OtherManufacturer)
        );
        assert!(
            run(&b, None).is_ok(),
            "an admin or the operator may import it"
        );
        assert!(
            run(&g, Some("bolt")).is_ok(),
            "a global key serves every importer"
        );
        per.insert("bolt".to_owned(), vec![hexkey(&a)]);
        let e = TrustedKeys::parse_with(&[], &per).unwrap_err();
        assert!(e.contains("also bound to acme"), "{e}");
    }
}
