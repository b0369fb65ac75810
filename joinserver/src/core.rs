//! The join pipeline, sans IO: a JoinReq and the device state in, a JoinAns and a nonce update
//! out. No sockets, clocks or storage; the [`link`](crate::link) shell does those.
//!
//! The steps of [`process`], each a small function, in the order it runs them:
//! 1. parse the Join-request and the network server's radio parameters (`parse_join_request`,
//!    `radio_params`);
//! 2. find the device (`find_device`);
//! 3. check the MIC (`check_mic`);
//! 4. check the home network (`check_home`);
//! 5. check and record DevNonce/JoinNonce, inside one map entry (`take_nonces`);
//! 6. answer (`accept`): derive the session keys, build and encrypt the Join-accept, wrap the
//!    session keys under the KEKs (the AppSKey under its owner tenant's KEK, if it has one).
//!
//! [`process_rejoin`] runs the same steps for a LoRaWAN 1.1 Rejoin-request (types 0, 1 and 2),
//! with the rejoin rules in steps 1, 3 and 5 (`parse_rejoin_request`, `check_rejoin_mic`,
//! `take_rejoin_nonces`): the UDP link calls it for a TS002 `RejoinReq`, and so can the
//! Backend Interfaces listener.
//!
//! [`put_stored`] is the one place a stored device becomes the in-memory [`Device`].

use std::sync::Arc;

use dashmap::DashMap;
use protocol::derive;
use protocol::ids::{DevAddr, DevEui, DevNonce, JoinEui, JoinNonce, NetId};
use protocol::join::{
    AnsweredRequest, CfList, DlSettings, JoinAcceptEncKey, JoinAcceptMicKey, JoinAcceptPayload,
    JoinRequest, JoinRootKey, RejoinBody, RejoinMicKey, RejoinRequest, RxDelay,
};
use protocol::keys::{AppKey, JsEncKey, JsIntKey, KeyCipher, NwkKey};
use protocol::keywrap::KeyEnvelope;
use protocol::ts002::NetworkKeys;
use protocol::version::MacVersion;

use crate::atrest;
use crate::nonces::{self, NonceError};
use crate::secrets::{LabeledKek, MasterKey};
use crate::store::{LastJoin, NonceState, NonceUpdate, StoredDevice};

/// A device's root keys, prepared for AES (key schedules expanded once, at load).
pub struct DeviceKeys {
    app: KeyCipher<AppKey>,
    nwk: Option<KeyCipher<NwkKey>>,
    js_int: Option<KeyCipher<JsIntKey>>,
    js_enc: Option<KeyCipher<JsEncKey>>,
}

impl std::fmt::Debug for DeviceKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceKeys(<redacted>)")
    }
}

impl DeviceKeys {
    /// Prepares a device's root keys. `nwk_key` is given for LoRaWAN 1.1 devices.
    pub fn new(dev_eui: DevEui, app_key: &AppKey, nwk_key: Option<&NwkKey>) -> Self {
        let nwk = nwk_key.map(KeyCipher::new);
        let js = nwk.as_ref().map(|n| derive::js_keys(n, dev_eui));
        Self {
            app: KeyCipher::new(app_key),
            nwk,
            js_int: js.as_ref().map(|k| KeyCipher::new(&k.js_int_key)),
            js_enc: js.as_ref().map(|k| KeyCipher::new(&k.js_enc_key)),
        }
    }
}

impl DeviceKeys {
    /// The AppSKey of the session that a Join-accept with `join_nonce`, answering the
    /// Join-request of `dev_nonce` through network `net_id`, gave the device: what [`process`]
    /// derived for it.
    pub fn app_s_key(
        &self,
        join_eui: JoinEui,
        net_id: NetId,
        join_nonce: JoinNonce,
        dev_nonce: DevNonce,
    ) -> protocol::keys::AppSKey {
        match &self.nwk {
            Some(nwk) => {
                let answered = AnsweredRequest::JoinRequest(dev_nonce);
                derive::session_keys_1_1(nwk, &self.app, join_nonce, join_eui, answered).app_s_key
            }
            None => derive::session_keys_1_0(&self.app, join_nonce, net_id, dev_nonce).app_s_key,
        }
    }
}

/// The KEK that wraps the AppSKeys of `owner`'s devices: its own, or the default one.
pub fn app_kek<'a>(ctx: &'a JoinContext, owner: Option<&str>) -> &'a LabeledKek {
    owner
        .and_then(|o| ctx.app_keks.get(o))
        .unwrap_or(&ctx.as_kek)
}

/// A provisioned device, in memory.
#[derive(Debug)]
pub struct Device {
    /// Its JoinEUI.
    pub join_eui: JoinEui,
    /// Its LoRaWAN version: the join server is authoritative for it.
    pub mac_version: MacVersion,
    /// The only NetID allowed to activate it, if any.
    pub home_net_id: Option<NetId>,
    /// The tenant that claimed it: its AppSKey is wrapped under that tenant's KEK if one is
    /// configured ([`JoinContext::app_keks`]).
    pub owner: Option<Arc<str>>,
    /// Root keys.
    pub keys: Arc<DeviceKeys>,
    /// DevNonce/JoinNonce state, ahead of or equal to the store's.
    pub nonces: NonceState,
    /// What the device was provisioned with (wrapped keys and static fields), so a device
    /// re-imported with other keys or settings is noticed while the server runs.
    pub provisioned: Vec<u8>,
}

/// A fingerprint of a stored device's provisioning (not of its nonce state). Root keys enter it
/// only as their wraps under the master key.
pub fn provisioning_fingerprint(d: &StoredDevice) -> Vec<u8> {
    let mut f = Vec::with_capacity(80);
    f.extend_from_slice(&d.join_eui.to_le_bytes());
    f.extend_from_slice(d.mac_version.as_str().as_bytes());
    f.push(0);
    f.extend_from_slice(&d.home_net_id.map_or(u32::MAX, NetId::as_u32).to_le_bytes());
    f.extend_from_slice(d.owner.as_deref().unwrap_or_default().as_bytes());
    f.push(0);
    f.extend_from_slice(&d.app_key_wrapped);
    f.extend_from_slice(d.nwk_key_wrapped.as_deref().unwrap_or_default());
    f
}

