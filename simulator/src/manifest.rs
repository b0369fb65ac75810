//! Device manifests (the CSV `joinserver devices import` reads) and the fleet state file beside them.
//!
//! A manifest is generated from a seed: the same `--devices`, `--seed`, `--mac-version`,
//! `--join-eui` and `--home-net-id` always give the same file. The fleet state file
//! (`<manifest>.state`) holds what a real device keeps in non-volatile memory across power cycles:
//! its DevNonce counter and the last JoinNonce it accepted. `simulator run` reads it before the run
//! and writes it back (atomically) while and after it runs, so a later run never replays a DevNonce.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use protocol::ids::{DevEui, JoinEui, NetId};
use protocol::keys::{AppKey, NwkKey};
use protocol::version::MacVersion;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// The CSV header, in the order the join server's importer documents.
pub const HEADER: &str = "dev_eui,join_eui,mac_version,app_key,nwk_key,home_net_id,owner_token";

/// The JoinEUI written when `--join-eui` is not given.
pub const DEFAULT_JOIN_EUI: JoinEui = JoinEui::new(0x70B3_D5FF_FE00_0001);

/// One device of a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The device's EUI.
    pub dev_eui: DevEui,
    /// The JoinEUI it sends in its Join-requests.
    pub join_eui: JoinEui,
    /// Its LoRaWAN MAC version.
    pub mac_version: MacVersion,
    /// Root key (1.0.x) or application root key (1.1).
    pub app_key: AppKey,
    /// Network root key: 1.1 only.
    pub nwk_key: Option<NwkKey>,
    /// The NetID of the device's home network server.
    pub home_net_id: NetId,
    /// The TR005 OwnerToken the owner proves ownership with (hex).
    pub owner_token: String,
}

/// Which MAC versions a generated fleet has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionMix {
    /// Every device has this version.
    One(MacVersion),
    /// Each device draws 1.0.3, 1.0.4 or 1.1 with equal probability.
    Mix,
}

impl std::str::FromStr for VersionMix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "mix" {
            return Ok(Self::Mix);
        }
        match s.parse::<MacVersion>() {
            Ok(
                v @ (MacVersion::V1_0_2
                | MacVersion::V1_0_3
                | MacVersion::V1_0_4
                | MacVersion::V1_1),
            ) => Ok(Self::One(v)),
            Ok(v) => Err(format!(
                "MAC version {v} is not simulated (use 1.0.2, 1.0.3, 1.0.4, 1.1 or mix)"
            )),
            Err(e) => Err(format!("{e}, or mix")),
        }
    }
}

/// What a manifest is generated from.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// Number of devices.
    pub devices: u32,
    /// The seed every key and EUI is drawn from.
    pub seed: u64,
    /// Versions.
    pub versions: VersionMix,
    /// The JoinEUI of every device.
    pub join_eui: JoinEui,
    /// The home NetID written for every device.
    pub home_net_id: NetId,
}

/// Generates a fleet: random DevEUIs (distinct), root keys and owner tokens from a ChaCha20 stream
/// seeded with `seed`.
pub fn generate(p: &Params) -> Vec<Entry> {
    let mut rng = ChaCha20Rng::seed_from_u64(p.seed);
    let mut seen = HashSet::with_capacity(p.devices as usize);
    let mut out = Vec::with_capacity(p.devices as usize);
    while out.len() < p.devices as usize {
        let dev_eui = DevEui::new(rng.gen());
        let mac_version = match p.versions {
            VersionMix::One(v) => v,
            VersionMix::Mix => {
                [MacVersion::V1_0_3, MacVersion::V1_0_4, MacVersion::V1_1][rng.gen_range(0..3)]
            }
        };
        let app_key = AppKey::new(rng.gen());
        let nwk_key = rng.gen::<[u8; 16]>();
        let owner: [u8; 6] = rng.gen();
        if !seen.insert(dev_eui) {
            continue;
        }
        out.push(Entry {
            dev_eui,
            join_eui: p.join_eui,
            mac_version,
            app_key,
            nwk_key: mac_version.is_1_1().then(|| NwkKey::new(nwk_key)),
            home_net_id: p.home_net_id,
            owner_token: hex::encode_upper(owner),
        });
    }
    out
}

/// Writes the manifest CSV (atomically: a temporary file renamed into place).
pub fn write(path: &Path, entries: &[Entry]) -> anyhow::Result<()> {
    write_atomic(path, |w| {
        writeln!(w, "{HEADER}")?;
        let mut line = String::with_capacity(160);
        for e in entries {
            line.clear();
            let _ = write!(
                line,
                "{},{},{},{},{},{},{}",
                e.dev_eui,
                e.join_eui,
                e.mac_version,
                hex::encode_upper(e.app_key.expose()),
                e.nwk_key
                    .as_ref()
                    .map(|k| hex::encode_upper(k.expose()))
                    .unwrap_or_default(),
                e.home_net_id,
                e.owner_token
            );
            writeln!(w, "{line}")?;
        }
        Ok(())
    })
}

