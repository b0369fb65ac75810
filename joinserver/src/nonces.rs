//! The DevNonce and JoinNonce rules (protocol-notes A.3, E.1, E.2): pure functions of a device's
//! nonce state.
//!
//! - LoRaWAN 1.0.4 and 1.1: DevNonce is a counter and must be strictly greater than the last
//!   accepted one. The first join is exempt, so a first DevNonce of 0 is accepted (as TTS does).
//! - LoRaWAN 1.0.2 and 1.0.3: DevNonce is random; a value found in the bounded history of the
//!   last `history` accepted values is refused.
//! - JoinNonce: a per-device counter; the first Join-accept carries 1. It is refused once the
//!   next value would be 2^24 − 1, so no device ever sees a JoinNonce that could wrap.

use protocol::ids::{DevNonce, JoinNonce};
use protocol::version::MacVersion;

use crate::store::NonceState;

/// The JoinNonce value that is never issued: a join that would need it is refused.
pub const JOIN_NONCE_LIMIT: u32 = JoinNonce::MAX; // 2^24 - 1

/// Why a DevNonce was refused, or the JoinNonce ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NonceError {
    /// 1.0.4/1.1: the DevNonce is not greater than the last one.
    #[error("DevNonce {got} is not greater than the last accepted {last}")]
    TooSmall {
        /// The DevNonce received.
        got: u16,
        /// The last accepted DevNonce.
        last: u16,
    },
    /// 1.0.2/1.0.3: the DevNonce was used before.
    #[error("DevNonce {0} was already used")]
    Replayed(u16),
    /// The device has used up its JoinNonces.
    #[error("JoinNonce exhausted")]
    JoinNonceExhausted,
    /// LoRaWAN 1.1 Rejoin-request type 1: RJcount1 is not greater than the last accepted one.
    #[error("RJcount1 {got} is not greater than the last accepted {last}")]
    RjCount1TooSmall {
        /// The RJcount1 received.
        got: u16,
        /// The last accepted RJcount1.
        last: u16,
    },
}

impl NonceError {
    /// A short stable name, used as a metric label.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::TooSmall { .. } => "dev_nonce_too_small",
            Self::Replayed(_) => "dev_nonce_replayed",
            Self::JoinNonceExhausted => "join_nonce_exhausted",
            Self::RjCount1TooSmall { .. } => "rj_count1_too_small",
        }
    }
}

/// Checks `dev_nonce` against `state` under the rule of `version` and, if it is acceptable,
/// returns the state after the join and the JoinNonce to send. `history` bounds the used-DevNonce
/// list of 1.0.2/1.0.3 devices (at least 1).
pub fn accept(
    version: MacVersion,
    state: &NonceState,
    dev_nonce: DevNonce,
    history: usize,
) -> Result<(NonceState, JoinNonce), NonceError> {
    let got = dev_nonce.0;
    let mut next = state.clone();
    if version.dev_nonce_is_counter() {
        if let Some(last) = state.last_dev_nonce {
            if got <= last {
                return Err(NonceError::TooSmall { got, last });
            }
        }
        next.used_dev_nonces.clear();
    } else {
        if state.used_dev_nonces.contains(&got) {
            return Err(NonceError::Replayed(got));
        }
        let history = history.max(1);
        next.used_dev_nonces.push(got);
        if next.used_dev_nonces.len() > history {
            let excess = next.used_dev_nonces.len() - history;
            next.used_dev_nonces.drain(..excess);
        }
    }
    next.last_dev_nonce = Some(got);
    let jn = next_join_nonce(&mut next)?;
    Ok((next, jn))
}

/// Takes the next JoinNonce into `next`: refused once it would be 2^24 − 1.
fn next_join_nonce(next: &mut NonceState) -> Result<JoinNonce, NonceError> {
    let join_nonce = next.last_join_nonce + 1;
    if join_nonce >= JOIN_NONCE_LIMIT {
        return Err(NonceError::JoinNonceExhausted);
    }
    next.last_join_nonce = join_nonce;
    JoinNonce::new(join_nonce).ok_or(NonceError::JoinNonceExhausted)
}

/// The rule of a LoRaWAN 1.1 Rejoin-request: for type 1 (`rj_count1` given), RJcount1 must be
/// greater than the last accepted one (RJcount1_last; it never wraps, LoRaWAN 1.1 §6.2.4.2);
/// every accepted rejoin takes a new JoinNonce. DevNonce state is untouched.
pub fn accept_rejoin(
    state: &NonceState,
    rj_count1: Option<u16>,
) -> Result<(NonceState, JoinNonce), NonceError> {
    let mut next = state.clone();
    if let Some(got) = rj_count1 {
        if let Some(last) = state.last_rj_count1.filter(|&last| got <= last) {
            return Err(NonceError::RjCount1TooSmall { got, last });
        }
        next.last_rj_count1 = Some(got);
    }
    let jn = next_join_nonce(&mut next)?;
    Ok((next, jn))
}