impl Device {
    /// Loads a stored device, unwrapping its root keys under the master key.
    pub fn from_stored(master: &MasterKey, d: &StoredDevice) -> Result<Self, atrest::UnwrapError> {
        let app = atrest::open_app_key(master, &d.app_key_wrapped)?;
        let nwk = d
            .nwk_key_wrapped
            .as_deref()
            .map(|w| atrest::open_nwk_key(master, w))
            .transpose()?;
        if d.mac_version.is_1_1() != nwk.is_some() {
            return Err(atrest::UnwrapError);
        }
        Ok(Self {
            join_eui: d.join_eui,
            mac_version: d.mac_version,
            home_net_id: d.home_net_id,
            owner: d.owner.as_deref().map(Arc::from),
            keys: Arc::new(DeviceKeys::new(d.dev_eui, &app, nwk.as_ref())),
            nonces: d.nonces.clone(),
            provisioned: provisioning_fingerprint(d),
        })
    }
}

/// Devices by DevEUI. DevEUIs come from the network, so the hasher is keyed (foldhash, seeded
/// per map), never an unkeyed one like FxHash.
pub type DeviceMap = DashMap<DevEui, Device, foldhash::fast::RandomState>;

/// What [`put_stored`] does with a device the map already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// Replace it with the stored device (start-up, an import, a key rotation).
    Replace,
    /// Keep it (and its nonce state, never behind the store's) if its provisioning is
    /// unchanged; replace it otherwise (a device re-imported with other keys or settings).
    UnlessUnchanged,
}

/// Puts a stored device into the running server's map: the one place a store row becomes an
/// in-memory [`Device`]. Fails, leaving the map as it was, if its root keys do not unwrap.
pub fn put_stored(
    map: &DeviceMap,
    master: &MasterKey,
    d: &StoredDevice,
    refresh: Refresh,
) -> Result<(), atrest::UnwrapError> {
    if refresh == Refresh::UnlessUnchanged {
        if let Some(mut m) = map.get_mut(&d.dev_eui) {
            if m.provisioned == provisioning_fingerprint(d) {
                if reset_in_store(&m.nonces, &d.nonces) {
                    m.nonces = d.nonces.clone();
                }
                return Ok(());
            }
        }
    }
    map.insert(d.dev_eui, Device::from_stored(master, d)?);
    Ok(())
}

/// Whether the stored nonce state is a DevNonce reset made after the in-memory one (through
/// another instance's API, on a shared store): no DevNonce at all, and a JoinNonce not behind the
/// memory's, while the memory has seen a DevNonce. Every join stores its DevNonce with its
/// JoinNonce, so only a reset stores none; a join still being committed has a JoinNonce ahead of
/// the store's and is kept.
fn reset_in_store(memory: &NonceState, stored: &NonceState) -> bool {
    memory.last_dev_nonce.is_some()
        && stored.last_dev_nonce.is_none()
        && stored.used_dev_nonces.is_empty()
        && stored.last_join_nonce >= memory.last_join_nonce
}

/// What join processing needs besides the devices.
#[derive(Debug, Clone)]
pub struct JoinContext {
    /// Wraps network session keys for a network server without a KEK of its own.
    pub ns_kek: LabeledKek,
    /// Per network server (NetID): the KEK that wraps the network session keys of its JoinAns
    /// (replaced while the server runs when a peer is added).
    pub peer_ns_keks: crate::live::Live<std::collections::HashMap<NetId, LabeledKek>>,
    /// Wraps the AppSKey of a device whose owner has no KEK of its own.
    pub as_kek: LabeledKek,
    /// Per owner tenant: the KEK that wraps the AppSKeys of its devices, so one tenant's
    /// application server cannot open another's.
    pub app_keks: std::collections::HashMap<String, LabeledKek>,
    /// DevNonce history length for LoRaWAN 1.0.2/1.0.3.
    pub dev_nonce_history: usize,
    /// Session `Lifetime` in seconds (0 = none).
    pub session_lifetime_s: u32,
    /// The join server's id on the link.
    pub js_id: u64,
}

/// The parts of a TS002 JoinReq (or RejoinReq: the same fields) that the pipeline uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinReqFields {
    /// The network server's NetID, as authenticated by the link.
    pub sender: NetId,
    /// The whole Join-request (or Rejoin-request) PHYPayload.
    pub phy_payload: Vec<u8>,
    /// DevEUI as the network server states it (must match the PHYPayload).
    pub dev_eui: DevEui,
    /// DevAddr assigned by the network server.
    pub dev_addr: DevAddr,
    /// The network server's DLSettings (its OptNeg bit is ignored: the JS decides).
    pub dl_settings: u8,
    /// RxDelay requested by the network server.
    pub rx_delay: u8,
    /// CFList, if the network server sends one.
    pub cf_list: Option<Vec<u8>>,
    /// When the join server received the request (Unix ms, by the shell's clock): recorded as
    /// the device's last join if it is accepted.
    pub received_ms: u64,
}

/// Why a JoinReq was refused. Each maps to a TS002 ResultCode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The request or its PHYPayload cannot be decoded, or its fields disagree.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// No such device (or not under this JoinEUI).
    #[error("unknown device")]
    UnknownDevEui,
    /// The sender is not the device's home network.
    #[error("activation through this network is not allowed")]
    ActivationDisallowed,
    /// The device has no home network yet: nobody has claimed it (onboarding), so it may not
    /// join anywhere.
    #[error("device is not claimed")]
    Unclaimed,
    /// The Join-request MIC does not verify under the device's root key.
    #[error("MIC mismatch")]
    MicFailed,
    /// DevNonce replayed or too small, RJcount1 not above the last, or JoinNonce exhausted.
    #[error("{0}")]
    Nonce(NonceError),
    /// A Rejoin-request for a device that is not LoRaWAN 1.1 (rejoins are 1.1 only).
    #[error("rejoin-request for a LoRaWAN {0} device")]
    RejoinNot11(MacVersion),
    /// A Rejoin-request type 0 or 2 names a NetID that is not its sender's: the network server
    /// that checked its MIC is not the network the device is in.
    #[error("rejoin-request for NetID {frame}, sent by {sender}")]
    RejoinNetId {
        /// The NetID in the frame.
        frame: NetId,
        /// The network server that sent it.
        sender: NetId,
    },
}

