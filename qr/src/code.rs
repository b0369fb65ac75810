//! The TR005 device-identification code: its value type, parser, and canonical encoder.

use std::fmt;
use std::str::FromStr;

use protocol::ids::{DevEui, JoinEui};

use crate::error::{shorten, Field, QrError};

/// CRC-16/MODBUS: poly 0x8005 reflected, init 0xFFFF, no final XOR (check value 0x4B37).
const MODBUS: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_MODBUS);

/// The TR005 CheckSum of `content`: CRC-16/MODBUS over its bytes.
///
/// `content` is everything before the `:C` of the CheckSum extension.
pub fn checksum(content: &str) -> u16 {
    MODBUS.checksum(content.as_bytes())
}

/// What the characters of an extension value may be, in the D0 schema.
pub const VALUE_CHARS: &str = "printable ASCII (! to ~) other than ':'";
const DRAFT2_CHARS: &str = "0-9, A-Z or one of $ * + - . /";
const DRAFT3_CHARS: &str = "0-9 or A-Z";

/// The ProfileID: a VendorID (assigned by the LoRa Alliance) and the vendor's own profile number.
///
/// `00000000` means "no profile".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ProfileId {
    /// The VendorID (first 4 hex digits).
    pub vendor_id: u16,
    /// The VendorProfileID (last 4 hex digits).
    pub vendor_profile_id: u16,
}

impl ProfileId {
    /// The ProfileID `00000000`: no vendor profile.
    pub const NONE: ProfileId = ProfileId {
        vendor_id: 0,
        vendor_profile_id: 0,
    };

    /// Builds a ProfileID from its two halves.
    pub const fn new(vendor_id: u16, vendor_profile_id: u16) -> Self {
        ProfileId {
            vendor_id,
            vendor_profile_id,
        }
    }

    /// The ProfileID as one 32-bit number, VendorID in the high half.
    pub const fn as_u32(self) -> u32 {
        ((self.vendor_id as u32) << 16) | self.vendor_profile_id as u32
    }

    /// The ProfileID from one 32-bit number, VendorID in the high half.
    pub const fn from_u32(v: u32) -> Self {
        ProfileId {
            vendor_id: (v >> 16) as u16,
            vendor_profile_id: v as u16,
        }
    }
}

impl fmt::Display for ProfileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04X}{:04X}", self.vendor_id, self.vendor_profile_id)
    }
}

impl FromStr for ProfileId {
    type Err = QrError;

    /// Parses 8 hex digits (case-insensitive). Positions in errors are within `s`.
    fn from_str(s: &str) -> Result<Self, QrError> {
        parse_hex(Field::ProfileId, s, 0, 8).map(|v| ProfileId::from_u32(v as u32))
    }
}

/// A validated extension value (OwnerToken, SerNum, Proprietary or an unknown tag's value):
/// non-empty, printable ASCII (`!` to `~`), no `:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExtensionValue(String);

impl ExtensionValue {
    /// Validates `value` as the value of `field`. Positions in errors are within `value`.
    pub fn new(field: Field, value: &str) -> Result<Self, QrError> {
        if value.is_empty() {
            return Err(QrError::EmptyValue { field });
        }
        check_value_chars(field, value, 0)?;
        Ok(ExtensionValue(value.to_owned()))
    }

    /// The value's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ExtensionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An extension whose tag TR005 does not define. It is kept, reported, and re-encoded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnknownExtension {
    /// The tag letter (`A`–`Z`, never `O`, `S`, `P` or `C`).
    pub tag: char,
    /// The value.
    pub value: ExtensionValue,
}

/// The identity a TR005 code carries.
///
/// The CheckSum is not part of the identity: [`DeviceCode::encode`] computes it, and the parser
/// verifies it and reports it in [`Parsed`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceCode {
    /// The JoinEUI (AppEUI in LoRaWAN 1.0).
    pub join_eui: JoinEui,
    /// The DevEUI.
    pub dev_eui: DevEui,
    /// The ProfileID.
    pub profile_id: ProfileId,
    /// The OwnerToken (`O`): the secret that proves ownership when claiming the device.
    pub owner_token: Option<ExtensionValue>,
    /// The SerNum (`S`).
    pub serial_number: Option<ExtensionValue>,
    /// The Proprietary field (`P`).
    pub proprietary: Option<ExtensionValue>,
    unknown: Vec<UnknownExtension>,
}

