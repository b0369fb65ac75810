//! A real PostgreSQL 15 for tests: Debian's binaries, a temporary data directory, a free port on
//! 127.0.0.1, and nothing shared with any other test or with a system cluster.
//!
//! ```no_run
//! let mut pg = testkit::postgres::Postgres::start();
//! let url = pg.create_database(); // postgres://postgres@127.0.0.1:PORT/test_…, empty
//! pg.kill(); // the database goes away at once (SIGKILL to the server and its backends)
//! pg.start_again(); // crash recovery, same port, same data
//! ```
//!
//! - The binaries come from `/usr/lib/postgresql/15/bin`, else from `pg_config --bindir`, else
//!   from `$PG_BINDIR`; when none has them, [`Postgres::start`] panics saying how to install them
//!   (`scripts/test.sh` installs Debian's `postgresql-15`): a test needing the database fails, it
//!   never skips.
//! - `initdb` refuses to run as root, so when the test runs as root the cluster runs as the
//!   `postgres` system user if it exists, else as `nobody`, with the data directory given to it.
//! - The server listens on 127.0.0.1 only (trust authentication for the `postgres` role, which
//!   is safe there only because the port is loopback and the cluster is thrown away), and on a
//!   Unix socket inside the temporary directory (none in `/var/run/postgresql`).
//! - [`Postgres::kill`] sends SIGKILL to the server and to each of its processes (backends and
//!   background workers call `setsid`, so they are not in its process group) at once, and waits
//!   until none runs, so [`Postgres::start_again`] finds the data directory free.
//! - Dropping a [`Postgres`] kills the server and removes the directory.

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long the server gets to start or stop before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);
/// Where Debian's `postgresql-15` puts the server binaries.
const DEBIAN_BINDIR: &str = "/usr/lib/postgresql/15/bin";
/// The superuser role `initdb` creates.
const SUPERUSER: &str = "postgres";
/// How often a start on a port another process took meanwhile is tried again on another.
const PORT_TRIES: usize = 5;

/// A running (or stopped) PostgreSQL server on a temporary data directory.
#[derive(Debug)]
pub struct Postgres {
    bindir: PathBuf,
    /// Owns the temporary directory: `data/` (the cluster), the socket, `server.log`.
    dir: tempfile::TempDir,
    port: u16,
    /// The unprivileged user the server runs as, when the test runs as root.
    run_as: Option<(u32, u32)>,
    settings: Vec<(String, String)>,
    child: Option<Child>,
    databases: AtomicU32,
}

impl Postgres {
    /// Creates a cluster (`initdb`) and starts the server on a free 127.0.0.1 port.
    ///
    /// # Panics
    /// If the PostgreSQL 15 binaries are missing, or the cluster cannot be created or started
    /// within 60 s (the message carries the server's log).
    pub fn start() -> Postgres {
        Self::start_with(&[])
    }

