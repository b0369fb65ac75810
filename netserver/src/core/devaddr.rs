//! DevAddr allocation: an address from the configured block that no active session holds and no
//! join in flight has reserved.
//!
//! The table maps each held DevAddr to its holder. A join reserves an address
//! ([`Holder::Pending`], with an expiry so a join that never completes gives it back); a stored
//! session confirms it ([`Holder::Session`]); a session replaced by a new join releases it. Every
//! check-and-claim is one `entry()` call, so two socket loops can never hand out the same address.
//!
//! Addresses are drawn at random (a DevAddr must not reveal how many devices joined, and random
//! draws keep allocation O(1) while the block is sparsely used); after
//! [`RANDOM_DRAWS`] collisions the allocator scans the block from a random start, so a nearly
//! full block still finds its last free addresses, and only a full block fails.

use std::time::Instant;

use dashmap::DashMap;
use protocol::ids::{DevAddr, DevEui, NetId};
use rand::Rng;

use super::KeyedHasher;

/// The block of DevAddrs this server allocates from: `addr & mask == prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrBlock {
    /// The NetID the block belongs to.
    pub net_id: NetId,
    /// Fixed high bits.
    pub prefix: u32,
    /// Which bits are fixed.
    pub mask: u32,
}

impl AddrBlock {
    /// The block from a NetID and an optional `ADDR/BITS` narrowing (empty: the NetID's space);
    /// the error names the `network.dev_addr_prefix` setting and what is wrong with it.
    pub fn resolve(net_id: NetId, narrowing: &str) -> Result<Self, String> {
        let (net_prefix, net_mask) = net_id.dev_addr_prefix();
        let narrowing = narrowing.trim();
        if narrowing.is_empty() {
            return Ok(Self {
                net_id,
                prefix: net_prefix,
                mask: net_mask,
            });
        }
        let bad =
            || format!("network.dev_addr_prefix {narrowing:?} is not ADDR/BITS (e.g. 26010000/16)");
        let (addr, bits) = narrowing.split_once('/').ok_or_else(bad)?;
        let addr: DevAddr = addr.parse().map_err(|_| bad())?;
        let bits: u32 = bits.parse().map_err(|_| bad())?;
        if !(1..=31).contains(&bits) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - bits);
        let prefix = addr.as_u32() & mask;
        if mask & net_mask != net_mask || prefix & net_mask != net_prefix {
            return Err(format!(
                "network.dev_addr_prefix {narrowing} is not inside the DevAddr space of NetID {net_id}"
            ));
        }
        Ok(Self {
            net_id,
            prefix,
            mask,
        })
    }

    /// Whether `a` is in the block.
    pub fn contains(&self, a: DevAddr) -> bool {
        a.as_u32() & self.mask == self.prefix
    }

    /// Number of addresses in the block.
    pub fn size(&self) -> u64 {
        u64::from(!self.mask) + 1
    }
}

/// Random draws before falling back to a scan.
pub const RANDOM_DRAWS: usize = 16;

/// Who holds an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// Reserved by a join in flight for this device, until the instant given.
    Pending(DevEui, Instant),
    /// Held by this device's active session.
    Session(DevEui),
}

/// Every address of the block is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the DevAddr block is exhausted")]
pub struct Exhausted;

/// The allocator.
#[derive(Debug)]
pub struct AddrAllocator {
    block: AddrBlock,
    held: DashMap<DevAddr, Holder, KeyedHasher>,
}

impl AddrAllocator {
    /// An allocator for `block` with nothing held.
    pub fn new(block: AddrBlock) -> Self {
        Self {
            block,
            held: DashMap::with_hasher(KeyedHasher::default()),
        }
    }

    /// The block allocated from.
    pub fn block(&self) -> AddrBlock {
        self.block
    }

    /// Reserves a free address for `dev_eui` until `until`. An expired reservation counts as free.
    pub fn allocate(
        &self,
        now: Instant,
        dev_eui: DevEui,
        until: Instant,
        rng: &mut impl Rng,
    ) -> Result<DevAddr, Exhausted> {
        let free_bits = !self.block.mask;
        for _ in 0..RANDOM_DRAWS {
            let a = DevAddr::new(self.block.prefix | (rng.gen::<u32>() & free_bits));
            if self.try_claim(now, a, dev_eui, until) {
                return Ok(a);
            }
        }
        let start = rng.gen::<u32>() & free_bits;
        let size = self.block.size();
        for i in 0..size {
            // `size` is at most 2^31, so the offset fits in u32 after the mask.
            let offset = (u64::from(start) + i) as u32 & free_bits;
            let a = DevAddr::new(self.block.prefix | offset);
            if self.try_claim(now, a, dev_eui, until) {
                return Ok(a);
            }
        }
        Err(Exhausted)
    }

