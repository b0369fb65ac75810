//! A city (`simulator run --city`): G gateways on a square grid, [`GATEWAY_SPACING_M`] apart, and
//! the N meters placed uniformly over the same area. Each meter hears and is heard by the gateways
//! its link budget reaches:
//! - path loss from the Okumura–Hata model for a small or medium city at 868 MHz (gateway
//!   antenna 30 m, meter 1.5 m): 126.0 + 35.2·log10(d / 1 km) dB, flat below 100 m;
//! - log-normal shadowing of σ = [`SHADOWING_SIGMA_DB`] per meter and gateway (buildings, fixed for
//!   the run), and per transmission a fading of σ = [`FADING_SIGMA_DB`];
//! - RSSI = [`DEVICE_EIRP_DBM`] − path loss − shadowing; SNR = RSSI − the noise floor
//!   (−174 dBm/Hz + 10·log10(bandwidth) + a [`NOISE_FIGURE_DB`] noise figure: −117 dBm at
//!   125 kHz); a frame is demodulated when its SNR reaches its spreading factor's floor
//!   (SF7 −7.5 dB … SF12 −20 dB);
//! - each meter joins and reports at the fastest data rate whose floor its best gateway clears by
//!   [`LINK_MARGIN_DB`]: close to a gateway SF7, at the edge of coverage SF10–SF12. A meter that no
//!   gateway would hear even at SF12 is placed again (the city has coverage everywhere).
//!
//! Everything is drawn from the run seed: the same seed, the same city.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use protocol::region::demod_snr_floor_db;

use super::RadioPlan;

/// Distance between neighbouring gateways.
pub const GATEWAY_SPACING_M: f64 = 3_000.0;
/// Shadowing between a meter and a gateway, standard deviation in dB.
pub const SHADOWING_SIGMA_DB: f64 = 6.0;
/// Fading from one transmission to the next, standard deviation in dB.
pub const FADING_SIGMA_DB: f64 = 2.0;
/// A meter's EIRP (EU868 MaxEIRP, 16 dBm, less 2 dB of antenna losses).
pub const DEVICE_EIRP_DBM: f64 = 14.0;
/// The gateway receiver's noise figure.
pub const NOISE_FIGURE_DB: f64 = 6.0;
/// How far above its demodulation floor a meter's best link must be for a data rate.
pub const LINK_MARGIN_DB: f64 = 5.0;
/// Gateways remembered per meter (the strongest).
pub const MAX_GATEWAYS_PER_METER: usize = 8;
/// Beyond this distance (path loss 175 dB) even three deviations of shadowing leave a meter
/// three fading deviations below SF12's floor: such gateways are not considered.
pub const MAX_REACH_M: f64 = 25_000.0;

/// Okumura–Hata path loss at 868 MHz, small or medium city, base station 30 m, mobile 1.5 m.
pub fn path_loss_db(distance_m: f64) -> f64 {
    126.0 + 35.22 * (distance_m.max(100.0) / 1000.0).log10()
}

/// Thermal noise at the receiver for `bandwidth_hz`, dBm.
pub fn noise_floor_dbm(bandwidth_hz: f64) -> f64 {
    -174.0 + 10.0 * bandwidth_hz.log10() + NOISE_FIGURE_DB
}

/// A standard normal variate (Box–Muller; one draw does not justify a distribution crate).
pub fn std_normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A gateway within a meter's reach and the mean RSSI there.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reach {
    /// Gateway index.
    pub gateway: u16,
    /// Mean RSSI of the meter's frames at that gateway (path loss and shadowing), dBm.
    pub rssi_dbm: f32,
}

/// The city of a run.
#[derive(Clone, Debug)]
pub struct City {
    /// Gateway positions, metres.
    pub gateways: Vec<(f64, f64)>,
    /// Per meter, the gateways in reach, strongest first.
    pub reach: Vec<Vec<Reach>>,
}

