//! The legacy v2 store (etcd's `v2store`), kept for membership only, and etcd's
//! `--v2-deprecation` levels.
//!
//! Its snapshot data is a sequence of postcard-encoded nodes, sorted by path, each prefixed by
//! nothing but its own encoding (`postcard::take_from_bytes` reads one at a time), so a reader
//! never needs the whole tree at once.

use serde::{Deserialize, Serialize};

use super::membership::{MemberId, member_key};
use super::{StoreError, codec};
use crate::backend::Bucket;
use crate::collections::{Profile, Seq};

/// The prefix of membership content in the v2 tree (etcd's `StoreClusterPrefix`).
pub const CLUSTER_PREFIX: &[u8] = b"/0";

/// etcd's `--v2-deprecation` levels, in order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum V2Deprecation {
    /// v2 content is still allowed (`not-yet`).
    NotYet,
    /// Only membership may be in the v2 store (`write-only`, etcd 3.6's default).
    #[default]
    WriteOnly,
    /// As `WriteOnly`, and v2 content is dropped (`write-only-drop-data`).
    WriteOnlyDrop,
    /// v2 is gone (`gone`).
    Gone,
}

/// A node of the v2 tree.
#[derive(Clone, Debug, PartialEq)]
pub struct V2Node<P: Profile> {
    /// The path, e.g. `/0/members/8e9e05c52164694d/raftAttributes`.
    pub path: P::Bytes,
    /// The value (empty for a directory).
    pub value: P::Bytes,
    /// Whether the node is a directory.
    pub dir: bool,
}

#[derive(Serialize, Deserialize)]
struct NodeRecord<'a> {
    path: &'a [u8],
    value: &'a [u8],
    dir: bool,
}

/// The v2 store.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct V2Store<P: Profile> {
    nodes: P::V2Nodes,
}

/// Writes the v2 path of a member's attribute: `/0/members/<hex id>/<leaf>`.
fn member_path<P: Profile>(id: MemberId, leaf: &[u8]) -> Result<P::Bytes, StoreError> {
    let mut path = P::Bytes::default();
    for part in [b"/0/members/".as_slice(), &member_key(id), b"/", leaf] {
        for b in part {
            path.try_push(*b).map_err(|_| crate::collections::CapacityError { what: "v2 path" })?;
        }
    }
    Ok(path)
}

impl<P: Profile> V2Store<P> {
    /// Every node, by path.
    pub fn nodes(&self) -> &[V2Node<P>] {
        self.nodes.as_slice()
    }

    /// Sets a leaf.
    pub fn set(&mut self, path: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let node = V2Node {
            path: codec::bytes::<P::Bytes>(path, "v2 path")?,
            value: codec::bytes::<P::Bytes>(value, "v2 value")?,
            dir: false,
        };
        codec::upsert(&mut self.nodes, node, |n| n.path.as_slice(), "v2 nodes")?;
        Ok(())
    }

    /// Removes `path` and everything below it.
    pub fn delete(&mut self, path: &[u8]) {
        self.nodes.retain_by(|n| {
            let p = n.path.as_slice();
            !(p == path || (p.starts_with(path) && p.get(path.len()) == Some(&b'/')))
        });
    }

    /// Records a member's attributes, as etcd 3.5 still did in the v2 tree:
    /// `/0/members/<hex id>/raftAttributes` holding its first peer URL.
    ///
    /// # Errors
    /// [`StoreError::Capacity`] if the profile's v2 tables cannot hold it.
    pub fn add_member(&mut self, id: MemberId, raft_attributes: &[u8]) -> Result<(), StoreError> {
        let path = member_path::<P>(id, b"raftAttributes")?;
        self.set(path.as_slice(), raft_attributes)
    }

    /// Updates a member's recorded peer URL.
    pub(crate) fn update_member(&mut self, id: MemberId, raft_attributes: &[u8]) -> Result<(), StoreError> {
        self.add_member(id, raft_attributes)
    }

    /// Removes a member's attributes and records it under `/0/removed_members/<hex id>`.
    ///
    /// # Errors
    /// [`StoreError::Capacity`] if the profile's v2 tables cannot hold it.
    pub fn remove_member(&mut self, id: MemberId) -> Result<(), StoreError> {
        let path = member_path::<P>(id, b"")?;
        let dir = path.as_slice().get(..path.len().saturating_sub(1)).unwrap_or(&[]);
        self.delete(dir);
        let mut removed = P::Bytes::default();
        for b in b"/0/removed_members/".iter().chain(member_key(id).iter()) {
            removed.try_push(*b).map_err(|_| crate::collections::CapacityError { what: "v2 path" })?;
        }
        self.set(removed.as_slice(), b"removed")
    }

