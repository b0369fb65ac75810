//! Errors of parsing and building TR005 codes.
//!
//! Every variant says which field is wrong, where it is (a 0-based *character* position in the
//! scanned text, so a caret can be drawn under it), what was expected and what was found.

use std::fmt;

/// A field of a TR005 code, named as TR005 names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// The `LW` preface (or a draft's `URN:LW:DP` / `URN:DEV:LW` prefix).
    Preface,
    /// The SchemaID, `D0`.
    SchemaId,
    /// The JoinEUI, 16 hex digits.
    JoinEui,
    /// The DevEUI, 16 hex digits.
    DevEui,
    /// The ProfileID, 8 hex digits (VendorID + VendorProfileID).
    ProfileId,
    /// The `O` extension: OwnerToken.
    OwnerToken,
    /// The `S` extension: SerNum.
    SerialNumber,
    /// The `P` extension: Proprietary.
    Proprietary,
    /// The `C` extension: CheckSum.
    CheckSum,
    /// An extension with a tag that TR005 does not define.
    Unknown(char),
    /// A draft's `V` extension (validation code), converted to OwnerToken.
    ValidationCode,
}

impl Field {
    /// The field carried by an extension tag letter (`O`, `S`, `P`, `C`, anything else unknown).
    pub fn from_tag(tag: char) -> Field {
        match tag {
            'O' => Field::OwnerToken,
            'S' => Field::SerialNumber,
            'P' => Field::Proprietary,
            'C' => Field::CheckSum,
            other => Field::Unknown(other),
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Preface => f.write_str("preface"),
            Field::SchemaId => f.write_str("SchemaID"),
            Field::JoinEui => f.write_str("JoinEUI"),
            Field::DevEui => f.write_str("DevEUI"),
            Field::ProfileId => f.write_str("ProfileID"),
            Field::OwnerToken => f.write_str("OwnerToken (O)"),
            Field::SerialNumber => f.write_str("SerNum (S)"),
            Field::Proprietary => f.write_str("Proprietary (P)"),
            Field::CheckSum => f.write_str("CheckSum (C)"),
            Field::Unknown(tag) => write!(f, "extension {tag}"),
            Field::ValidationCode => f.write_str("validation code (V)"),
        }
    }
}

/// Why a text is not a valid TR005 code, or why a value cannot be put in one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QrError {
    /// The scanned bytes are not UTF-8 text.
    #[error("not text: invalid UTF-8 byte at position {position}")]
    NotUtf8 {
        /// Byte position of the first invalid byte.
        position: usize,
    },
    /// The text is empty.
    #[error("empty code: expected \"LW:D0:...\", found nothing")]
    Empty,
    /// The text does not start with `LW` (nor with a deprecated draft's prefix).
    #[error(
        "bad preface at position 0: expected \"LW\" (or the deprecated \"URN:LW:DP\" / \"URN:DEV:LW\"), found {found:?}"
    )]
    Preface {
        /// The first `:`-separated field, shortened to 24 characters.
        found: String,
    },
    /// The SchemaID is not `D0`.
    #[error("bad SchemaID at position {position}: expected \"D0\", found {found:?}")]
    Schema {
        /// Character position of the SchemaID.
        position: usize,
        /// The SchemaID found, shortened to 24 characters.
        found: String,
    },
    /// The text ends before a mandatory field.
    #[error("{field} missing at position {position}: expected {expected}, found end of text")]
    Missing {
        /// The missing field.
        field: Field,
        /// Character position where it should start (the text's length).
        position: usize,
        /// What the field should hold.
        expected: &'static str,
    },
    /// A character of a hex field is not a hex digit.
    #[error(
        "bad {field} at position {position}: expected a hex digit (0-9, A-F), found {found:?}"
    )]
    HexDigit {
        /// The field.
        field: Field,
        /// Character position of the offending character.
        position: usize,
        /// The offending character.
        found: char,
    },
    /// A hex field has the wrong number of digits.
    #[error("bad {field} at position {position}: expected {expected} hex digits, found {length} ({found:?})")]
    HexLength {
        /// The field.
        field: Field,
        /// Character position where the field starts.
        position: usize,
        /// Number of hex digits required.
        expected: usize,
        /// Number of characters found.
        length: usize,
        /// The field's text, shortened to 24 characters.
        found: String,
    },
    /// Two separators follow each other, or the text ends with one.
    #[error(
        "empty extension at position {position}: expected a tag letter and a value, found nothing (doubled or trailing separator)"
    )]
    EmptyExtension {
        /// Character position where the extension should start.
        position: usize,
    },
    /// An extension's tag is not an uppercase ASCII letter.
    #[error("bad extension tag at position {position}: expected an uppercase letter (O, S, P, C), found {found:?}")]
    Tag {
        /// Character position of the tag.
        position: usize,
        /// The tag character found.
        found: char,
    },
    /// An extension tag appears twice.
    #[error("repeated {field} at position {position}: expected each tag at most once, already at position {first}")]
    DuplicateTag {
        /// The repeated field.
        field: Field,
        /// Character position of the repeated tag.
        position: usize,
        /// Character position of the first occurrence.
        first: usize,
    },
    /// An extension value holds a character that is not allowed.
    #[error("bad {field} at position {position}: expected {expected}, found {found:?}")]
    ValueChar {
        /// The field.
        field: Field,
        /// Character position of the offending character (in the value, when building a code).
        position: usize,
        /// Which characters are allowed.
        expected: &'static str,
        /// The offending character.
        found: char,
    },
    /// An extension value is empty where a value is required (building a code).
    #[error("bad {field}: expected a value of at least one character, found an empty value")]
    EmptyValue {
        /// The field.
        field: Field,
    },
    /// The CheckSum is not 4 hex digits.
    #[error("bad CheckSum (C) at position {position}: expected 4 hex digits, found {found:?}")]
    ChecksumFormat {
        /// Character position of the CheckSum value.
        position: usize,
        /// The value found.
        found: String,
    },
    /// The CheckSum does not match the content: a misread or altered code.
    #[error(
        "wrong CheckSum (C) at position {position}: expected {expected:04X} (CRC-16/MODBUS of the text before \":C\"), found {found:04X}: the code was misread or altered"
    )]
    ChecksumMismatch {
        /// Character position of the CheckSum value.
        position: usize,
        /// The CRC computed over the content.
        expected: u16,
        /// The CheckSum written in the code.
        found: u16,
    },
    /// The CheckSum extension is followed by another extension.
    #[error(
        "misplaced CheckSum (C) at position {position}: expected it to be the last extension, found {following:?} after it"
    )]
    ChecksumNotLast {
        /// Character position of the `C` tag.
        position: usize,
        /// The text following the CheckSum, shortened to 24 characters.
        following: String,
    },
}

