//! Provisioning: parsing a device manifest (CSV or JSON lines) and importing it all-or-nothing.
//!
//! Fields: `dev_eui,join_eui,mac_version,app_key,nwk_key,home_net_id,owner_token`.
//! `nwk_key` is empty for 1.0.x devices and required for 1.1; `home_net_id` and `owner_token` are
//! optional (the CSV header may leave them out). `mac_version` is 1.0.2, 1.0.3, 1.0.4 or 1.1.
//! Every bad row is reported with its line and column; one bad row imports nothing.

use std::collections::{HashMap, HashSet};
use std::fmt;

use protocol::ids::{DevEui, JoinEui, NetId};
use protocol::keys::{AppKey, NwkKey};
use protocol::version::MacVersion;
use serde::Deserialize;

use crate::atrest;
use crate::secrets::MasterKey;
use crate::store::{NonceState, Store, StoreError, StoredDevice};

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

/// A validated manifest row.
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

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The manifest has bad rows; nothing was imported.
    #[error("{} bad row(s); nothing imported", .0.len())]
    Rows(Vec<RowError>),
    /// The store failed; nothing was imported.
    #[error(transparent)]
    Store(#[from] StoreError),
}

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
        match text.trim_start().chars().next() {
            Some('{') => Self::Jsonl,
            _ => Self::Csv,
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
    let mac_version = required(2, &mut err).and_then(|t| match t {
        "1.0.2" | "1.0.3" | "1.0.4" | "1.1" => t.parse::<MacVersion>().ok(),
        _ => {
            err(
                2,
                format!("unsupported MAC version {t:?} (expected 1.0.2, 1.0.3, 1.0.4 or 1.1)"),
            );
            None
        }
    });
    let app_key = required(3, &mut err)
        .and_then(|t| t.parse::<AppKey>().map_err(|e| err(3, e.to_string())).ok());
    let nwk_key = match (text(4), mac_version) {
        ("", Some(MacVersion::V1_1)) => {
            err(4, "nwk_key is required for LoRaWAN 1.1".into());
            None
        }
        ("", _) => None,
        (t, Some(v)) if !v.is_1_1() => {
            err(
                4,
                format!("nwk_key must be empty for LoRaWAN {v} (1.0.x has no NwkKey)"),
            );
            let _ = t;
            None
        }
        (t, _) => t.parse::<NwkKey>().map_err(|e| err(4, e.to_string())).ok(),
    };
    let home_net_id = match text(5) {
        "" => None,
        t => t.parse::<NetId>().map_err(|e| err(5, e.to_string())).ok(),
    };
    let owner_token = match text(6) {
        "" => None,
        t if t.len() > MAX_OWNER_TOKEN => {
            err(
                6,
                format!("owner_token is longer than {MAX_OWNER_TOKEN} characters"),
            );
            None
        }
        t if t.chars().any(|c| c.is_control() || c == ':') => {
            err(6, "owner_token contains a control character or ':'".into());
            None
        }
        t => Some(t.to_owned()),
    };
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

/// Parses and validates a whole manifest. Returns every valid row, or every error.
pub fn parse(text: &str, format: Format) -> Result<Vec<NewDevice>, Vec<RowError>> {
    let mut errors = Vec::new();
    let mut out = Vec::new();
    match format {
        Format::Csv => parse_csv(text, &mut out, &mut errors),
        Format::Jsonl => parse_jsonl(text, &mut out, &mut errors),
    }
    // Duplicate DevEUIs inside the file.
    let mut seen: HashMap<DevEui, u64> = HashMap::with_capacity(out.len());
    for d in &out {
        if let Some(first) = seen.insert(d.dev_eui, d.line) {
            errors.push(RowError {
                line: d.line,
                column: match format {
                    Format::Csv => "1 (dev_eui)".into(),
                    Format::Jsonl => "dev_eui".into(),
                },
                message: format!("DevEUI {} already appears on line {first}", d.dev_eui),
            });
            seen.insert(d.dev_eui, first);
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        errors.sort_by_key(|e| e.line);
        Err(errors)
    }
}

fn parse_csv(text: &str, out: &mut Vec<NewDevice>, errors: &mut Vec<RowError>) {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut records = rdr.records();
    // Header: a subset of COLUMNS containing the required ones, each at most once.
    let header = match records.next() {
        None => {
            errors.push(RowError {
                line: 1,
                column: "1".into(),
                message: "empty file: expected the header dev_eui,join_eui,mac_version,app_key,nwk_key[,home_net_id][,owner_token]".into(),
            });
            return;
        }
        Some(Err(e)) => {
            errors.push(csv_error(&e));
            return;
        }
        Some(Ok(h)) => h,
    };
    let header_line = header.position().map_or(1, |p| p.line());
    let mut map = Vec::with_capacity(header.len()); // csv field index -> COLUMNS index
    for (i, name) in header.iter().enumerate() {
        match COLUMNS.iter().position(|c| c.eq_ignore_ascii_case(name)) {
            Some(c) if map.contains(&c) => errors.push(RowError {
                line: header_line,
                column: format!("{}", i + 1),
                message: format!("duplicate column {name:?}"),
            }),
            Some(c) => map.push(c),
            None => errors.push(RowError {
                line: header_line,
                column: format!("{}", i + 1),
                message: format!("unknown column {name:?} (expected {})", COLUMNS.join(",")),
            }),
        }
    }
    for (c, name) in COLUMNS.iter().enumerate().take(REQUIRED) {
        if !map.contains(&c) {
            errors.push(RowError {
                line: header_line,
                column: "-".into(),
                message: format!("header lacks the required column {name:?}"),
            });
        }
    }
    if !errors.is_empty() {
        return;
    }
    let position_of = |c: usize| map.iter().position(|&m| m == c);
    let column = |c: usize| match position_of(c) {
        Some(p) => format!("{} ({})", p + 1, COLUMNS[c]),
        None => format!("- ({})", COLUMNS[c]),
    };
    for rec in records {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                errors.push(csv_error(&e));
                continue;
            }
        };
        let line = rec.position().map_or(0, |p| p.line());
        if rec.len() == 1 && rec.get(0) == Some("") {
            continue; // blank line
        }
        if rec.len() != map.len() {
            errors.push(RowError {
                line,
                column: format!("{}", rec.len().min(map.len()) + 1),
                message: format!(
                    "expected {} fields as in the header, found {}",
                    map.len(),
                    rec.len()
                ),
            });
            continue;
        }
        let mut raw = RawRow::default();
        for (i, value) in rec.iter().enumerate() {
            let v = Some(value.to_owned());
            match map[i] {
                0 => raw.dev_eui = v,
                1 => raw.join_eui = v,
                2 => raw.mac_version = v,
                3 => raw.app_key = v,
                4 => raw.nwk_key = v,
                5 => raw.home_net_id = v,
                _ => raw.owner_token = v,
            }
        }
        if let Some(d) = validate(line, &raw, &column, errors) {
            out.push(d);
        }
    }
}

