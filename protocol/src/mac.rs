//! MAC commands (LoRaWAN 1.1 §5, TS001-1.0.4 §5): parse a byte sequence of commands sent in a
//! given direction, and serialize commands back.
//!
//! A command is `CID(1) | payload`, with a payload length fixed by the CID and the direction.
//! An unknown CID stops parsing: the lengths of whatever follows are unknown.
//!
//! Fields are named as in the specification; bit fields are decoded, RFU bits are ignored when
//! parsing and sent as 0. Frequencies are in Hz (on air: 24 bits, LE, in units of 100 Hz).
//! Serializing checks each field fits its bit width, so nothing is silently truncated.

use crate::data::Direction;

/// One MAC command. Variants ending in `Req`/`Ans`/`Ind`/`Conf` are named as in the spec; the
/// doc of each says who sends it.
#[allow(clippy::upper_case_acronyms)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MacCommand {
    /// 0x01, uplink (1.1): the device's LoRaWAN minor version (1 for 1.1).
    ResetInd {
        /// Dev LoRaWAN version, Minor (4 bits).
        dev_lorawan_minor: u8,
    },
    /// 0x01, downlink (1.1): the server's LoRaWAN minor version.
    ResetConf {
        /// Serv LoRaWAN version, Minor (4 bits).
        serv_lorawan_minor: u8,
    },
    /// 0x02, uplink: asks the network for link quality.
    LinkCheckReq,
    /// 0x02, downlink: link margin of the last LinkCheckReq and gateway count.
    LinkCheckAns {
        /// Demodulation margin in dB (0..=254; 255 reserved).
        margin: u8,
        /// Number of gateways that received the LinkCheckReq.
        gw_cnt: u8,
    },
    /// 0x03, downlink: data rate, TX power, channel mask and repetitions.
    LinkADRReq {
        /// DataRate (4 bits).
        data_rate: u8,
        /// TXPower (4 bits).
        tx_power: u8,
        /// ChMask (16 bits).
        ch_mask: u16,
        /// ChMaskCntl (3 bits).
        ch_mask_cntl: u8,
        /// NbTrans (4 bits).
        nb_trans: u8,
    },
    /// 0x03, uplink: answer to LinkADRReq.
    LinkADRAns {
        /// Power ACK.
        power_ack: bool,
        /// Data rate ACK.
        data_rate_ack: bool,
        /// Channel mask ACK.
        channel_mask_ack: bool,
    },
    /// 0x04, downlink: maximum aggregated duty cycle, 1/2^MaxDCycle.
    DutyCycleReq {
        /// MaxDCycle (4 bits).
        max_duty_cycle: u8,
    },
    /// 0x04, uplink: answer to DutyCycleReq.
    DutyCycleAns,
    /// 0x05, downlink: RX1 data-rate offset, RX2 data rate and frequency.
    RXParamSetupReq {
        /// RX1DROffset (3 bits).
        rx1_dr_offset: u8,
        /// RX2DataRate (4 bits).
        rx2_data_rate: u8,
        /// RX2 frequency in Hz (a multiple of 100, below 2^24 × 100).
        frequency: u32,
    },
    /// 0x05, uplink: answer to RXParamSetupReq.
    RXParamSetupAns {
        /// RX1DROffset ACK.
        rx1_dr_offset_ack: bool,
        /// RX2 Data rate ACK.
        rx2_data_rate_ack: bool,
        /// Channel ACK.
        channel_ack: bool,
    },
    /// 0x06, downlink: asks for battery and margin.
    DevStatusReq,
    /// 0x06, uplink: battery level and demodulation margin.
    DevStatusAns {
        /// Battery: 0 external power, 1..=254 level, 255 unknown.
        battery: u8,
        /// Margin in dB, a 6-bit signed value (−32..=31).
        margin: i8,
    },
    /// 0x07, downlink: creates or modifies a channel.
    NewChannelReq {
        /// ChIndex.
        ch_index: u8,
        /// Frequency in Hz (a multiple of 100; 0 disables the channel).
        frequency: u32,
        /// MaxDR (4 bits).
        max_dr: u8,
        /// MinDR (4 bits).
        min_dr: u8,
    },
    /// 0x07, uplink: answer to NewChannelReq.
    NewChannelAns {
        /// Data rate range ok.
        data_rate_range_ok: bool,
        /// Channel frequency ok.
        channel_frequency_ok: bool,
    },
    /// 0x08, downlink: RX1 delay in seconds (0 means 1).
    RXTimingSetupReq {
        /// Del (4 bits).
        delay: u8,
    },
    /// 0x08, uplink: answer to RXTimingSetupReq.
    RXTimingSetupAns,
    /// 0x09, downlink: dwell times and maximum EIRP (regions that need it).
    TxParamSetupReq {
        /// DownlinkDwellTime.
        downlink_dwell_time: bool,
        /// UplinkDwellTime.
        uplink_dwell_time: bool,
        /// MaxEIRP index (4 bits).
        max_eirp: u8,
    },
    /// 0x09, uplink: answer to TxParamSetupReq.
    TxParamSetupAns,
    /// 0x0A, downlink: a separate RX1 downlink frequency for a channel.
    DlChannelReq {
        /// ChIndex.
        ch_index: u8,
        /// Frequency in Hz (a multiple of 100).
        frequency: u32,
    },
    /// 0x0A, uplink: answer to DlChannelReq.
    DlChannelAns {
        /// Uplink frequency exists.
        uplink_frequency_exists: bool,
        /// Channel frequency ok.
        channel_frequency_ok: bool,
    },
    /// 0x0B, uplink (1.1): confirms a new security context after a join.
    RekeyInd {
        /// Dev LoRaWAN version, Minor (4 bits).
        dev_lorawan_minor: u8,
    },
    /// 0x0B, downlink (1.1): answer to RekeyInd.
    RekeyConf {
        /// Serv LoRaWAN version, Minor (4 bits).
        serv_lorawan_minor: u8,
    },
    /// 0x0C, downlink (1.1): ADR_ACK_LIMIT and ADR_ACK_DELAY exponents.
    ADRParamSetupReq {
        /// Limit_exp (4 bits).
        limit_exp: u8,
        /// Delay_exp (4 bits).
        delay_exp: u8,
    },
    /// 0x0C, uplink (1.1): answer to ADRParamSetupReq.
    ADRParamSetupAns,
    /// 0x0D, uplink: asks for the network time.
    DeviceTimeReq,
    /// 0x0D, downlink: GPS time at the end of the uplink carrying DeviceTimeReq.
    DeviceTimeAns {
        /// Seconds since the GPS epoch (32 bits, LE on air).
        seconds: u32,
        /// Fractional second in 1/256 s.
        fractional_second: u8,
    },
    /// 0x0E, downlink (1.1): the device must send Rejoin-requests; no answer.
    ForceRejoinReq {
        /// Period (3 bits): delay between retransmissions is 32 s × 2^Period + random 0..32 s.
        period: u8,
        /// Max_Retries (3 bits).
        max_retries: u8,
        /// RejoinType (3 bits): 0 or 2 are defined.
        rejoin_type: u8,
        /// DR (4 bits) for the Rejoin-requests.
        data_rate: u8,
    },
    /// 0x0F, downlink (1.1): periodic Rejoin-request type 0 limits.
    RejoinParamSetupReq {
        /// MaxTimeN (4 bits): at most every 2^(MaxTimeN+10) s.
        max_time_n: u8,
        /// MaxCountN (4 bits): at most every 2^(MaxCountN+4) uplinks.
        max_count_n: u8,
    },
    /// 0x0F, uplink (1.1): answer to RejoinParamSetupReq.
    RejoinParamSetupAns {
        /// TimeOK: the device accepted the time limit.
        time_ok: bool,
    },
}

