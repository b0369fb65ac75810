//! The device manifest (CSV or JSON lines), parsed incrementally as its bytes arrive
//! ([`ManifestParser`]). The all-or-nothing import around it is [`crate::onboarding::import`];
//! [`crate::devices::import`] is its in-memory entry point.
//!
//! Fields: `dev_eui,join_eui,mac_version,app_key,nwk_key,home_net_id,owner_token`.
//! `nwk_key` is empty for 1.0.x devices and required for 1.1; `home_net_id` and `owner_token` are
//! optional (the CSV header may leave them out). `mac_version` is 1.0.2, 1.0.3, 1.0.4 or 1.1.
//! Every bad row is reported with its line and column; one bad row imports nothing.

use std::fmt;

use protocol::ids::{DevEui, JoinEui, NetId};
use protocol::keys::{AppKey, NwkKey};
use protocol::version::MacVersion;
use serde::Deserialize;

use crate::atrest;
use crate::secrets::MasterKey;
use crate::store::{NonceState, StoredDevice};

/// The CSV columns, in the documented order.
pub const COLUMNS: [&str; 7] = [
    "dev_eui",
    "join_eui",
    "mac_version",
    "app_key",
    "nwk_key",
    "home_net_id",
    "owner_token",
];
const REQUIRED: usize = 5;
/// The longest owner token accepted.
pub const MAX_OWNER_TOKEN: usize = 64;

/// Where a problem is: a 1-based line, and a column (1-based CSV field index and its name, or the
/// JSON field name / character column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// 1-based line in the file.
    pub line: u64,
    /// Column description, e.g. `4 (app_key)` or `app_key`.
    pub column: String,
    /// What is wrong. Never contains key material.
    pub message: String,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

/// A validated manifest row. (`Debug` shows the keys redacted.)
#[derive(Debug, PartialEq, Eq)]
pub struct NewDevice {
    /// 1-based line it came from.
    pub line: u64,
    /// DevEUI.
    pub dev_eui: DevEui,
    /// JoinEUI.
    pub join_eui: JoinEui,
    /// MAC version.
    pub mac_version: MacVersion,
    /// AppKey.
    pub app_key: AppKey,
    /// NwkKey (1.1 only).
    pub nwk_key: Option<NwkKey>,
    /// Home NetID.
    pub home_net_id: Option<NetId>,
    /// Owner token.
    pub owner_token: Option<String>,
}

/// The first byte of a JSON-lines manifest (an object); anything else is CSV.
const JSONL_FIRST_BYTE: u8 = b'{';

/// Manifest formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Comma-separated values with a header line.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

impl Format {
    /// Guesses the format: JSON lines if the first non-blank character is `{`.
    pub fn sniff(text: &str) -> Self {
        Self::of_first_byte(text.trim_start().bytes().next())
    }

    /// The format a manifest whose first non-blank byte is `first` has.
    fn of_first_byte(first: Option<u8>) -> Self {
        if first == Some(JSONL_FIRST_BYTE) {
            Self::Jsonl
        } else {
            Self::Csv
        }
    }
}

/// One row's raw fields, whatever the format.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRow {
    dev_eui: Option<String>,
    join_eui: Option<String>,
    mac_version: Option<String>,
    app_key: Option<String>,
    nwk_key: Option<String>,
    home_net_id: Option<String>,
    owner_token: Option<String>,
}

impl RawRow {
    fn field(&self, i: usize) -> Option<&str> {
        match i {
            0 => self.dev_eui.as_deref(),
            1 => self.join_eui.as_deref(),
            2 => self.mac_version.as_deref(),
            3 => self.app_key.as_deref(),
            4 => self.nwk_key.as_deref(),
            5 => self.home_net_id.as_deref(),
            _ => self.owner_token.as_deref(),
        }
    }
}

