//! The TR005 (schema D0) fields the join server needs to claim from a QR code's text:
//! `LW:D0:<JoinEUI>:<DevEUI>:<ProfileID>[:<tag><value>]*`, with the CheckSum (`C`, CRC-16/MODBUS
//! over the text before `:C`) verified when present. The `qr` crate is the full implementation;
//! this one is kept small so that the join server does not depend on image decoding.

use protocol::ids::{DevEui, JoinEui};

/// A TR005 text that cannot be used for a claim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Tr005Error {
    /// Not `LW:D0:…` with JoinEUI, DevEUI and ProfileID.
    #[error("not a TR005 D0 code: {0}")]
    Format(&'static str),
    /// The CheckSum does not match the content.
    #[error("bad checksum")]
    Checksum,
    /// No OwnerToken (`O`) extension: the code cannot claim.
    #[error("the code has no owner token")]
    NoOwnerToken,
}

/// The claim-relevant fields of a TR005 code.
#[derive(Clone, PartialEq, Eq)]
pub struct ClaimCode {
    /// JoinEUI.
    pub join_eui: JoinEui,
    /// DevEUI.
    pub dev_eui: DevEui,
    /// OwnerToken.
    pub owner_token: String,
}

impl std::fmt::Debug for ClaimCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimCode")
            .field("join_eui", &self.join_eui)
            .field("dev_eui", &self.dev_eui)
            .field("owner_token", &"<redacted>")
            .finish()
    }
}

/// CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF).
pub fn crc16_modbus(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// Parses a D0 code for a claim.
pub fn parse_claim(text: &str) -> Result<ClaimCode, Tr005Error> {
    let text = text.trim();
    // The CheckSum is an extension: the last field, after the five fixed ones.
    let (body, checksum) = match text.rsplit_once(':') {
        Some((body, last)) if last.starts_with('C') && body.split(':').count() >= 5 => {
            (body, Some(&last[1..]))
        }
        _ => (text, None),
    };
    if let Some(c) = checksum {
        if c.len() != 4 || !c.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Tr005Error::Format("CheckSum must be 4 hex digits"));
        }
        let want = u16::from_str_radix(c, 16).map_err(|_| Tr005Error::Checksum)?;
        if crc16_modbus(body.as_bytes()) != want {
            return Err(Tr005Error::Checksum);
        }
    }
    let mut f = body.split(':');
    if f.next() != Some("LW") || f.next() != Some("D0") {
        return Err(Tr005Error::Format("must start with LW:D0:"));
    }
    let eui = |s: Option<&str>| {
        s.filter(|s| s.len() == 16)
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .ok_or(Tr005Error::Format(
                "JoinEUI and DevEUI must be 16 hex digits",
            ))
    };
    let join_eui = JoinEui::new(eui(f.next())?);
    let dev_eui = DevEui::new(eui(f.next())?);
    match f.next() {
        Some(p) if p.len() == 8 && p.bytes().all(|b| b.is_ascii_hexdigit()) => {}
        _ => return Err(Tr005Error::Format("ProfileID must be 8 hex digits")),
    }
    let owner_token = f
        .find_map(|ext| ext.strip_prefix('O').filter(|v| !v.is_empty()))
        .ok_or(Tr005Error::NoOwnerToken)?
        .to_owned();
    Ok(ClaimCode {
        join_eui,
        dev_eui,
        owner_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str =
        "LW:D0:1122334455667788:AABBCCDDEEFF0011:AABB1122:OAABBCCDDEEFF:SYYWWNNNNNN:PFOOBAR:CAF2C";

    #[test]
    fn the_spec_example_parses_and_its_checksum_is_checked() {
        assert_eq!(crc16_modbus(b"123456789"), 0x4B37);
        let c = parse_claim(SPEC).unwrap();
        assert_eq!(c.join_eui, JoinEui::new(0x1122_3344_5566_7788));
        assert_eq!(c.dev_eui, DevEui::new(0xAABB_CCDD_EEFF_0011));
        assert_eq!(c.owner_token, "AABBCCDDEEFF");
        let shown = format!("{c:?}");
        assert!(
            shown.contains("<redacted>") && !shown.contains("\"AABBCCDDEEFF\""),
            "{shown}"
        );
        assert_eq!(
            parse_claim(&SPEC.replace("CAF2C", "CAF2D")),
            Err(Tr005Error::Checksum)
        );
        assert_eq!(
            parse_claim(&SPEC.replace("OAABB", "OAABC")),
            Err(Tr005Error::Checksum)
        );
        assert_eq!(
            parse_claim("LW:D0:1122334455667788:AABBCCDDEEFF0011:AABB1122"),
            Err(Tr005Error::NoOwnerToken)
        );
        assert!(matches!(parse_claim("LW:D1:x"), Err(Tr005Error::Format(_))));
        // A ProfileID starting with C is not a CheckSum.
        assert_eq!(
            parse_claim("LW:D0:1122334455667788:AABBCCDDEEFF0011:CAFE0000"),
            Err(Tr005Error::NoOwnerToken)
        );
        let c = parse_claim("LW:D0:1122334455667788:AABBCCDDEEFF0011:CAFE0000:OTOK").unwrap();
        assert_eq!(c.owner_token, "TOK");
        assert!(matches!(
            parse_claim("LW:D0:11223344556677:AABBCCDDEEFF0011:AABB1122:OX"),
            Err(Tr005Error::Format(_))
        ));
    }
}
