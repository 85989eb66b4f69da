//! Capacity profiles: the stores are written once over [`Seq`], and a [`Profile`] picks fixed
//! (`heapless`, no heap) or growable (`alloc`) collections for them.
//!
//! Running out of a fixed capacity is a [`CapacityError`], never a panic or a silent drop.

use core::fmt::Debug;

/// A collection ran out of its fixed capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CapacityError {
    /// What was full: a store's table or a byte string.
    pub what: &'static str,
}

impl core::fmt::Display for CapacityError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "capacity exhausted: {}", self.what)
    }
}

impl core::error::Error for CapacityError {}

/// A fixed collection had no room for what was given to it (which table is the caller's to
/// say, as a [`CapacityError`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapacityFull;

/// An ordered sequence with a possibly fixed capacity.
///
/// Implemented for `heapless::Vec<T, N>` and (feature `alloc`) `alloc::vec::Vec<T>`.
pub trait Seq<T>: Default + Clone + PartialEq + Debug + sealed::Sealed {
    /// The most elements it can hold: `N` for `heapless::Vec<T, N>`, `usize::MAX` for a growable
    /// one (bounded by memory only).
    const CAPACITY: usize;

    /// The elements, in order.
    fn as_slice(&self) -> &[T];
    /// The elements, mutably.
    fn as_mut_slice(&mut self) -> &mut [T];
    /// Inserts `value` at `index` (`index <= len`), or gives it back when full.
    fn try_insert(&mut self, index: usize, value: T) -> Result<(), T>;
    /// Removes and returns the element at `index`, if there is one.
    fn remove_at(&mut self, index: usize) -> Option<T>;
    /// Keeps the elements for which `keep` returns true.
    fn retain_by(&mut self, keep: impl FnMut(&T) -> bool);
    /// Removes every element.
    fn clear_all(&mut self);
    /// Keeps the first `len` elements.
    fn truncate_to(&mut self, len: usize);
    /// Appends every element of `items`, or nothing when they do not all fit.
    fn try_extend(&mut self, items: &[T]) -> Result<(), CapacityFull>;

    /// Appends `value`, or gives it back when full.
    fn try_push(&mut self, value: T) -> Result<(), T> {
        let len = self.as_slice().len();
        self.try_insert(len, value)
    }
    /// Number of elements.
    fn len(&self) -> usize {
        self.as_slice().len()
    }
    /// Whether there is no element.
    fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }
}

mod sealed {
    pub trait Sealed {}
    impl<T, const N: usize> Sealed for heapless::Vec<T, N> {}
    #[cfg(feature = "alloc")]
    impl<T> Sealed for alloc::vec::Vec<T> {}
}

impl<T: Clone + PartialEq + Debug, const N: usize> Seq<T> for heapless::Vec<T, N> {
    const CAPACITY: usize = N;

    fn as_slice(&self) -> &[T] {
        self
    }
    fn as_mut_slice(&mut self) -> &mut [T] {
        self
    }
    fn try_insert(&mut self, index: usize, value: T) -> Result<(), T> {
        if index > self.len() {
            return Err(value);
        }
        self.insert(index, value)
    }
    fn remove_at(&mut self, index: usize) -> Option<T> {
        (index < self.len()).then(|| self.remove(index))
    }
    fn retain_by(&mut self, keep: impl FnMut(&T) -> bool) {
        self.retain(keep)
    }
    fn clear_all(&mut self) {
        self.clear()
    }
    fn truncate_to(&mut self, len: usize) {
        self.truncate(len)
    }
    fn try_extend(&mut self, items: &[T]) -> Result<(), CapacityFull> {
        self.extend_from_slice(items).map_err(|_| CapacityFull)
    }
}

#[cfg(feature = "alloc")]
impl<T: Clone + PartialEq + Debug> Seq<T> for alloc::vec::Vec<T> {
    const CAPACITY: usize = usize::MAX;

    fn as_slice(&self) -> &[T] {
        self
    }
    fn as_mut_slice(&mut self) -> &mut [T] {
        self
    }
    fn try_insert(&mut self, index: usize, value: T) -> Result<(), T> {
        if index > self.len() {
            return Err(value);
        }
        self.insert(index, value);
        Ok(())
    }
    fn remove_at(&mut self, index: usize) -> Option<T> {
        (index < self.len()).then(|| self.remove(index))
    }
    fn retain_by(&mut self, keep: impl FnMut(&T) -> bool) {
        self.retain(keep)
    }
    fn clear_all(&mut self) {
        self.clear()
    }
    fn truncate_to(&mut self, len: usize) {
        self.truncate(len)
    }
    fn try_extend(&mut self, items: &[T]) -> Result<(), CapacityFull> {
        self.extend_from_slice(items);
        Ok(())
    }
}