impl QrError {
    /// A [`QrError::HexLength`] for the field text `text`.
    pub(crate) fn hex_length(field: Field, position: usize, expected: usize, text: &str) -> Self {
        QrError::HexLength {
            field,
            position,
            expected,
            length: text.chars().count(),
            found: shorten(text),
        }
    }

    /// A short, stable identifier of the error kind, for metrics, JSON output and tests.
    pub fn kind(&self) -> &'static str {
        match self {
            QrError::NotUtf8 { .. } => "not_utf8",
            QrError::Empty => "empty",
            QrError::Preface { .. } => "bad_preface",
            QrError::Schema { .. } => "bad_schema",
            QrError::Missing { .. } => "missing_field",
            QrError::HexDigit { .. } => "bad_hex_digit",
            QrError::HexLength { .. } => "bad_length",
            QrError::EmptyExtension { .. } => "empty_extension",
            QrError::Tag { .. } => "bad_tag",
            QrError::DuplicateTag { .. } => "duplicate_tag",
            QrError::ValueChar { .. } => "bad_value_char",
            QrError::EmptyValue { .. } => "empty_value",
            QrError::ChecksumFormat { .. } => "bad_checksum_format",
            QrError::ChecksumMismatch { .. } => "checksum_mismatch",
            QrError::ChecksumNotLast { .. } => "checksum_not_last",
        }
    }

    /// The field the error is about, when there is one.
    pub fn field(&self) -> Option<Field> {
        match self {
            QrError::NotUtf8 { .. } | QrError::Empty | QrError::EmptyExtension { .. } => None,
            QrError::Tag { .. } => None,
            QrError::Preface { .. } => Some(Field::Preface),
            QrError::Schema { .. } => Some(Field::SchemaId),
            QrError::Missing { field, .. }
            | QrError::HexDigit { field, .. }
            | QrError::HexLength { field, .. }
            | QrError::DuplicateTag { field, .. }
            | QrError::ValueChar { field, .. }
            | QrError::EmptyValue { field } => Some(*field),
            QrError::ChecksumFormat { .. }
            | QrError::ChecksumMismatch { .. }
            | QrError::ChecksumNotLast { .. } => Some(Field::CheckSum),
        }
    }

    /// The 0-based position (characters of the scanned text; bytes for [`QrError::NotUtf8`])
    /// the error points at, when it points into a scanned text.
    pub fn position(&self) -> Option<usize> {
        match self {
            QrError::Empty | QrError::EmptyValue { .. } => None,
            QrError::Preface { .. } => Some(0),
            QrError::NotUtf8 { position }
            | QrError::Schema { position, .. }
            | QrError::Missing { position, .. }
            | QrError::HexDigit { position, .. }
            | QrError::HexLength { position, .. }
            | QrError::EmptyExtension { position }
            | QrError::Tag { position, .. }
            | QrError::DuplicateTag { position, .. }
            | QrError::ValueChar { position, .. }
            | QrError::ChecksumFormat { position, .. }
            | QrError::ChecksumMismatch { position, .. }
            | QrError::ChecksumNotLast { position, .. } => Some(*position),
        }
    }
}

/// Shortens untrusted text quoted in an error message to at most 24 characters.
pub(crate) fn shorten(s: &str) -> String {
    const MAX: usize = 24;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(MAX).collect();
        out.push('…');
        out
    }
}