fn csv_error(e: &csv::Error) -> RowError {
    let line = e.position().map_or(0, |p| p.line());
    RowError {
        line,
        column: "-".into(),
        message: match e.kind() {
            csv::ErrorKind::Utf8 { err, .. } => {
                format!("invalid UTF-8 in field {}", err.field() + 1)
            }
            _ => "malformed CSV".into(),
        },
    }
}

fn parse_jsonl(text: &str, out: &mut Vec<NewDevice>, errors: &mut Vec<RowError>) {
    let column = |c: usize| COLUMNS[c].to_owned();
    for (i, l) in text.lines().enumerate() {
        let line = i as u64 + 1;
        if l.trim().is_empty() {
            continue;
        }
        let raw: RawRow = match serde_json::from_str(l) {
            Ok(r) => r,
            Err(e) => {
                errors.push(RowError {
                    line,
                    column: e.column().to_string(),
                    message: json_message(&e),
                });
                continue;
            }
        };
        if let Some(d) = validate(line, &raw, &column, errors) {
            out.push(d);
        }
    }
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

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportSummary {
    /// Devices imported.
    pub imported: usize,
}

/// Validates, encrypts the root keys under the master key and inserts every device in one
/// transaction, or nothing. Devices already in the store are reported as errors.
pub fn import<S: Store>(
    store: &mut S,
    master: &MasterKey,
    text: &str,
    format: Format,
) -> Result<ImportSummary, ImportError> {
    let rows = parse(text, format).map_err(ImportError::Rows)?;
    let existing: HashSet<DevEui> = store
        .load_devices()?
        .into_iter()
        .map(|d| d.dev_eui)
        .collect();
    let errors: Vec<RowError> = rows
        .iter()
        .filter(|d| existing.contains(&d.dev_eui))
        .map(|d| RowError {
            line: d.line,
            column: match format {
                Format::Csv => "1 (dev_eui)".into(),
                Format::Jsonl => "dev_eui".into(),
            },
            message: format!(
                "DevEUI {} is already provisioned (remove it first)",
                d.dev_eui
            ),
        })
        .collect();
    if !errors.is_empty() {
        return Err(ImportError::Rows(errors));
    }
    let stored: Vec<StoredDevice> = rows
        .iter()
        .map(|d| StoredDevice {
            dev_eui: d.dev_eui,
            join_eui: d.join_eui,
            mac_version: d.mac_version,
            app_key_wrapped: atrest::seal_app_key(master, &d.app_key),
            nwk_key_wrapped: d.nwk_key.as_ref().map(|k| atrest::seal_nwk_key(master, k)),
            home_net_id: d.home_net_id,
            owner_token: d.owner_token.clone(),
            nonces: NonceState::default(),
        })
        .collect();
    store.insert_devices(&stored)?;
    Ok(ImportSummary {
        imported: stored.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;
    use protocol::keys::Kek;

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
        for (text, f) in [(csv, Format::Csv), (jsonl, Format::Jsonl)] {
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
        let errs = parse(&csv, Format::Csv).err().unwrap();
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
}