/// Why a byte sequence of MAC commands could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MacParseError {
    /// A CID this implementation does not know in this direction; what follows is not parsed.
    #[error("unknown MAC command CID 0x{cid:02x} at offset {offset}")]
    UnknownCid {
        /// The CID.
        cid: u8,
        /// Offset of the CID in the input.
        offset: usize,
    },
    /// The input ends inside a command's payload.
    #[error("MAC command CID 0x{cid:02x} at offset {offset} needs {needed} payload bytes")]
    Truncated {
        /// The CID.
        cid: u8,
        /// Offset of the CID in the input.
        offset: usize,
        /// Payload bytes the command needs.
        needed: usize,
    },
}

impl MacParseError {
    /// A short stable label, for metrics.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::UnknownCid { .. } => "unknown_cid",
            Self::Truncated { .. } => "truncated",
        }
    }
}

/// Why commands could not be serialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MacEncodeError {
    /// The command is not sent in the requested direction.
    #[error("MAC command CID 0x{cid:02x} is not sent {direction:?}")]
    WrongDirection {
        /// The CID.
        cid: u8,
        /// The requested direction.
        direction: Direction,
    },
    /// A field does not fit its bit width (or a frequency is not a multiple of 100 Hz).
    #[error("MAC command CID 0x{cid:02x}: field {field} out of range")]
    FieldOutOfRange {
        /// The CID.
        cid: u8,
        /// The field name.
        field: &'static str,
    },
}