/// Reads a manifest CSV. Columns are found by their header names, so their order may differ.
pub fn read(path: &Path) -> anyhow::Result<Vec<Entry>> {
    let f = fs::File::open(path).with_context(|| format!("opening manifest {}", path.display()))?;
    let mut lines = BufReader::new(f).lines();
    let header = lines.next().context("manifest is empty")??;
    let cols: Vec<&str> = header.trim().split(',').collect();
    let col = |name: &str| -> anyhow::Result<usize> {
        cols.iter()
            .position(|c| c.trim() == name)
            .with_context(|| format!("manifest header has no {name} column"))
    };
    let (i_dev, i_join, i_ver, i_app, i_nwk) = (
        col("dev_eui")?,
        col("join_eui")?,
        col("mac_version")?,
        col("app_key")?,
        col("nwk_key")?,
    );
    let i_net = col("home_net_id").ok();
    let i_owner = col("owner_token").ok();
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (n, line) in lines.enumerate() {
        let line = line?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let lineno = n + 2;
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() != cols.len() {
            bail!(
                "manifest line {lineno}: {} fields, header has {}",
                f.len(),
                cols.len()
            );
        }
        let ctx = || format!("manifest line {lineno}");
        let mac_version: MacVersion = f[i_ver].parse().with_context(ctx)?;
        let nwk_key = if f[i_nwk].is_empty() {
            None
        } else {
            Some(f[i_nwk].parse::<NwkKey>().with_context(ctx)?)
        };
        if mac_version.is_1_1() && nwk_key.is_none() {
            bail!("manifest line {lineno}: a LoRaWAN 1.1 device needs a nwk_key");
        }
        let e = Entry {
            dev_eui: f[i_dev].parse().with_context(ctx)?,
            join_eui: f[i_join].parse().with_context(ctx)?,
            mac_version,
            app_key: f[i_app].parse().with_context(ctx)?,
            nwk_key,
            home_net_id: match i_net.map(|i| f[i]) {
                Some(s) if !s.is_empty() => s.parse().with_context(ctx)?,
                _ => NetId::new(0).expect("0 is a NetID"),
            },
            owner_token: i_owner.map(|i| f[i].to_owned()).unwrap_or_default(),
        };
        if !seen.insert(e.dev_eui) {
            bail!("manifest line {lineno}: DevEUI {} appears twice", e.dev_eui);
        }
        out.push(e);
    }
    Ok(out)
}

/// What a device keeps across power cycles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NonceState {
    /// For 1.0.4/1.1: the next DevNonce to send. For 1.0.0–1.0.3: how many random DevNonces the
    /// device has drawn so far (the index into its DevNonce permutation, see
    /// [`crate::device::random_dev_nonce`]).
    pub dev_nonce: u32,
    /// The last JoinNonce the device accepted, if any.
    pub join_nonce: Option<u32>,
}

/// The fleet state file that goes with a manifest: `<manifest>.state`.
pub fn state_path(manifest: &Path) -> PathBuf {
    let mut s = manifest.as_os_str().to_owned();
    s.push(".state");
    PathBuf::from(s)
}

const STATE_HEADER: &str = "dev_eui,dev_nonce,last_join_nonce";

/// Reads the fleet state for `entries` (in manifest order). Devices missing from the file start
/// fresh; a missing file means a fresh fleet.
pub fn read_state(path: &Path, entries: &[Entry]) -> anyhow::Result<Vec<NonceState>> {
    let mut out = vec![NonceState::default(); entries.len()];
    let f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("opening fleet state {}", path.display())),
    };
    let index: std::collections::HashMap<DevEui, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.dev_eui, i))
        .collect();
    let mut lines = BufReader::new(f).lines();
    let header = lines.next().transpose()?.unwrap_or_default();
    if header.trim() != STATE_HEADER {
        bail!(
            "{}: not a fleet state file (header {header:?})",
            path.display()
        );
    }
    for (n, line) in lines.enumerate() {
        let line = line?;
        let f: Vec<&str> = line.trim().split(',').collect();
        if f.len() != 3 {
            bail!("{} line {}: expected 3 fields", path.display(), n + 2);
        }
        let ctx = || format!("{} line {}", path.display(), n + 2);
        let dev: DevEui = f[0].parse().with_context(ctx)?;
        let Some(&i) = index.get(&dev) else { continue };
        out[i] = NonceState {
            dev_nonce: f[1].parse().with_context(ctx)?,
            join_nonce: if f[2].is_empty() {
                None
            } else {
                Some(f[2].parse().with_context(ctx)?)
            },
        };
    }
    Ok(out)
}

