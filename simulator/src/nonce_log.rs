//! The fleet's DevNonce write-ahead log: what makes the fleet state crash-safe.
//!
//! The fleet state file (`<manifest>.state`) is written only at the start and the end of a run.
//! In between, every DevNonce a device is about to use is first appended to the log
//! `<manifest>.state.wal` and made durable (`fdatasync`) *before* the Join-request that carries it
//! leaves: the engine collects the records while it runs a batch of timers, and the socket loop
//! commits them (one `write` and one `fdatasync` per batch: a group commit) before it sends that
//! batch's datagrams. So whenever the process dies — SIGKILL included, and power loss too — every
//! DevNonce that went on air is in the state file or in the log, and the next run starts past it.
//!
//! At the start of a run, [`NonceLog::open`] merges the log into the state (per device, the
//! greater counter and the later JoinNonce), writes the state file atomically (temporary file,
//! fsync, rename, fsync of the directory) and only then empties the log. At the end,
//! [`compact`] does the same with the run's final counters.
//!
//! Record format, 20 bytes, little-endian: DevEUI (u64), `dev_nonce` (u32, the state's counter:
//! the next DevNonce to send, or for 1.0.2/1.0.3 the number of random ones drawn), last JoinNonce
//! (u32, `u32::MAX` for none), and a check word (u32, a hash of the first 16 bytes). A torn
//! record at the end (a write cut short by a crash, never acknowledged by `fdatasync`, so its
//! Join-request never left) fails its check and ends the replay.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};
use protocol::ids::DevEui;

use crate::manifest::{self, Entry, NonceState};

/// Bytes per record.
pub const RECORD_LEN: usize = 20;

/// The log that goes with a fleet state file: `<manifest>.state.wal`.
pub fn log_path(state: &Path) -> PathBuf {
    let mut s = state.as_os_str().to_owned();
    s.push(".wal");
    PathBuf::from(s)
}

fn check(b: &[u8]) -> u32 {
    // FNV-1a over the record's first 16 bytes: catches a torn or zero-filled tail.
    let mut h: u32 = 0x811C_9DC5;
    for &x in b {
        h = (h ^ u32::from(x)).wrapping_mul(0x0100_0193);
    }
    h
}

/// Encodes one record.
pub fn encode(dev_eui: DevEui, s: NonceState, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&dev_eui.as_u64().to_le_bytes());
    out.extend_from_slice(&s.dev_nonce.to_le_bytes());
    out.extend_from_slice(&s.join_nonce.unwrap_or(u32::MAX).to_le_bytes());
    let c = check(&out[start..]);
    out.extend_from_slice(&c.to_le_bytes());
}

/// Decodes the records of a log, up to the first torn or corrupt one.
pub fn decode(bytes: &[u8]) -> Vec<(DevEui, NonceState)> {
    let mut out = Vec::with_capacity(bytes.len() / RECORD_LEN);
    for r in bytes.chunks_exact(RECORD_LEN) {
        let word = |i: usize| u32::from_le_bytes(r[i..i + 4].try_into().expect("4 bytes"));
        if check(&r[..16]) != word(16) {
            break;
        }
        let dev = DevEui::new(u64::from_le_bytes(r[..8].try_into().expect("8 bytes")));
        let j = word(12);
        out.push((
            dev,
            NonceState {
                dev_nonce: word(8),
                join_nonce: (j != u32::MAX).then_some(j),
            },
        ));
    }
    out
}

/// Folds `rec` into `s`: the greater DevNonce counter, the greater JoinNonce (both only grow).
fn merge(s: &mut NonceState, rec: NonceState) {
    s.dev_nonce = s.dev_nonce.max(rec.dev_nonce);
    s.join_nonce = s.join_nonce.max(rec.join_nonce);
}

/// An open, empty log, ready for a run's records.
#[derive(Debug)]
pub struct NonceLog {
    /// Held with an exclusive `flock` for the run: two runs on one manifest would hand out the
    /// same DevNonces.
    file: Flock<File>,
    path: PathBuf,
    buf: Vec<u8>,
    commits: u64,
    records: u64,
}

