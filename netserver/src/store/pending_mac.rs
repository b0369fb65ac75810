//! Network-initiated MAC commands waiting for their device's next uplink: ForceRejoinReq and
//! RejoinParamSetupReq (LoRaWAN 1.1 §5.13, §5.14), put here by the operator's force-rejoin
//! request ([`crate::integration::rejoin`]), each with the time before which it must not be
//! sent, so that a fleet's rejoins spread over a window. One command per device (a new request
//! replaces the waiting one). A ForceRejoinReq stays until the device's rejoin is accepted
//! ([`PendingMacs::done`]): a downlink can miss its window, so it is sent again at an uplink
//! [`RESEND_AFTER_MS`] or more later. Held in memory only: a restart forgets what was not sent
//! yet (the operator's request can be repeated, and a device rejoined once already is not harmed
//! by another).

use dashmap::DashMap;
use protocol::ids::DevEui;
use protocol::mac::MacCommand;

use crate::core::KeyedHasher;

/// A ForceRejoinReq not yet followed by a rejoin is sent again at the first uplink this long
/// after (a Rejoin-request goes out in place of the device's next data frame, so an uplink this
/// much later means the command did not arrive, or the rejoin failed).
pub const RESEND_AFTER_MS: u64 = 20_000;

/// A command and the time (Unix ms) before which it is not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingMac {
    /// Not before this time, ms since the Unix epoch.
    pub not_before_ms: u64,
    /// The command.
    pub command: MacCommand,
}

/// Per device, the network-initiated command waiting for its next uplink.
#[derive(Debug, Default)]
pub struct PendingMacs {
    map: DashMap<DevEui, PendingMac, KeyedHasher>,
}

impl PendingMacs {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `p` for `dev_eui`, replacing what was waiting.
    pub fn put(&self, dev_eui: DevEui, p: PendingMac) {
        self.map.insert(dev_eui, p);
    }

    /// Takes the device's command if it is due at `now_ms`: a ForceRejoinReq stays, due again
    /// [`RESEND_AFTER_MS`] later, until [`Self::done`]; anything else is removed.
    pub fn take_due(&self, dev_eui: DevEui, now_ms: u64) -> Option<MacCommand> {
        let mut e = self.map.get_mut(&dev_eui)?;
        if e.not_before_ms > now_ms {
            return None;
        }
        let command = e.command;
        if matches!(command, MacCommand::ForceRejoinReq { .. }) {
            e.not_before_ms = now_ms + RESEND_AFTER_MS;
        } else {
            drop(e);
            self.map.remove(&dev_eui);
        }
        Some(command)
    }

    /// The device rejoined: its ForceRejoinReq is done.
    pub fn done(&self, dev_eui: DevEui) {
        self.map.remove_if(&dev_eui, |_, p| {
            matches!(p.command, MacCommand::ForceRejoinReq { .. })
        });
    }

    /// Puts back a command taken for a downlink that could not go (at once due again), unless
    /// a newer one is waiting.
    pub fn put_back(&self, dev_eui: DevEui, command: MacCommand) {
        self.map.entry(dev_eui).or_insert(PendingMac {
            not_before_ms: 0,
            command,
        });
    }

    /// Commands waiting.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether none is waiting.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_commands_are_taken_once_and_put_back_unless_replaced() {
        let t = PendingMacs::new();
        let d = DevEui::new(1);
        let force = MacCommand::ForceRejoinReq {
            period: 0,
            max_retries: 1,
            rejoin_type: 2,
            data_rate: 5,
        };
        t.put(
            d,
            PendingMac {
                not_before_ms: 1_000,
                command: force,
            },
        );
        assert_eq!(t.take_due(d, 999), None, "not yet");
        assert_eq!(t.take_due(d, 1_000), Some(force));
        assert_eq!(t.take_due(d, 2_000), None, "not again at once");
        assert_eq!(
            t.take_due(d, 1_000 + RESEND_AFTER_MS),
            Some(force),
            "until done"
        );
        t.done(d);
        assert_eq!(t.take_due(d, 1_000_000), None, "done");
        t.put_back(d, force);
        let setup = MacCommand::RejoinParamSetupReq {
            max_time_n: 1,
            max_count_n: 2,
        };
        t.put(
            d,
            PendingMac {
                not_before_ms: 5,
                command: setup,
            },
        );
        t.put_back(d, force);
        assert_eq!(t.take_due(d, 5), Some(setup), "a newer command is kept");
        assert!(t.is_empty());
    }
}
