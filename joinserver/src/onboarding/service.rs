//! Onboarding operations, independent of HTTP: provisioning (signed manifests, owner tokens),
//! claim and release, lifecycle operations, audit queries. Each operation authorises the actor
//! per device, writes the store and the audit log in one transaction, and updates the running
//! join server's device map so a claim or release takes effect on the next JoinReq.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, UNIX_EPOCH};

use protocol::ids::{DevEui, NetId};
use protocol::keys::{AppKey, NwkKey};
use serde::Serialize;

use super::backend::OnboardBackend;
use super::db::{
    Actor, ApiKeyInfo, AuditEntry, AuditFilter, AuditRecord, ClaimOutcome, Ownership,
    OwnershipColumn, Role,
};
use super::import::{self as imp, Failure, ManifestSource, SourceError};
use super::manifest_sig::{SignatureError, TrustedKeys};
use super::secret::{self, ApiKeySecret};
use super::tr005;
use crate::atrest;
use crate::config::ClaimLimits;
use crate::core::{self, DeviceMap};
use crate::manifest::{Format, RowError};
use crate::secrets::MasterKey;
use crate::store::{NonceState, StoreError, StoredDevice};
use httpsec::ratelimit::FailureLimiter;

/// Why an onboarding operation was refused. Messages never contain a key or a token.
#[derive(Debug, thiserror::Error)]
pub enum OnbError {
    /// No valid API key.
    #[error("missing or unknown API key")]
    Unauthorized,
    /// The role may not do this.
    #[error("the {0} role may not do this")]
    Forbidden(&'static str),
    /// No such device, or not one the actor may see.
    #[error("no such device")]
    NotFound,
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The manifest has bad rows (the first ones, and how many in all); nothing was imported.
    #[error("{1} bad row(s) in the manifest; nothing imported")]
    Manifest(Vec<RowError>, usize),
    /// The manifest is larger than allowed; nothing was imported.
    #[error("the manifest is larger than {0} bytes; nothing imported")]
    TooLarge(usize),
    /// The manifest signature was refused; nothing was imported.
    #[error("{0}; nothing imported")]
    Signature(SignatureError),
    /// The owner token does not match.
    #[error("wrong owner token")]
    WrongToken,
    /// The device is already claimed (or bound to a home network at provisioning).
    #[error("the device is already claimed")]
    AlreadyClaimed,
    /// The device is not claimed.
    #[error("the device is not claimed")]
    NotClaimed,
    /// The device is locked by an administrator.
    #[error("the device is locked")]
    Locked,
    /// Too many failed claim attempts; retry after the duration.
    #[error("too many failed claim attempts; retry in {} s", .0.as_secs().max(1))]
    RateLimited(Duration),
    /// A request body is larger than its route allows.
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// Too many failed authentications from this source address; retry after the duration.
    #[error("too many failed authentications from this address; retry in {} s", .0.as_secs().max(1))]
    AuthRateLimited(Duration),
    /// As many imports as the server runs at once are in progress; retry after the duration.
    #[error("{running} manifest import(s) already in progress; retry in {} s", retry_after.as_secs().max(1))]
    Busy {
        /// Imports running (the configured maximum).
        running: usize,
        /// How long to wait.
        retry_after: Duration,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl OnbError {
    /// A short stable name: the API's `error` field and the audit outcome's reason.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound => "not_found",
            Self::BadRequest(_) => "bad_request",
            Self::Manifest(..) => "bad_manifest",
            Self::TooLarge(_) | Self::PayloadTooLarge(_) => "payload_too_large",
            Self::Signature(e) => e.kind(),
            Self::WrongToken => "wrong_token",
            Self::AlreadyClaimed => "already_claimed",
            Self::NotClaimed => "not_claimed",
            Self::Locked => "locked",
            Self::RateLimited(_) => "rate_limited",
            Self::AuthRateLimited(_) => "auth_rate_limited",
            Self::Busy { .. } => "busy",
            Self::Store(StoreError::Duplicate(_)) => "already_provisioned",
            Self::Store(_) => "internal",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Self::Unauthorized => 401,
            Self::Forbidden(_) | Self::WrongToken => 403,
            Self::NotFound => 404,
            Self::BadRequest(_) | Self::Manifest(..) => 400,
            Self::TooLarge(_) | Self::PayloadTooLarge(_) => 413,
            Self::Signature(SignatureError::Missing | SignatureError::Malformed) => 400,
            Self::Signature(_) => 422,
            Self::AlreadyClaimed | Self::NotClaimed => 409,
            Self::Store(StoreError::Duplicate(_)) => 409,
            Self::Locked => 423,
            Self::RateLimited(_) | Self::AuthRateLimited(_) | Self::Busy { .. } => 429,
            Self::Store(_) => 500,
        }
    }
}

/// A device as the API shows it (never keys or tokens). Fields a role may not see are absent.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeviceView {
    /// DevEUI.
    pub dev_eui: String,
    /// JoinEUI.
    pub join_eui: String,
    /// LoRaWAN MAC version.
    pub mac_version: String,
    /// Whether the device has a home network (claimed or bound at import).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claimed: Option<bool>,
    /// Home NetID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub home_net_id: Option<String>,
    /// Owner tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Provisioning manufacturer tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    /// Locked against claims.
    pub locked: bool,
    /// Whether the device has an owner token to claim with.
    pub has_owner_token: bool,
    /// Last accepted DevNonce.
    pub last_dev_nonce: Option<u16>,
    /// Last JoinNonce sent.
    pub last_join_nonce: u32,
    /// When the last accepted join was received (RFC 3339 UTC); `null` before the first join,
    /// absent for manufacturers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_join_at: Option<Option<String>>,
    /// The NetID of the network that last joined it; `null` before the first join, absent
    /// for manufacturers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_join_net_id: Option<Option<String>>,
}