impl JoinError {
    /// A short stable name: the `result` label of `joinserver_joins_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::UnknownDevEui => "unknown_dev_eui",
            Self::ActivationDisallowed => "activation_disallowed",
            Self::Unclaimed => "unclaimed",
            Self::MicFailed => "mic_failed",
            Self::Nonce(e) => e.kind(),
            Self::RejoinNot11(_) => "rejoin_not_1_1",
            Self::RejoinNetId { .. } => "rejoin_net_id",
        }
    }

    /// The TS002 ResultCode.
    pub fn result_code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "MalformedRequest",
            Self::UnknownDevEui => "UnknownDevEUI",
            Self::ActivationDisallowed | Self::Unclaimed => "ActivationDisallowed",
            Self::MicFailed => "MICFailed",
            Self::Nonce(_) | Self::RejoinNot11(_) => "JoinReqFailed",
            Self::RejoinNetId { .. } => "ActivationDisallowed",
        }
    }
}

/// A successful join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The encrypted Join-accept PHYPayload.
    pub phy_payload: Vec<u8>,
    /// The device's LoRaWAN version (authoritative).
    pub mac_version: MacVersion,
    /// The DLSettings sent in the Join-accept.
    pub dl_settings: u8,
    /// The RxDelay sent in the Join-accept.
    pub rx_delay: u8,
    /// Session lifetime in seconds.
    pub lifetime: u32,
    /// Network session keys under the NS KEK.
    pub network: NetworkKeys,
    /// AppSKey under the AS KEK.
    pub app_s_key: KeyEnvelope,
    /// The JoinNonce used.
    pub join_nonce: JoinNonce,
    /// The tenant that claimed the device (its owner), reported to the network server so
    /// that it files the device's events under the tenant's application; never a secret.
    pub owner: Option<Arc<str>>,
}

/// The pipeline's result: the answer and, on success, the nonce state to commit first.
#[derive(Debug)]
pub struct Outcome {
    /// Success or the refusal.
    pub result: Result<Accepted, JoinError>,
    /// The nonce state to commit before the answer leaves.
    pub update: Option<NonceUpdate>,
    /// The device's nonce state the DevNonce was checked against (with `update`): a shared store
    /// commits the update only if it still holds this state.
    pub previous: Option<NonceState>,
    /// The DevEUI from the PHYPayload, once parsed.
    pub dev_eui: Option<DevEui>,
}

impl Outcome {
    /// The `result` label: `success` or the error's kind.
    pub fn kind(&self) -> &'static str {
        match &self.result {
            Ok(_) => "success",
            Err(e) => e.kind(),
        }
    }

    fn refused(e: JoinError, dev_eui: Option<DevEui>) -> Self {
        Self {
            result: Err(e),
            update: None,
            previous: None,
            dev_eui,
        }
    }
}

/// Step 1: parse the Join-request and check it against the request's DevEUI.
fn parse_join_request(req: &JoinReqFields) -> Result<JoinRequest, JoinError> {
    let jr =
        JoinRequest::parse(&req.phy_payload).map_err(|e| JoinError::Malformed(e.to_string()))?;
    if jr.dev_eui != req.dev_eui {
        return Err(JoinError::Malformed(format!(
            "DevEUI {} differs from the PHYPayload's {}",
            req.dev_eui, jr.dev_eui
        )));
    }
    Ok(jr)
}

/// Step 3: the device's static facts (JoinEUI must match).
/// What the pipeline needs of a device, read once from the map.
struct Found {
    version: MacVersion,
    join_eui: JoinEui,
    home: Option<NetId>,
    owner: Option<Arc<str>>,
    keys: Arc<DeviceKeys>,
}

fn find_device(devices: &DeviceMap, jr: &JoinRequest) -> Result<Found, JoinError> {
    find_device_by(devices, jr.dev_eui, Some(jr.join_eui))
}

/// The device `dev_eui`, whose JoinEUI must be `join_eui` when the frame carries one.
fn find_device_by(
    devices: &DeviceMap,
    dev_eui: DevEui,
    join_eui: Option<JoinEui>,
) -> Result<Found, JoinError> {
    let d = devices.get(&dev_eui).ok_or(JoinError::UnknownDevEui)?;
    if join_eui.is_some_and(|j| j != d.join_eui) {
        return Err(JoinError::UnknownDevEui);
    }
    Ok(Found {
        version: d.mac_version,
        join_eui: d.join_eui,
        home: d.home_net_id,
        owner: d.owner.clone(),
        keys: d.keys.clone(),
    })
}

/// Step 4: the Join-request MIC, under AppKey (1.0.x) or NwkKey (1.1).
fn check_mic(jr: &JoinRequest, keys: &DeviceKeys) -> Result<(), JoinError> {
    let root = match &keys.nwk {
        Some(nwk) => JoinRootKey::NwkKey(nwk),
        None => JoinRootKey::AppKey(&keys.app),
    };
    jr.verify_mic(root).map_err(|_| JoinError::MicFailed)
}

/// Step 5: the home-network rule. A device without a home NetID is unclaimed and joins nowhere;
/// a claimed one joins only through its home network.
fn check_home(home: Option<NetId>, sender: NetId) -> Result<(), JoinError> {
    match home {
        None => Err(JoinError::Unclaimed),
        Some(h) if h != sender => Err(JoinError::ActivationDisallowed),
        Some(_) => Ok(()),
    }
}

/// Step 6: check and record DevNonce, take the next JoinNonce, inside one map entry. Returns
/// the JoinNonce, the update, and the state it was checked against.
fn take_nonces(
    devices: &DeviceMap,
    dev_eui: DevEui,
    dev_nonce: DevNonce,
    history: usize,
    joined: LastJoin,
) -> Result<(JoinNonce, NonceUpdate, NonceState), JoinError> {
    update_nonces(devices, dev_eui, joined, |version, state| {
        nonces::accept(version, state, dev_nonce, history)
    })
}

/// Applies a nonce rule to a device's state inside its map entry: the new state is kept in
/// memory and returned as the update to commit before the answer leaves, with the state it
/// was checked against (a shared store commits the update only if it still holds that one).
fn update_nonces(
    devices: &DeviceMap,
    dev_eui: DevEui,
    joined: LastJoin,
    rule: impl FnOnce(MacVersion, &NonceState) -> Result<(NonceState, JoinNonce), NonceError>,
) -> Result<(JoinNonce, NonceUpdate, NonceState), JoinError> {
    let mut d = devices.get_mut(&dev_eui).ok_or(JoinError::UnknownDevEui)?;
    let (next, jn) = rule(d.mac_version, &d.nonces).map_err(JoinError::Nonce)?;
    let previous = std::mem::replace(&mut d.nonces, next.clone());
    Ok((
        jn,
        NonceUpdate {
            dev_eui,
            state: next,
            joined,
        },
        previous,
    ))
}