#[cfg(test)]
mod tests {
    use super::*;
    use MacVersion::*;

    fn run(version: MacVersion, nonces: &[u16], history: usize) -> Vec<Result<u32, NonceError>> {
        let mut s = NonceState::default();
        nonces
            .iter()
            .map(|&n| {
                accept(version, &s, DevNonce(n), history).map(|(next, jn)| {
                    s = next;
                    jn.as_u32()
                })
            })
            .collect()
    }

    #[test]
    fn counter_rule_for_1_0_4_and_1_1() {
        for v in [V1_0_4, V1_1] {
            assert_eq!(
                run(v, &[0, 1, 1, 0, 5, 4, 65535, 65535], 64),
                vec![
                    Ok(1),
                    Ok(2),
                    Err(NonceError::TooSmall { got: 1, last: 1 }),
                    Err(NonceError::TooSmall { got: 0, last: 1 }),
                    Ok(3),
                    Err(NonceError::TooSmall { got: 4, last: 5 }),
                    Ok(4),
                    Err(NonceError::TooSmall {
                        got: 65535,
                        last: 65535
                    }),
                ],
                "{v}"
            );
            // The first DevNonce may be anything, 0 included.
            assert_eq!(run(v, &[7], 64), vec![Ok(1)]);
        }
    }

    #[test]
    fn history_rule_for_1_0_2_and_1_0_3() {
        for v in [V1_0_2, V1_0_3] {
            assert_eq!(
                run(v, &[5, 3, 5, 9, 3], 64),
                vec![
                    Ok(1),
                    Ok(2),
                    Err(NonceError::Replayed(5)),
                    Ok(3),
                    Err(NonceError::Replayed(3))
                ],
                "{v}"
            );
            // With a history of 2, the oldest value falls out and may be reused.
            assert_eq!(
                run(v, &[1, 2, 3, 1, 3], 2),
                vec![Ok(1), Ok(2), Ok(3), Ok(4), Err(NonceError::Replayed(3))]
            );
        }
    }

    #[test]
    fn rj_count1_must_increase_and_rejoins_take_join_nonces() {
        let mut s = NonceState {
            last_dev_nonce: Some(4),
            used_dev_nonces: vec![],
            last_join_nonce: 1,
            last_rj_count1: None,
        };
        let mut run = |rj1: Option<u16>| {
            accept_rejoin(&s, rj1).map(|(next, jn)| {
                s = next;
                jn.as_u32()
            })
        };
        assert_eq!(run(Some(0)), Ok(2), "the first RJcount1 may be 0");
        assert_eq!(
            run(Some(0)),
            Err(NonceError::RjCount1TooSmall { got: 0, last: 0 })
        );
        assert_eq!(run(Some(5)), Ok(3));
        assert_eq!(
            run(Some(4)),
            Err(NonceError::RjCount1TooSmall { got: 4, last: 5 })
        );
        // Types 0 and 2: no RJcount1, a JoinNonce each.
        assert_eq!(run(None), Ok(4));
        assert_eq!(run(Some(6)), Ok(5));
        assert_eq!(s.last_rj_count1, Some(6));
        assert_eq!(s.last_dev_nonce, Some(4), "DevNonce state untouched");
        // JoinNonce exhaustion applies to rejoins too, and a refusal changes nothing.
        let end = NonceState {
            last_join_nonce: JOIN_NONCE_LIMIT - 1,
            ..NonceState::default()
        };
        assert_eq!(
            accept_rejoin(&end, Some(9)).unwrap_err(),
            NonceError::JoinNonceExhausted
        );
    }

    #[test]
    fn join_nonce_is_refused_at_2_pow_24_minus_1() {
        let s = NonceState {
            last_dev_nonce: Some(1),
            used_dev_nonces: vec![],
            last_join_nonce: JOIN_NONCE_LIMIT - 2,
            last_rj_count1: None,
        };
        let (s2, jn) = accept(V1_0_4, &s, DevNonce(2), 64).unwrap();
        assert_eq!(jn.as_u32(), 0xFF_FFFE);
        assert_eq!(
            accept(V1_0_4, &s2, DevNonce(3), 64).unwrap_err(),
            NonceError::JoinNonceExhausted
        );
        // A refused join changes nothing.
        assert_eq!(s2.last_dev_nonce, Some(2));
    }
}
