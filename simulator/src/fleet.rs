//! The fleet: every device's state machine plus its radio link, in two flat vectors indexed by
//! device number. A device costs a few hundred bytes (its keys and counters are stored raw; the
//! session and any frame in flight are boxed only while they exist), so a million devices fit well
//! inside 1 GiB.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::device::Device;
use crate::frames::Identity;
use crate::manifest::{Entry, NonceState};

/// Where a device sits relative to the gateways.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    /// The nearest gateway. A transmission heard by n gateways is heard by `base`, `base+1`, …
    /// `base+n-1` (mod G), each further one a little weaker.
    pub base: u16,
    /// RSSI at the nearest gateway, dBm.
    pub rssi: i8,
    /// How many gateways heard the device's last transmission.
    pub last_heard: u8,
    /// Whether any gateway heard any transmission of the current frame.
    pub frame_heard: bool,
}

/// All devices of a run.
#[derive(Debug)]
pub struct Fleet {
    /// Device state machines.
    pub devices: Vec<Device>,
    /// Their links.
    pub links: Vec<Link>,
}

impl Fleet {
    /// Builds the fleet from a manifest and its nonce state. Link placement is drawn from `seed`.
    pub fn new(entries: Vec<Entry>, states: &[NonceState], seed: u64, gateways: u16) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x11A4_F1EE_7000_0001);
        let mut devices = Vec::with_capacity(entries.len());
        let mut links = Vec::with_capacity(entries.len());
        for (e, st) in entries.into_iter().zip(states.iter().copied()) {
            devices.push(Device::new(
                Identity {
                    dev_eui: e.dev_eui,
                    join_eui: e.join_eui,
                    version: e.mac_version,
                    app_key: e.app_key,
                    nwk_key: e.nwk_key,
                },
                st,
            ));
            links.push(Link {
                base: rng.gen_range(0..gateways.max(1)),
                rssi: rng.gen_range(-118..-60),
                last_heard: 0,
                frame_heard: false,
            });
        }
        Self { devices, links }
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether the fleet is empty.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The nonce state of every device, in manifest order.
    pub fn nonce_states(&self) -> Vec<NonceState> {
        self.devices.iter().map(|d| d.nonces).collect()
    }
}
