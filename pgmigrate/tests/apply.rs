//! The runner against a real PostgreSQL (`testkit::postgres`).

use pgmigrate::{apply, Ledger};

const LEDGER: Ledger<'static> = Ledger {
    table: "t_schema_migrations",
    columns: "applied_at timestamptz NOT NULL",
    values: "now()",
    lock: 0x7465_7374,
};

const MIGRATIONS: &[(i32, &str)] = &[
    (1, "CREATE TABLE a (x integer)"),
    (2, "CREATE TABLE b (y integer); INSERT INTO b VALUES (7)"),
];

#[test]
fn each_migration_is_applied_once_in_order_and_all_or_nothing() {
    let pg = testkit::postgres::Postgres::start();
    let url = pg.create_database();
    let connect = || postgres::Client::connect(&url, postgres::NoTls).unwrap();

    // Instances starting together: every version applied by exactly one of them.
    let applied: Vec<Vec<i32>> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..4)
            .map(|_| s.spawn(|| apply(&mut connect(), &LEDGER, MIGRATIONS).unwrap()))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let mut all: Vec<i32> = applied.concat();
    all.sort_unstable();
    assert_eq!(all, vec![1, 2], "{applied:?}");
    let mut c = connect();
    let y: i32 = c.query_one("SELECT y FROM b", &[]).unwrap().get(0);
    assert_eq!(y, 7);
    let n: i64 = c.query_one("SELECT count(*) FROM b", &[]).unwrap().get(0);
    assert_eq!(n, 1, "migration 2 ran once");

    // A new version is applied alone; a failing one applies nothing of its batch.
    let more: &[(i32, &str)] = &[
        MIGRATIONS[0],
        MIGRATIONS[1],
        (3, "CREATE TABLE c (z integer)"),
    ];
    assert_eq!(apply(&mut c, &LEDGER, more).unwrap(), vec![3]);
    let failing: &[(i32, &str)] = &[(4, "CREATE TABLE d (w integer)"), (5, "NOT SQL")];
    assert!(apply(&mut c, &LEDGER, failing).is_err());
    let d: Option<String> = c
        .query_one("SELECT to_regclass('d')::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(d, None, "4 rolled back with 5");
    let versions: Vec<i32> = c
        .query(
            "SELECT version FROM t_schema_migrations ORDER BY version",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![1, 2, 3]);
}
