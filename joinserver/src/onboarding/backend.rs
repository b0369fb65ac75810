//! The onboarding state's seam: API keys, tenants, ownership (claims), the audit log and the
//! imports that provision devices, behind one object-safe trait with two implementations, the
//! embedded SQLite file ([`super::db::OnboardStore`]) and PostgreSQL
//! ([`crate::store::pg_onboard::PgOnboard`]), shared by any number of join servers.
//!
//! Every method is one transaction; every change of a device (claim, release, lock, nonce reset,
//! key rotation, deprovisioning, import) is marked in the store's change log in that
//! transaction, so the other instances on the same database pick the device up (PostgreSQL:
//! `NOTIFY`) without re-reading every device. API keys are looked up by hash at every request,
//! so a key revoked through one instance authenticates nothing at any other from its commit on.

use protocol::ids::{DevEui, NetId};

use super::db::{
    Actor, ApiKeyInfo, ApiKeyRecord, AuditEntry, AuditFilter, AuditRecord, ClaimOutcome, Ownership,
    OwnershipColumn, Role,
};
use super::import::{Failure, Imported, Job, ManifestSource};
use crate::store::{NonceState, StoreError, StoredDevice};

/// The onboarding tables of one store. See the module documentation.
pub trait OnboardBackend: Send + std::fmt::Debug {
    /// Appends one audit record on its own.
    fn audit_append(&mut self, e: &AuditEntry<'_>) -> Result<(), StoreError>;

    /// Stores a new API key's hash for the tenant `name` (its record is created if it is new),
    /// valid until `expires_ms` if given; returns its public id. Audited.
    fn create_api_key(
        &mut self,
        actor: &Actor,
        name: &str,
        role: Role,
        key_hash: &[u8; 32],
        expires_ms: Option<i64>,
    ) -> Result<ApiKeyRecord, StoreError>;

    /// The valid API key with this hash: not revoked, not expired at `now_ms`. The hash is
    /// looked up by index and compared in constant time.
    fn find_api_key(
        &mut self,
        key_hash: &[u8; 32],
        now_ms: i64,
    ) -> Result<Option<ApiKeyRecord>, StoreError>;

    /// Every API key (never a key or its hash), oldest first.
    fn list_api_keys(&mut self) -> Result<Vec<ApiKeyInfo>, StoreError>;

    /// Revokes an API key by id: it authenticates nothing from now on. Audited. `false` if no
    /// such key, or already revoked.
    fn revoke_api_key(&mut self, actor: &Actor, id: &str) -> Result<bool, StoreError>;

    /// The tenants, by name.
    fn tenants(&mut self) -> Result<Vec<String>, StoreError>;

    /// Sets (or with `None` clears) the home NetID of the tenant `name`, creating its record if
    /// it is new. Audited.
    fn set_tenant_home_net_id(
        &mut self,
        actor: &Actor,
        name: &str,
        net_id: Option<NetId>,
    ) -> Result<(), StoreError>;

    /// The home NetID of the tenant `name`, if it has one.
    fn tenant_home_net_id(&mut self, name: &str) -> Result<Option<NetId>, StoreError>;

    /// The claim attempts refused for a wrong token or an unknown device since `since_ms`,
    /// oldest first: `(at_ms, actor, dev_eui)`.
    fn claim_failures_since(
        &mut self,
        since_ms: i64,
    ) -> Result<Vec<(i64, String, Option<String>)>, StoreError>;

    /// A device as stored (root keys wrapped).
    fn stored_device(&mut self, dev_eui: DevEui) -> Result<Option<StoredDevice>, StoreError>;

    /// A device and its ownership.
    fn device(&mut self, dev_eui: DevEui) -> Result<Option<(StoredDevice, Ownership)>, StoreError>;

    /// DevEUIs visible to a scope, in unsigned order, after `after`, at most `limit`: all
    /// (`scope` `None`), or those whose ownership `column` is the tenant.
    fn visible(
        &mut self,
        scope: Option<(OwnershipColumn, &str)>,
        after: Option<DevEui>,
        limit: u32,
    ) -> Result<Vec<DevEui>, StoreError>;

    /// Claims a device in one transaction: it must exist, `presented` (the owner token's hash)
    /// must match its token hash (compared in constant time), and it must be unlocked and
    /// unclaimed; then it is bound to `tenant` and `home` and the claim audited. Of concurrent
    /// claims (in this process or any other on the store) exactly one wins.
    fn claim(
        &mut self,
        actor: &Actor,
        dev_eui: DevEui,
        presented: &[u8; 32],
        tenant: &str,
        home: NetId,
        detail: &str,
    ) -> Result<ClaimOutcome, StoreError>;

    /// Releases a device: no owner, no home network; a new owner token hash if given. Audited.
    fn release(
        &mut self,
        actor: &Actor,
        dev_eui: DevEui,
        new_token_hash: Option<&[u8; 32]>,
    ) -> Result<(), StoreError>;

    /// Sets or clears the lock. Audited.
    fn set_locked(
        &mut self,
        actor: &Actor,
        dev_eui: DevEui,
        locked: bool,
    ) -> Result<(), StoreError>;

    /// Writes a device's nonce state and, for a key rotation, its new wrapped root keys.
    /// Audited under `action`; returns the audit record's sequence number (what a root-key
    /// rotation's trail refers to, [`crate::rekey`]).
    fn set_nonces_and_keys(
        &mut self,
        actor: &Actor,
        action: &str,
        dev_eui: DevEui,
        nonces: &NonceState,
        keys: Option<(&[u8], Option<&[u8]>)>,
        detail: &str,
    ) -> Result<i64, StoreError>;

    /// Removes a device and its ownership. Audited. `false` if it did not exist.
    fn deprovision(&mut self, actor: &Actor, dev_eui: DevEui) -> Result<bool, StoreError>;

    /// Audit records matching `f`, oldest first; with `tenant`, only that tenant's own records.
    fn audit(
        &mut self,
        f: &AuditFilter,
        tenant: Option<&str>,
    ) -> Result<Vec<AuditRecord>, StoreError>;

    /// A handle of its own for one import, so that an upload paced by a client does not hold
    /// this store (nor the service's lock on it) while it arrives.
    fn importer(&self) -> Result<Box<dyn Importer>, StoreError>;
}

/// Runs one all-or-nothing import ([`super::import`]) on a handle of its own.
pub trait Importer: Send {
    /// Reads `source` to its end and commits every device or none; `on_device`, if given,
    /// sees every device after the commit (the running server's map).
    fn run(
        &mut self,
        job: Job<'_>,
        source: &mut dyn ManifestSource,
        on_device: Option<&mut dyn FnMut(StoredDevice)>,
    ) -> Result<Imported, Failure>;
}