/// Writes the fleet state atomically (temporary file, fsync, rename, fsync of the directory).
pub fn write_state(path: &Path, entries: &[Entry], state: &[NonceState]) -> anyhow::Result<()> {
    write_atomic(path, |w| {
        writeln!(w, "{STATE_HEADER}")?;
        for (e, s) in entries.iter().zip(state) {
            match s.join_nonce {
                Some(j) => writeln!(w, "{},{},{}", e.dev_eui, s.dev_nonce, j)?,
                None => writeln!(w, "{},{},", e.dev_eui, s.dev_nonce)?,
            }
        }
        Ok(())
    })
}

fn write_atomic(
    path: &Path,
    body: impl FnOnce(&mut BufWriter<fs::File>) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, tmp.reopen()?);
    body(&mut w).with_context(|| format!("writing {}", path.display()))?;
    w.flush()?;
    w.get_ref().sync_all()?;
    drop(w);
    tmp.persist(path)
        .with_context(|| format!("renaming into {}", path.display()))?;
    // The rename itself is durable only once the directory is.
    sync_dir(path).with_context(|| format!("syncing the directory of {}", path.display()))?;
    Ok(())
}

/// fsync of the directory holding `path`, so that a file created or renamed there survives a
/// power loss.
pub fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(devices: u32, seed: u64, versions: VersionMix) -> Params {
        Params {
            devices,
            seed,
            versions,
            join_eui: DEFAULT_JOIN_EUI,
            home_net_id: NetId::new(0x000013).unwrap(),
        }
    }

    #[test]
    fn generation_is_reproducible_and_seed_dependent() {
        let a = generate(&params(50, 7, VersionMix::Mix));
        let b = generate(&params(50, 7, VersionMix::Mix));
        let c = generate(&params(50, 8, VersionMix::Mix));
        assert_eq!(a, b);
        assert_ne!(a[0].dev_eui, c[0].dev_eui);
        for v in [MacVersion::V1_0_3, MacVersion::V1_0_4, MacVersion::V1_1] {
            assert!(a.iter().any(|e| e.mac_version == v), "mix lacks {v}");
        }
        for e in &a {
            assert_eq!(e.nwk_key.is_some(), e.mac_version.is_1_1());
            assert_eq!(e.owner_token.len(), 12);
        }
    }

    #[test]
    fn csv_round_trip_and_exact_format() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.csv");
        let a = generate(&params(20, 1, VersionMix::Mix));
        write(&p, &a).unwrap();
        let text = fs::read_to_string(&p).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(HEADER));
        for (line, e) in lines.zip(&a) {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f.len(), 7);
            assert_eq!(f[0].len(), 16);
            assert_eq!(f[1], "70B3D5FFFE000001");
            assert_eq!(f[3].len(), 32);
            assert_eq!(f[4].len(), if e.mac_version.is_1_1() { 32 } else { 0 });
            assert_eq!(f[5], "000013");
        }
        assert_eq!(read(&p).unwrap(), a);
    }

    #[test]
    fn read_rejects_bad_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.csv");
        let key = "000102030405060708090A0B0C0D0E0F";
        fs::write(
            &p,
            format!("{HEADER}\n0000000000000001,0000000000000002,1.1,{key},,000000,\n"),
        )
        .unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("nwk_key"));
        fs::write(
            &p,
            format!("{HEADER}\n0000000000000001,0000000000000002,1.0.3,{key},,000000,\n0000000000000001,0000000000000002,1.0.3,{key},,000000,\n"),
        )
        .unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn state_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("fleet.csv");
        let sp = state_path(&m);
        assert_eq!(sp, dir.path().join("fleet.csv.state"));
        let a = generate(&params(5, 3, VersionMix::Mix));
        assert_eq!(read_state(&sp, &a).unwrap(), vec![NonceState::default(); 5]);
        let st: Vec<_> = (0..5)
            .map(|i| NonceState {
                dev_nonce: i * 3,
                join_nonce: (i % 2 == 0).then_some(i + 1),
            })
            .collect();
        write_state(&sp, &a, &st).unwrap();
        assert_eq!(read_state(&sp, &a).unwrap(), st);
    }

    #[test]
    fn version_mix_parsing() {
        assert_eq!("mix".parse::<VersionMix>().unwrap(), VersionMix::Mix);
        assert_eq!(
            "1.0.4".parse::<VersionMix>().unwrap(),
            VersionMix::One(MacVersion::V1_0_4)
        );
        assert!("1.0.1".parse::<VersionMix>().is_err());
        assert!("2".parse::<VersionMix>().is_err());
    }
}