impl MacEncodeError {
    /// A short stable label, for metrics.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::WrongDirection { .. } => "wrong_direction",
            Self::FieldOutOfRange { .. } => "field_out_of_range",
        }
    }
}

/// Payload length of `cid` in `dir`, or `None` for an unknown CID.
pub const fn payload_len(dir: Direction, cid: u8) -> Option<usize> {
    use Direction::{Downlink as D, Uplink as U};
    Some(match (dir, cid) {
        (U, 0x01) | (D, 0x01) => 1,
        (U, 0x02) => 0,
        (D, 0x02) => 2,
        (U, 0x03) => 1,
        (D, 0x03) => 4,
        (U, 0x04) => 0,
        (D, 0x04) => 1,
        (U, 0x05) => 1,
        (D, 0x05) => 4,
        (U, 0x06) => 2,
        (D, 0x06) => 0,
        (U, 0x07) => 1,
        (D, 0x07) => 5,
        (U, 0x08) => 0,
        (D, 0x08) => 1,
        (U, 0x09) => 0,
        (D, 0x09) => 1,
        (U, 0x0A) => 1,
        (D, 0x0A) => 4,
        (U, 0x0B) | (D, 0x0B) => 1,
        (U, 0x0C) => 0,
        (D, 0x0C) => 1,
        (U, 0x0D) => 0,
        (D, 0x0D) => 5,
        (D, 0x0E) => 2,
        (U, 0x0F) | (D, 0x0F) => 1,
        _ => return None,
    })
}

fn freq_from(b: &[u8]) -> u32 {
    (u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16) * 100
}

const fn bit(b: u8, n: u8) -> bool {
    b & (1 << n) != 0
}

impl MacCommand {
    /// The command identifier.
    pub const fn cid(&self) -> u8 {
        use MacCommand::*;
        match self {
            ResetInd { .. } | ResetConf { .. } => 0x01,
            LinkCheckReq | LinkCheckAns { .. } => 0x02,
            LinkADRReq { .. } | LinkADRAns { .. } => 0x03,
            DutyCycleReq { .. } | DutyCycleAns => 0x04,
            RXParamSetupReq { .. } | RXParamSetupAns { .. } => 0x05,
            DevStatusReq | DevStatusAns { .. } => 0x06,
            NewChannelReq { .. } | NewChannelAns { .. } => 0x07,
            RXTimingSetupReq { .. } | RXTimingSetupAns => 0x08,
            TxParamSetupReq { .. } | TxParamSetupAns => 0x09,
            DlChannelReq { .. } | DlChannelAns { .. } => 0x0A,
            RekeyInd { .. } | RekeyConf { .. } => 0x0B,
            ADRParamSetupReq { .. } | ADRParamSetupAns => 0x0C,
            DeviceTimeReq | DeviceTimeAns { .. } => 0x0D,
            ForceRejoinReq { .. } => 0x0E,
            RejoinParamSetupReq { .. } | RejoinParamSetupAns { .. } => 0x0F,
        }
    }

    /// The direction the command travels in.
    pub const fn direction(&self) -> Direction {
        use MacCommand::*;
        match self {
            ResetInd { .. }
            | LinkCheckReq
            | LinkADRAns { .. }
            | DutyCycleAns
            | RXParamSetupAns { .. }
            | DevStatusAns { .. }
            | NewChannelAns { .. }
            | RXTimingSetupAns
            | TxParamSetupAns
            | DlChannelAns { .. }
            | RekeyInd { .. }
            | ADRParamSetupAns
            | DeviceTimeReq
            | RejoinParamSetupAns { .. } => Direction::Uplink,
            _ => Direction::Downlink,
        }
    }