impl City {
    /// Places `gateways` gateways and `meters` meters from `seed`.
    pub fn new(meters: usize, gateways: u16, seed: u64) -> Self {
        let g = usize::from(gateways.max(1));
        let cols = (g as f64).sqrt().ceil() as usize;
        let rows = g.div_ceil(cols);
        let gw: Vec<(f64, f64)> = (0..g)
            .map(|i| {
                (
                    ((i % cols) as f64 + 0.5) * GATEWAY_SPACING_M,
                    ((i / cols) as f64 + 0.5) * GATEWAY_SPACING_M,
                )
            })
            .collect();
        let (w, h) = (
            cols as f64 * GATEWAY_SPACING_M,
            rows as f64 * GATEWAY_SPACING_M,
        );
        let floor = noise_floor_dbm(125_000.0) + demod_snr_floor_db(12).unwrap_or(-20.0);
        let reach = (0..meters)
            .map(|m| {
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xC17E_0000_0000_0000 ^ m as u64);
                let mut best = Vec::new();
                for _ in 0..100 {
                    let p = (rng.gen_range(0.0..w), rng.gen_range(0.0..h));
                    best = Self::links(&gw, p, &mut rng);
                    if best.first().is_some_and(|r| f64::from(r.rssi_dbm) >= floor) {
                        break;
                    }
                }
                best
            })
            .collect();
        Self {
            gateways: gw,
            reach,
        }
    }

    /// The gateways that may hear a meter at `p`, strongest first.
    fn links(gw: &[(f64, f64)], p: (f64, f64), rng: &mut ChaCha8Rng) -> Vec<Reach> {
        // Anything more than three fading deviations below SF12's floor is never heard.
        let cut = noise_floor_dbm(125_000.0) - 20.0 - 3.0 * FADING_SIGMA_DB;
        let mut v: Vec<Reach> = gw
            .iter()
            .enumerate()
            .filter_map(|(i, &(x, y))| {
                let d = ((x - p.0).powi(2) + (y - p.1).powi(2)).sqrt();
                if d > MAX_REACH_M {
                    return None;
                }
                let rssi = DEVICE_EIRP_DBM - path_loss_db(d) - SHADOWING_SIGMA_DB * std_normal(rng);
                (rssi >= cut).then_some(Reach {
                    gateway: i as u16,
                    rssi_dbm: rssi as f32,
                })
            })
            .collect();
        v.sort_by(|a, b| b.rssi_dbm.total_cmp(&a.rssi_dbm));
        v.truncate(MAX_GATEWAYS_PER_METER);
        v
    }

    /// The data rate meter `m` uses: the fastest 125 kHz LoRa rate of `plan`'s boot channels
    /// whose SNR floor its best gateway clears by [`LINK_MARGIN_DB`]; the slowest if none does.
    pub fn data_rate(&self, m: usize, plan: &RadioPlan) -> u8 {
        let snr = self
            .reach
            .get(m)
            .and_then(|r| r.first())
            .map_or(f64::MIN, |r| {
                f64::from(r.rssi_dbm) - noise_floor_dbm(125_000.0)
            });
        let usable: Vec<(u8, u8)> = (0..16u8)
            .filter(|&dr| plan.check(dr, 0).is_ok())
            .filter_map(|dr| plan.lora(dr).filter(|l| l.1 == 125).map(|l| (dr, l.0)))
            .collect();
        usable
            .iter()
            .filter(|&&(_, sf)| demod_snr_floor_db(sf).is_some_and(|f| snr >= f + LINK_MARGIN_DB))
            .min_by_key(|&&(_, sf)| sf)
            .or_else(|| usable.iter().max_by_key(|&&(_, sf)| sf))
            .map_or(plan.default_data_rate(), |&(dr, _)| dr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_budget_by_hand() {
        // Hata at 1 km: 126 dB; 14 dBm − 126 dB = −112 dBm; SNR over −117 dBm: +5 dB.
        assert!((path_loss_db(1000.0) - 126.0).abs() < 1e-9);
        assert!((path_loss_db(10_000.0) - 161.22).abs() < 1e-9);
        assert_eq!(path_loss_db(10.0), path_loss_db(100.0));
        assert!((noise_floor_dbm(125_000.0) + 117.03).abs() < 0.01);
    }

    #[test]
    fn a_city_covers_every_meter_and_spreads_the_data_rates() {
        let plan = RadioPlan::default();
        let city = City::new(2000, 16, 7);
        assert_eq!(city.gateways.len(), 16);
        assert_eq!(city.gateways[5], (4_500.0, 4_500.0));
        let floor = noise_floor_dbm(125_000.0) - 20.0;
        let mut per_dr = [0usize; 6];
        for m in 0..2000 {
            let r = &city.reach[m];
            assert!(!r.is_empty() && r.len() <= MAX_GATEWAYS_PER_METER);
            assert!(
                f64::from(r[0].rssi_dbm) >= floor,
                "meter {m} out of coverage"
            );
            assert!(r.windows(2).all(|w| w[0].rssi_dbm >= w[1].rssi_dbm));
            per_dr[usize::from(city.data_rate(m, &plan))] += 1;
        }
        // Most meters are close enough for SF7, some need SF10 or slower.
        assert!(per_dr[5] > 600, "{per_dr:?}");
        assert!(per_dr[..3].iter().sum::<usize>() > 20, "{per_dr:?}");
        // Reproducible from the seed; another seed, another city.
        let again = City::new(2000, 16, 7);
        assert_eq!(again.reach, city.reach);
        assert_ne!(City::new(2000, 16, 8).reach, city.reach);
    }
}