/// Whether [`DeviceCode::encode`] appends a CheckSum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumMode {
    /// Append `:C` and the CRC-16/MODBUS (the default, and what labels carry).
    Include,
    /// Leave the CheckSum out.
    Omit,
}

impl DeviceCode {
    /// A code with the three mandatory fields and no extension.
    pub fn new(join_eui: JoinEui, dev_eui: DevEui, profile_id: ProfileId) -> Self {
        DeviceCode {
            join_eui,
            dev_eui,
            profile_id,
            owner_token: None,
            serial_number: None,
            proprietary: None,
            unknown: Vec::new(),
        }
    }

    /// Sets the OwnerToken after validating it.
    pub fn with_owner_token(mut self, token: &str) -> Result<Self, QrError> {
        self.owner_token = Some(ExtensionValue::new(Field::OwnerToken, token)?);
        Ok(self)
    }

    /// Sets the SerNum after validating it.
    pub fn with_serial_number(mut self, serial: &str) -> Result<Self, QrError> {
        self.serial_number = Some(ExtensionValue::new(Field::SerialNumber, serial)?);
        Ok(self)
    }

    /// Sets the Proprietary field after validating it.
    pub fn with_proprietary(mut self, value: &str) -> Result<Self, QrError> {
        self.proprietary = Some(ExtensionValue::new(Field::Proprietary, value)?);
        Ok(self)
    }

    /// Adds an extension with a tag TR005 does not define (`A`–`Z` except `O`, `S`, `P`, `C`),
    /// which is encoded after the known ones and before the CheckSum.
    pub fn with_unknown_extension(mut self, tag: char, value: &str) -> Result<Self, QrError> {
        if !tag.is_ascii_uppercase() || matches!(tag, 'O' | 'S' | 'P' | 'C') {
            return Err(QrError::Tag {
                position: 0,
                found: tag,
            });
        }
        if self.unknown.iter().any(|u| u.tag == tag) {
            return Err(QrError::DuplicateTag {
                field: Field::Unknown(tag),
                position: 0,
                first: 0,
            });
        }
        let value = ExtensionValue::new(Field::Unknown(tag), value)?;
        self.unknown.push(UnknownExtension { tag, value });
        Ok(self)
    }

    /// The extensions with tags TR005 does not define, in the order they appeared.
    pub fn unknown_extensions(&self) -> &[UnknownExtension] {
        &self.unknown
    }

    /// The canonical D0 text: uppercase hex, extensions in the order O, S, P, unknown tags, then
    /// the CheckSum (4 uppercase hex digits) unless omitted.
    pub fn encode(&self, mode: ChecksumMode) -> String {
        let mut s = format!(
            "LW:D0:{}:{}:{}",
            self.join_eui, self.dev_eui, self.profile_id
        );
        for (tag, value) in [
            ('O', &self.owner_token),
            ('S', &self.serial_number),
            ('P', &self.proprietary),
        ] {
            if let Some(v) = value {
                s.push(':');
                s.push(tag);
                s.push_str(v.as_str());
            }
        }
        for u in &self.unknown {
            s.push(':');
            s.push(u.tag);
            s.push_str(u.value.as_str());
        }
        if mode == ChecksumMode::Include {
            let crc = checksum(&s);
            s.push_str(&format!(":C{crc:04X}"));
        }
        s
    }
}

impl fmt::Display for DeviceCode {
    /// The canonical text with its CheckSum.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode(ChecksumMode::Include))
    }
}

impl FromStr for DeviceCode {
    type Err = QrError;

    /// Parses any accepted form (D0 or a deprecated draft) and keeps the identity.
    fn from_str(s: &str) -> Result<Self, QrError> {
        parse(s).map(|p| p.code)
    }
}

/// Which schema a parsed text was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Schema {
    /// `LW:D0:…`, the published TR005 schema.
    D0,
    /// `URN:LW:DP:…`, deprecated draft 2, converted to D0.
    Draft2,
    /// `URN:DEV:LW:…`, deprecated draft 3, converted to D0.
    Draft3,
}

impl Schema {
    /// A short stable name: `D0`, `draft2` or `draft3`.
    pub fn as_str(self) -> &'static str {
        match self {
            Schema::D0 => "D0",
            Schema::Draft2 => "draft2",
            Schema::Draft3 => "draft3",
        }
    }
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A successfully parsed and validated code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The identity it carries.
    pub code: DeviceCode,
    /// The schema it was written in.
    pub schema: Schema,
    /// The CheckSum it carried. When present it has been verified: a wrong CheckSum is an error.
    pub checksum: Option<u16>,
}