/// Validates one row. `column(i)` names field `i` of [`COLUMNS`] for error messages.
fn validate(
    line: u64,
    raw: &RawRow,
    column: &dyn Fn(usize) -> String,
    errors: &mut Vec<RowError>,
) -> Option<NewDevice> {
    let before = errors.len();
    let mut err = |i: usize, message: String| {
        errors.push(RowError {
            line,
            column: column(i),
            message,
        })
    };
    let text = |i: usize| raw.field(i).map(str::trim).unwrap_or("");
    let required = |i: usize, err: &mut dyn FnMut(usize, String)| {
        let t = text(i);
        if t.is_empty() {
            err(i, format!("{} is required", COLUMNS[i]));
            None
        } else {
            Some(t)
        }
    };
    let dev_eui = required(0, &mut err)
        .and_then(|t| t.parse::<DevEui>().map_err(|e| err(0, e.to_string())).ok());
    let join_eui = required(1, &mut err)
        .and_then(|t| t.parse::<JoinEui>().map_err(|e| err(1, e.to_string())).ok());
    let mac_version =
        required(2, &mut err).and_then(|t| mac_version_of(t).map_err(|e| err(2, e)).ok());
    let app_key = required(3, &mut err)
        .and_then(|t| t.parse::<AppKey>().map_err(|e| err(3, e.to_string())).ok());
    let nwk_key = nwk_key_of(text(4), mac_version).unwrap_or_else(|e| {
        err(4, e);
        None
    });
    let home_net_id = match text(5) {
        "" => None,
        t => t.parse::<NetId>().map_err(|e| err(5, e.to_string())).ok(),
    };
    let owner_token = owner_token_of(text(6)).unwrap_or_else(|e| {
        err(6, e);
        None
    });
    if errors.len() != before {
        return None;
    }
    Some(NewDevice {
        line,
        dev_eui: dev_eui?,
        join_eui: join_eui?,
        mac_version: mac_version?,
        app_key: app_key?,
        nwk_key,
        home_net_id,
        owner_token,
    })
}

/// The `mac_version` column: one of the versions a manifest may name.
fn mac_version_of(t: &str) -> Result<MacVersion, String> {
    match t {
        "1.0.2" | "1.0.3" | "1.0.4" | "1.1" => t.parse::<MacVersion>().map_err(|e| e.to_string()),
        _ => Err(format!(
            "unsupported MAC version {t:?} (expected 1.0.2, 1.0.3, 1.0.4 or 1.1)"
        )),
    }
}

/// The `nwk_key` column `t` of a device of `mac_version` (`None` when that column was bad):
/// required for 1.1, empty for 1.0.x.
fn nwk_key_of(t: &str, mac_version: Option<MacVersion>) -> Result<Option<NwkKey>, String> {
    match (t, mac_version) {
        ("", Some(MacVersion::V1_1)) => Err("nwk_key is required for LoRaWAN 1.1".into()),
        ("", _) => Ok(None),
        (_, Some(v)) if !v.is_1_1() => Err(format!(
            "nwk_key must be empty for LoRaWAN {v} (1.0.x has no NwkKey)"
        )),
        (t, _) => t.parse::<NwkKey>().map(Some).map_err(|e| e.to_string()),
    }
}

/// The `owner_token` column: optional, at most [`MAX_OWNER_TOKEN`] characters, no control
/// character and no ':'.
fn owner_token_of(t: &str) -> Result<Option<String>, String> {
    match t {
        "" => Ok(None),
        t if t.len() > MAX_OWNER_TOKEN => Err(format!(
            "owner_token is longer than {MAX_OWNER_TOKEN} characters"
        )),
        t if t.chars().any(|c| c.is_control() || c == ':') => {
            Err("owner_token contains a control character or ':'".into())
        }
        t => Ok(Some(t.to_owned())),
    }
}

/// The longest manifest line accepted (a valid row is under 300 bytes). The bytes of a longer
/// line are skipped rather than buffered, and the line is an error of its own (in the header's
/// place, a bad header), or nothing if it is blank.
pub const MAX_LINE: usize = 16 * 1024;

/// What the parser yields, in line order.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// A valid row.
    Row(NewDevice),
    /// A bad row (or a bad header).
    Error(RowError),
}

impl Item {
    /// The 1-based manifest line it is about.
    pub fn line(&self) -> u64 {
        match self {
            Item::Row(d) => d.line,
            Item::Error(e) => e.line,
        }
    }
}

/// CSV columns as the header gave them: CSV field index -> [`COLUMNS`] index.
#[derive(Debug, Clone)]
struct Header {
    map: Vec<usize>,
}

impl Header {
    fn column(&self, c: usize) -> String {
        match self.map.iter().position(|&m| m == c) {
            Some(p) => format!("{} ({})", p + 1, COLUMNS[c]),
            None => format!("- ({})", COLUMNS[c]),
        }
    }
}

#[derive(Debug, Clone)]
enum CsvState {
    /// The header has not been seen yet.
    BeforeHeader,
    /// The header is good.
    Rows(Header),
    /// The header is bad: the rest is not parsed (its errors are the header's).
    BadHeader,
}