    /// Decodes one command from `cid` and its payload `p` (of exactly
    /// [`payload_len`]`(dir, cid)` bytes).
    fn decode(dir: Direction, cid: u8, p: &[u8]) -> Option<Self> {
        use MacCommand::*;
        let up = dir == Direction::Uplink;
        Some(match (up, cid) {
            (true, 0x01) => ResetInd {
                dev_lorawan_minor: p[0] & 0x0f,
            },
            (false, 0x01) => ResetConf {
                serv_lorawan_minor: p[0] & 0x0f,
            },
            (true, 0x02) => LinkCheckReq,
            (false, 0x02) => LinkCheckAns {
                margin: p[0],
                gw_cnt: p[1],
            },
            (false, 0x03) => LinkADRReq {
                data_rate: p[0] >> 4,
                tx_power: p[0] & 0x0f,
                ch_mask: u16::from_le_bytes([p[1], p[2]]),
                ch_mask_cntl: (p[3] >> 4) & 0x07,
                nb_trans: p[3] & 0x0f,
            },
            (true, 0x03) => LinkADRAns {
                power_ack: bit(p[0], 2),
                data_rate_ack: bit(p[0], 1),
                channel_mask_ack: bit(p[0], 0),
            },
            (false, 0x04) => DutyCycleReq {
                max_duty_cycle: p[0] & 0x0f,
            },
            (true, 0x04) => DutyCycleAns,
            (false, 0x05) => RXParamSetupReq {
                rx1_dr_offset: (p[0] >> 4) & 0x07,
                rx2_data_rate: p[0] & 0x0f,
                frequency: freq_from(&p[1..4]),
            },
            (true, 0x05) => RXParamSetupAns {
                rx1_dr_offset_ack: bit(p[0], 2),
                rx2_data_rate_ack: bit(p[0], 1),
                channel_ack: bit(p[0], 0),
            },
            (false, 0x06) => DevStatusReq,
            (true, 0x06) => DevStatusAns {
                battery: p[0],
                // Sign-extend the 6-bit two's-complement margin.
                margin: (((p[1] & 0x3f) << 2) as i8) >> 2,
            },
            (false, 0x07) => NewChannelReq {
                ch_index: p[0],
                frequency: freq_from(&p[1..4]),
                max_dr: p[4] >> 4,
                min_dr: p[4] & 0x0f,
            },
            (true, 0x07) => NewChannelAns {
                data_rate_range_ok: bit(p[0], 1),
                channel_frequency_ok: bit(p[0], 0),
            },
            (false, 0x08) => RXTimingSetupReq { delay: p[0] & 0x0f },
            (true, 0x08) => RXTimingSetupAns,
            (false, 0x09) => TxParamSetupReq {
                downlink_dwell_time: bit(p[0], 5),
                uplink_dwell_time: bit(p[0], 4),
                max_eirp: p[0] & 0x0f,
            },
            (true, 0x09) => TxParamSetupAns,
            (false, 0x0A) => DlChannelReq {
                ch_index: p[0],
                frequency: freq_from(&p[1..4]),
            },
            (true, 0x0A) => DlChannelAns {
                uplink_frequency_exists: bit(p[0], 1),
                channel_frequency_ok: bit(p[0], 0),
            },
            (true, 0x0B) => RekeyInd {
                dev_lorawan_minor: p[0] & 0x0f,
            },
            (false, 0x0B) => RekeyConf {
                serv_lorawan_minor: p[0] & 0x0f,
            },
            (false, 0x0C) => ADRParamSetupReq {
                limit_exp: p[0] >> 4,
                delay_exp: p[0] & 0x0f,
            },
            (true, 0x0C) => ADRParamSetupAns,
            (true, 0x0D) => DeviceTimeReq,
            (false, 0x0D) => DeviceTimeAns {
                seconds: u32::from_le_bytes([p[0], p[1], p[2], p[3]]),
                fractional_second: p[4],
            },
            (false, 0x0E) => {
                let v = u16::from_le_bytes([p[0], p[1]]);
                ForceRejoinReq {
                    period: ((v >> 11) & 0x07) as u8,
                    max_retries: ((v >> 8) & 0x07) as u8,
                    rejoin_type: ((v >> 4) & 0x07) as u8,
                    data_rate: (v & 0x0f) as u8,
                }
            }
            (false, 0x0F) => RejoinParamSetupReq {
                max_time_n: p[0] >> 4,
                max_count_n: p[0] & 0x0f,
            },
            (true, 0x0F) => RejoinParamSetupAns {
                time_ok: bit(p[0], 0),
            },
            _ => return None,
        })
    }