    /// Like [`Postgres::start`], with extra server settings (`-c name=value`), e.g.
    /// `("max_connections", "300")`. They apply to every later [`Postgres::start_again`] too.
    pub fn start_with(settings: &[(&str, &str)]) -> Postgres {
        let bindir = find_bindir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::Builder::new()
            .prefix("testkit-pg-")
            .tempdir()
            .expect("creating the temporary directory for PostgreSQL");
        let run_as = unprivileged_user().unwrap_or_else(|e| panic!("{e}"));
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("giving the temporary directory to the PostgreSQL user");
        }
        let mut pg = Postgres {
            bindir,
            dir,
            port: 0,
            run_as,
            settings: settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            child: None,
            databases: AtomicU32::new(0),
        };
        pg.initdb();
        for attempt in 1..=PORT_TRIES {
            pg.port = free_port();
            match pg.spawn_and_wait() {
                Ok(()) => return pg,
                // Another process took the port between our probe and the server's bind.
                Err(log) if attempt < PORT_TRIES && log.contains("Address already in use") => {}
                Err(log) => panic!("PostgreSQL did not start:\n{log}"),
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `name` as the superuser (no password: loopback trust).
    pub fn url(&self, name: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates a new, empty database and returns its URL. Each call gives another database, so
    /// tests sharing a server do not see each other's tables.
    ///
    /// # Panics
    /// If the server does not create it.
    pub fn create_database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("test_{}_{n}", std::process::id());
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// Runs one SQL command with `psql` on database `db`, as the superuser, and returns what it
    /// printed (unaligned, tuples only).
    ///
    /// # Panics
    /// If `psql` fails (the message carries its error).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bindir.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", SUPERUSER, "-d", db, "-c", sql])
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .expect("running psql");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the server process is running (started and not yet stopped or killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the server cleanly (SIGINT: PostgreSQL's "fast" shutdown, which ends the sessions,
    /// checkpoints and exits). Does nothing if it is not running.
    ///
    /// # Panics
    /// If it does not exit within 60 s.
    pub fn stop(&mut self) {
        self.end(Signal::SIGINT);
    }

    /// Kills the server and every process of it at once (SIGKILL), as a crash or
    /// a pulled cable would take the database away. Does nothing if it is not running.
    pub fn kill(&mut self) {
        self.end(Signal::SIGKILL);
    }

    /// Starts the server again on the same data directory and port, after [`Postgres::stop`]
    /// or [`Postgres::kill`] (PostgreSQL then runs its crash recovery).
    ///
    /// # Panics
    /// If it is already running, or does not accept connections within 60 s.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "PostgreSQL is already running");
        if let Err(log) = self.spawn_and_wait() {
            panic!("PostgreSQL did not start again:\n{log}");
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// A command that runs `bin` from the PostgreSQL binaries as the server's user, in the
    /// temporary directory (PostgreSQL's user cannot read the test's working directory).
    fn command(&self, bin: &str) -> Command {
        let mut c = Command::new(self.bindir.join(bin));
        c.current_dir(self.dir.path()).stdin(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            // std clears the supplementary groups when a root process changes its uid.
            c.uid(uid).gid(gid);
        }
        c
    }

    fn initdb(&self) {
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", SUPERUSER, "--auth=trust", "--no-sync", "-E", "UTF8"])
            .args(["--locale=C", "--no-instructions"])
            .output()
            .expect("running initdb");
        assert!(
            out.status.success(),
            "initdb failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Spawns `postgres` and waits until it accepts connections; on failure, the log.
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("opening the PostgreSQL log");
        if let Some((uid, gid)) = self.run_as {
            let _ = std::os::unix::fs::chown(self.log_path(), Some(uid), Some(gid));
        }
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(self.dir.path())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .process_group(0);
        for (k, v) in &self.settings {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        let child = cmd.spawn().expect("spawning postgres");
        self.child = Some(child);
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "postgres exited ({status}):\n{}",
                    self.log_since(log_start)
                ));
            }
            if self.is_ready() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "postgres accepted no connection within {DEADLINE:?}:\n{}",
                    self.log_since(log_start)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the server accepts connections (`pg_isready`).
    fn is_ready(&self) -> bool {
        Command::new(self.bindir.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", SUPERUSER, "-d", "postgres", "-t", "2"])
            .stdin(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn log_since(&self, offset: u64) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.log_path()) {
            let _ = std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(offset));
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Ends the server with `sig` (for SIGKILL, to its child processes too) and reaps it.
    fn end(&mut self, sig: Signal) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        // Listed before the server dies: orphans go to another parent.
        let children = if sig == Signal::SIGKILL {
            children_of(pid)
        } else {
            Vec::new()
        };
        let kill_all = |sig| {
            let _ = kill(pid_of(pid), sig);
            for &c in &children {
                let _ = kill(pid_of(c), sig);
            }
        };
        kill_all(sig);
        let deadline = Instant::now() + DEADLINE;
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    kill_all(Signal::SIGKILL);
                    let _ = child.wait();
                    panic!("PostgreSQL did not stop within {DEADLINE:?} after {sig}");
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        while children.iter().any(|&c| running(c)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn pid_of(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).expect("a process id fits an i32"))
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.end(Signal::SIGKILL);
    }
}

/// The directory holding `initdb`, `postgres`, `pg_isready` and `psql` of PostgreSQL 15.
fn find_bindir() -> Result<PathBuf, String> {
    let has_all = |d: &Path| {
        ["initdb", "postgres", "pg_isready", "psql"]
            .iter()
            .all(|b| d.join(b).is_file())
    };
    let mut tried = vec![PathBuf::from(DEBIAN_BINDIR)];
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            tried.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
    }
    if let Some(d) = std::env::var_os("PG_BINDIR") {
        tried.push(PathBuf::from(d));
    }
    tried.iter().find(|d| has_all(d)).cloned().ok_or_else(|| {
        format!(
            "PostgreSQL 15 server binaries (initdb, postgres, pg_isready, psql) not found in {}: \
             install Debian's postgresql-15 (`apt-get install postgresql-15`; scripts/test.sh \
             does it) or set PG_BINDIR",
            tried
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// When this process runs as root: the uid and gid of the `postgres` system user, else of
/// `nobody` (initdb and postgres refuse to run as root). `None` otherwise.
fn unprivileged_user() -> Result<Option<(u32, u32)>, String> {
    // The owner of /proc/self is this process's effective uid (std has no geteuid, and nix's
    // needs its "user" feature, which would rebuild every crate depending on nix).
    let euid = std::fs::metadata("/proc/self")
        .map_err(|e| format!("reading /proc/self: {e}"))?
        .uid();
    if euid != 0 {
        return Ok(None);
    }
    let passwd =
        std::fs::read_to_string("/etc/passwd").map_err(|e| format!("reading /etc/passwd: {e}"))?;
    ["postgres", "nobody"]
        .iter()
        .find_map(|name| passwd_entry(&passwd, name))
        .map(Some)
        .ok_or_else(|| {
            "running as root, and neither a `postgres` nor a `nobody` user exists to run \
             PostgreSQL as (initdb refuses root)"
                .to_owned()
        })
}

/// The uid and gid of `name` in the text of `/etc/passwd` (`name:x:uid:gid:…`).
fn passwd_entry(passwd: &str, name: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        if f.next()? != name {
            return None;
        }
        let _password = f.next()?;
        Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
    })
}

/// `/proc/PID/stat` as (state, parent pid), for a process that exists.
fn stat_of(pid: &str) -> Option<(String, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (COMM) STATE PPID ...": COMM may hold spaces, so split at the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut f = rest.split_whitespace();
    let state = f.next()?.to_owned();
    Some((state, f.next()?.parse().ok()?))
}

/// Whether process `pid` runs (exists and is not a zombie: zombies are left to whoever reaps
/// orphans, and hold nothing of the cluster).
fn running(pid: u32) -> bool {
    stat_of(&pid.to_string()).is_some_and(|(state, _)| state != "Z")
}

/// The running child processes of `ppid`, from `/proc/*/stat`.
fn children_of(ppid: u32) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|p| {
            let name = p.file_name().into_string().ok()?;
            let pid: u32 = name.parse().ok()?;
            let (state, parent) = stat_of(&name)?;
            (parent == ppid && state != "Z").then_some(pid)
        })
        .collect()
}

/// A port on 127.0.0.1 that nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("binding a probe socket on 127.0.0.1")
        .port()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_entries_are_parsed() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      postgres:x:101:104:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
                      broken:x:abc:1::/:/bin/sh\n";
        assert_eq!(passwd_entry(passwd, "postgres"), Some((101, 104)));
        assert_eq!(passwd_entry(passwd, "nobody"), Some((65534, 65534)));
        assert_eq!(passwd_entry(passwd, "post"), None);
        assert_eq!(passwd_entry(passwd, "broken"), None);
    }

    /// A real server: a fresh database per call, data that survives a stop and a kill -9 of
    /// the whole server, and a server that is gone while it is down.
    #[test]
    fn a_real_server_stops_is_killed_and_comes_back() {
        let mut pg = Postgres::start();
        let a = pg.create_database();
        let b = pg.create_database();
        assert_ne!(a, b);
        let db = a.rsplit('/').next().unwrap();
        pg.psql(db, "CREATE TABLE t (v INT); INSERT INTO t VALUES (42)");
        assert_eq!(pg.psql(db, "SELECT v FROM t").trim(), "42");
        // The other database does not have the table.
        let other = b.rsplit('/').next().unwrap();
        assert_eq!(
            pg.psql(
                other,
                "SELECT count(*) FROM pg_tables WHERE tablename = 't'"
            )
            .trim(),
            "0"
        );

        pg.stop();
        assert!(!pg.is_running());
        assert!(!pg.is_ready(), "a stopped server still accepts connections");
        pg.start_again();
        assert_eq!(pg.psql(db, "SELECT v FROM t").trim(), "42");

        let pid = pg.pid().unwrap();
        let children = children_of(pid);
        assert!(!children.is_empty(), "a running server has child processes");
        pg.kill();
        assert!(
            kill(Pid::from_raw(pid as i32), None).is_err(),
            "the killed server is still there"
        );
        for c in children {
            assert!(!running(c), "process {c} of the killed server still runs");
        }
        assert!(!pg.is_ready());
        pg.start_again();
        assert_eq!(pg.psql(db, "SELECT v FROM t").trim(), "42");
        let port = pg.port();
        let dir = pg.dir.path().to_owned();
        drop(pg);
        assert!(!dir.exists(), "the temporary directory is removed");
        assert!(
            std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(),
            "a dropped server still listens"
        );
    }

    /// The server runs as an unprivileged user when the test runs as root.
    #[test]
    fn the_server_never_runs_as_root() {
        let pg = Postgres::start();
        let uid = std::fs::metadata(format!("/proc/{}", pg.pid().unwrap()))
            .unwrap()
            .uid();
        assert_ne!(uid, 0);
        assert_eq!(pg.psql("postgres", "SELECT 1").trim(), "1");
    }
}
