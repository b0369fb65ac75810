//! `joinserver store copy` of the onboarding state: tenants, API key hashes, the audit log and the
//! Backend Interfaces peer token hashes, read from the embedded store and written into an empty
//! PostgreSQL one ([`OnboardRows`]), then compared by row counts and a SHA-256 over every row,
//! as the device state is ([`super::Fingerprint`]).

use postgres::types::ToSql;
use rusqlite::types::Value;
use sha2::{Digest, Sha256};

use super::postgres::{pg, PgStore};
use super::{SqliteStore, StoreError};

/// What a column holds.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Text,
    Int,
    Bytes,
}

/// The copied tables, each with its columns (all nullable as read; the schema says which are
/// not). Rows are compared in the order of their first column.
const TABLES: &[(&str, &[(&str, Kind)])] = &[
    (
        "tenants",
        &[
            ("name", Kind::Text),
            ("created_ms", Kind::Int),
            ("home_net_id", Kind::Int),
        ],
    ),
    (
        "api_keys",
        &[
            ("id", Kind::Text),
            ("name", Kind::Text),
            ("role", Kind::Text),
            ("key_hash", Kind::Bytes),
            ("created_ms", Kind::Int),
            ("expires_ms", Kind::Int),
            ("revoked_ms", Kind::Int),
        ],
    ),
    (
        "audit",
        &[
            ("seq", Kind::Int),
            ("at_ms", Kind::Int),
            ("actor", Kind::Text),
            ("tenant", Kind::Text),
            ("action", Kind::Text),
            ("dev_eui", Kind::Text),
            ("outcome", Kind::Text),
            ("detail", Kind::Text),
        ],
    ),
    (
        "bi_peer_tokens",
        &[
            ("token_hash", Kind::Bytes),
            ("net_id", Kind::Int),
            ("created_ms", Kind::Int),
        ],
    ),
];

/// One value of a row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Cell {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

/// The rows of the onboarding tables of one store, each table's in the order of its first column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnboardRows {
    tables: Vec<Vec<Vec<Cell>>>,
}

/// Row counts per table (in the order tenants, API keys, audit records, peer tokens) and a
/// SHA-256 over every row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnboardFingerprint {
    /// `(table, rows)`.
    pub counts: Vec<(&'static str, usize)>,
    /// SHA-256 over all of them.
    pub sha256: [u8; 32],
}

impl OnboardRows {
    fn sorted(mut tables: Vec<Vec<Vec<Cell>>>) -> Self {
        for t in &mut tables {
            t.sort();
        }
        Self { tables }
    }

    /// The rows' counts and checksum.
    pub fn fingerprint(&self) -> OnboardFingerprint {
        let mut h = Sha256::new();
        let mut field = |tag: u8, b: &[u8]| {
            h.update([tag]);
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        for ((name, _), rows) in TABLES.iter().zip(&self.tables) {
            field(b'T', name.as_bytes());
            for row in rows {
                field(b'R', &[]);
                for cell in row {
                    match cell {
                        Cell::Null => field(b'N', &[]),
                        Cell::Int(i) => field(b'I', &i.to_le_bytes()),
                        Cell::Text(t) => field(b'S', t.as_bytes()),
                        Cell::Bytes(b) => field(b'B', b),
                    }
                }
            }
        }
        OnboardFingerprint {
            counts: TABLES
                .iter()
                .zip(&self.tables)
                .map(|((name, _), rows)| (*name, rows.len()))
                .collect(),
            sha256: h.finalize().into(),
        }
    }

    /// Reads the onboarding tables of the embedded store (a table it never created is empty).
    pub fn read_sqlite(store: &mut SqliteStore) -> Result<Self, StoreError> {
        let conn = store.conn_mut();
        let mut tables = Vec::new();
        for (name, columns) in TABLES {
            let exists: i64 = conn.query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [name],
                |r| r.get(0),
            )?;
            if exists == 0 {
                tables.push(Vec::new());
                continue;
            }
            let list: Vec<&str> = columns.iter().map(|(c, _)| *c).collect();
            let mut stmt = conn.prepare(&format!("SELECT {} FROM {name}", list.join(", ")))?;
            let rows = stmt.query_map([], |r| {
                (0..columns.len())
                    .map(|i| {
                        Ok(match r.get::<_, Value>(i)? {
                            Value::Null => Cell::Null,
                            Value::Integer(v) => Cell::Int(v),
                            Value::Text(t) => Cell::Text(t),
                            Value::Blob(b) => Cell::Bytes(b),
                            Value::Real(f) => Cell::Text(f.to_string()),
                        })
                    })
                    .collect::<rusqlite::Result<Vec<Cell>>>()
            })?;
            tables.push(rows.collect::<rusqlite::Result<_>>()?);
        }
        Ok(Self::sorted(tables))
    }