/// Rejoin step 5: type 1 must carry an RJcount1 above the last accepted one (recorded with the
/// new JoinNonce); types 0 and 2 take a JoinNonce (their RJcount0 is the network server's to
/// check, under the SNwkSIntKey only it holds).
fn take_rejoin_nonces(
    devices: &DeviceMap,
    body: &RejoinBody,
    joined: LastJoin,
) -> Result<(JoinNonce, NonceUpdate, NonceState), JoinError> {
    let rj_count1 = match *body {
        RejoinBody::Type1 { rj_count1, .. } => Some(rj_count1),
        _ => None,
    };
    update_nonces(devices, body.dev_eui(), joined, |_, state| {
        nonces::accept_rejoin(state, rj_count1)
    })
}

/// The network server's radio parameters for the Join-accept.
#[derive(Clone, Copy)]
struct RadioParams {
    dl_settings: DlSettings,
    rx_delay: RxDelay,
    cf_list: Option<CfList>,
}

/// Step 2: the radio parameters must be encodable (before any state changes).
fn radio_params(req: &JoinReqFields) -> Result<RadioParams, JoinError> {
    let rx_delay = RxDelay::new(req.rx_delay)
        .ok_or_else(|| JoinError::Malformed(format!("RxDelay {} is above 15", req.rx_delay)))?;
    let cf_list = match &req.cf_list {
        None => None,
        Some(b) => Some(CfList(b.as_slice().try_into().map_err(|_| {
            JoinError::Malformed(format!("CFList of {} bytes (expected 16)", b.len()))
        })?)),
    };
    Ok(RadioParams {
        dl_settings: DlSettings(req.dl_settings),
        rx_delay,
        cf_list,
    })
}

/// Step 7: derive, build and encrypt the Join-accept, wrap the session keys.
fn accept(
    ctx: &JoinContext,
    req: &JoinReqFields,
    answered: AnsweredRequest,
    found: &Found,
    radio: RadioParams,
    join_nonce: JoinNonce,
) -> Result<Accepted, JoinError> {
    let (version, keys) = (found.version, &*found.keys);
    let as_kek = app_kek(ctx, found.owner.as_deref());
    let peer_keks = ctx.peer_ns_keks.load();
    let ns_kek = peer_keks.get(&req.sender).unwrap_or(&ctx.ns_kek);
    let RadioParams {
        dl_settings: ns,
        rx_delay,
        cf_list,
    } = radio;
    // The join server is authoritative for the version: OptNeg is set exactly for 1.1 devices.
    let dl =
        DlSettings::new(version.is_1_1(), ns.rx1_dr_offset(), ns.rx2_data_rate()).unwrap_or(ns);
    let payload = JoinAcceptPayload {
        join_nonce,
        net_id: req.sender,
        dev_addr: req.dev_addr,
        dl_settings: dl,
        rx_delay,
        cf_list,
    };
    let join_eui = found.join_eui;
    let (phy, network, app_s_key) = match (&keys.nwk, &keys.js_int, &keys.js_enc) {
        (Some(nwk), Some(js_int), Some(js_enc)) => {
            let sk = derive::session_keys_1_1(nwk, &keys.app, join_nonce, join_eui, answered);
            let enc = enc_key_1_1(answered, nwk, js_enc);
            let phy = payload.encrypt(
                JoinAcceptMicKey::OptNeg {
                    js_int_key: js_int,
                    join_eui,
                    answered,
                },
                enc,
            );
            let net = NetworkKeys::V1_1 {
                f_nwk_s_int_key: seal(ns_kek, &sk.f_nwk_s_int_key)?,
                s_nwk_s_int_key: seal(ns_kek, &sk.s_nwk_s_int_key)?,
                nwk_s_enc_key: seal(ns_kek, &sk.nwk_s_enc_key)?,
            };
            (phy, net, seal(as_kek, &sk.app_s_key)?)
        }
        _ => {
            let AnsweredRequest::JoinRequest(dev_nonce) = answered else {
                return Err(JoinError::RejoinNot11(version));
            };
            let sk = derive::session_keys_1_0(&keys.app, join_nonce, req.sender, dev_nonce);
            let phy = payload.encrypt(
                JoinAcceptMicKey::Legacy(JoinRootKey::AppKey(&keys.app)),
                JoinAcceptEncKey::AppKey(&keys.app),
            );
            let net = NetworkKeys::V1_0 {
                nwk_s_key: seal(ns_kek, &sk.nwk_s_key)?,
            };
            (phy, net, seal(as_kek, &sk.app_s_key)?)
        }
    };
    Ok(Accepted {
        phy_payload: phy.as_bytes().to_vec(),
        mac_version: version,
        dl_settings: dl.0,
        rx_delay: rx_delay.0,
        lifetime: ctx.session_lifetime_s,
        network,
        app_s_key,
        join_nonce,
        owner: found.owner.clone(),
    })
}

/// The key of a 1.1 Join-accept: JSEncKey when it answers a Rejoin-request, the NwkKey when it
/// answers a Join-request (LoRaWAN 1.1 §6.2.3).
fn enc_key_1_1<'a>(
    answered: AnsweredRequest,
    nwk: &'a KeyCipher<NwkKey>,
    js_enc: &'a KeyCipher<JsEncKey>,
) -> JoinAcceptEncKey<'a> {
    match answered {
        AnsweredRequest::JoinRequest(_) => JoinAcceptEncKey::NwkKey(nwk),
        _ => JoinAcceptEncKey::JsEncKey(js_enc),
    }
}

fn seal<K: protocol::keys::Key128>(kek: &LabeledKek, key: &K) -> Result<KeyEnvelope, JoinError> {
    KeyEnvelope::seal(&kek.label, Some(&kek.key), key)
        .map_err(|e| JoinError::Malformed(format!("key wrap: {e}")))
}

