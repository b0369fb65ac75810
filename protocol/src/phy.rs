//! The MAC header (MHDR) common to every PHYPayload (protocol-notes A.1).

/// The message type: bits 7..5 of the MHDR.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum MType {
    /// Join-request (0b000).
    JoinRequest,
    /// Join-accept (0b001).
    JoinAccept,
    /// Unconfirmed data up (0b010).
    UnconfirmedDataUp,
    /// Unconfirmed data down (0b011).
    UnconfirmedDataDown,
    /// Confirmed data up (0b100).
    ConfirmedDataUp,
    /// Confirmed data down (0b101).
    ConfirmedDataDown,
    /// Rejoin-request (0b110; RFU in 1.0.x).
    RejoinRequest,
    /// Proprietary (0b111): carries no MIC.
    Proprietary,
}

/// The MAC header byte: `MType(7..5) | RFU(4..2) | Major(1..0)`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct Mhdr(pub u8);

/// The MHDR's Major field is not LoRaWAN R1 (0b00): the frame must be dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unsupported LoRaWAN major version {0} in MHDR")]
pub struct UnsupportedMajor(pub u8);

impl Mhdr {
    /// The MHDR of a frame of type `mtype`, Major = LoRaWAN R1.
    pub const fn new(mtype: MType) -> Self {
        let bits = match mtype {
            MType::JoinRequest => 0,
            MType::JoinAccept => 1,
            MType::UnconfirmedDataUp => 2,
            MType::UnconfirmedDataDown => 3,
            MType::ConfirmedDataUp => 4,
            MType::ConfirmedDataDown => 5,
            MType::RejoinRequest => 6,
            MType::Proprietary => 7,
        };
        Self(bits << 5)
    }
    /// The message type.
    pub const fn mtype(self) -> MType {
        match self.0 >> 5 {
            0 => MType::JoinRequest,
            1 => MType::JoinAccept,
            2 => MType::UnconfirmedDataUp,
            3 => MType::UnconfirmedDataDown,
            4 => MType::ConfirmedDataUp,
            5 => MType::ConfirmedDataDown,
            6 => MType::RejoinRequest,
            _ => MType::Proprietary,
        }
    }
    /// The Major field (bits 1..0).
    pub const fn major(self) -> u8 {
        self.0 & 0b11
    }
    /// Checks that the frame is LoRaWAN R1 (Major = 0).
    pub const fn check_major(self) -> Result<Self, UnsupportedMajor> {
        if self.major() == 0 {
            Ok(self)
        } else {
            Err(UnsupportedMajor(self.major()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mhdr_bytes_match_the_table() {
        let table = [
            (MType::JoinRequest, 0x00),
            (MType::JoinAccept, 0x20),
            (MType::UnconfirmedDataUp, 0x40),
            (MType::UnconfirmedDataDown, 0x60),
            (MType::ConfirmedDataUp, 0x80),
            (MType::ConfirmedDataDown, 0xA0),
            (MType::RejoinRequest, 0xC0),
            (MType::Proprietary, 0xE0),
        ];
        for (m, b) in table {
            assert_eq!(Mhdr::new(m).0, b);
            assert_eq!(Mhdr(b).mtype(), m);
        }
        assert_eq!(Mhdr(0x41).check_major(), Err(UnsupportedMajor(1)));
        assert!(Mhdr(0x40).check_major().is_ok());
    }
}