    /// Appends `CID | payload` to `out`, checking field ranges.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), MacEncodeError> {
        use MacCommand::*;
        let cid = self.cid();
        let fits = |v: u8, bits: u32, field: &'static str| {
            if u32::from(v) < (1 << bits) {
                Ok(v)
            } else {
                Err(MacEncodeError::FieldOutOfRange { cid, field })
            }
        };
        let freq = |hz: u32, field: &'static str| {
            if hz % 100 == 0 && hz / 100 < (1 << 24) {
                let v = hz / 100;
                Ok([v as u8, (v >> 8) as u8, (v >> 16) as u8])
            } else {
                Err(MacEncodeError::FieldOutOfRange { cid, field })
            }
        };
        let flags = |bits: &[bool]| {
            // bits[0] is the most significant of the used bits.
            bits.iter().fold(0u8, |acc, &b| (acc << 1) | u8::from(b))
        };
        out.push(cid);
        match *self {
            ResetInd { dev_lorawan_minor } => {
                out.push(fits(dev_lorawan_minor, 4, "dev_lorawan_minor")?)
            }
            ResetConf { serv_lorawan_minor } | RekeyConf { serv_lorawan_minor } => {
                out.push(fits(serv_lorawan_minor, 4, "serv_lorawan_minor")?)
            }
            RekeyInd { dev_lorawan_minor } => {
                out.push(fits(dev_lorawan_minor, 4, "dev_lorawan_minor")?)
            }
            LinkCheckReq | DutyCycleAns | DevStatusReq | RXTimingSetupAns | TxParamSetupAns
            | ADRParamSetupAns | DeviceTimeReq => {}
            LinkCheckAns { margin, gw_cnt } => out.extend_from_slice(&[margin, gw_cnt]),
            LinkADRReq {
                data_rate,
                tx_power,
                ch_mask,
                ch_mask_cntl,
                nb_trans,
            } => {
                out.push(fits(data_rate, 4, "data_rate")? << 4 | fits(tx_power, 4, "tx_power")?);
                out.extend_from_slice(&ch_mask.to_le_bytes());
                out.push(
                    fits(ch_mask_cntl, 3, "ch_mask_cntl")? << 4 | fits(nb_trans, 4, "nb_trans")?,
                );
            }
            LinkADRAns {
                power_ack,
                data_rate_ack,
                channel_mask_ack,
            } => out.push(flags(&[power_ack, data_rate_ack, channel_mask_ack])),
            DutyCycleReq { max_duty_cycle } => out.push(fits(max_duty_cycle, 4, "max_duty_cycle")?),
            RXParamSetupReq {
                rx1_dr_offset,
                rx2_data_rate,
                frequency,
            } => {
                out.push(
                    fits(rx1_dr_offset, 3, "rx1_dr_offset")? << 4
                        | fits(rx2_data_rate, 4, "rx2_data_rate")?,
                );
                out.extend_from_slice(&freq(frequency, "frequency")?);
            }
            RXParamSetupAns {
                rx1_dr_offset_ack,
                rx2_data_rate_ack,
                channel_ack,
            } => out.push(flags(&[rx1_dr_offset_ack, rx2_data_rate_ack, channel_ack])),
            DevStatusAns { battery, margin } => {
                if !(-32..=31).contains(&margin) {
                    return Err(MacEncodeError::FieldOutOfRange {
                        cid,
                        field: "margin",
                    });
                }
                out.extend_from_slice(&[battery, (margin as u8) & 0x3f]);
            }
            NewChannelReq {
                ch_index,
                frequency,
                max_dr,
                min_dr,
            } => {
                out.push(ch_index);
                out.extend_from_slice(&freq(frequency, "frequency")?);
                out.push(fits(max_dr, 4, "max_dr")? << 4 | fits(min_dr, 4, "min_dr")?);
            }
            NewChannelAns {
                data_rate_range_ok,
                channel_frequency_ok,
            } => out.push(flags(&[data_rate_range_ok, channel_frequency_ok])),
            RXTimingSetupReq { delay } => out.push(fits(delay, 4, "delay")?),
            TxParamSetupReq {
                downlink_dwell_time,
                uplink_dwell_time,
                max_eirp,
            } => out.push(
                flags(&[downlink_dwell_time, uplink_dwell_time]) << 4
                    | fits(max_eirp, 4, "max_eirp")?,
            ),
            DlChannelReq {
                ch_index,
                frequency,
            } => {
                out.push(ch_index);
                out.extend_from_slice(&freq(frequency, "frequency")?);
            }
            DlChannelAns {
                uplink_frequency_exists,
                channel_frequency_ok,
            } => out.push(flags(&[uplink_frequency_exists, channel_frequency_ok])),
            ADRParamSetupReq {
                limit_exp,
                delay_exp,
            } => out.push(fits(limit_exp, 4, "limit_exp")? << 4 | fits(delay_exp, 4, "delay_exp")?),
            DeviceTimeAns {
                seconds,
                fractional_second,
            } => {
                out.extend_from_slice(&seconds.to_le_bytes());
                out.push(fractional_second);
            }
            ForceRejoinReq {
                period,
                max_retries,
                rejoin_type,
                data_rate,
            } => {
                let v = u16::from(fits(period, 3, "period")?) << 11
                    | u16::from(fits(max_retries, 3, "max_retries")?) << 8
                    | u16::from(fits(rejoin_type, 3, "rejoin_type")?) << 4
                    | u16::from(fits(data_rate, 4, "data_rate")?);
                out.extend_from_slice(&v.to_le_bytes());
            }
            RejoinParamSetupReq {
                max_time_n,
                max_count_n,
            } => out.push(
                fits(max_time_n, 4, "max_time_n")? << 4 | fits(max_count_n, 4, "max_count_n")?,
            ),
            RejoinParamSetupAns { time_ok } => out.push(u8::from(time_ok)),
        }
        Ok(())
    }
}