/// An incremental manifest parser: bytes go in as they arrive, in chunks of any size (a line may
/// span chunks), and validated rows and row errors come out as soon as their line is complete.
/// Memory is bounded by [`MAX_LINE`], whatever the manifest's size.
///
/// CSV: a header (a subset of [`COLUMNS`] with the required ones, each at most once), then one
/// record per line (a quoted field cannot span lines: no valid value contains a line break).
/// JSON lines: one object per line. Blank lines are skipped; `\r\n` line ends are accepted.
/// The format, unless given, is guessed from the first non-blank character (`{`: JSON lines).
#[derive(Debug)]
pub struct ManifestParser {
    format: Option<Format>,
    /// Lines completed so far (the current line's number is `line + 1`).
    line: u64,
    /// The current line's bytes not yet terminated.
    partial: Vec<u8>,
    /// The current line is longer than [`MAX_LINE`]: skip it up to its end.
    overlong: bool,
    /// The first non-blank byte of the overlong line, once seen (none: a blank line so far).
    overlong_first: Option<u8>,
    csv: CsvState,
    /// One CSV reader for every line (building one costs far more than a line's parsing).
    csv_reader: csv_core::Reader,
    csv_out: Vec<u8>,
    csv_ends: Vec<usize>,
}

impl ManifestParser {
    /// A parser for `format`, or for the format the content shows.
    pub fn new(format: Option<Format>) -> Self {
        Self {
            format,
            line: 0,
            partial: Vec::new(),
            overlong: false,
            overlong_first: None,
            csv: CsvState::BeforeHeader,
            csv_reader: csv_core::Reader::new(),
            csv_out: Vec::new(),
            csv_ends: Vec::new(),
        }
    }

    /// The format, once known (given, or seen on the first non-blank line).
    pub fn format(&self) -> Option<Format> {
        self.format
    }

    /// How a duplicate or already-provisioned DevEUI's column is named in errors.
    pub fn dev_eui_column(&self) -> String {
        match (&self.csv, self.format) {
            (CsvState::Rows(h), _) => h.column(0),
            (_, Some(Format::Jsonl)) => "dev_eui".into(),
            _ => "1 (dev_eui)".into(),
        }
    }