/// A generated owner token, returned once.
#[derive(Clone, Serialize, PartialEq, Eq)]
pub struct IssuedToken {
    /// The device.
    pub dev_eui: String,
    /// The token: print it on the device's label; it is not shown again.
    pub owner_token: String,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IssuedToken({}, <redacted>)", self.dev_eui)
    }
}

/// What an import did.
#[derive(Debug, Clone, Serialize)]
pub struct ImportResult {
    /// Devices imported.
    pub imported: usize,
    /// The fingerprint of the trusted key that signed the manifest, if signed.
    pub signed_by: Option<String>,
    /// Owner tokens generated for devices whose manifest row had none.
    pub generated_owner_tokens: Vec<IssuedToken>,
}

/// What `GET /api/v1/me` shows the holder of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Me {
    /// The key's public id.
    pub key_id: String,
    /// Its tenant.
    pub tenant: String,
    /// Its role.
    pub role: Role,
    /// The tenant's home NetID (6 hex digits), if an administrator set one.
    pub home_net_id: Option<String>,
}

/// The onboarding service: the store, the running server's devices, trusted keys, limits.
#[derive(Debug)]
pub struct Onboarding {
    db: Mutex<Box<dyn OnboardBackend>>,
    devices: Option<Arc<DeviceMap>>,
    master: MasterKey,
    trusted: TrustedKeys,
    per_device: FailureLimiter<DevEui>,
    per_key: FailureLimiter<String>,
    /// Failed authentications per source address.
    per_addr: FailureLimiter<Option<IpAddr>>,
    /// The shortest manifest-supplied owner token.
    min_owner_token_len: usize,
    /// Held while an import commits and loads its devices into the map (shared with the
    /// server's reload thread, so the devices are not prepared twice).
    map_sync: Arc<Mutex<()>>,
    /// The root-key rotation trail a rotation starts ([`crate::rekey`]).
    rekey: Option<Arc<crate::rekey::RekeyTrail>>,
}

/// Failed authentications allowed per source address and window, unless configured.
const DEFAULT_AUTH_FAILURES: u32 = 10;
/// The failed-authentication window, unless configured.
const DEFAULT_AUTH_WINDOW: Duration = Duration::from_secs(300);

fn dev_detail(home: NetId, via: &str) -> String {
    format!("home_net_id {home}, via {via}")
}

impl Onboarding {
    /// A service over `db`. `devices` is the running server's map (absent on the command line).
    ///
    /// The failed-claim limits start from the audit log: the claims refused for a wrong token
    /// or an unknown device within the last window count again, per DevEUI and per API key, so
    /// a restart does not reset the protection against owner-token guessing.
    pub fn new(
        db: impl Into<Box<dyn OnboardBackend>>,
        devices: Option<Arc<DeviceMap>>,
        master: MasterKey,
        trusted: TrustedKeys,
        limits: ClaimLimits,
    ) -> Self {
        let mut db = db.into();
        let per_device = FailureLimiter::new(limits.per_device, limits.window);
        let per_key = FailureLimiter::new(limits.per_key, limits.window);
        let (now, now_ms) = (Instant::now(), super::db::now_ms());
        let window_ms = i64::try_from(limits.window.as_millis()).unwrap_or(i64::MAX);
        match db.claim_failures_since(now_ms.saturating_sub(window_ms)) {
            Ok(failures) => {
                for (at_ms, actor, dev) in &failures {
                    let ago = Duration::from_millis(u64::try_from(now_ms - at_ms).unwrap_or(0));
                    let at = now.checked_sub(ago).unwrap_or(now);
                    per_key.fail(actor, at);
                    if let Some(d) = dev.as_deref().and_then(|d| d.parse::<DevEui>().ok()) {
                        per_device.fail(&d, at);
                    }
                }
                if !failures.is_empty() {
                    tracing::info!(
                        failures = failures.len(),
                        "failed-claim limits restored from the audit log"
                    );
                }
            }
            Err(e) => tracing::error!(error = %e, "reading recent claim failures"),
        }
        Self {
            db: Mutex::new(db),
            devices,
            master,
            trusted,
            per_device,
            per_key,
            per_addr: FailureLimiter::new(DEFAULT_AUTH_FAILURES, DEFAULT_AUTH_WINDOW),
            min_owner_token_len: crate::config::MIN_OWNER_TOKEN_LEN,
            map_sync: Arc::default(),
            rekey: None,
        }
    }

    /// Sets the shortest owner token a manifest may supply (characters).
    #[must_use]
    pub fn with_min_owner_token_len(mut self, n: usize) -> Self {
        self.min_owner_token_len = n;
        self
    }

    /// Sets the failed-authentication limit: `max` per source address per `window`.
    #[must_use]
    pub fn with_auth_limits(mut self, max: u32, window: Duration) -> Self {
        self.per_addr = FailureLimiter::new(max, window);
        self
    }

    /// Shares the lock the running server's reload thread holds while it brings the device map
    /// in line with the store: an import holds it from its commit until its devices are in the
    /// map, so the reload that its commit triggers finds them there.
    #[must_use]
    pub fn with_map_sync(mut self, lock: Arc<Mutex<()>>) -> Self {
        self.map_sync = lock;
        self
    }

    /// Root-key rotations start `trail` (the running server's).
    #[must_use]
    pub fn with_rekey_trail(mut self, trail: Option<Arc<crate::rekey::RekeyTrail>>) -> Self {
        self.rekey = trail;
        self
    }

    fn db(&self) -> MutexGuard<'_, Box<dyn OnboardBackend>> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Audits an import refused before it started (e.g. too many running) and returns the
    /// error.
    pub fn refuse_import(&self, actor: &Actor, e: OnbError) -> OnbError {
        self.refuse(actor, "import", None, e, "")
    }

