//! Schema migrations of a PostgreSQL database: each server lists its migrations, `(version,
//! SQL)` in order, and [`apply`] runs the ones the database lacks, in one transaction, under an
//! advisory lock, so that instances starting together apply each one once; each applied version
//! is recorded in the server's own ledger table ([`Ledger`]).
//!
//! The join server (`js_schema_migrations`) and the network server (`ns_schema_migrations`)
//! keep their ledgers as they were; only the runner is shared. No crate of the field fits:
//! refinery and sqlx's migrator bring their own ledger tables and file layouts (and sqlx its
//! async runtime), where these stores embed their SQL in the binaries and already have ledgers
//! in deployed databases.

/// Where a server records its applied migrations.
#[derive(Debug, Clone, Copy)]
pub struct Ledger<'a> {
    /// The ledger table's name.
    pub table: &'a str,
    /// Its columns after `version integer PRIMARY KEY` (for `CREATE TABLE IF NOT EXISTS`).
    pub columns: &'a str,
    /// The value of those columns for a version applied now (an SQL expression list).
    pub values: &'a str,
    /// The key of the transaction-level advisory lock held while migrating.
    pub lock: i64,
}

/// Applies, in `client`'s one transaction, the migrations of `migrations` not recorded in
/// `ledger` (creating it if needed), in order; returns the versions applied. All or nothing: a
/// failing migration applies none.
pub fn apply(
    client: &mut postgres::Client,
    ledger: &Ledger<'_>,
    migrations: &[(i32, &str)],
) -> Result<Vec<i32>, postgres::Error> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ledger.lock])?;
    let table = ledger.table;
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {table} (version integer PRIMARY KEY, {})",
        ledger.columns
    ))?;
    let done: Vec<i32> = tx
        .query(&format!("SELECT version FROM {table}"), &[])?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let record = format!("INSERT INTO {table} VALUES ($1, {})", ledger.values);
    let mut applied = Vec::new();
    for (version, sql) in migrations {
        if done.contains(version) {
            continue;
        }
        tx.batch_execute(sql)?;
        tx.execute(record.as_str(), &[version])?;
        applied.push(*version);
    }
    tx.commit()?;
    Ok(applied)
}