    /// Feeds the next bytes of the manifest.
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut dyn FnMut(Item)) {
        while !chunk.is_empty() {
            let (part, rest, ended) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (&chunk[..i], &chunk[i + 1..], true),
                None => (chunk, &[][..], false),
            };
            chunk = rest;
            if !self.overlong {
                if self.partial.len() + part.len() > MAX_LINE {
                    self.overlong = true;
                    self.overlong_first =
                        first_non_blank(&self.partial).or_else(|| first_non_blank(part));
                    self.partial.clear();
                } else if !ended || !self.partial.is_empty() {
                    self.partial.extend_from_slice(part);
                }
            } else if self.overlong_first.is_none() {
                self.overlong_first = first_non_blank(part);
            }
            if ended {
                if self.overlong {
                    self.end_overlong(out);
                } else if self.partial.is_empty() {
                    self.line(part, out);
                } else {
                    let line = std::mem::take(&mut self.partial);
                    self.line(&line, out);
                    self.partial = line;
                    self.partial.clear();
                }
            }
        }
    }

    /// The manifest ended: handles an unterminated last line, and an empty CSV file.
    pub fn finish(mut self, out: &mut dyn FnMut(Item)) {
        if self.overlong {
            self.end_overlong(out);
        } else if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line(&line, out);
        }
        if self.format != Some(Format::Jsonl) && matches!(self.csv, CsvState::BeforeHeader) {
            out(Item::Error(RowError {
                line: 1,
                column: "1".into(),
                message: "empty file: expected the header dev_eui,join_eui,mac_version,app_key,nwk_key[,home_net_id][,owner_token]".into(),
            }));
        }
    }

    /// The end of a line longer than [`MAX_LINE`]. Its bytes were skipped, but it is treated as
    /// a line of its kind: blank, it is skipped like any blank line; in the header's place, it is
    /// a bad header (so the rest is not parsed); first of all, its first non-blank byte tells the
    /// format, as for any line.
    fn end_overlong(&mut self, out: &mut dyn FnMut(Item)) {
        self.line += 1;
        self.overlong = false;
        self.partial.clear();
        let Some(first) = self.overlong_first.take() else {
            return;
        };
        let format = *self
            .format
            .get_or_insert(Format::of_first_byte(Some(first)));
        if format == Format::Csv {
            match self.csv {
                CsvState::BadHeader => return,
                CsvState::BeforeHeader => self.csv = CsvState::BadHeader,
                CsvState::Rows(_) => {}
            }
        }
        out(Item::Error(RowError {
            line: self.line,
            column: "-".into(),
            message: format!("line longer than {MAX_LINE} bytes"),
        }));
    }

    /// One complete line (without its `\n`).
    fn line(&mut self, raw: &[u8], out: &mut dyn FnMut(Item)) {
        self.line += 1;
        let line = self.line;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let blank = raw.iter().all(u8::is_ascii_whitespace);
        let format = match self.format {
            Some(f) => f,
            None if blank => return,
            None => {
                let f = Format::of_first_byte(first_non_blank(raw));
                self.format = Some(f);
                f
            }
        };
        match format {
            Format::Jsonl if blank => {}
            Format::Jsonl => jsonl_line(line, raw, out),
            Format::Csv => match &self.csv {
                CsvState::BadHeader => {}
                CsvState::BeforeHeader if blank => {}
                CsvState::BeforeHeader => {
                    self.csv = match self.csv_record(raw) {
                        Err(field) => {
                            out(Item::Error(utf8_error(line, field)));
                            CsvState::BadHeader
                        }
                        Ok(h) => csv_header(line, &h, out),
                    }
                }
                CsvState::Rows(h) => {
                    let h = h.clone();
                    match self.csv_record(raw) {
                        Err(field) => out(Item::Error(utf8_error(line, field))),
                        Ok(rec) => csv_row(line, &h, &rec, out),
                    }
                }
            },
        }
    }

    /// The trimmed fields of one CSV line, or the 0-based index of a field that is not UTF-8.
    fn csv_record(&mut self, raw: &[u8]) -> Result<Vec<String>, usize> {
        use csv_core::ReadRecordResult as R;
        // A record's output is never longer than its input, nor has more fields than bytes + 1.
        self.csv_out.resize(raw.len() + 1, 0);
        self.csv_ends.resize(raw.len() + 2, 0);
        self.csv_reader.reset();
        let (res, _, nout, mut nends) =
            self.csv_reader
                .read_record(raw, &mut self.csv_out, &mut self.csv_ends);
        if matches!(res, R::InputEmpty) {
            // The line is the whole record: an empty input ends it.
            let (_, _, _, e) = self.csv_reader.read_record(
                &[],
                &mut self.csv_out[nout..],
                &mut self.csv_ends[nends..],
            );
            nends += e;
        }
        let mut start = 0;
        let mut fields = Vec::with_capacity(nends);
        for (i, &end) in self.csv_ends[..nends].iter().enumerate() {
            let f = std::str::from_utf8(&self.csv_out[start..end]).map_err(|_| i)?;
            fields.push(f.trim().to_owned());
            start = end;
        }
        Ok(fields)
    }
}

/// The first byte of `bytes` that is not ASCII whitespace.
fn first_non_blank(bytes: &[u8]) -> Option<u8> {
    bytes.iter().copied().find(|b| !b.is_ascii_whitespace())
}

/// Checks a CSV header line: a subset of COLUMNS containing the required ones, each at most once.
fn csv_header(line: u64, header: &[String], out: &mut dyn FnMut(Item)) -> CsvState {
    let mut ok = true;
    let mut err = |column: String, message: String| {
        ok = false;
        out(Item::Error(RowError {
            line,
            column,
            message,
        }));
    };
    let mut map = Vec::with_capacity(header.len());
    for (i, name) in header.iter().enumerate() {
        match COLUMNS.iter().position(|c| c.eq_ignore_ascii_case(name)) {
            Some(c) if map.contains(&c) => {
                err(format!("{}", i + 1), format!("duplicate column {name:?}"));
            }
            Some(c) => map.push(c),
            None => err(
                format!("{}", i + 1),
                format!("unknown column {name:?} (expected {})", COLUMNS.join(",")),
            ),
        }
    }
    for (c, name) in COLUMNS.iter().enumerate().take(REQUIRED) {
        if !map.contains(&c) {
            err(
                "-".into(),
                format!("header lacks the required column {name:?}"),
            );
        }
    }
    if ok {
        CsvState::Rows(Header { map })
    } else {
        CsvState::BadHeader
    }
}