impl Parsed {
    /// Whether the CheckSum was verified: `Some(true)` when the code carried one (a wrong one is
    /// a parse error, so never `Some(false)`), `None` when it carried none.
    pub fn checksum_valid(&self) -> Option<bool> {
        self.checksum.map(|_| true)
    }
}

/// Parses scanned bytes, which must be UTF-8 text.
pub fn parse_bytes(bytes: &[u8]) -> Result<Parsed, QrError> {
    match std::str::from_utf8(bytes) {
        Ok(s) => parse(s),
        Err(e) => Err(QrError::NotUtf8 {
            position: e.valid_up_to(),
        }),
    }
}

/// Parses and validates a TR005 code: `LW:D0:…`, or a deprecated `URN:LW:DP:…` (draft 2) or
/// `URN:DEV:LW:…` (draft 3), converted to D0.
///
/// The text must be exact: no surrounding whitespace.
pub fn parse(input: &str) -> Result<Parsed, QrError> {
    if input.is_empty() {
        return Err(QrError::Empty);
    }
    if input.starts_with("URN:LW:DP:") {
        return parse_draft2(input);
    }
    if input.starts_with("URN:DEV:LW:") {
        return parse_draft3(input);
    }
    parse_d0(input)
}

/// Splits `s` on `sep`, giving each piece with its byte offset in `s`.
fn pieces(s: &str, sep: char, base: usize) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if c == sep {
            out.push((base + start, &s[start..i]));
            start = i + c.len_utf8();
        }
    }
    out.push((base + start, &s[start..]));
    out
}

/// Like [`pieces`], but at most `n` pieces, the last holding the rest of `s`.
fn pieces_n(s: &str, sep: char, base: usize, n: usize) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = 0;
    while out.len() + 1 < n {
        match s[start..].find(sep) {
            Some(i) => {
                out.push((base + start, &s[start..start + i]));
                start += i + sep.len_utf8();
            }
            None => break,
        }
    }
    out.push((base + start, &s[start..]));
    out
}

/// Character position of byte offset `byte` in `input` (always a char boundary here).
fn char_pos(input: &str, byte: usize) -> usize {
    input.get(..byte).map_or(byte, |p| p.chars().count())
}

/// Parses exactly `digits` hex digits (either case) of `field` starting at character `pos`.
fn parse_hex(field: Field, text: &str, pos: usize, digits: usize) -> Result<u64, QrError> {
    let mut value = 0u64;
    for (i, c) in text.chars().enumerate() {
        let Some(d) = c.to_digit(16) else {
            return Err(QrError::HexDigit {
                field,
                position: pos + i,
                found: c,
            });
        };
        if i < 16 {
            value = (value << 4) | u64::from(d);
        }
    }
    if text.len() != digits {
        return Err(QrError::hex_length(field, pos, digits, text));
    }
    Ok(value)
}

fn check_value_chars(field: Field, value: &str, pos: usize) -> Result<(), QrError> {
    for (i, c) in value.chars().enumerate() {
        if !c.is_ascii_graphic() || c == ':' {
            return Err(QrError::ValueChar {
                field,
                position: pos + i,
                expected: VALUE_CHARS,
                found: c,
            });
        }
    }
    Ok(())
}

/// The three mandatory fields, each given as (byte offset, text).
fn parse_ids(
    input: &str,
    join: Option<(usize, &str)>,
    dev: Option<(usize, &str)>,
    profile: Option<(usize, &str)>,
) -> Result<(JoinEui, DevEui, ProfileId), QrError> {
    let end = input.chars().count();
    let missing = |field, expected| QrError::Missing {
        field,
        position: end,
        expected,
    };
    let (o, t) = join.ok_or_else(|| missing(Field::JoinEui, "16 hex digits"))?;
    let join_eui = JoinEui::new(parse_hex(Field::JoinEui, t, char_pos(input, o), 16)?);
    let (o, t) = dev.ok_or_else(|| missing(Field::DevEui, "16 hex digits"))?;
    let dev_eui = DevEui::new(parse_hex(Field::DevEui, t, char_pos(input, o), 16)?);
    let (o, t) = profile.ok_or_else(|| missing(Field::ProfileId, "8 hex digits"))?;
    let profile_id =
        ProfileId::from_u32(parse_hex(Field::ProfileId, t, char_pos(input, o), 8)? as u32);
    Ok((join_eui, dev_eui, profile_id))
}