    fn try_claim(&self, now: Instant, a: DevAddr, dev_eui: DevEui, until: Instant) -> bool {
        match self.held.entry(a) {
            dashmap::Entry::Vacant(v) => {
                v.insert(Holder::Pending(dev_eui, until));
                true
            }
            dashmap::Entry::Occupied(mut o) => match *o.get() {
                Holder::Pending(_, expiry) if expiry <= now => {
                    o.insert(Holder::Pending(dev_eui, until));
                    true
                }
                _ => false,
            },
        }
    }

    /// Turns `dev_eui`'s reservation of `a` into a session holding. Returns false (and changes
    /// nothing) if `a` is not reserved by or held for `dev_eui`.
    pub fn confirm(&self, a: DevAddr, dev_eui: DevEui) -> bool {
        match self.held.get_mut(&a) {
            Some(mut h) => match *h {
                Holder::Pending(d, _) | Holder::Session(d) if d == dev_eui => {
                    *h = Holder::Session(dev_eui);
                    true
                }
                _ => false,
            },
            None => false,
        }
    }

    /// Records a session restored from the store.
    pub fn restore(&self, a: DevAddr, dev_eui: DevEui) {
        self.held.insert(a, Holder::Session(dev_eui));
    }

    /// Frees `a` if `dev_eui` holds or reserved it.
    pub fn release(&self, a: DevAddr, dev_eui: DevEui) {
        self.held.remove_if(&a, |_, h| match *h {
            Holder::Pending(d, _) | Holder::Session(d) => d == dev_eui,
        });
    }

    /// Who holds `a`.
    pub fn holder(&self, a: DevAddr) -> Option<Holder> {
        self.held.get(&a).map(|h| *h)
    }

    /// Addresses held or reserved.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn block(narrow: &str) -> AddrBlock {
        AddrBlock::resolve(NetId::new(0x13).unwrap(), narrow).unwrap()
    }

    #[test]
    fn addr_block_narrowing() {
        let ttn = NetId::new(0x13).unwrap();
        let whole = AddrBlock::resolve(ttn, "").unwrap();
        assert_eq!((whole.prefix, whole.mask), (0x2600_0000, 0xFE00_0000));
        let b = AddrBlock::resolve(ttn, "26010000/16").unwrap();
        assert_eq!((b.prefix, b.mask), (0x2601_0000, 0xFFFF_0000));
        assert_eq!(b.size(), 65536);
        assert!(b.contains(DevAddr::new(0x2601_ABCD)));
        assert!(!b.contains(DevAddr::new(0x2602_0000)));
        // Outside the NetID's space, wider than it, or malformed.
        assert!(AddrBlock::resolve(ttn, "28000000/16").is_err());
        assert!(AddrBlock::resolve(ttn, "26000000/4").is_err());
        assert!(AddrBlock::resolve(ttn, "26000000").is_err());
        assert!(AddrBlock::resolve(ttn, "26000000/32").is_err());
    }

    #[test]
    fn allocates_in_the_block_and_never_twice() {
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(10);
        let b = block("26011000/24"); // 256 addresses
        let a = AddrAllocator::new(b);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut seen = HashSet::new();
        for i in 0..256 {
            let addr = a.allocate(t0, DevEui::new(i), until, &mut rng).unwrap();
            assert!(b.contains(addr) && addr.is_in(b.net_id), "{addr}");
            assert!(seen.insert(addr), "{addr} handed out twice");
        }
        // Full: the 257th fails, until a reservation expires or is released.
        assert_eq!(
            a.allocate(t0, DevEui::new(999), until, &mut rng),
            Err(Exhausted)
        );
        let victim = *seen.iter().next().unwrap();
        let Some(Holder::Pending(owner, _)) = a.holder(victim) else {
            panic!("not pending")
        };
        a.release(victim, DevEui::new(12345)); // not the holder: no effect
        assert!(a.holder(victim).is_some());
        a.release(victim, owner);
        assert_eq!(
            a.allocate(t0, DevEui::new(999), until, &mut rng),
            Ok(victim)
        );
        // Expired reservations are reclaimed.
        let later = until + Duration::from_millis(1);
        assert!(a
            .allocate(
                later,
                DevEui::new(1000),
                later + Duration::from_secs(1),
                &mut rng
            )
            .is_ok());
    }

    #[test]
    fn sessions_are_not_reclaimed_and_confirm_checks_the_holder() {
        let t0 = Instant::now();
        let b = block("26011000/31"); // 2 addresses
        let a = AddrAllocator::new(b);
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let d1 = DevEui::new(1);
        let x = a.allocate(t0, d1, t0, &mut rng).unwrap();
        assert!(!a.confirm(x, DevEui::new(2)));
        assert!(a.confirm(x, d1));
        assert_eq!(a.holder(x), Some(Holder::Session(d1)));
        let later = t0 + Duration::from_secs(3600);
        let y = a.allocate(later, DevEui::new(2), later, &mut rng).unwrap();
        assert_ne!(x, y);
        a.restore(y, DevEui::new(3));
        assert_eq!(
            a.allocate(later, DevEui::new(4), later, &mut rng),
            Err(Exhausted)
        );
    }
}