fn csv_row(line: u64, h: &Header, rec: &[String], out: &mut dyn FnMut(Item)) {
    if rec.is_empty() || (rec.len() == 1 && rec[0].is_empty()) {
        return; // blank line
    }
    if rec.len() != h.map.len() {
        out(Item::Error(RowError {
            line,
            column: format!("{}", rec.len().min(h.map.len()) + 1),
            message: format!(
                "expected {} fields as in the header, found {}",
                h.map.len(),
                rec.len()
            ),
        }));
        return;
    }
    let mut raw = RawRow::default();
    for (i, value) in rec.iter().enumerate() {
        let v = Some(value.clone());
        match h.map[i] {
            0 => raw.dev_eui = v,
            1 => raw.join_eui = v,
            2 => raw.mac_version = v,
            3 => raw.app_key = v,
            4 => raw.nwk_key = v,
            5 => raw.home_net_id = v,
            _ => raw.owner_token = v,
        }
    }
    emit(line, &raw, &|c| h.column(c), out);
}

/// Validates a row and emits it, or its errors.
fn emit(line: u64, raw: &RawRow, column: &dyn Fn(usize) -> String, out: &mut dyn FnMut(Item)) {
    let mut errors = Vec::new();
    match validate(line, raw, column, &mut errors) {
        Some(d) => out(Item::Row(d)),
        None => errors.into_iter().for_each(|e| out(Item::Error(e))),
    }
}

fn utf8_error(line: u64, field: usize) -> RowError {
    RowError {
        line,
        column: "-".into(),
        message: format!("invalid UTF-8 in field {}", field + 1),
    }
}

fn jsonl_line(line: u64, l: &[u8], out: &mut dyn FnMut(Item)) {
    let raw: RawRow = match serde_json::from_slice(l) {
        Ok(r) => r,
        Err(e) => {
            out(Item::Error(RowError {
                line,
                column: e.column().to_string(),
                message: json_message(&e),
            }));
            return;
        }
    };
    emit(line, &raw, &|c| COLUMNS[c].to_owned(), out);
}

/// serde_json's message without a trailing "at line … column …" and without echoing values
/// (a string value may be a key).
fn json_message(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof => "malformed JSON".into(),
        Category::Data => {
            let m = e.to_string();
            let m = m.split(" at line ").next().unwrap_or(&m).to_owned();
            if m.starts_with("unknown field") || m.starts_with("missing field") {
                m
            } else {
                "every field must be a string".into()
            }
        }
        Category::Io => "read error".into(),
    }
}