/// Records a tag, rejecting a repeat.
fn note_tag(
    seen: &mut Vec<(char, usize)>,
    tag: char,
    field: Field,
    position: usize,
) -> Result<(), QrError> {
    if let Some(&(_, first)) = seen.iter().find(|(t, _)| *t == tag) {
        return Err(QrError::DuplicateTag {
            field,
            position,
            first,
        });
    }
    seen.push((tag, position));
    Ok(())
}

/// Stores a non-empty extension value in `code`.
fn store(code: &mut DeviceCode, tag: char, value: &str) {
    let v = ExtensionValue(value.to_owned());
    match tag {
        'O' | 'V' => code.owner_token = Some(v),
        'S' => code.serial_number = Some(v),
        'P' => code.proprietary = Some(v),
        _ => code.unknown.push(UnknownExtension { tag, value: v }),
    }
}

fn parse_d0(input: &str) -> Result<Parsed, QrError> {
    let parts = pieces(input, ':', 0);
    check_d0_header(input, &parts)?;
    let (join_eui, dev_eui, profile_id) = parse_ids(
        input,
        parts.get(2).copied(),
        parts.get(3).copied(),
        parts.get(4).copied(),
    )?;
    let mut code = DeviceCode::new(join_eui, dev_eui, profile_id);
    let mut checksum_value = None;
    let mut seen = Vec::new();
    let exts = parts.get(5..).unwrap_or(&[]);
    for (i, &(offset, ext)) in exts.iter().enumerate() {
        let pos = char_pos(input, offset);
        let (tag, value) = extension_tag(ext, pos)?;
        let field = Field::from_tag(tag);
        note_tag(&mut seen, tag, field, pos)?;
        if tag == 'C' {
            let last = i + 1 == exts.len();
            checksum_value = Some(check_d0_checksum(input, (offset, ext), value, last)?);
            continue;
        }
        if value.is_empty() {
            // A tag alone (":O:S:P") carries no value: ignored, as TTS does.
            continue;
        }
        check_value_chars(field, value, pos + 1)?;
        store(&mut code, tag, value);
    }
    Ok(Parsed {
        code,
        schema: Schema::D0,
        checksum: checksum_value,
    })
}

/// The D0 code's first two pieces (`parts`, from [`pieces`]): the preface `LW` and the
/// SchemaID `D0`.
fn check_d0_header(input: &str, parts: &[(usize, &str)]) -> Result<(), QrError> {
    let (_, preface) = parts[0];
    if preface != "LW" {
        return Err(QrError::Preface {
            found: shorten(preface),
        });
    }
    let Some(&(o, schema)) = parts.get(1) else {
        return Err(QrError::Missing {
            field: Field::SchemaId,
            position: input.chars().count(),
            expected: "\"D0\"",
        });
    };
    if schema != "D0" {
        return Err(QrError::Schema {
            position: char_pos(input, o),
            found: shorten(schema),
        });
    }
    Ok(())
}

/// An extension piece `ext` at character `pos`: its tag (an uppercase letter) and its value.
fn extension_tag(ext: &str, pos: usize) -> Result<(char, &str), QrError> {
    let mut chars = ext.chars();
    let Some(tag) = chars.next() else {
        return Err(QrError::EmptyExtension { position: pos });
    };
    if !tag.is_ascii_uppercase() {
        return Err(QrError::Tag {
            position: pos,
            found: tag,
        });
    }
    Ok((tag, chars.as_str()))
}

/// The CheckSum extension (`ext` at byte `offset` of `input`, its 4 hex digits `value`): it
/// must be the `last` piece and match the CRC of everything before it.
fn check_d0_checksum(
    input: &str,
    (offset, ext): (usize, &str),
    value: &str,
    last: bool,
) -> Result<u16, QrError> {
    let pos = char_pos(input, offset);
    if !last {
        // The byte before the next piece is its ':' separator.
        let following = &input[offset + ext.len()..];
        return Err(QrError::ChecksumNotLast {
            position: pos,
            following: shorten(following),
        });
    }
    let value_pos = pos + 1;
    if value.len() != 4 || !value.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(QrError::ChecksumFormat {
            position: value_pos,
            found: shorten(value),
        });
    }
    let found = parse_hex(Field::CheckSum, value, value_pos, 4)? as u16;
    // The CheckSum covers the bytes before ":C" (offset - 1 is that ':').
    let expected = checksum(&input[..offset - 1]);
    if found != expected {
        return Err(QrError::ChecksumMismatch {
            position: value_pos,
            expected,
            found,
        });
    }
    Ok(found)
}

