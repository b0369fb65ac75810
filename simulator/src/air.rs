//! The radio between the fleet and the gateways when it is modelled (`--radio realistic`,
//! `--city`): which gateways a transmission reaches and how strongly, the frames on air around
//! each gateway until they end, each gateway's transmitter, and which gateways received a
//! device's latest uplink. [`crate::engine`] drives it; the rules are in [`crate::radio`]'s
//! `transmitter`, `reception` and `city` modules. Randomness comes from the caller's RNG.

use std::collections::HashMap;

use protocol::region::{demod_snr_floor_db, Region};
use rand::Rng;

use crate::device::Tx;
use crate::radio::city::{self, City, FADING_SIGMA_DB};
use crate::radio::reception::{self, Heard, Outcome};
use crate::radio::transmitter::{Refusal, Transmitter};
use crate::radio::{RadioModel, RadioPlan};
use crate::sched::Micros;

/// One gateway's reception of a transmission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hearing {
    /// Gateway index.
    pub gateway: u16,
    /// RSSI, dBm.
    pub rssi: i16,
    /// SNR, tenths of a dB.
    pub lsnr_tenths: i16,
}

#[derive(Clone, Debug)]
struct InFlight {
    tx: Tx,
    id: u64,
    start: Micros,
    end: Micros,
    sf: u8,
    hearings: Vec<Hearing>,
}

impl InFlight {
    /// The frame as gateway-side reception `h` has it.
    fn heard(&self, h: &Hearing) -> Heard {
        Heard {
            id: self.id,
            start: self.start,
            end: self.end,
            freq_hz: self.tx.freq_hz,
            sf: self.sf,
            rssi_dbm: f64::from(h.rssi),
        }
    }
}

/// A transmission that has ended: what it was and which gateways received it.
#[derive(Clone, Debug)]
pub struct Ended {
    /// The frame.
    pub tx: Tx,
    /// When it ended (the `tmst` of its receptions).
    pub end: Micros,
    /// The gateways that demodulated it.
    pub received: Vec<Hearing>,
    /// Whether gateways were in reach but every one lost it to a collision or was transmitting.
    pub collided: bool,
}

/// The modelled radio of a run.
#[derive(Debug)]
pub struct Air {
    model: RadioModel,
    transmitters: Vec<Transmitter>,
    around: Vec<reception::Air>,
    city: Option<City>,
    on_air: HashMap<u32, InFlight>,
    last_received: HashMap<u32, Vec<u16>>,
}

impl Air {
    /// The radio of `gateways` gateways in `region` for `meters` meters, the city (if any)
    /// drawn from `seed`.
    pub fn new(model: RadioModel, region: Region, gateways: u16, meters: usize, seed: u64) -> Self {
        let g = usize::from(gateways.max(1));
        Self {
            model,
            transmitters: (0..g)
                .map(|_| Transmitter::new(region, model.duty_cycle_window_us))
                .collect(),
            around: vec![reception::Air::default(); g],
            city: model.city.then(|| City::new(meters, gateways, seed)),
            on_air: HashMap::new(),
            last_received: HashMap::new(),
        }
    }

    /// The model.
    pub fn model(&self) -> RadioModel {
        self.model
    }

    /// The data rate meter `m`'s link allows, in a city.
    pub fn city_data_rate(&self, m: usize, plan: &RadioPlan) -> Option<u8> {
        self.city.as_ref().map(|c| c.data_rate(m, plan))
    }

    /// In a city, the gateways that demodulate a transmission of meter `m` at spreading factor
    /// `sf` and bandwidth `bw_khz` (before collisions), each with this transmission's fading;
    /// `None` without a city.
    pub fn city_hearings(
        &self,
        m: usize,
        sf: u8,
        bw_khz: u16,
        rng: &mut impl Rng,
    ) -> Option<Vec<Hearing>> {
        let c = self.city.as_ref()?;
        let noise = city::noise_floor_dbm(f64::from(bw_khz) * 1000.0);
        let floor = demod_snr_floor_db(sf)?;
        let reach = c.reach.get(m)?;
        Some(
            reach
                .iter()
                .filter_map(|r| {
                    let rssi = f64::from(r.rssi_dbm) + FADING_SIGMA_DB * city::std_normal(rng);
                    let snr = rssi - noise;
                    (snr >= floor).then_some(Hearing {
                        gateway: r.gateway,
                        rssi: rssi.round() as i16,
                        lsnr_tenths: (snr * 10.0).round().clamp(-300.0, 300.0) as i16,
                    })
                })
                .collect(),
        )
    }

    /// Device `dev` starts `tx` at `start`, `airtime` long, at spreading factor `sf`, reaching
    /// `hearings`. It is judged at its end ([`Air::end`]).
    pub fn start(
        &mut self,
        dev: u32,
        tx: Tx,
        start: Micros,
        airtime: Micros,
        sf: u8,
        hearings: Vec<Hearing>,
    ) {
        let f = InFlight {
            tx,
            id: (u64::from(dev) << 40) | (start & 0xFF_FFFF_FFFF),
            start,
            end: start + airtime,
            sf,
            hearings,
        };
        for h in &f.hearings {
            if let Some(a) = self.around.get_mut(usize::from(h.gateway)) {
                a.add(f.heard(h));
            }
        }
        self.on_air.insert(dev, f);
    }

    /// Device `dev`'s transmission has ended: which gateways received it.
    pub fn end(&mut self, dev: u32) -> Option<Ended> {
        let f = self.on_air.remove(&dev)?;
        let mut received = Vec::with_capacity(f.hearings.len());
        for h in &f.hearings {
            let g = usize::from(h.gateway);
            let deaf = self
                .transmitters
                .get(g)
                .is_some_and(|t| t.transmitting(f.start, f.end));
            let outcome = self
                .around
                .get(g)
                .and_then(|a| a.judge(&f.heard(h), self.model.capture_db, deaf));
            if outcome == Some(Outcome::Received) {
                received.push(*h);
            }
        }
        self.last_received
            .insert(dev, received.iter().map(|h| h.gateway).collect());
        Some(Ended {
            collided: received.is_empty() && !f.hearings.is_empty(),
            tx: f.tx,
            end: f.end,
            received,
        })
    }

    /// Whether gateway `g` received device `dev`'s latest uplink.
    pub fn received_last(&self, dev: u32, g: u16) -> bool {
        self.last_received.get(&dev).is_some_and(|v| v.contains(&g))
    }

    /// Time on air gateway `g` has spent in the duty-cycle window ending at `at` on the
    /// sub-band holding `freq_hz` (0 where the region sets no duty cycle).
    pub fn airtime_used(&self, g: u16, freq_hz: u32, at: Micros) -> Micros {
        self.transmitters
            .get(usize::from(g))
            .and_then(|t| t.duty_cycle(freq_hz, at))
            .map_or(0, |(used, _)| used)
    }

    /// Gateway `g` is asked at `now` to transmit `airtime` µs at `start` on `freq_hz`.
    pub fn transmit(
        &mut self,
        g: u16,
        now: Micros,
        start: Micros,
        airtime: Micros,
        freq_hz: u32,
    ) -> Result<(), Refusal> {
        match self.transmitters.get_mut(usize::from(g)) {
            Some(t) => t.request(now, start, airtime, freq_hz),
            None => Err(Refusal::TooLate),
        }
    }
}