/// Runs the whole pipeline for one JoinReq.
pub fn process(ctx: &JoinContext, devices: &DeviceMap, req: &JoinReqFields) -> Outcome {
    let (jr, radio) = match parse_join_request(req).and_then(|jr| Ok((jr, radio_params(req)?))) {
        Ok(v) => v,
        Err(e) => return Outcome::refused(e, None),
    };
    let dev_eui = Some(jr.dev_eui);
    let checked = find_device(devices, &jr).and_then(|found| {
        check_mic(&jr, &found.keys)?;
        check_home(found.home, req.sender)?;
        Ok(found)
    });
    let found = match checked {
        Ok(v) => v,
        Err(e) => return Outcome::refused(e, dev_eui),
    };
    let (join_nonce, update, previous) = match take_nonces(
        devices,
        jr.dev_eui,
        jr.dev_nonce,
        ctx.dev_nonce_history,
        LastJoin {
            at_ms: req.received_ms,
            net_id: req.sender,
        },
    ) {
        Ok(v) => v,
        Err(e) => return Outcome::refused(e, dev_eui),
    };
    Outcome {
        result: accept(
            ctx,
            req,
            AnsweredRequest::JoinRequest(jr.dev_nonce),
            &found,
            radio,
            join_nonce,
        ),
        update: Some(update),
        previous: Some(previous),
        dev_eui,
    }
}

/// Rejoin step 1: parse the Rejoin-request and check it against the request's DevEUI.
fn parse_rejoin_request(req: &JoinReqFields) -> Result<RejoinRequest, JoinError> {
    let rj =
        RejoinRequest::parse(&req.phy_payload).map_err(|e| JoinError::Malformed(e.to_string()))?;
    if rj.body.dev_eui() != req.dev_eui {
        return Err(JoinError::Malformed(format!(
            "DevEUI {} differs from the PHYPayload's {}",
            req.dev_eui,
            rj.body.dev_eui()
        )));
    }
    Ok(rj)
}

/// Rejoin step 3: the device must be LoRaWAN 1.1. Type 1: the MIC under JSIntKey. Types 0 and
/// 2: the network server checked the MIC under SNwkSIntKey (which the join server does not
/// keep); the frame's NetID must be the sender's.
fn check_rejoin_mic(rj: &RejoinRequest, found: &Found, sender: NetId) -> Result<(), JoinError> {
    let Some(js_int) = &found.keys.js_int else {
        return Err(JoinError::RejoinNot11(found.version));
    };
    match rj.body {
        RejoinBody::Type1 { .. } => rj
            .verify_mic(RejoinMicKey::JsIntKey(js_int))
            .map_err(|_| JoinError::MicFailed),
        RejoinBody::Type0 { net_id, .. } | RejoinBody::Type2 { net_id, .. } => {
            if net_id == sender {
                Ok(())
            } else {
                Err(JoinError::RejoinNetId {
                    frame: net_id,
                    sender,
                })
            }
        }
    }
}