    fn refuse(
        &self,
        actor: &Actor,
        action: &str,
        dev: Option<DevEui>,
        e: OnbError,
        detail: &str,
    ) -> OnbError {
        let outcome = format!("refused:{}", e.kind());
        let r = self.db().audit_append(&AuditEntry {
            actor,
            action,
            dev_eui: dev,
            outcome: &outcome,
            detail,
        });
        if let Err(err) = r {
            tracing::error!(error = %err, "audit append failed");
        }
        e
    }

    /// The actor of the API key `key` presented from `peer`. While `peer` has used up its failed
    /// authentications the key is not even checked (`AuthRateLimited`); each failure (no key, an
    /// unknown, revoked or expired one) counts against `peer` and is audited as `authenticate`
    /// by `addr:<peer>` (never with the key), so at most the limit of records per address and
    /// window.
    pub fn authenticate_from(
        &self,
        key: Option<&str>,
        peer: Option<IpAddr>,
    ) -> Result<Actor, OnbError> {
        let now = Instant::now();
        if let Err(wait) = self.per_addr.check(&peer, now) {
            return Err(OnbError::AuthRateLimited(wait));
        }
        let result = match key {
            Some(k) => self.authenticate(k),
            None => Err(OnbError::Unauthorized),
        };
        if let Err(OnbError::Unauthorized) = result {
            self.per_addr.fail(&peer, now);
            let detail = if key.is_some() {
                "unknown, revoked or expired API key"
            } else {
                "no API key"
            };
            return Err(self.refuse(
                &Actor::anonymous(peer),
                "authenticate",
                None,
                OnbError::Unauthorized,
                detail,
            ));
        }
        result
    }

    /// The actor of an API key, or `Unauthorized`.
    pub fn authenticate(&self, key: &str) -> Result<Actor, OnbError> {
        let k = ApiKeySecret::from_text(key);
        if !k.expose().starts_with(secret::API_KEY_PREFIX) {
            return Err(OnbError::Unauthorized);
        }
        self.db()
            .find_api_key(&k.hash(), super::db::now_ms())?
            .map(|r| Actor::from_key(&r))
            .ok_or(OnbError::Unauthorized)
    }

    /// Creates an API key; returns it (shown once) and its public id.
    pub fn create_api_key(
        &self,
        actor: &Actor,
        role: Role,
        name: &str,
    ) -> Result<(ApiKeySecret, String), OnbError> {
        self.create_api_key_until(actor, role, name, None)
    }