/// Parses a byte sequence of MAC commands (FOpts, or a decrypted FPort 0 FRMPayload) sent in
/// direction `dir`. Stops at the first unknown CID or truncated command.
pub fn parse(dir: Direction, bytes: &[u8]) -> Result<Vec<MacCommand>, MacParseError> {
    let mut out = Vec::new();
    let mut offset = 0;
    while let Some(&cid) = bytes.get(offset) {
        let needed = payload_len(dir, cid).ok_or(MacParseError::UnknownCid { cid, offset })?;
        let payload =
            bytes
                .get(offset + 1..offset + 1 + needed)
                .ok_or(MacParseError::Truncated {
                    cid,
                    offset,
                    needed,
                })?;
        let cmd = MacCommand::decode(dir, cid, payload)
            .ok_or(MacParseError::UnknownCid { cid, offset })?;
        out.push(cmd);
        offset += 1 + needed;
    }
    Ok(out)
}

/// Serializes commands that travel in direction `dir`.
pub fn encode(dir: Direction, commands: &[MacCommand]) -> Result<Vec<u8>, MacEncodeError> {
    let mut out = Vec::new();
    for c in commands {
        if c.direction() != dir {
            return Err(MacEncodeError::WrongDirection {
                cid: c.cid(),
                direction: dir,
            });
        }
        c.encode_into(&mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Direction::{Downlink, Uplink};

    #[test]
    fn known_bytes() {
        // data_frames.json: FPort 0 payload 020305 = LinkCheckReq, LinkADRAns(status 0x05).
        assert_eq!(
            parse(Uplink, &[0x02, 0x03, 0x05]).unwrap(),
            vec![
                MacCommand::LinkCheckReq,
                MacCommand::LinkADRAns {
                    power_ack: true,
                    data_rate_ack: false,
                    channel_mask_ack: true
                }
            ]
        );
        // data_frames.json: FOpts 067307 = DevStatusAns(battery 115, margin 7).
        assert_eq!(
            parse(Uplink, &[0x06, 0x73, 0x07]).unwrap(),
            vec![MacCommand::DevStatusAns {
                battery: 115,
                margin: 7
            }]
        );
        // data_frames.json: FOpts 020701 = LinkCheckAns(margin 7, gwcnt 1).
        assert_eq!(
            parse(Downlink, &[0x02, 0x07, 0x01]).unwrap(),
            vec![MacCommand::LinkCheckAns {
                margin: 7,
                gw_cnt: 1
            }]
        );
        // Negative margin, 6-bit sign.
        assert_eq!(
            parse(Uplink, &[0x06, 0xff, 0x3f]).unwrap(),
            vec![MacCommand::DevStatusAns {
                battery: 255,
                margin: -1
            }]
        );
        // RXParamSetupReq: RX1DROffset 2, RX2 DR3, 869.525 MHz = 8695250 × 100 Hz = 0x84ADD2.
        let cmd = MacCommand::RXParamSetupReq {
            rx1_dr_offset: 2,
            rx2_data_rate: 3,
            frequency: 869_525_000,
        };
        let b = encode(Downlink, &[cmd]).unwrap();
        assert_eq!(b, [0x05, 0x23, 0xd2, 0xad, 0x84]);
        assert_eq!(parse(Downlink, &b).unwrap(), vec![cmd]);
        // LinkADRReq DR5, TXPower 1, ChMask 0x0007, ChMaskCntl 0, NbTrans 1.
        let adr = MacCommand::LinkADRReq {
            data_rate: 5,
            tx_power: 1,
            ch_mask: 7,
            ch_mask_cntl: 0,
            nb_trans: 1,
        };
        assert_eq!(
            encode(Downlink, &[adr]).unwrap(),
            [0x03, 0x51, 0x07, 0x00, 0x01]
        );
        // ForceRejoinReq: Period 3, Max_Retries 2, RejoinType 2, DR 5 → 0b00_011_010_0_010_0101.
        let fr = MacCommand::ForceRejoinReq {
            period: 3,
            max_retries: 2,
            rejoin_type: 2,
            data_rate: 5,
        };
        assert_eq!(encode(Downlink, &[fr]).unwrap(), [0x0e, 0x25, 0x1a]);
        // DeviceTimeAns.
        let dt = MacCommand::DeviceTimeAns {
            seconds: 0x1234_5678,
            fractional_second: 0x80,
        };
        assert_eq!(
            encode(Downlink, &[dt]).unwrap(),
            [0x0d, 0x78, 0x56, 0x34, 0x12, 0x80]
        );
    }

    #[test]
    fn errors() {
        assert_eq!(
            parse(Uplink, &[0x02, 0x0e, 0x02]),
            Err(MacParseError::UnknownCid {
                cid: 0x0e,
                offset: 1
            })
        );
        assert_eq!(
            parse(Downlink, &[0x03, 0x51]).unwrap_err().kind(),
            "truncated"
        );
        assert_eq!(parse(Uplink, &[0x80]).unwrap_err().kind(), "unknown_cid");
        assert_eq!(
            encode(Uplink, &[MacCommand::DevStatusReq])
                .unwrap_err()
                .kind(),
            "wrong_direction"
        );
        let bad = MacCommand::RXTimingSetupReq { delay: 16 };
        assert_eq!(
            encode(Downlink, &[bad]),
            Err(MacEncodeError::FieldOutOfRange {
                cid: 0x08,
                field: "delay"
            })
        );
        let bad_freq = MacCommand::DlChannelReq {
            ch_index: 3,
            frequency: 868_100_050,
        };
        assert_eq!(
            encode(Downlink, &[bad_freq]).unwrap_err().kind(),
            "field_out_of_range"
        );
        let bad_margin = MacCommand::DevStatusAns {
            battery: 1,
            margin: 32,
        };
        assert!(encode(Uplink, &[bad_margin]).is_err());
        assert_eq!(parse(Uplink, &[]).unwrap(), vec![]);
    }
}