impl NewDevice {
    /// The device as stored: root keys wrapped under the master key, fresh nonce state, no
    /// owner token (only its hash is kept, in the onboarding tables).
    pub fn seal(&self, master: &MasterKey) -> StoredDevice {
        StoredDevice {
            dev_eui: self.dev_eui,
            join_eui: self.join_eui,
            mac_version: self.mac_version,
            app_key_wrapped: atrest::seal_app_key(master, &self.app_key),
            nwk_key_wrapped: self
                .nwk_key
                .as_ref()
                .map(|k| atrest::seal_nwk_key(master, k)),
            home_net_id: self.home_net_id,
            owner_token: None,
            owner: None,
            nonces: NonceState::default(),
            last_join: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::{import, ImportError};
    use crate::store::{SqliteStore, Store};
    use protocol::keys::Kek;

    /// Runs the streaming parser over `text` fed in `chunk`-byte pieces (so lines span chunks).
    fn parse_chunked(
        text: &str,
        format: Format,
        chunk: usize,
    ) -> Result<Vec<NewDevice>, Vec<RowError>> {
        let mut p = ManifestParser::new(Some(format));
        let (mut rows, mut errors) = (Vec::new(), Vec::new());
        let mut out = |i: Item| match i {
            Item::Row(d) => rows.push(d),
            Item::Error(e) => errors.push(e),
        };
        for c in text.as_bytes().chunks(chunk) {
            p.feed(c, &mut out);
        }
        p.finish(&mut out);
        if errors.is_empty() {
            Ok(rows)
        } else {
            Err(errors)
        }
    }

    fn parse(text: &str, format: Format) -> Result<Vec<NewDevice>, Vec<RowError>> {
        let whole = parse_chunked(text, format, text.len().max(1));
        for size in [1, 2, 7, 64] {
            let chunked = parse_chunked(text, format, size);
            assert_eq!(
                chunked.as_ref().map(Vec::len).map_err(Clone::clone),
                whole.as_ref().map(Vec::len).map_err(Clone::clone),
                "chunks of {size} bytes"
            );
        }
        whole
    }

    /// All of a manifest's errors, through the whole import (duplicates included).
    fn import_errors(text: &str, format: Format) -> Vec<RowError> {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(tmp.path()).unwrap();
        match import(&mut store, &MasterKey(Kek::new([5; 16])), text, format) {
            Err(ImportError::Rows(e)) => e,
            other => panic!("{other:?}"),
        }
    }

    const HEADER: &str = "dev_eui,join_eui,mac_version,app_key,nwk_key,home_net_id,owner_token\n";
    const K1: &str = "2B7E151628AED2A6ABF7158809CF4F3C";
    const K2: &str = "000102030405060708090A0B0C0D0E0F";

    #[test]
    fn good_csv_and_jsonl_parse_the_same() {
        let csv = format!(
            "{HEADER}0000000000000001,70B3D57ED0000000,1.0.3,{K1},,,\n\
             0000000000000002,70B3D57ED0000000,1.1,{K1},{K2},000013,OWNER1\n"
        );
        let jsonl = format!(
            "{{\"dev_eui\":\"0000000000000001\",\"join_eui\":\"70B3D57ED0000000\",\"mac_version\":\"1.0.3\",\"app_key\":\"{K1}\"}}\n\
             {{\"dev_eui\":\"0000000000000002\",\"join_eui\":\"70B3D57ED0000000\",\"mac_version\":\"1.1\",\"app_key\":\"{K1}\",\"nwk_key\":\"{K2}\",\"home_net_id\":\"000013\",\"owner_token\":\"OWNER1\"}}\n"
        );
        assert_eq!(Format::sniff(&csv), Format::Csv);
        assert_eq!(Format::sniff(&jsonl), Format::Jsonl);
        assert_eq!(ManifestParser::new(None).format(), None);
        for (text, f) in [(csv, Format::Csv), (jsonl, Format::Jsonl)] {
            let mut p = ManifestParser::new(None);
            p.feed(format!("\n  \r\n{text}").as_bytes(), &mut |_| {});
            assert_eq!(p.format(), Some(f), "guessed after blank lines");
            let rows = parse(&text, f).unwrap_or_else(|e| panic!("{e:?}"));
            assert_eq!(rows.len(), 2);
            assert_eq!(rows[1].mac_version, MacVersion::V1_1);
            assert_eq!(rows[1].home_net_id, NetId::new(0x13));
            assert!(rows[0].nwk_key.is_none() && rows[1].nwk_key.is_some());
        }
        // The optional columns may be left out of the header.
        let short = format!("dev_eui,join_eui,mac_version,app_key,nwk_key\n0000000000000003,70B3D57ED0000000,1.0.4,{K1},\n");
        assert_eq!(parse(&short, Format::Csv).unwrap().len(), 1);
    }

    #[test]
    fn every_bad_row_is_reported_with_line_and_column() {
        let csv = format!(
            "{HEADER}\
             0000000000000001,70B3D57ED0000000,1.0.3,{K1},,,\n\
             00000000000000XY,70B3D57ED0000000,1.0.3,{K1},,,\n\
             0000000000000003,70B3D57ED0000000,1.0.1,{K1},,,\n\
             0000000000000004,70B3D57ED0000000,1.1,{K1},,,\n\
             0000000000000005,70B3D57ED0000000,1.0.4,{K1},{K2},,\n\
             0000000000000006,70B3D57ED0000000,1.0.4,{}ZZ,,12345,\n\
             0000000000000001,70B3D57ED0000000,1.0.3,{K1},,,\n\
             0000000000000008,70B3D57ED0000000\n",
            &K1[..30]
        );
        let errs = import_errors(&csv, Format::Csv);
        let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
        let expect = [
            "line 3, column 1 (dev_eui): DevEUI: invalid hex digit 'X' at position 14",
            "line 4, column 3 (mac_version): unsupported MAC version \"1.0.1\" (expected 1.0.2, 1.0.3, 1.0.4 or 1.1)",
            "line 5, column 5 (nwk_key): nwk_key is required for LoRaWAN 1.1",
            "line 6, column 5 (nwk_key): nwk_key must be empty for LoRaWAN 1.0.4 (1.0.x has no NwkKey)",
            "line 7, column 4 (app_key): AppKey: invalid hex digit at position 30",
            "line 7, column 6 (home_net_id): NetID: expected 6 hex digits, found 5",
            "line 8, column 1 (dev_eui): DevEUI 0000000000000001 already appears on line 2",
            "line 9, column 3: expected 7 fields as in the header, found 2",
        ];
        assert_eq!(shown, expect);
        for s in &shown {
            assert!(!s.contains(&K1[..8]), "key material leaked: {s}");
        }
    }

    #[test]
    fn jsonl_errors_and_header_errors() {
        let jsonl = "{\"dev_eui\":\"0000000000000001\"\n{\"dev_eui\":\"0000000000000001\",\"colour\":\"red\"}\n";
        let errs = parse(jsonl, Format::Jsonl).err().unwrap();
        assert_eq!(errs[0].line, 1);
        assert_eq!(errs[0].message, "malformed JSON");
        assert_eq!(errs[1].line, 2);
        assert!(
            errs[1].message.starts_with("unknown field `colour`"),
            "{}",
            errs[1].message
        );
        let errs = parse("dev_eui,join_eui,app_key,colour\n", Format::Csv)
            .err()
            .unwrap();
        let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert!(shown[0].starts_with("line 1, column 4: unknown column \"colour\""));
        assert!(shown
            .iter()
            .any(|s| s.contains("lacks the required column \"mac_version\"")));
    }

    /// A line longer than [`MAX_LINE`] is not buffered, but is still a line of its kind: a row
    /// error where a row stands, a bad header where the header stands (not an "empty file"),
    /// and nothing at all when blank.
    #[test]
    fn overlong_lines_are_errors_of_their_line_and_blank_ones_are_skipped() {
        let long = "x".repeat(MAX_LINE + 1);
        let good = format!("0000000000000001,70B3D57ED0000000,1.0.3,{K1},,,\n");
        let errors = |text: &str, f| parse(text, f).err().unwrap_or_default();
        let too_long = |line| RowError {
            line,
            column: "-".into(),
            message: format!("line longer than {MAX_LINE} bytes"),
        };
        // In a row's place: that row's error, and the rows around it are parsed.
        let text = format!("{HEADER}{good}{long}\n0000000000000002,bad\n");
        let e = errors(&text, Format::Csv);
        assert_eq!(e[0], too_long(3));
        assert_eq!(e.iter().map(|e| e.line).collect::<Vec<_>>(), [3, 4]);
        // In the header's place, after blank lines, unterminated or not: a bad header.
        let cases = [
            (format!("\n{long}"), 2),
            (format!("\n\r\n{long}\n{HEADER}{good}"), 3),
        ];
        for (text, line) in cases {
            assert_eq!(errors(&text, Format::Csv), [too_long(line)]);
        }
        let mut p = ManifestParser::new(None);
        p.feed(format!("{long}\n").as_bytes(), &mut |_| {});
        assert_eq!(
            p.format(),
            Some(Format::Csv),
            "the long line's first byte tells"
        );
        // A JSON line: its format is told by its first byte, after the blank ones.
        let json_long = format!("   {{\"dev_eui\":\"{long}\"}}");
        let mut p = ManifestParser::new(None);
        let mut items = Vec::new();
        p.feed(json_long.as_bytes(), &mut |i| items.push(i));
        p.finish(&mut |i| items.push(i));
        assert_eq!(items, [Item::Error(too_long(1))]);
        // Blank, however long: skipped like any blank line.
        let blank = " ".repeat(MAX_LINE + 1);
        let text = format!("{blank}\r\n{HEADER}{good}{blank}\n");
        assert_eq!(parse(&text, Format::Csv).unwrap().len(), 1);
        assert_eq!(parse(&text, Format::Csv).unwrap()[0].line, 3);
        assert_eq!(
            errors(&blank, Format::Csv)[0].message.split(':').next(),
            Some("empty file")
        );
    }

    #[test]
    fn import_is_all_or_nothing_and_keys_are_encrypted_at_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(tmp.path()).unwrap();
        let master = MasterKey(Kek::new([5; 16]));
        let ok = format!("{HEADER}0000000000000001,70B3D57ED0000000,1.0.3,{K1},,,\n");
        assert_eq!(
            import(&mut store, &master, &ok, Format::Csv)
                .unwrap()
                .imported,
            1
        );
        let again = format!(
            "{HEADER}0000000000000002,70B3D57ED0000000,1.0.3,{K1},,,\n0000000000000001,70B3D57ED0000000,1.0.3,{K1},,,\n"
        );
        match import(&mut store, &master, &again, Format::Csv) {
            Err(ImportError::Rows(e)) => {
                assert_eq!(e.len(), 1);
                assert_eq!(e[0].line, 3);
            }
            other => panic!("{other:?}"),
        }
        let all = store.load_devices().unwrap();
        assert_eq!(all.len(), 1, "nothing of the failed import landed");
        assert_eq!(all[0].app_key_wrapped.len(), 24);
        assert_ne!(&all[0].app_key_wrapped[..16], &hex::decode(K1).unwrap()[..]);
        let raw = std::fs::read(tmp.path().join(crate::store::DB_FILE)).unwrap();
        let wal = std::fs::read(tmp.path().join(format!("{}-wal", crate::store::DB_FILE)))
            .unwrap_or_default();
        let k = hex::decode(K1).unwrap();
        for bytes in [raw, wal] {
            assert!(
                !bytes.windows(16).any(|w| w == &k[..]),
                "root key in clear on disk"
            );
        }
        assert_eq!(
            atrest::open_app_key(&master, &all[0].app_key_wrapped).unwrap(),
            K1.parse::<AppKey>().unwrap()
        );
    }

    /// Everything the parser yields for `bytes` fed in the pieces between the `cuts` (byte
    /// offsets, any order, out-of-range ones clamped).
    fn items_cut(bytes: &[u8], cuts: &[usize]) -> Vec<Item> {
        let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(bytes.len())).collect();
        cuts.sort_unstable();
        let mut p = ManifestParser::new(None);
        let mut items = Vec::new();
        let mut at = 0;
        for c in cuts.into_iter().chain([bytes.len()]) {
            p.feed(&bytes[at..c], &mut |i| items.push(i));
            at = c;
        }
        p.finish(&mut |i| items.push(i));
        items
    }