    /// Creates an API key for the tenant `name` that expires at `expires_ms` (Unix ms) if
    /// given; returns it (shown once) and its public id. Admins only over the API.
    pub fn create_api_key_until(
        &self,
        actor: &Actor,
        role: Role,
        name: &str,
        expires_ms: Option<i64>,
    ) -> Result<(ApiKeySecret, String), OnbError> {
        if actor.role != Role::Admin {
            return Err(OnbError::Forbidden(actor.role.as_str()));
        }
        if expires_ms.is_some_and(|e| e <= super::db::now_ms()) {
            return Err(OnbError::BadRequest("the expiry is in the past".into()));
        }
        let name = name.trim();
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(OnbError::BadRequest(
                "the name must be 1 to 128 printable characters".into(),
            ));
        }
        let key = ApiKeySecret::generate();
        let rec = self
            .db()
            .create_api_key(actor, name, role, &key.hash(), expires_ms)?;
        Ok((key, rec.id))
    }

    /// The caller's own key: its id, tenant, role, and the tenant's home NetID (what an
    /// installer's page proposes to claim for). Any role.
    pub fn me(&self, actor: &Actor) -> Result<Me, OnbError> {
        let tenant = actor.tenant.clone().ok_or(OnbError::Unauthorized)?;
        let home_net_id = self.db().tenant_home_net_id(&tenant)?;
        Ok(Me {
            key_id: actor
                .id
                .strip_prefix("key:")
                .unwrap_or(&actor.id)
                .to_owned(),
            tenant,
            role: actor.role,
            home_net_id: home_net_id.map(|n| n.to_string()),
        })
    }

    /// Sets (or with `None` clears) the home NetID of the tenant `name` (created if new):
    /// admins only; audited.
    pub fn set_tenant_home_net_id(
        &self,
        actor: &Actor,
        name: &str,
        net_id: Option<NetId>,
    ) -> Result<(), OnbError> {
        if actor.role != Role::Admin {
            return Err(OnbError::Forbidden(actor.role.as_str()));
        }
        Ok(self
            .db()
            .set_tenant_home_net_id(actor, name.trim(), net_id)?)
    }

    /// Every API key (never a key): admins only.
    pub fn list_api_keys(&self, actor: &Actor) -> Result<Vec<ApiKeyInfo>, OnbError> {
        if actor.role != Role::Admin {
            return Err(OnbError::Forbidden(actor.role.as_str()));
        }
        Ok(self.db().list_api_keys()?)
    }

    /// Revokes an API key by id: admins only; audited. `NotFound` if no such valid key.
    pub fn revoke_api_key(&self, actor: &Actor, id: &str) -> Result<(), OnbError> {
        if actor.role != Role::Admin {
            return Err(self.refuse(
                actor,
                "api_key_revoke",
                None,
                OnbError::Forbidden(actor.role.as_str()),
                "",
            ));
        }
        if self.db().revoke_api_key(actor, id)? {
            Ok(())
        } else {
            Err(OnbError::NotFound)
        }
    }

    /// Imports a manifest held in memory; see [`Self::import_stream`].
    pub fn import(
        &self,
        actor: &Actor,
        manifest: &[u8],
        format: Option<Format>,
        signature: Option<&[u8]>,
        require_signature: bool,
    ) -> Result<ImportResult, OnbError> {
        let mut source = imp::SliceSource::new(manifest);
        self.import_stream(actor, &mut source, format, signature, require_signature)
    }

    /// Imports a manifest (CSV or JSON lines) read chunk by chunk from `source`, in bounded
    /// memory ([`super::import`]). With `require_signature`, or when a signature is given, the
    /// signature must verify under a trusted key. All or nothing; refusals are audited. Runs on
    /// the calling (blocking) thread, on a connection of its own: other operations go on while
    /// the manifest arrives.
    pub fn import_stream(
        &self,
        actor: &Actor,
        source: &mut dyn ManifestSource,
        format: Option<Format>,
        signature: Option<&[u8]>,
        require_signature: bool,
    ) -> Result<ImportResult, OnbError> {
        let refuse = |e: OnbError, detail: &str| self.refuse(actor, "import", None, e, detail);
        if !matches!(actor.role, Role::Manufacturer | Role::Admin) {
            return Err(refuse(OnbError::Forbidden(actor.role.as_str()), ""));
        }
        // A missing or malformed signature, or no trusted key, is refused before the manifest
        // is read.
        let verifier = if require_signature || signature.is_some() {
            let manufacturer = (actor.role == Role::Manufacturer)
                .then_some(actor.tenant.as_deref())
                .flatten();
            match self.trusted.stream_for(signature, manufacturer) {
                Ok(v) => Some(v),
                Err(e) => return Err(refuse(OnbError::Signature(e), "manifest not read")),
            }
        } else {
            None
        };
        let mut importer = self.db().importer()?;
        let job = imp::Job {
            actor,
            master: &self.master,
            format,
            verifier,
            commit_lock: self.devices.as_ref().map(|_| &*self.map_sync),
            min_owner_token_len: self.min_owner_token_len,
        };
        let mut loaded = |d: StoredDevice| {
            let Some(map) = &self.devices else { return };
            if let Err(e) = core::put_stored(map, &self.master, &d, core::Refresh::Replace) {
                tracing::error!(dev_eui = %d.dev_eui, error = %e, "device not loaded");
            }
        };
        let on_device = self
            .devices
            .is_some()
            .then_some(&mut loaded as &mut dyn FnMut(StoredDevice));
        match importer.run(job, source, on_device) {
            Ok(r) => Ok(ImportResult {
                imported: r.imported,
                signed_by: r.signed_by,
                generated_owner_tokens: r
                    .generated
                    .into_iter()
                    .map(|g| IssuedToken {
                        dev_eui: g.dev_eui.to_string(),
                        owner_token: g.owner_token(),
                    })
                    .collect(),
            }),
            Err(Failure::Source { error, what }) => Err(refuse(
                match error {
                    SourceError::TooLarge(n) => OnbError::TooLarge(n),
                    e @ SourceError::Incomplete(_) => OnbError::BadRequest(e.to_string()),
                },
                &what,
            )),
            Err(Failure::Signature { error, what }) => {
                Err(refuse(OnbError::Signature(error), &what))
            }
            Err(Failure::Rows { rows, total, what }) => {
                Err(refuse(OnbError::Manifest(rows, total), &what))
            }
            Err(Failure::Store(e)) => Err(refuse(e.into(), "")),
        }
    }

    fn may_see(actor: &Actor, own: &Ownership) -> bool {
        match actor.role {
            Role::Admin => true,
            Role::Owner => own.owner.is_some() && own.owner == actor.tenant,
            Role::Manufacturer => own.manufacturer.is_some() && own.manufacturer == actor.tenant,
        }
    }

    fn view(actor: &Actor, d: &StoredDevice, own: &Ownership) -> DeviceView {
        let sees_owner = actor.role != Role::Manufacturer;
        DeviceView {
            dev_eui: d.dev_eui.to_string(),
            join_eui: d.join_eui.to_string(),
            mac_version: d.mac_version.as_str().to_owned(),
            claimed: sees_owner.then_some(d.home_net_id.is_some()),
            home_net_id: if sees_owner {
                d.home_net_id.map(|n| n.to_string())
            } else {
                None
            },
            owner: if sees_owner { own.owner.clone() } else { None },
            manufacturer: own.manufacturer.clone(),
            locked: own.locked,
            has_owner_token: own.token_hash.is_some(),
            last_dev_nonce: d.nonces.last_dev_nonce,
            last_join_nonce: d.nonces.last_join_nonce,
            last_join_at: sees_owner.then(|| {
                d.last_join
                    .map(|j| protocol::time::rfc3339(UNIX_EPOCH + Duration::from_millis(j.at_ms)))
            }),
            last_join_net_id: sees_owner.then(|| d.last_join.map(|j| j.net_id.to_string())),
        }
    }

    /// A device the actor may see (404 otherwise).
    fn visible_device(
        &self,
        actor: &Actor,
        dev: DevEui,
    ) -> Result<(StoredDevice, Ownership), OnbError> {
        match self.db().device(dev)? {
            Some((d, o)) if Self::may_see(actor, &o) => Ok((d, o)),
            _ => Err(OnbError::NotFound),
        }
    }

    /// One device.
    pub fn get(&self, actor: &Actor, dev: DevEui) -> Result<DeviceView, OnbError> {
        let (d, o) = self.visible_device(actor, dev)?;
        Ok(Self::view(actor, &d, &o))
    }

    /// The devices the actor may see, in DevEUI order, after `after`, at most `limit`.
    pub fn list(
        &self,
        actor: &Actor,
        after: Option<DevEui>,
        limit: u32,
    ) -> Result<Vec<DeviceView>, OnbError> {
        let tenant = actor.tenant.as_deref().unwrap_or("");
        let scope = match actor.role {
            Role::Admin => None,
            Role::Owner => Some((OwnershipColumn::Owner, tenant)),
            Role::Manufacturer => Some((OwnershipColumn::Manufacturer, tenant)),
        };
        let mut db = self.db();
        let ids = db.visible(scope, after, limit.clamp(1, 1000))?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some((d, o)) = db.device(id)? {
                out.push(Self::view(actor, &d, &o));
            }
        }
        Ok(out)
    }

    /// Brings the running server's copy of a device in line with the store after a change of
    /// its home network and owner (its nonce state, never behind the store's, is kept).
    fn refresh_home(&self, dev: DevEui) -> Result<(), OnbError> {
        let Some(map) = &self.devices else {
            return Ok(());
        };
        let stored = self.db().stored_device(dev)?;
        if let (Some(s), Some(mut m)) = (stored, map.get_mut(&dev)) {
            m.home_net_id = s.home_net_id;
            m.owner = s.owner.as_deref().map(Arc::from);
            m.provisioned = core::provisioning_fingerprint(&s);
        }
        Ok(())
    }

    /// Claims a device with its owner token for the actor's tenant and `home`. Failed attempts
    /// count against the DevEUI and the API key; refusals are audited.
    pub fn claim(
        &self,
        actor: &Actor,
        dev: DevEui,
        token: &str,
        home: NetId,
        via: &str,
    ) -> Result<DeviceView, OnbError> {
        let detail = dev_detail(home, via);
        let refuse = |e: OnbError| self.refuse(actor, "claim", Some(dev), e, &detail);
        let Some(tenant) = actor.tenant.clone().filter(|_| actor.role == Role::Owner) else {
            return Err(refuse(OnbError::Forbidden(actor.role.as_str())));
        };
        let now = Instant::now();
        if let Err(wait) = self
            .per_key
            .check(&actor.id, now)
            .and(self.per_device.check(&dev, now))
        {
            return Err(refuse(OnbError::RateLimited(wait)));
        }
        let fail = |e: OnbError| {
            self.per_key.fail(&actor.id, now);
            self.per_device.fail(&dev, now);
            refuse(e)
        };
        let presented = secret::owner_token_hash(dev, token);
        // The check and the write are one transaction: of concurrent claims, one wins.
        let outcome = self
            .db()
            .claim(actor, dev, &presented, &tenant, home, &detail)?;
        match outcome {
            ClaimOutcome::Claimed => {}
            ClaimOutcome::NotFound => return Err(fail(OnbError::NotFound)),
            ClaimOutcome::WrongToken => return Err(fail(OnbError::WrongToken)),
            ClaimOutcome::Locked => return Err(refuse(OnbError::Locked)),
            ClaimOutcome::AlreadyClaimed => return Err(refuse(OnbError::AlreadyClaimed)),
        }
        self.refresh_home(dev)?;
        self.get(actor, dev)
    }

    /// Claims from a TR005 QR code's text (its DevEUI and OwnerToken).
    pub fn claim_qr(&self, actor: &Actor, qr: &str, home: NetId) -> Result<DeviceView, OnbError> {
        match tr005::parse_claim(qr) {
            Ok(c) => self.claim(actor, c.dev_eui, &c.owner_token, home, "qr"),
            Err(e) => Err(self.refuse(
                actor,
                "claim",
                None,
                OnbError::BadRequest(format!("QR code: {e}")),
                "via qr",
            )),
        }
    }

    /// Releases a claimed device: it leaves its home network and can no longer join until it is
    /// claimed again. With `rotate`, a fresh owner token replaces the old one and is returned
    /// (once) for the releasing owner to pass on.
    pub fn release(
        &self,
        actor: &Actor,
        dev: DevEui,
        rotate: bool,
    ) -> Result<Option<String>, OnbError> {
        let refuse = |e: OnbError| self.refuse(actor, "release", Some(dev), e, "");
        if actor.role == Role::Manufacturer {
            return Err(refuse(OnbError::Forbidden(actor.role.as_str())));
        }
        let (d, own) = self.visible_device(actor, dev).map_err(&refuse)?;
        if d.home_net_id.is_none() && own.owner.is_none() {
            return Err(refuse(OnbError::NotClaimed));
        }
        let token = rotate.then(secret::generate_owner_token);
        let hash = token.as_deref().map(|t| secret::owner_token_hash(dev, t));
        self.db().release(actor, dev, hash.as_ref())?;
        self.refresh_home(dev)?;
        Ok(token)
    }

    /// Locks or unlocks a device against claims (admin).
    pub fn set_locked(
        &self,
        actor: &Actor,
        dev: DevEui,
        locked: bool,
    ) -> Result<DeviceView, OnbError> {
        let action = if locked { "lock" } else { "unlock" };
        if actor.role != Role::Admin {
            return Err(self.refuse(
                actor,
                action,
                Some(dev),
                OnbError::Forbidden(actor.role.as_str()),
                "",
            ));
        }
        self.visible_device(actor, dev)
            .map_err(|e| self.refuse(actor, action, Some(dev), e, ""))?;
        self.db().set_locked(actor, dev, locked)?;
        self.get(actor, dev)
    }

    fn lifecycle_allowed(
        &self,
        actor: &Actor,
        action: &str,
        dev: DevEui,
    ) -> Result<StoredDevice, OnbError> {
        let refuse = |e: OnbError| self.refuse(actor, action, Some(dev), e, "");
        if actor.role == Role::Manufacturer {
            return Err(refuse(OnbError::Forbidden(actor.role.as_str())));
        }
        let (d, _) = self.visible_device(actor, dev).map_err(&refuse)?;
        Ok(d)
    }

    /// Resets a device's DevNonce state after a factory reset, so its DevNonce counter may start
    /// again. The JoinNonce keeps counting up (a 1.1 device requires it).
    pub fn reset_dev_nonce(&self, actor: &Actor, dev: DevEui) -> Result<DeviceView, OnbError> {
        let d = self.lifecycle_allowed(actor, "dev_nonce_reset", dev)?;
        self.write_nonces_and_keys(actor, "dev_nonce_reset", &d, None, "DevNonce state cleared")?;
        self.get(actor, dev)
    }

    /// Replaces a device's root keys (re-provisioned in the field) and resets its DevNonce
    /// state. Keys arrive as 32 hex digits and are stored wrapped under the master key.
    pub fn rotate_root_keys(
        &self,
        actor: &Actor,
        dev: DevEui,
        app_key: &str,
        nwk_key: Option<&str>,
    ) -> Result<DeviceView, OnbError> {
        let d = self.lifecycle_allowed(actor, "root_key_rotation", dev)?;
        let bad = |m: String| {
            self.refuse(
                actor,
                "root_key_rotation",
                Some(dev),
                OnbError::BadRequest(m),
                "",
            )
        };
        let app: AppKey = app_key
            .trim()
            .parse()
            .map_err(|_| bad("app_key: expected 32 hex digits".into()))?;
        let nwk: Option<NwkKey> = match (
            nwk_key.map(str::trim).filter(|k| !k.is_empty()),
            d.mac_version.is_1_1(),
        ) {
            (Some(k), true) => Some(
                k.parse()
                    .map_err(|_| bad("nwk_key: expected 32 hex digits".into()))?,
            ),
            (None, true) => return Err(bad("nwk_key is required for LoRaWAN 1.1".into())),
            (Some(_), false) => {
                return Err(bad(format!(
                    "nwk_key must be absent for LoRaWAN {}",
                    d.mac_version.as_str()
                )))
            }
            (None, false) => None,
        };
        let app_w = atrest::seal_app_key(&self.master, &app);
        let nwk_w = nwk.as_ref().map(|k| atrest::seal_nwk_key(&self.master, k));
        self.write_nonces_and_keys(
            actor,
            "root_key_rotation",
            &d,
            Some((app_w, nwk_w)),
            "root keys replaced; DevNonce state cleared",
        )?;
        self.get(actor, dev)
    }

    /// Writes a cleared DevNonce state (and new keys) to the store and the running server. The
    /// device's map entry is held across the store write, so no join of this device runs in
    /// between.
    fn write_nonces_and_keys(
        &self,
        actor: &Actor,
        action: &str,
        d: &StoredDevice,
        keys: Option<(Vec<u8>, Option<Vec<u8>>)>,
        detail: &str,
    ) -> Result<(), OnbError> {
        let mut guard = self.devices.as_ref().and_then(|m| m.get_mut(&d.dev_eui));
        let join_nonce = guard
            .as_ref()
            .map_or(0, |g| g.nonces.last_join_nonce)
            .max(d.nonces.last_join_nonce);
        let cleared = NonceState {
            last_dev_nonce: None,
            used_dev_nonces: Vec::new(),
            last_join_nonce: join_nonce,
            // New root keys: the device's rejoin counter starts again too.
            last_rj_count1: None,
        };
        let seq = self.db().set_nonces_and_keys(
            actor,
            action,
            d.dev_eui,
            &cleared,
            keys.as_ref().map(|(a, n)| (a.as_slice(), n.as_deref())),
            detail,
        )?;
        if let (Some(t), Some(_)) = (&self.rekey, &keys) {
            t.rotated(d.dev_eui, seq);
        }
        if let Some(g) = guard.as_mut() {
            g.nonces = cleared.clone();
            if let Some((app_w, nwk_w)) = keys {
                let updated = StoredDevice {
                    app_key_wrapped: app_w,
                    nwk_key_wrapped: nwk_w,
                    nonces: cleared,
                    ..d.clone()
                };
                match core::Device::from_stored(&self.master, &updated) {
                    Ok(dev) => **g = dev,
                    Err(e) => {
                        tracing::error!(dev_eui = %d.dev_eui, error = %e, "rotated keys not loaded")
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes a device: an admin, or its manufacturer while it is unclaimed.
    pub fn deprovision(&self, actor: &Actor, dev: DevEui) -> Result<(), OnbError> {
        let refuse = |e: OnbError| self.refuse(actor, "deprovision", Some(dev), e, "");
        if actor.role == Role::Owner {
            return Err(refuse(OnbError::Forbidden(actor.role.as_str())));
        }
        let (d, own) = self.visible_device(actor, dev).map_err(&refuse)?;
        if actor.role == Role::Manufacturer && (d.home_net_id.is_some() || own.owner.is_some()) {
            return Err(refuse(OnbError::AlreadyClaimed));
        }
        if !self.db().deprovision(actor, dev)? {
            return Err(OnbError::NotFound);
        }
        if let Some(map) = &self.devices {
            map.remove(&dev);
        }
        Ok(())
    }

    /// Audit records: all for an admin, the tenant's own for others.
    pub fn audit(&self, actor: &Actor, filter: &AuditFilter) -> Result<Vec<AuditRecord>, OnbError> {
        let tenant = match actor.role {
            Role::Admin => None,
            _ => Some(actor.tenant.as_deref().unwrap_or("")),
        };
        Ok(self.db().audit(filter, tenant)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onboarding::db::OnboardStore;
    use protocol::keys::Kek;

    /// The service of these tests: their manifests' owner tokens are T1 to T3, so the
    /// minimum token length is 2 (`short_owner_tokens_are_refused_with_their_line` tests the
    /// default).
    fn service(dir: &std::path::Path, limits: ClaimLimits) -> Onboarding {
        Onboarding::new(
            OnboardStore::open(dir).unwrap(),
            Some(Arc::new(DeviceMap::default())),
            MasterKey(Kek::new([3; 16])),
            TrustedKeys::default(),
            limits,
        )
        .with_min_owner_token_len(2)
    }

    /// A manifest signed by a key bound to manufacturer acme is refused (and audited) when
    /// manufacturer bolt imports it: bolt used to get the devices and their owner tokens.
    #[test]
    fn a_manifest_signed_for_another_manufacturer_is_refused_and_audited() {
        use ed25519_dalek::{Signer, SigningKey};
        let tmp = tempfile::tempdir().unwrap();
        let acme_signer = SigningKey::from_bytes(&[7; 32]);
        let mut per = std::collections::BTreeMap::new();
        per.insert(
            "acme".to_owned(),
            vec![hex::encode(acme_signer.verifying_key().as_bytes())],
        );
        let s = Onboarding::new(
            OnboardStore::open(tmp.path()).unwrap(),
            None,
            MasterKey(Kek::new([3; 16])),
            TrustedKeys::parse_with(&[], &per).unwrap(),
            ClaimLimits::default(),
        )
        .with_min_owner_token_len(2);
        let (acme, bolt) = (
            actor(&s, Role::Manufacturer, "acme"),
            actor(&s, Role::Manufacturer, "bolt"),
        );
        let sig = acme_signer.sign(MANIFEST.as_bytes()).to_bytes();
        match s.import(&bolt, MANIFEST.as_bytes(), None, Some(&sig), true) {
            Err(OnbError::Signature(SignatureError::OtherManufacturer)) => {}
            other => panic!("{other:?}"),
        }
        assert!(s.db().visible(None, None, 10).unwrap().is_empty());
        let refused = s
            .db()
            .audit(
                &AuditFilter {
                    action: Some("import".into()),
                    outcome: Some("refused:signature_other_manufacturer".into()),
                    ..AuditFilter::default()
                },
                None,
            )
            .unwrap();
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].tenant.as_deref(), Some("bolt"));
        let r = s
            .import(&acme, MANIFEST.as_bytes(), None, Some(&sig), true)
            .unwrap();
        assert_eq!(r.imported, 3);
    }

    /// Manifest-supplied owner tokens shorter than the minimum are refused with their line;
    /// nothing is imported.
    #[test]
    fn short_owner_tokens_are_refused_with_their_line() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Onboarding::new(
            OnboardStore::open(tmp.path()).unwrap(),
            None,
            MasterKey(Kek::new([3; 16])),
            TrustedKeys::default(),
            ClaimLimits::default(),
        );
        let manifest = "dev_eui,join_eui,mac_version,app_key,nwk_key,owner_token\n\
             0000000000000001,70B3D57ED0000001,1.0.4,2B7E151628AED2A6ABF7158809CF4F3C,,A1B2C3D4E5F6\n\
             0000000000000002,70B3D57ED0000001,1.0.4,2B7E151628AED2A6ABF7158809CF4F3C,,T2\n\
             0000000000000003,70B3D57ED0000001,1.0.4,2B7E151628AED2A6ABF7158809CF4F3C,,\n";
        match s.import(&Actor::cli(), manifest.as_bytes(), None, None, false) {
            Err(OnbError::Manifest(rows, 1)) => {
                assert_eq!(rows[0].line, 3);
                assert_eq!(rows[0].column, "owner_token");
                assert!(rows[0].message.contains("shorter than 12"), "{}", rows[0]);
            }
            other => panic!("{other:?}"),
        }
        assert!(s.db().visible(None, None, 10).unwrap().is_empty());
    }

    /// Three 1.0.4 devices, 1 to 3, with owner tokens T1 to T3.
    const MANIFEST: &str = "dev_eui,join_eui,mac_version,app_key,nwk_key,owner_token\n\
         0000000000000001,70B3D57ED0000001,1.0.4,2B7E151628AED2A6ABF7158809CF4F3C,,T1\n\
         0000000000000002,70B3D57ED0000001,1.0.4,2B7E151628AED2A6ABF7158809CF4F3C,,T2\n\
         0000000000000003,70B3D57ED0000001,1.0.4,2B7E151628AED2A6ABF7158809CF4F3C,,T3\n";

    fn actor(s: &Onboarding, role: Role, name: &str) -> Actor {
        let (k, _) = s.create_api_key(&Actor::cli(), role, name).unwrap();
        s.authenticate(k.expose()).unwrap()
    }

    /// Concurrent claims of one device with its token, by different tenants: exactly one
    /// succeeds and the device belongs to it (the check and the write are one transaction;
    /// they were two lock scopes, so several claims could win).
    #[test]
    fn concurrent_claims_with_one_token_give_exactly_one_success() {
        let tmp = tempfile::tempdir().unwrap();
        let s = service(tmp.path(), ClaimLimits::default());
        let mut manifest =
            String::from("dev_eui,join_eui,mac_version,app_key,nwk_key,owner_token\n");
        for dev in 1..=40u64 {
            manifest.push_str(&format!(
                "{dev:016X},70B3D57ED0000001,1.0.4,2B7E151628AED2A6ABF7158809CF4F3C,,TOKEN{dev}\n"
            ));
        }
        s.import(&Actor::cli(), manifest.as_bytes(), None, None, false)
            .unwrap();
        let owners: Vec<Actor> = (0..8)
            .map(|i| actor(&s, Role::Owner, &format!("tenant{i}")))
            .collect();
        for dev in 1..=40u64 {
            let token = format!("TOKEN{dev}");
            let token = token.as_str();
            let barrier = std::sync::Barrier::new(owners.len());
            let wins: Vec<Option<String>> = std::thread::scope(|sc| {
                let handles: Vec<_> = owners
                    .iter()
                    .map(|o| {
                        let (s, barrier) = (&s, &barrier);
                        sc.spawn(move || {
                            barrier.wait();
                            s.claim(
                                o,
                                DevEui::new(dev),
                                token,
                                NetId::new(0x13).unwrap(),
                                "test",
                            )
                            .ok()
                            .and_then(|v| v.owner)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let winners: Vec<&String> = wins.iter().flatten().collect();
            assert_eq!(winners.len(), 1, "device {dev}: {wins:?}");
            let (_, own) = s.db().device(DevEui::new(dev)).unwrap().unwrap();
            assert_eq!(own.owner.as_ref(), Some(winners[0]));
            let ok_claims = s
                .db()
                .audit(
                    &AuditFilter {
                        action: Some("claim".into()),
                        dev_eui: Some(format!("{dev:016X}")),
                        outcome: Some("ok".into()),
                        ..AuditFilter::default()
                    },
                    None,
                )
                .unwrap();
            assert_eq!(ok_claims.len(), 1, "one claim audited as done");
        }
    }

    #[test]
    fn failed_claims_are_limited_per_api_key_across_devices() {
        let tmp = tempfile::tempdir().unwrap();
        let s = service(
            tmp.path(),
            ClaimLimits {
                per_device: 100,
                per_key: 2,
                window: Duration::from_secs(60),
            },
        );
        let r = s
            .import(&Actor::cli(), MANIFEST.as_bytes(), None, None, false)
            .unwrap();
        assert_eq!((r.imported, r.generated_owner_tokens.len()), (3, 0));
        // In memory too: the running server sees the devices at once, unclaimed.
        let map = s.devices.as_ref().unwrap();
        assert_eq!(map.len(), 3);
        assert!(map.get(&DevEui::new(1)).unwrap().home_net_id.is_none());
        let (mallory, alice) = (
            actor(&s, Role::Owner, "mallory"),
            actor(&s, Role::Owner, "alice"),
        );
        let home = NetId::new(0x13).unwrap();
        for dev in [1, 2] {
            let e = s.claim(&mallory, DevEui::new(dev), "guess", home, "test");
            assert!(matches!(e, Err(OnbError::WrongToken)), "{e:?}");
        }
        let e = s.claim(&mallory, DevEui::new(3), "T3", home, "test");
        assert!(
            matches!(e, Err(OnbError::RateLimited(_))),
            "the key is limited on every device: {e:?}"
        );
        // Another key is not limited, and the claim binds the running server's copy.
        let v = s.claim(&alice, DevEui::new(3), "T3", home, "test").unwrap();
        assert_eq!(v.home_net_id.as_deref(), Some("000013"));
        assert_eq!(map.get(&DevEui::new(3)).unwrap().home_net_id, Some(home));
        // Release unbinds it at once and returns a new token that claims it.
        let t = s.release(&alice, DevEui::new(3), true).unwrap().unwrap();
        assert!(map.get(&DevEui::new(3)).unwrap().home_net_id.is_none());
        let e = s.release(&alice, DevEui::new(3), true);
        assert!(
            matches!(e, Err(OnbError::NotFound)),
            "no longer hers: {e:?}"
        );
        assert!(s.claim(&alice, DevEui::new(3), &t, home, "test").is_ok());

        // Listing pages in DevEUI order and is scoped to what the key may see.
        let admin = actor(&s, Role::Admin, "ops");
        let page = s.list(&admin, None, 2).unwrap();
        let ids: Vec<&str> = page.iter().map(|d| d.dev_eui.as_str()).collect();
        assert_eq!(ids, ["0000000000000001", "0000000000000002"]);
        let rest = s.list(&admin, Some(DevEui::new(2)), 2).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].dev_eui, "0000000000000003");
        assert_eq!(s.list(&alice, None, 10).unwrap().len(), 1);
        assert!(s.list(&mallory, None, 10).unwrap().is_empty());
    }

    #[test]
    fn failed_claim_limits_survive_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let limits = ClaimLimits {
            per_device: 3,
            per_key: 5,
            window: Duration::from_secs(600),
        };
        let home = NetId::new(0x13).unwrap();
        let (mallory, alice) = {
            let s = service(tmp.path(), limits);
            s.import(&Actor::cli(), MANIFEST.as_bytes(), None, None, false)
                .unwrap();
            let (mallory, alice) = (
                actor(&s, Role::Owner, "mallory"),
                actor(&s, Role::Owner, "alice"),
            );
            // Device 1: 3 wrong tokens (its limit) from alice; mallory: 2 on device 2 and
            // 3 on device 3 (5, the key's limit), plus one unknown device (not counted once
            // the key is limited: the check comes first).
            for _ in 0..3 {
                let e = s.claim(&alice, DevEui::new(1), "guess", home, "test");
                assert!(matches!(e, Err(OnbError::WrongToken)), "{e:?}");
            }
            for dev in [2, 2, 3, 3, 0x99] {
                let _ = s.claim(&mallory, DevEui::new(dev), "guess", home, "test");
            }
            (mallory, alice)
        };
        // The process restarts: a new service over the same database file.
        let s = service(tmp.path(), limits);
        let e = s.claim(&alice, DevEui::new(1), "T1", home, "test");
        assert!(
            matches!(e, Err(OnbError::RateLimited(_))),
            "the DevEUI is still limited after a restart: {e:?}"
        );
        let e = s.claim(&mallory, DevEui::new(2), "T2", home, "test");
        assert!(
            matches!(e, Err(OnbError::RateLimited(_))),
            "the API key is still limited after a restart: {e:?}"
        );
        match s.claim(&alice, DevEui::new(1), "T1", home, "test") {
            Err(OnbError::RateLimited(wait)) => {
                assert!(wait <= Duration::from_secs(600) && wait > Duration::from_secs(590))
            }
            e => panic!("{e:?}"),
        }
        // Others are not: alice claims device 2 (2 failures, under the DevEUI limit of 3).
        assert!(s.claim(&alice, DevEui::new(2), "T2", home, "test").is_ok());

        // Failures older than the window are not counted.
        drop(s);
        let short = ClaimLimits {
            window: Duration::from_millis(300),
            ..limits
        };
        std::thread::sleep(Duration::from_millis(400));
        let s = service(tmp.path(), short);
        assert!(s.claim(&alice, DevEui::new(1), "T1", home, "test").is_ok());
    }
}