/// Runs the pipeline for one RejoinReq (LoRaWAN 1.1 Rejoin-request type 0, 1 or 2): the
/// Join-accept's MIC is computed with JSIntKey over the rejoin type, the JoinEUI and the RJcount,
/// it is encrypted with JSEncKey, and the new session keys come from the new JoinNonce and the
/// RJcount (LoRaWAN 1.1 §6.2.3). An accepted type 1 records its RJcount1 with the JoinNonce, in
/// the update committed before the answer leaves.
pub fn process_rejoin(ctx: &JoinContext, devices: &DeviceMap, req: &JoinReqFields) -> Outcome {
    let (rj, radio) = match parse_rejoin_request(req).and_then(|rj| Ok((rj, radio_params(req)?))) {
        Ok(v) => v,
        Err(e) => return Outcome::refused(e, None),
    };
    let dev_eui = Some(rj.body.dev_eui());
    let join_eui = match rj.body {
        RejoinBody::Type1 { join_eui, .. } => Some(join_eui),
        _ => None,
    };
    let checked = find_device_by(devices, rj.body.dev_eui(), join_eui).and_then(|found| {
        check_rejoin_mic(&rj, &found, req.sender)?;
        check_home(found.home, req.sender)?;
        Ok(found)
    });
    let found = match checked {
        Ok(v) => v,
        Err(e) => return Outcome::refused(e, dev_eui),
    };
    let joined = LastJoin {
        at_ms: req.received_ms,
        net_id: req.sender,
    };
    let (join_nonce, update, previous) = match take_rejoin_nonces(devices, &rj.body, joined) {
        Ok(v) => v,
        Err(e) => return Outcome::refused(e, dev_eui),
    };
    Outcome {
        result: accept(ctx, req, rj.body.answered(), &found, radio, join_nonce),
        update: Some(update),
        previous: Some(previous),
        dev_eui,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::join::{EncryptedJoinAccept, JOIN_REQUEST_LEN};
    use protocol::keys::{Kek, NwkSKey};

    const APP: [u8; 16] = *b"\x2b\x7e\x15\x16\x28\xae\xd2\xa6\xab\xf7\x15\x88\x09\xcf\x4f\x3c";
    const NWK: [u8; 16] = [0x11; 16];
    const JOIN_EUI: JoinEui = JoinEui::new(0x70B3_D57E_D000_0001);

    fn net(n: u32) -> NetId {
        NetId::new(n).unwrap()
    }

    fn ctx() -> JoinContext {
        JoinContext {
            ns_kek: LabeledKek {
                label: "ns-test".into(),
                key: Kek::new([0xA1; 16]),
            },
            as_kek: LabeledKek {
                label: "as-test".into(),
                key: Kek::new([0xB2; 16]),
            },
            app_keks: std::collections::HashMap::new(),
            peer_ns_keks: Default::default(),
            dev_nonce_history: 64,
            session_lifetime_s: 3600,
            js_id: 1,
        }
    }

    fn add(map: &DeviceMap, dev: u64, v: MacVersion, home: Option<NetId>) {
        let dev_eui = DevEui::new(dev);
        let nwk = v.is_1_1().then(|| NwkKey::new(NWK));
        map.insert(
            dev_eui,
            Device {
                join_eui: JOIN_EUI,
                mac_version: v,
                home_net_id: home,
                owner: None,
                keys: Arc::new(DeviceKeys::new(dev_eui, &AppKey::new(APP), nwk.as_ref())),
                nonces: NonceState::default(),
                provisioned: Vec::new(),
            },
        );
    }

    /// A Join-request built device-side with `protocol`.
    fn join_request(dev: u64, v: MacVersion, dn: u16, key: [u8; 16]) -> Vec<u8> {
        let phy = if v.is_1_1() {
            let k = KeyCipher::new(&NwkKey::new(key));
            JoinRequest::build(
                JOIN_EUI,
                DevEui::new(dev),
                DevNonce(dn),
                JoinRootKey::NwkKey(&k),
            )
        } else {
            let k = KeyCipher::new(&AppKey::new(key));
            JoinRequest::build(
                JOIN_EUI,
                DevEui::new(dev),
                DevNonce(dn),
                JoinRootKey::AppKey(&k),
            )
        };
        phy.to_bytes().to_vec()
    }

    fn fields(dev: u64, phy: Vec<u8>, sender: u32) -> JoinReqFields {
        JoinReqFields {
            sender: net(sender),
            phy_payload: phy,
            dev_eui: DevEui::new(dev),
            dev_addr: DevAddr::new(0x2601_1BDA),
            dl_settings: 0x12,
            rx_delay: 1,
            cf_list: None,
            received_ms: RECEIVED_MS,
        }
    }

    /// When the test requests were received (Unix ms).
    const RECEIVED_MS: u64 = 1_796_000_000_123;

    fn err_of(o: &Outcome) -> Option<&JoinError> {
        o.result.as_ref().err()
    }

    #[test]
    fn join_accepts_decrypt_and_verify_device_side_for_each_version() {
        let c = ctx();
        for (i, v) in [MacVersion::V1_0_3, MacVersion::V1_0_4, MacVersion::V1_1]
            .into_iter()
            .enumerate()
        {
            let map = DeviceMap::default();
            let dev = 0x0004_A30B_001C_0530 + i as u64;
            add(&map, dev, v, Some(net(0x13)));
            let dn = 7;
            let o = process(
                &c,
                &map,
                &fields(
                    dev,
                    join_request(dev, v, dn, if v.is_1_1() { NWK } else { APP }),
                    0x13,
                ),
            );
            assert_eq!(o.kind(), "success", "{v}: {:?}", o.result);
            let a = o.result.unwrap();
            assert_eq!(a.mac_version, v);
            assert_eq!(a.join_nonce.as_u32(), 1);
            let up = o.update.unwrap();
            assert_eq!(up.state.last_dev_nonce, Some(dn));
            assert_eq!(up.state.last_join_nonce, 1);
            // The join is recorded: when it was received, through which network.
            assert_eq!(
                up.joined,
                LastJoin {
                    at_ms: RECEIVED_MS,
                    net_id: net(0x13)
                }
            );

            // Device side: decrypt the Join-accept and check its MIC with protocol.
            let enc = EncryptedJoinAccept::from_bytes(&a.phy_payload).unwrap();
            let app = KeyCipher::new(&AppKey::new(APP));
            let payload = if v.is_1_1() {
                let nwk = KeyCipher::new(&NwkKey::new(NWK));
                let js_int = KeyCipher::new(&derive::js_keys(&nwk, DevEui::new(dev)).js_int_key);
                enc.open(
                    JoinAcceptEncKey::NwkKey(&nwk),
                    JoinAcceptMicKey::OptNeg {
                        js_int_key: &js_int,
                        join_eui: JOIN_EUI,
                        answered: AnsweredRequest::JoinRequest(DevNonce(dn)),
                    },
                )
                .unwrap()
            } else {
                enc.open(
                    JoinAcceptEncKey::AppKey(&app),
                    JoinAcceptMicKey::Legacy(JoinRootKey::AppKey(&app)),
                )
                .unwrap()
            };
            assert_eq!(payload.join_nonce.as_u32(), 1);
            assert_eq!(payload.net_id, net(0x13));
            assert_eq!(payload.dev_addr, DevAddr::new(0x2601_1BDA));
            assert_eq!(payload.dl_settings.opt_neg(), v.is_1_1(), "{v}: OptNeg");
            assert_eq!(payload.dl_settings.rx1_dr_offset(), 1);
            assert_eq!(payload.dl_settings.rx2_data_rate(), 2);
            assert_eq!(a.dl_settings, payload.dl_settings.0);

            // The wrapped session keys are the ones the device derives.
            let ns = &c.ns_kek;
            match (&a.network, v.is_1_1()) {
                (NetworkKeys::V1_0 { nwk_s_key }, false) => {
                    let dk =
                        derive::session_keys_1_0(&app, payload.join_nonce, net(0x13), DevNonce(dn));
                    assert_eq!(nwk_s_key.kek_label, "ns-test");
                    let k: NwkSKey = nwk_s_key.open(Some(&ns.key)).unwrap();
                    assert_eq!(k, dk.nwk_s_key);
                    let ak: protocol::keys::AppSKey =
                        a.app_s_key.open(Some(&c.as_kek.key)).unwrap();
                    assert_eq!(ak, dk.app_s_key);
                }
                (
                    NetworkKeys::V1_1 {
                        f_nwk_s_int_key,
                        s_nwk_s_int_key,
                        nwk_s_enc_key,
                    },
                    true,
                ) => {
                    let nwk = KeyCipher::new(&NwkKey::new(NWK));
                    let dk = derive::session_keys_1_1(
                        &nwk,
                        &app,
                        payload.join_nonce,
                        JOIN_EUI,
                        AnsweredRequest::JoinRequest(DevNonce(dn)),
                    );
                    assert_eq!(
                        f_nwk_s_int_key
                            .open::<protocol::keys::FNwkSIntKey>(Some(&ns.key))
                            .unwrap(),
                        dk.f_nwk_s_int_key
                    );
                    assert_eq!(
                        s_nwk_s_int_key
                            .open::<protocol::keys::SNwkSIntKey>(Some(&ns.key))
                            .unwrap(),
                        dk.s_nwk_s_int_key
                    );
                    assert_eq!(
                        nwk_s_enc_key
                            .open::<protocol::keys::NwkSEncKey>(Some(&ns.key))
                            .unwrap(),
                        dk.nwk_s_enc_key
                    );
                    assert_eq!(
                        a.app_s_key
                            .open::<protocol::keys::AppSKey>(Some(&c.as_kek.key))
                            .unwrap(),
                        dk.app_s_key
                    );
                    // The AS KEK, not the NS KEK, wraps the AppSKey.
                    assert!(a
                        .app_s_key
                        .open::<protocol::keys::AppSKey>(Some(&ns.key))
                        .is_err());
                }
                (n, _) => panic!("{v}: wrong key set {n:?}"),
            }
            assert_eq!(a.lifetime, 3600);
        }
    }

    #[test]
    fn refusals_map_to_result_codes_and_change_nothing() {
        let c = ctx();
        let map = DeviceMap::default();
        add(&map, 1, MacVersion::V1_0_4, Some(net(0x13)));
        add(&map, 2, MacVersion::V1_0_3, None);
        add(&map, 4, MacVersion::V1_0_4, Some(net(0x13)));
        let cases: Vec<(JoinReqFields, &str, &str)> = vec![
            (
                fields(1, join_request(1, MacVersion::V1_0_4, 5, [9; 16]), 0x13),
                "MICFailed",
                "mic_failed",
            ),
            (
                fields(3, join_request(3, MacVersion::V1_0_4, 5, APP), 0x13),
                "UnknownDevEUI",
                "unknown_dev_eui",
            ),
            (
                fields(1, join_request(1, MacVersion::V1_0_4, 5, APP), 0x14),
                "ActivationDisallowed",
                "activation_disallowed",
            ),
            (
                fields(1, vec![0; JOIN_REQUEST_LEN - 1], 0x13),
                "MalformedRequest",
                "malformed",
            ),
            (
                fields(2, join_request(2, MacVersion::V1_0_3, 5, APP), 0x13),
                "ActivationDisallowed",
                "unclaimed",
            ),
            (
                fields(2, join_request(2, MacVersion::V1_0_3, 5, APP), 0x77),
                "ActivationDisallowed",
                "unclaimed",
            ),
            (
                fields(2, join_request(1, MacVersion::V1_0_4, 5, APP), 0x13),
                "MalformedRequest",
                "malformed",
            ),
            (
                JoinReqFields {
                    rx_delay: 16,
                    ..fields(1, join_request(1, MacVersion::V1_0_4, 5, APP), 0x13)
                },
                "MalformedRequest",
                "malformed",
            ),
            (
                JoinReqFields {
                    cf_list: Some(vec![0; 15]),
                    ..fields(1, join_request(1, MacVersion::V1_0_4, 5, APP), 0x13)
                },
                "MalformedRequest",
                "malformed",
            ),
        ];
        for (f, code, kind) in cases {
            let o = process(&c, &map, &f);
            let e = err_of(&o).unwrap_or_else(|| panic!("{kind}: accepted"));
            assert_eq!((e.result_code(), e.kind()), (code, kind));
            assert!(o.update.is_none());
        }
        for dev in [1, 2] {
            assert_eq!(
                map.get(&DevEui::new(dev)).unwrap().nonces,
                NonceState::default(),
                "refusals consume no DevNonce"
            );
        }
        // The home network activates a claimed device; an unclaimed device with a bad MIC is
        // still MICFailed (the MIC is checked first).
        let o = process(
            &c,
            &map,
            &fields(4, join_request(4, MacVersion::V1_0_4, 5, APP), 0x13),
        );
        assert_eq!(o.kind(), "success");
        let o = process(
            &c,
            &map,
            &fields(2, join_request(2, MacVersion::V1_0_3, 5, [9; 16]), 0x13),
        );
        assert_eq!(o.kind(), "mic_failed");
    }

    /// A Rejoin-request built device-side with `protocol`: type 1 under the device's JSIntKey,
    /// types 0 and 2 under a session's SNwkSIntKey (which the join server does not check).
    fn rejoin_request(dev: u64, t: u8, count: u16, nwk: [u8; 16], net_id: u32) -> Vec<u8> {
        use protocol::join::{RejoinBody, RejoinMicKey, RejoinRequest};
        use protocol::keys::SNwkSIntKey;
        let dev_eui = DevEui::new(dev);
        let nwk = KeyCipher::new(&NwkKey::new(nwk));
        let js_int = KeyCipher::new(&derive::js_keys(&nwk, dev_eui).js_int_key);
        let s = KeyCipher::new(&SNwkSIntKey::new([0x77; 16]));
        let (body, key) = match t {
            1 => (
                RejoinBody::Type1 {
                    join_eui: JOIN_EUI,
                    dev_eui,
                    rj_count1: count,
                },
                RejoinMicKey::JsIntKey(&js_int),
            ),
            0 => (
                RejoinBody::Type0 {
                    net_id: net(net_id),
                    dev_eui,
                    rj_count0: count,
                },
                RejoinMicKey::SNwkSIntKey(&s),
            ),
            _ => (
                RejoinBody::Type2 {
                    net_id: net(net_id),
                    dev_eui,
                    rj_count0: count,
                },
                RejoinMicKey::SNwkSIntKey(&s),
            ),
        };
        RejoinRequest::build(body, key).unwrap().to_bytes()
    }

    #[test]
    fn rejoins_of_each_type_answer_with_a_js_enc_key_join_accept_and_new_keys() {
        let c = ctx();
        let map = DeviceMap::default();
        let dev = 0x0004_A30B_001C_0531;
        add(&map, dev, MacVersion::V1_1, Some(net(0x13)));
        let nwk = KeyCipher::new(&NwkKey::new(NWK));
        let app = KeyCipher::new(&AppKey::new(APP));
        let js = derive::js_keys(&nwk, DevEui::new(dev));
        let (js_int, js_enc) = (
            KeyCipher::new(&js.js_int_key),
            KeyCipher::new(&js.js_enc_key),
        );
        let cases = [
            (1u8, 10u16, AnsweredRequest::Rejoin1 { rj_count1: 10 }),
            (0, 3, AnsweredRequest::Rejoin0 { rj_count0: 3 }),
            (2, 4, AnsweredRequest::Rejoin2 { rj_count0: 4 }),
        ];
        for (i, (t, count, answered)) in cases.into_iter().enumerate() {
            let o = process_rejoin(
                &c,
                &map,
                &fields(dev, rejoin_request(dev, t, count, NWK, 0x13), 0x13),
            );
            assert_eq!(o.kind(), "success", "type {t}: {:?}", o.result);
            let a = o.result.unwrap();
            assert_eq!(a.join_nonce.as_u32(), 1 + i as u32, "a new JoinNonce each");
            let up = o.update.unwrap();
            assert_eq!(up.state.last_join_nonce, 1 + i as u32);
            assert_eq!(up.state.last_rj_count1, Some(10), "type {t}");
            // Device side: JSEncKey decrypts it, the rejoin MIC (JSIntKey, type, JoinEUI,
            // RJcount) verifies; NwkKey (a Join-request's answer) does not.
            let enc = EncryptedJoinAccept::from_bytes(&a.phy_payload).unwrap();
            let mic = JoinAcceptMicKey::OptNeg {
                js_int_key: &js_int,
                join_eui: JOIN_EUI,
                answered,
            };
            let payload = enc.open(JoinAcceptEncKey::JsEncKey(&js_enc), mic).unwrap();
            assert!(enc.open(JoinAcceptEncKey::NwkKey(&nwk), mic).is_err());
            assert_eq!(payload.join_nonce, a.join_nonce);
            assert!(payload.dl_settings.opt_neg());
            let dk = derive::session_keys_1_1(&nwk, &app, payload.join_nonce, JOIN_EUI, answered);
            match &a.network {
                NetworkKeys::V1_1 {
                    s_nwk_s_int_key, ..
                } => assert_eq!(
                    s_nwk_s_int_key
                        .open::<protocol::keys::SNwkSIntKey>(Some(&c.ns_kek.key))
                        .unwrap(),
                    dk.s_nwk_s_int_key
                ),
                n => panic!("type {t}: {n:?}"),
            }
        }
    }

    #[test]
    fn rejoin_refusals() {
        let c = ctx();
        let map = DeviceMap::default();
        add(&map, 1, MacVersion::V1_1, Some(net(0x13)));
        add(&map, 2, MacVersion::V1_0_4, Some(net(0x13)));
        let run = |dev: u64, t: u8, count: u16, key: [u8; 16], frame_net: u32, sender: u32| {
            let o = process_rejoin(
                &c,
                &map,
                &fields(dev, rejoin_request(dev, t, count, key, frame_net), sender),
            );
            (o.kind(), o.update.is_some())
        };
        assert_eq!(run(1, 1, 5, NWK, 0, 0x13), ("success", true));
        // RJcount1 replayed or smaller: refused, nothing to commit.
        assert_eq!(run(1, 1, 5, NWK, 0, 0x13), ("rj_count1_too_small", false));
        assert_eq!(run(1, 1, 4, NWK, 0, 0x13), ("rj_count1_too_small", false));
        // Type 1 under another NwkKey; through another network; a 1.0 device.
        assert_eq!(run(1, 1, 6, [9; 16], 0, 0x13), ("mic_failed", false));
        assert_eq!(run(1, 1, 6, NWK, 0, 0x14), ("activation_disallowed", false));
        assert_eq!(run(2, 1, 6, NWK, 0, 0x13), ("rejoin_not_1_1", false));
        assert_eq!(run(2, 0, 6, NWK, 0x13, 0x13), ("rejoin_not_1_1", false));
        // Type 0/2 naming another NetID than the network server that forwards it.
        assert_eq!(run(1, 0, 1, NWK, 0x14, 0x13), ("rejoin_net_id", false));
        assert_eq!(run(1, 2, 1, NWK, 0x14, 0x13), ("rejoin_net_id", false));
        assert_eq!(run(3, 2, 1, NWK, 0x13, 0x13), ("unknown_dev_eui", false));
        // A Join-request's bytes are not a Rejoin-request.
        let o = process_rejoin(
            &c,
            &map,
            &fields(1, join_request(1, MacVersion::V1_1, 9, NWK), 0x13),
        );
        assert_eq!(o.kind(), "malformed");
        assert_eq!(
            map.get(&DevEui::new(1)).unwrap().nonces.last_rj_count1,
            Some(5)
        );
        assert_eq!(map.get(&DevEui::new(1)).unwrap().nonces.last_join_nonce, 1);
        let e = JoinError::RejoinNetId {
            frame: net(0x14),
            sender: net(0x13),
        };
        assert_eq!(e.result_code(), "ActivationDisallowed");
        assert_eq!(
            JoinError::RejoinNot11(MacVersion::V1_0_4).result_code(),
            "JoinReqFailed"
        );
    }

    #[test]
    fn dev_nonce_rules_through_the_pipeline() {
        let c = ctx();
        let map = DeviceMap::default();
        add(&map, 1, MacVersion::V1_0_4, Some(net(0x13)));
        add(&map, 2, MacVersion::V1_0_2, Some(net(0x13)));
        let run = |dev: u64, v: MacVersion, dn: u16| {
            let o = process(&c, &map, &fields(dev, join_request(dev, v, dn, APP), 0x13));
            (o.kind(), o.result.map(|a| a.join_nonce.as_u32()).ok())
        };
        assert_eq!(run(1, MacVersion::V1_0_4, 0), ("success", Some(1)));
        assert_eq!(run(1, MacVersion::V1_0_4, 0), ("dev_nonce_too_small", None));
        assert_eq!(run(1, MacVersion::V1_0_4, 3), ("success", Some(2)));
        assert_eq!(run(1, MacVersion::V1_0_4, 2), ("dev_nonce_too_small", None));
        assert_eq!(run(2, MacVersion::V1_0_2, 9), ("success", Some(1)));
        assert_eq!(run(2, MacVersion::V1_0_2, 3), ("success", Some(2)));
        assert_eq!(run(2, MacVersion::V1_0_2, 9), ("dev_nonce_replayed", None));
    }

    /// A stored state with no DevNonce and a JoinNonce not behind the memory's is a reset made
    /// through another instance; anything else keeps the memory's state (never behind the
    /// store's, a join possibly still being committed).
    #[test]
    fn only_a_stored_reset_replaces_the_nonces_in_memory() {
        let state = |dev_nonce: Option<u16>, join_nonce: u32| NonceState {
            last_dev_nonce: dev_nonce,
            used_dev_nonces: dev_nonce.into_iter().collect(),
            last_join_nonce: join_nonce,
            last_rj_count1: None,
        };
        assert!(reset_in_store(&state(Some(9), 4), &state(None, 4)));
        assert!(reset_in_store(&state(Some(9), 4), &state(None, 5)));
        // The first join still being committed.
        assert!(!reset_in_store(&state(Some(9), 5), &state(None, 4)));
        // Nothing to reset, or the store's state is a join's.
        assert!(!reset_in_store(&state(None, 0), &state(None, 0)));
        assert!(!reset_in_store(&state(Some(9), 4), &state(Some(3), 4)));
    }
}