    /// Whether the tree holds nothing but membership, as etcd's `membership.IsMetaStoreOnly`
    /// decides it (3.6, and 3.5 from 3.5.22, etcd PR #20357): `/0` is membership; the v2 auth
    /// skeleton `/2` passes as long as its children (`/2/users`, `/2/roles`, `/2/enabled`) have
    /// no children; any other top-level node counts as content only **if it has children**, so
    /// the empty `/1` every etcd creates, or a top-level leaf, passes. The tree is flat here: a
    /// node has children when some path lies below it. A path not starting with `/` cannot come
    /// from etcd's tree and counts as content.
    pub fn is_membership_only(&self) -> bool {
        self.nodes.as_slice().iter().all(|n| {
            let Some(rest) = n.path.as_slice().strip_prefix(b"/") else { return false };
            let mut segments = rest.split(|b| *b == b'/');
            let top = segments.next().unwrap_or(&[]);
            match (top, segments.next(), segments.next()) {
                // A top-level node itself: it counts only through its children.
                (_, None, _) => true,
                (b"0", _, _) => true,
                // A child of `/2` counts only through children of its own.
                (b"2", Some(_), None) => true,
                _ => false,
            }
        })
    }

    /// Encodes the tree as snapshot data into `out`.
    pub fn save<S: Seq<u8>>(&self, out: &mut S) -> Result<(), StoreError> {
        out.clear_all();
        for n in self.nodes.as_slice() {
            let record = NodeRecord { path: n.path.as_slice(), value: n.value.as_slice(), dir: n.dir };
            // Straight into `out`: a node the store holds always fits, whatever `P::Bytes` is.
            codec::append(&record, out)
                .map_err(|_| StoreError::Capacity(crate::collections::CapacityError { what: "v2 snapshot data" }))?;
        }
        Ok(())
    }

    /// Rebuilds the tree from snapshot data (etcd's `v2store.Recovery`), then applies the
    /// deprecation check (etcd's `AssertNoV2StoreContent`). On error nothing is returned, so
    /// the caller's store is unchanged.
    pub fn recover(data: &[u8], level: V2Deprecation) -> Result<Self, StoreError> {
        let mut store = V2Store::<P>::default();
        store.recover_into(data, level)?;
        Ok(store)
    }

    /// Empties the tree in its own memory.
    pub(crate) fn clear(&mut self) {
        self.nodes.clear_all();
    }

    /// [`V2Store::recover`] in place: the tree is cleared and refilled. On error it holds what
    /// was read so far.
    pub(crate) fn recover_into(&mut self, data: &[u8], level: V2Deprecation) -> Result<(), StoreError> {
        self.nodes.clear_all();
        let store = self;
        let mut rest = data;
        while !rest.is_empty() {
            let (record, tail) = postcard::take_from_bytes::<NodeRecord<'_>>(rest)
                .map_err(|_| StoreError::Corrupt { bucket: Bucket::Meta, what: "v2 snapshot data does not decode" })?;
            let node = V2Node {
                path: codec::bytes::<P::Bytes>(record.path, "v2 path")?,
                value: codec::bytes::<P::Bytes>(record.value, "v2 value")?,
                dir: record.dir,
            };
            codec::upsert(&mut store.nodes, node, |n| n.path.as_slice(), "v2 nodes")?;
            rest = tail;
        }
        if level >= V2Deprecation::WriteOnly && !store.is_membership_only() {
            return Err(StoreError::V2ContentDisallowed);
        }
        Ok(())
    }
}

#[cfg(test)]
#[cfg(feature = "alloc")]
mod tests {
    use super::*;
    use crate::collections::Growable;

    fn store(paths: &[&str]) -> V2Store<Growable> {
        let mut s = V2Store::<Growable>::default();
        for p in paths {
            s.set(p.as_bytes(), b"").unwrap();
        }
        s
    }

    #[test]
    fn only_top_level_nodes_with_children_count_as_content() {
        // etcd's `IsMetaStoreOnly`: membership, an empty `/1`, the `/2` auth skeleton and
        // top-level leaves pass.
        let meta =
            store(&["/0/members/1/raftAttributes", "/0/version", "/1", "/2/users", "/2/roles", "/2/enabled", "/7"]);
        assert!(meta.is_membership_only());
        for content in ["/1/foo", "/2/users/alice", "/3/x", "nope"] {
            assert!(!store(&[content]).is_membership_only(), "{content}");
        }
        let mut data = std::vec::Vec::new();
        meta.save(&mut data).unwrap();
        assert!(V2Store::<Growable>::recover(&data, V2Deprecation::WriteOnly).is_ok());
    }
}