    /// Reads the onboarding tables of the PostgreSQL store.
    pub fn read_postgres(store: &mut PgStore) -> Result<Self, StoreError> {
        let mut tables = Vec::new();
        for (name, columns) in TABLES {
            let list: Vec<&str> = columns.iter().map(|(c, _)| *c).collect();
            let sql = format!("SELECT {} FROM {name}", list.join(", "));
            let rows = store.with(|h| h.client.query(&sql, &[]).map_err(pg))?;
            let cells = |r: &postgres::Row| -> Vec<Cell> {
                columns
                    .iter()
                    .enumerate()
                    .map(|(i, (_, kind))| match kind {
                        Kind::Int => r.get::<_, Option<i64>>(i).map_or(Cell::Null, Cell::Int),
                        Kind::Text => r.get::<_, Option<String>>(i).map_or(Cell::Null, Cell::Text),
                        Kind::Bytes => r
                            .get::<_, Option<Vec<u8>>>(i)
                            .map_or(Cell::Null, Cell::Bytes),
                    })
                    .collect()
            };
            tables.push(rows.iter().map(cells).collect());
        }
        Ok(Self::sorted(tables))
    }

    /// Writes the rows into the PostgreSQL store, whose onboarding tables must be empty, in one
    /// transaction; the audit log's sequence continues after the copied records.
    pub fn write_postgres(&self, store: &mut PgStore) -> Result<(), StoreError> {
        store.with(|h| {
            let mut tx = h.client.transaction().map_err(pg)?;
            for ((name, columns), rows) in TABLES.iter().zip(&self.tables) {
                let n: i64 = tx
                    .query_one(&format!("SELECT count(*) FROM {name}"), &[])
                    .map_err(pg)?
                    .get(0);
                if n > 0 {
                    return Err(StoreError::Postgres(format!(
                        "{name} is not empty: copy into an empty database"
                    )));
                }
                let list: Vec<&str> = columns.iter().map(|(c, _)| *c).collect();
                let marks: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
                let sql = format!(
                    "INSERT INTO {name} ({}) VALUES ({})",
                    list.join(", "),
                    marks.join(", ")
                );
                let statement = tx.prepare(&sql).map_err(pg)?;
                for row in rows {
                    let values: Vec<Box<dyn ToSql + Sync>> = row
                        .iter()
                        .zip(*columns)
                        .map(|(cell, (_, kind))| sql_value(cell, *kind))
                        .collect();
                    let params: Vec<&(dyn ToSql + Sync)> =
                        values.iter().map(|v| v.as_ref()).collect();
                    tx.execute(&statement, &params).map_err(pg)?;
                }
            }
            tx.execute(
                "SELECT setval(pg_get_serial_sequence('audit', 'seq'), \
                 COALESCE((SELECT max(seq) FROM audit), 0) + 1, false)",
                &[],
            )
            .map_err(pg)?;
            tx.commit().map_err(pg)
        })
    }
}

/// A cell as the PostgreSQL column of `kind` takes it (a NULL typed as the column).
fn sql_value(cell: &Cell, kind: Kind) -> Box<dyn ToSql + Sync> {
    match (cell, kind) {
        (Cell::Int(i), _) => Box::new(*i),
        (Cell::Text(t), _) => Box::new(t.clone()),
        (Cell::Bytes(b), _) => Box::new(b.clone()),
        (Cell::Null, Kind::Int) => Box::new(None::<i64>),
        (Cell::Null, Kind::Text) => Box::new(None::<String>),
        (Cell::Null, Kind::Bytes) => Box::new(None::<Vec<u8>>),
    }
}