impl NonceLog {
    /// Reads the fleet state of `entries` from `state_path`, replays the log left by an earlier
    /// run that did not finish, saves the merged state atomically, empties the log and returns
    /// the state with the log open for this run.
    pub fn open(state_path: &Path, entries: &[Entry]) -> anyhow::Result<(Vec<NonceState>, Self)> {
        let mut states = manifest::read_state(state_path, entries)?;
        let path = log_path(state_path);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .with_context(|| format!("opening the DevNonce log {}", path.display()))?;
        let mut file = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            anyhow::anyhow!(
                "{}: {e}: is another `simulator run` using this manifest?",
                path.display()
            )
        })?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .with_context(|| format!("reading {}", path.display()))?;
        let recs = decode(&bytes);
        if !recs.is_empty() {
            let index: std::collections::HashMap<DevEui, usize> = entries
                .iter()
                .enumerate()
                .map(|(i, e)| (e.dev_eui, i))
                .collect();
            for (dev, rec) in recs {
                if let Some(&i) = index.get(&dev) {
                    merge(&mut states[i], rec);
                }
            }
        }
        if !bytes.is_empty() {
            // The merged state is durable before the log that fed it goes.
            manifest::write_state(state_path, entries, &states)
                .with_context(|| format!("saving fleet state {}", state_path.display()))?;
            file.set_len(0)?;
        }
        file.sync_all()?;
        manifest::sync_dir(&path)?;
        Ok((
            states,
            Self {
                file,
                path,
                buf: Vec::with_capacity(64 * RECORD_LEN),
                commits: 0,
                records: 0,
            },
        ))
    }

    /// Appends records (not yet durable).
    pub fn append(&mut self, recs: impl IntoIterator<Item = (DevEui, NonceState)>) {
        for (d, s) in recs {
            encode(d, s, &mut self.buf);
            self.records += 1;
        }
    }

    /// Writes what was appended and, if `durable`, waits for it to reach the disk
    /// (`fdatasync`). Only then may the Join-requests these records announce be sent.
    pub fn commit(&mut self, durable: bool) -> anyhow::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(&self.buf)
            .with_context(|| format!("appending to {}", self.path.display()))?;
        self.buf.clear();
        if durable {
            self.file
                .sync_data()
                .with_context(|| format!("syncing {}", self.path.display()))?;
            self.commits += 1;
        }
        Ok(())
    }

    /// `fdatasync` calls so far.
    pub fn commits(&self) -> u64 {
        self.commits
    }

    /// Records appended so far.
    pub fn records(&self) -> u64 {
        self.records
    }
}

/// Saves the fleet's final state atomically, then empties the log (whose records the state now
/// covers). A crash in between leaves a log that the next [`NonceLog::open`] merges harmlessly.
pub fn compact(state_path: &Path, entries: &[Entry], states: &[NonceState]) -> anyhow::Result<()> {
    manifest::write_state(state_path, entries, states)
        .with_context(|| format!("saving fleet state {}", state_path.display()))?;
    let path = log_path(state_path);
    match OpenOptions::new().write(true).open(&path) {
        Ok(f) => {
            f.set_len(0)?;
            f.sync_all()?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Params, VersionMix};

    fn entries(n: u32) -> Vec<Entry> {
        manifest::generate(&Params {
            devices: n,
            seed: 3,
            versions: VersionMix::Mix,
            join_eui: manifest::DEFAULT_JOIN_EUI,
            home_net_id: protocol::ids::NetId::new(0).unwrap(),
        })
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_ends_the_replay() {
        let mut b = Vec::new();
        let a = NonceState {
            dev_nonce: 7,
            join_nonce: None,
        };
        let c = NonceState {
            dev_nonce: 65_536,
            join_nonce: Some(0xFF_FFFF),
        };
        encode(DevEui::new(1), a, &mut b);
        encode(DevEui::new(2), c, &mut b);
        assert_eq!(b.len(), 2 * RECORD_LEN);
        assert_eq!(decode(&b), vec![(DevEui::new(1), a), (DevEui::new(2), c)]);
        // A torn third record and a zero-filled one are ignored.
        let mut torn = b.clone();
        encode(DevEui::new(3), a, &mut torn);
        torn.truncate(2 * RECORD_LEN + 11);
        assert_eq!(decode(&torn).len(), 2);
        let mut zeros = b.clone();
        zeros.extend_from_slice(&[0; RECORD_LEN]);
        encode(DevEui::new(4), a, &mut zeros);
        assert_eq!(decode(&zeros).len(), 2, "nothing after a bad record counts");
    }

    #[test]
    fn open_replays_a_crashed_runs_log_and_empties_it() {
        let dir = tempfile::tempdir().unwrap();
        let e = entries(4);
        let sp = dir.path().join("f.csv.state");
        let saved: Vec<NonceState> = (0..4)
            .map(|i| NonceState {
                dev_nonce: 10 + i,
                join_nonce: Some(5),
            })
            .collect();
        manifest::write_state(&sp, &e, &saved).unwrap();
        // A run that was killed: it logged device 1 at 12 then 13 (joined, JoinNonce 9), device 2
        // at 11 (no progress over the state), and a device of another manifest.
        let (_, mut log) = NonceLog::open(&sp, &e).unwrap();
        let at = |n, j| NonceState {
            dev_nonce: n,
            join_nonce: j,
        };
        log.append([
            (e[1].dev_eui, at(12, Some(5))),
            (e[1].dev_eui, at(13, Some(9))),
            (e[2].dev_eui, at(11, Some(5))),
            (DevEui::new(0xDEAD), at(99, None)),
        ]);
        log.commit(true).unwrap();
        assert_eq!(log.commits(), 1);
        drop(log);
        assert_eq!(
            std::fs::metadata(log_path(&sp)).unwrap().len(),
            4 * RECORD_LEN as u64
        );

        let (st, log) = NonceLog::open(&sp, &e).unwrap();
        let busy = NonceLog::open(&sp, &e).unwrap_err().to_string();
        assert!(busy.contains("another `simulator run`"), "{busy}");
        drop(log);
        let want = vec![saved[0], at(13, Some(9)), at(12, Some(5)), saved[3]];
        assert_eq!(st, want);
        // The merge is in the state file now, and the log is empty.
        assert_eq!(manifest::read_state(&sp, &e).unwrap(), want);
        assert_eq!(std::fs::metadata(log_path(&sp)).unwrap().len(), 0);

        compact(&sp, &e, &saved).unwrap();
        assert_eq!(manifest::read_state(&sp, &e).unwrap(), saved);
    }
}