/// Chooses the collections the stores are built from: one type per table, so a device's profile
/// gives each table its own capacity, and the key index keeps its keys in one byte arena, so its
/// RAM follows the keys' lengths rather than capacity × longest key.
///
/// Devices declare a profile with [`fixed_profile!`](crate::fixed_profile) (heapless, no
/// heap; [`Reference`] is the reference device's); hosts use `Growable` (feature `alloc`).
/// [`Fixed`] gives every table the same capacity, for tests.
pub trait Profile: 'static + Clone + Copy + PartialEq + Eq + Debug + Default {
    /// Short byte strings: user, role and member names, URLs, permission keys, keys attached to
    /// leases, v2 paths and values.
    type Bytes: Seq<u8> + Ord;
    /// The buffer a backend record is encoded into: the largest record the node writes (a key's
    /// record holds its value).
    type Record: Seq<u8>;
    /// The key index: one entry per revision of every key.
    type KeyIndex: Seq<IndexEntry>;
    /// The bytes of the keys of the key index, each key stored once.
    type KeyArena: Seq<u8>;
    /// Leases.
    type Leases: Seq<Lease>;
    /// Keys attached to leases.
    type LeaseItems: Seq<LeaseItem<Self::Bytes>>;
    /// Active alarms.
    type Alarms: Seq<Alarm>;
    /// Users.
    type Users: Seq<User<Self>>;
    /// Roles granted to one user.
    type UserRoles: Seq<Self::Bytes>;
    /// Roles.
    type Roles: Seq<Role<Self>>;
    /// Permissions of one role.
    type Permissions: Seq<Permission<Self>>;
    /// The permission cache: a permission per (user, granted role's permission).
    type PermissionCache: Seq<CachedPermission<Self>>;
    /// Members.
    type Members: Seq<Member<Self>>;
    /// Peer or client URLs of one member.
    type MemberUrls: Seq<Self::Bytes>;
    /// Ids of removed members.
    type Removed: Seq<MemberId>;
    /// Nodes of the v2 tree.
    type V2Nodes: Seq<V2Node<Self>>;
    /// Peers of a [`crate::memports::PeerTable`].
    type Peers: Seq<(MemberId, Self::MemberUrls)>;
}

use crate::store::{
    Alarm, CachedPermission, IndexEntry, Lease, LeaseItem, Member, MemberId, Permission, Role, User, V2Node,
};

