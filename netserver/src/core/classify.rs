//! Uplink classification: the first step of every `rxpk`, deciding which pipeline a PHYPayload
//! goes to (the join path, which also takes Rejoin-requests, or the data path) or why it is
//! dropped.

use protocol::join::{REJOIN_REQUEST_02_LEN, REJOIN_REQUEST_1_LEN};
use protocol::phy::{MType, Mhdr};

/// Length of a Join-request PHYPayload: MHDR | JoinEUI | DevEUI | DevNonce | MIC.
pub const JOIN_REQUEST_LEN: usize = 23;
/// Shortest data uplink: MHDR | DevAddr | FCtrl | FCnt | MIC.
pub const MIN_DATA_LEN: usize = 12;

/// Where an uplink goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UplinkKind {
    /// A Join-request: to the join path.
    JoinRequest,
    /// A LoRaWAN 1.1 Rejoin-request (19 or 24 bytes): to the join path.
    RejoinRequest,
    /// A data uplink (confirmed or not): to the data path.
    Data {
        /// Confirmed data up.
        confirmed: bool,
    },
}

/// Why an uplink is dropped at classification. Each has a stable metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    /// Empty PHYPayload.
    #[error("empty payload")]
    Empty,
    /// MHDR Major is not LoRaWAN R1.
    #[error("unsupported major version")]
    Major,
    /// A downlink message type received as an uplink.
    #[error("downlink message type on the uplink")]
    NotUplink,
    /// Proprietary frames are not handled.
    #[error("proprietary frame")]
    Proprietary,
    /// The length does not fit the message type.
    #[error("wrong length for the message type")]
    Length,
}

impl ClassifyError {
    /// Stable metric label.
    pub const fn kind(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Major => "major",
            Self::NotUplink => "not_uplink",
            Self::Proprietary => "proprietary",
            Self::Length => "length",
        }
    }
}

/// Classifies a PHYPayload by its MHDR and length.
pub fn classify(phy: &[u8]) -> Result<UplinkKind, ClassifyError> {
    let &first = phy.first().ok_or(ClassifyError::Empty)?;
    let mhdr = Mhdr(first)
        .check_major()
        .map_err(|_| ClassifyError::Major)?;
    match mhdr.mtype() {
        MType::JoinRequest if phy.len() == JOIN_REQUEST_LEN => Ok(UplinkKind::JoinRequest),
        MType::UnconfirmedDataUp | MType::ConfirmedDataUp if phy.len() >= MIN_DATA_LEN => {
            Ok(UplinkKind::Data {
                confirmed: mhdr.mtype() == MType::ConfirmedDataUp,
            })
        }
        MType::JoinRequest | MType::UnconfirmedDataUp | MType::ConfirmedDataUp => {
            Err(ClassifyError::Length)
        }
        MType::JoinAccept | MType::UnconfirmedDataDown | MType::ConfirmedDataDown => {
            Err(ClassifyError::NotUplink)
        }
        MType::RejoinRequest
            if phy.len() == REJOIN_REQUEST_02_LEN || phy.len() == REJOIN_REQUEST_1_LEN =>
        {
            Ok(UplinkKind::RejoinRequest)
        }
        MType::RejoinRequest => Err(ClassifyError::Length),
        MType::Proprietary => Err(ClassifyError::Proprietary),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let join = [0u8; 23];
        let mut data = [0x40u8; 12];
        assert_eq!(classify(&join), Ok(UplinkKind::JoinRequest));
        assert_eq!(classify(&join[..22]), Err(ClassifyError::Length));
        assert_eq!(classify(&data), Ok(UplinkKind::Data { confirmed: false }));
        data[0] = 0x80;
        assert_eq!(classify(&data), Ok(UplinkKind::Data { confirmed: true }));
        assert_eq!(classify(&data[..11]), Err(ClassifyError::Length));
        assert_eq!(classify(&[]), Err(ClassifyError::Empty));
        assert_eq!(classify(&[0x01; 23]), Err(ClassifyError::Major));
        assert_eq!(classify(&[0x20; 17]), Err(ClassifyError::NotUplink));
        assert_eq!(classify(&[0x60; 12]), Err(ClassifyError::NotUplink));
        assert_eq!(classify(&[0xC0; 19]), Ok(UplinkKind::RejoinRequest));
        assert_eq!(classify(&[0xC0; 24]), Ok(UplinkKind::RejoinRequest));
        assert_eq!(classify(&[0xC0; 20]), Err(ClassifyError::Length));
        assert_eq!(classify(&[0xE0; 5]), Err(ClassifyError::Proprietary));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = classify(&bytes);
        }
    }
}