/// Parses the extensions of a draft: pieces separated by `sep`, each a tag (`V`, `S`, `P` or
/// another uppercase letter) and a value restricted to `allowed`.
fn parse_draft_extensions(
    input: &str,
    code: &mut DeviceCode,
    exts: &[(usize, &str)],
    allowed: fn(char) -> bool,
    expected: &'static str,
) -> Result<(), QrError> {
    let mut seen = Vec::new();
    for &(offset, ext) in exts {
        let pos = char_pos(input, offset);
        let mut chars = ext.chars();
        let Some(tag) = chars.next() else {
            // Empty pieces (a leading separator, or doubled ones) are skipped, as TTS does.
            continue;
        };
        if !tag.is_ascii_uppercase() {
            return Err(QrError::Tag {
                position: pos,
                found: tag,
            });
        }
        let field = match tag {
            'V' => Field::ValidationCode,
            other => Field::from_tag(other),
        };
        if matches!(tag, 'O' | 'C') {
            // Drafts carry the owner secret as V and have no CheckSum.
            return Err(QrError::Tag {
                position: pos,
                found: tag,
            });
        }
        note_tag(&mut seen, tag, field, pos)?;
        let value = chars.as_str();
        for (i, c) in value.chars().enumerate() {
            if !allowed(c) {
                return Err(QrError::ValueChar {
                    field,
                    position: pos + 1 + i,
                    expected,
                    found: c,
                });
            }
        }
        if !value.is_empty() {
            store(code, tag, value);
        }
    }
    Ok(())
}

fn draft2_char(c: char) -> bool {
    c.is_ascii_digit() || c.is_ascii_uppercase() || "$*+-./".contains(c)
}

fn draft3_char(c: char) -> bool {
    c.is_ascii_digit() || c.is_ascii_uppercase()
}

/// `URN:LW:DP:<JoinEUI>:<DevEUI>:<ProfileID>[:%V…%S…%P…]`, `%25` standing for `%`.
fn parse_draft2(input: &str) -> Result<Parsed, QrError> {
    const PREFIX: &str = "URN:LW:DP:";
    let rest = &input[PREFIX.len()..];
    // At most 4 pieces: a ':' in the extension part is reported as a bad character.
    let parts = pieces_n(rest, ':', PREFIX.len(), 4);
    let (join_eui, dev_eui, profile_id) = parse_ids(
        input,
        parts.first().copied(),
        parts.get(1).copied(),
        parts.get(2).copied(),
    )?;
    let mut code = DeviceCode::new(join_eui, dev_eui, profile_id);
    if let Some(&(offset, ext_part)) = parts.get(3) {
        // "%25" is an escaped '%' and separates extensions like '%' (as TTS reads it).
        let exts: Vec<(usize, &str)> = pieces(ext_part, '%', offset)
            .into_iter()
            .map(|(o, t)| match t.strip_prefix("25") {
                Some(unescaped) if o > offset => (o + 2, unescaped),
                _ => (o, t),
            })
            .collect();
        parse_draft_extensions(input, &mut code, &exts, draft2_char, DRAFT2_CHARS)?;
    }
    Ok(Parsed {
        code,
        schema: Schema::Draft2,
        checksum: None,
    })
}

/// `URN:DEV:LW:<JoinEUI>_<DevEUI>_<ProfileID>[_V…][_S…][_P…]`.
fn parse_draft3(input: &str) -> Result<Parsed, QrError> {
    const PREFIX: &str = "URN:DEV:LW:";
    let rest = &input[PREFIX.len()..];
    let parts = pieces(rest, '_', PREFIX.len());
    let (join_eui, dev_eui, profile_id) = parse_ids(
        input,
        parts.first().copied(),
        parts.get(1).copied(),
        parts.get(2).copied(),
    )?;
    let mut code = DeviceCode::new(join_eui, dev_eui, profile_id);
    let exts = parts.get(3..).unwrap_or(&[]);
    parse_draft_extensions(input, &mut code, exts, draft3_char, DRAFT3_CHARS)?;
    Ok(Parsed {
        code,
        schema: Schema::Draft3,
        checksum: None,
    })
}