/// Declares a heap-free [`Profile`]: a capacity for every table and the length of the short
/// byte strings. Every table's RAM is its capacity times its entry's size; the key index's keys
/// take `key_bytes` in all, however long each is.
///
/// ```
/// snapply_core::fixed_profile! {
///     /// A sensor node: a few dozen keys.
///     pub Sensor {
///         bytes: 32, record_bytes: 128, keys: 64, key_bytes: 1024, leases: 4, lease_items: 8, alarms: 4,
///         users: 1, roles_per_user: 1, roles: 1, permissions_per_role: 2, permission_cache: 2,
///         members: 3, urls_per_member: 1, removed: 4, v2_nodes: 8,
///     }
/// }
/// let _ = core::mem::size_of::<snapply_core::Stores<Sensor>>();
/// ```
#[macro_export]
macro_rules! fixed_profile {
    ($(#[$meta:meta])* $vis:vis $name:ident {
        bytes: $bytes:expr, record_bytes: $record_bytes:expr, keys: $keys:expr, key_bytes: $key_bytes:expr, leases: $leases:expr,
        lease_items: $lease_items:expr, alarms: $alarms:expr, users: $users:expr,
        roles_per_user: $roles_per_user:expr, roles: $roles:expr,
        permissions_per_role: $permissions_per_role:expr, permission_cache: $permission_cache:expr,
        members: $members:expr, urls_per_member: $urls_per_member:expr, removed: $removed:expr,
        v2_nodes: $v2_nodes:expr $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        $vis struct $name;

        impl $crate::collections::Profile for $name {
            type Bytes = $crate::collections::heapless::Vec<u8, { $bytes }>;
            type Record = $crate::collections::heapless::Vec<u8, { $record_bytes }>;
            type KeyIndex = $crate::collections::heapless::Vec<$crate::store::IndexEntry, { $keys }>;
            type KeyArena = $crate::collections::heapless::Vec<u8, { $key_bytes }>;
            type Leases = $crate::collections::heapless::Vec<$crate::store::Lease, { $leases }>;
            type LeaseItems =
                $crate::collections::heapless::Vec<$crate::store::LeaseItem<Self::Bytes>, { $lease_items }>;
            type Alarms = $crate::collections::heapless::Vec<$crate::store::Alarm, { $alarms }>;
            type Users = $crate::collections::heapless::Vec<$crate::store::User<Self>, { $users }>;
            type UserRoles = $crate::collections::heapless::Vec<Self::Bytes, { $roles_per_user }>;
            type Roles = $crate::collections::heapless::Vec<$crate::store::Role<Self>, { $roles }>;
            type Permissions =
                $crate::collections::heapless::Vec<$crate::store::Permission<Self>, { $permissions_per_role }>;
            type PermissionCache =
                $crate::collections::heapless::Vec<$crate::store::CachedPermission<Self>, { $permission_cache }>;
            type Members = $crate::collections::heapless::Vec<$crate::store::Member<Self>, { $members }>;
            type MemberUrls = $crate::collections::heapless::Vec<Self::Bytes, { $urls_per_member }>;
            type Removed = $crate::collections::heapless::Vec<$crate::store::MemberId, { $removed }>;
            type V2Nodes = $crate::collections::heapless::Vec<$crate::store::V2Node<Self>, { $v2_nodes }>;
            type Peers = $crate::collections::heapless::Vec<($crate::store::MemberId, Self::MemberUrls), { $members }>;
        }
    };
}

#[doc(hidden)]
pub use heapless;

fixed_profile! {
    /// The reference device: 500 keys of 16 to 32 bytes (24 on average, one revision each),
    /// 8 leases, 3 members, 2 users and 2 roles, restored within 48 KiB of RAM on a Cortex-M3
    /// (see BENCHMARKS.md). Short strings (names, URLs, leased keys, v2 paths) up to 48 bytes.
    pub Reference {
        bytes: 48, record_bytes: 256, keys: 512, key_bytes: 12 * 1024, leases: 8, lease_items: 16, alarms: 4,
        users: 2, roles_per_user: 2, roles: 2, permissions_per_role: 4, permission_cache: 8,
        members: 3, urls_per_member: 2, removed: 4, v2_nodes: 12,
    }
}

/// Fixed capacities, the same for every table: at most `N` entries per table, `B` bytes per
/// short string and 2 KiB of key bytes. No heap. For tests; devices declare their own
/// profile with [`fixed_profile!`](crate::fixed_profile).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fixed<const N: usize, const B: usize>;

impl<const N: usize, const B: usize> Profile for Fixed<N, B> {
    type Bytes = heapless::Vec<u8, B>;
    type Record = heapless::Vec<u8, 1024>;
    type KeyIndex = heapless::Vec<IndexEntry, N>;
    type KeyArena = heapless::Vec<u8, 2048>;
    type Leases = heapless::Vec<Lease, N>;
    type LeaseItems = heapless::Vec<LeaseItem<Self::Bytes>, N>;
    type Alarms = heapless::Vec<Alarm, N>;
    type Users = heapless::Vec<User<Self>, N>;
    type UserRoles = heapless::Vec<Self::Bytes, N>;
    type Roles = heapless::Vec<Role<Self>, N>;
    type Permissions = heapless::Vec<Permission<Self>, N>;
    type PermissionCache = heapless::Vec<CachedPermission<Self>, N>;
    type Members = heapless::Vec<Member<Self>, N>;
    type MemberUrls = heapless::Vec<Self::Bytes, N>;
    type Removed = heapless::Vec<MemberId, N>;
    type V2Nodes = heapless::Vec<V2Node<Self>, N>;
    type Peers = heapless::Vec<(MemberId, Self::MemberUrls), N>;
}

/// Growable collections on the heap, for hosts.
#[cfg(feature = "alloc")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Growable;

#[cfg(feature = "alloc")]
impl Profile for Growable {
    type Bytes = alloc::vec::Vec<u8>;
    type Record = alloc::vec::Vec<u8>;
    type KeyIndex = alloc::vec::Vec<IndexEntry>;
    type KeyArena = alloc::vec::Vec<u8>;
    type Leases = alloc::vec::Vec<Lease>;
    type LeaseItems = alloc::vec::Vec<LeaseItem<Self::Bytes>>;
    type Alarms = alloc::vec::Vec<Alarm>;
    type Users = alloc::vec::Vec<User<Self>>;
    type UserRoles = alloc::vec::Vec<Self::Bytes>;
    type Roles = alloc::vec::Vec<Role<Self>>;
    type Permissions = alloc::vec::Vec<Permission<Self>>;
    type PermissionCache = alloc::vec::Vec<CachedPermission<Self>>;
    type Members = alloc::vec::Vec<Member<Self>>;
    type MemberUrls = alloc::vec::Vec<Self::Bytes>;
    type Removed = alloc::vec::Vec<MemberId>;
    type V2Nodes = alloc::vec::Vec<V2Node<Self>>;
    type Peers = alloc::vec::Vec<(MemberId, Self::MemberUrls)>;
}

/// The reference profile's sizes on the reference device (32-bit Cortex-M3), checked whenever
/// the core is built for a 32-bit target (`cargo xtask ci` cross-builds it), so growth shows in
/// review as a change of these numbers. BENCHMARKS.md explains them.
#[cfg(target_pointer_width = "32")]
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<IndexEntry>() == 24);
    assert!(size_of::<crate::store::KvStore<Reference>>() == 24_608);
    assert!(size_of::<crate::store::Lessor<Reference>>() == 1_376);
    assert!(size_of::<crate::store::AuthStore<Reference>>() == 2_712);
    assert!(size_of::<crate::store::Membership<Reference>>() == 912);
    assert!(size_of::<crate::store::V2Store<Reference>>() == 1_300);
    assert!(size_of::<crate::store::AlarmStore<Reference>>() == 72);
    assert!(size_of::<crate::node::Stores<Reference>>() == 31_000);
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AlarmStore, AuthStore, KvStore, Lessor, Membership, V2Store};
    use core::mem::size_of;

    /// The same sizes on 64-bit hosts, where `usize` lengths take 8 bytes.
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn reference_profile_sizes_are_pinned() {
        assert_eq!(size_of::<IndexEntry>(), 24);
        assert_eq!(size_of::<KvStore<Reference>>(), 24_608);
        assert_eq!(size_of::<Lessor<Reference>>(), 1_376);
        assert_eq!(size_of::<AuthStore<Reference>>(), 3_016);
        assert_eq!(size_of::<Membership<Reference>>(), 1_008);
        assert_eq!(size_of::<V2Store<Reference>>(), 1_448);
        assert_eq!(size_of::<AlarmStore<Reference>>(), 72);
        assert_eq!(size_of::<crate::node::Stores<Reference>>(), 31_544);
    }

    /// RAM follows the keys' lengths: 500 keys of 16 to 32 bytes fill the reference profile's
    /// arena by their total length, not by 500 × the longest.
    #[test]
    fn the_key_arena_holds_each_key_once_at_its_length() {
        use crate::mem::MemBackend;
        use crate::store::V2Deprecation;
        use crate::{Config, Node, Request};
        type Backend = MemBackend<1100, 24, 96>;
        let config = Config { id: 1, min_lease_ttl: 5, v2_deprecation: V2Deprecation::WriteOnly };
        let mut node = Node::<Backend, Reference>::new(config, Backend::default());
        let mut total = 0;
        let mut key = [b'k'; 32];
        for i in 0..500u32 {
            let len = 16 + (i as usize % 17);
            key[..4].copy_from_slice(&i.to_be_bytes());
            let r = node.apply(u64::from(i) + 1, 1, &Request::Put { key: &key[..len], value: b"v", lease: 0 });
            assert!(r.is_ok(), "key {i}: {r:?}");
            total += len;
        }
        // Overwriting a key (the first, 16 bytes) adds a revision, not a copy of its bytes.
        key[..4].copy_from_slice(&0u32.to_be_bytes());
        let r = node.apply(501, 1, &Request::Put { key: &key[..16], value: b"w", lease: 0 });
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(node.stores().kv.index_len(), 501);
        assert_eq!(node.stores().kv.arena_len(), total);
        assert!(total < 500 * 32);
    }
}