    /// Manifest-like lines: rows good and bad in both formats, headers, blanks, garbage, and
    /// now and then a line longer than [`MAX_LINE`].
    fn manifest_line() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let hex =
            |n: usize| proptest::string::string_regex(&format!("[0-9A-Fa-f]{{{n}}}")).unwrap();
        prop_oneof![
            3 => (hex(16), hex(16), prop::sample::select(vec!["1.0.2", "1.0.3", "1.0.4", "1.1", "2.0"]), hex(32), prop::option::of(hex(32)), prop::option::of(hex(6)))
                .prop_map(|(d, j, v, k, n, h)| format!("{d},{j},{v},{k},{},{},TOKEN", n.unwrap_or_default(), h.unwrap_or_default()).into_bytes()),
            2 => (hex(16), hex(32)).prop_map(|(d, k)| format!("{{\"dev_eui\":\"{d}\",\"join_eui\":\"70B3D57ED0000000\",\"mac_version\":\"1.0.4\",\"app_key\":\"{k}\"}}").into_bytes()),
            1 => Just(HEADER.trim_end().as_bytes().to_vec()),
            1 => Just(b"dev_eui,app_key".to_vec()),
            1 => prop::sample::select(vec!["", " ", "\r", "\"", "\"a,b\",c", "{", "{}"]).prop_map(|l| l.as_bytes().to_vec()),
            2 => prop::collection::vec(any::<u8>(), 0..80),
            1 => (0..3usize).prop_map(|k| vec![b'x'; MAX_LINE - 1 + k]),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// The manifest's bytes arrive in pieces of any size: what comes out never depends on
        /// where they were cut, lines only go forward, and arbitrary bytes never panic it.
        #[test]
        fn the_parser_does_not_care_where_the_bytes_were_cut(
            lines in proptest::collection::vec(manifest_line(), 0..12),
            crlf in proptest::bool::ANY,
            last_newline in proptest::bool::ANY,
            cuts in proptest::collection::vec(0usize..40_000, 0..6),
        ) {
            let end: &[u8] = if crlf { b"\r\n" } else { b"\n" };
            let mut bytes = lines.join(end);
            if last_newline {
                bytes.extend_from_slice(end);
            }
            let whole = items_cut(&bytes, &[]);
            proptest::prop_assert_eq!(&items_cut(&bytes, &cuts), &whole);
            let byte_by_byte: Vec<usize> = (1..bytes.len().min(3_000)).collect();
            proptest::prop_assert_eq!(&items_cut(&bytes, &byte_by_byte), &whole);
            let newlines = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
            for w in whole.windows(2) {
                proptest::prop_assert!(w[0].line() <= w[1].line());
            }
            for i in &whole {
                proptest::prop_assert!(i.line() >= 1 && i.line() <= newlines + 1);
            }
        }

        #[test]
        fn arbitrary_bytes_are_parsed_alike_in_any_pieces(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            cuts in proptest::collection::vec(0usize..600, 0..6),
        ) {
            proptest::prop_assert_eq!(items_cut(&bytes, &cuts), items_cut(&bytes, &[]));
        }
    }
}
