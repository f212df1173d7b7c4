//! How sessions are found: by session id (UDP datagram prefix), by deviceUid (UDP handshake) and
//! by username (TCP logon). One insert path and one remove path: the index records, per slot,
//! every key it was entered under, and a release removes exactly those. (Removing by what the
//! session happened to hold at release time left an entry behind when a logon was refused before
//! the session took its username, and the next logon under that name found whatever session
//! reused the slot.)

use std::collections::HashMap;

use crate::protocol::{DeviceUid, Username};

/// A key a session is found by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Key {
    /// Its session id.
    Id(u64),
    /// A UDP device's deviceUid.
    Uid(DeviceUid),
    /// A TCP client's username.
    User(Username),
}

/// The keys one slot is entered under.
#[derive(Clone, Copy, Debug, Default)]
struct Keys {
    id: Option<u64>,
    uid: Option<DeviceUid>,
    user: Option<Username>,
}

/// The three maps and what each slot is entered under.
pub(super) struct Index {
    by_id: HashMap<u64, u32>,
    by_uid: HashMap<DeviceUid, u32>,
    by_user: HashMap<Username, u32>,
    keys: Vec<Keys>,
    /// Seeds session ids (random in the runtime, fixed in simulations).
    id_key: [u8; 32],
    id_counter: u64,
    shard: u16,
}

impl Index {
    /// Room for `n` sessions, allocated now: twice the entries so that deletions never force a
    /// resize (hashbrown rehashes in place while at most half full).
    pub(super) fn new(n: usize, id_key: [u8; 32], shard: u16) -> Self {
        Self {
            by_id: HashMap::with_capacity(2 * n),
            by_uid: HashMap::with_capacity(2 * n),
            by_user: HashMap::with_capacity(2 * n),
            keys: vec![Keys::default(); n],
            id_key,
            id_counter: 0,
            shard,
        }
    }

    /// A fresh session id: non-zero, unpredictable without the key, and not in use.
    pub(super) fn new_id(&mut self) -> u64 {
        loop {
            self.id_counter += 1;
            let mut h = blake3::Hasher::new_keyed(&self.id_key);
            h.update(&self.id_counter.to_le_bytes());
            h.update(&self.shard.to_le_bytes());
            let mut b = [0u8; 8];
            b.copy_from_slice(&h.finalize().as_bytes()[..8]);
            let id = u64::from_le_bytes(b);
            if id != 0 && !self.by_id.contains_key(&id) {
                return id;
            }
        }
    }

    /// The slot holding the session with this id.
    pub(super) fn by_id(&self, id: u64) -> Option<u32> {
        self.by_id.get(&id).copied()
    }

    /// The slot holding the UDP session of this device.
    pub(super) fn by_uid(&self, uid: &DeviceUid) -> Option<u32> {
        self.by_uid.get(uid).copied()
    }

    /// The slot holding the TCP session of this user.
    pub(super) fn by_user(&self, user: &Username) -> Option<u32> {
        self.by_user.get(user).copied()
    }

    /// Enters slot `index` under `key` (replacing a key of the same kind it had).
    pub(super) fn insert(&mut self, index: u32, key: Key) {
        let keys = &mut self.keys[index as usize];
        match key {
            Key::Id(id) => {
                if let Some(old) = keys.id.replace(id) {
                    remove_if(&mut self.by_id, &old, index);
                }
                let prev = self.by_id.insert(id, index);
                debug_assert!(prev.is_none_or(|p| p == index), "session id {id:x} taken");
            }
            Key::Uid(uid) => {
                if let Some(old) = keys.uid.replace(uid) {
                    remove_if(&mut self.by_uid, &old, index);
                }
                let prev = self.by_uid.insert(uid, index);
                debug_assert!(prev.is_none_or(|p| p == index), "deviceUid taken");
            }
            Key::User(user) => {
                if let Some(old) = keys.user.replace(user) {
                    remove_if(&mut self.by_user, &old, index);
                }
                let prev = self.by_user.insert(user, index);
                debug_assert!(prev.is_none_or(|p| p == index), "username taken");
            }
        }
    }

    /// Removes every key slot `index` is entered under (its session is released).
    pub(super) fn remove(&mut self, index: u32) {
        let keys = core::mem::take(&mut self.keys[index as usize]);
        if let Some(id) = keys.id {
            remove_if(&mut self.by_id, &id, index);
        }
        if let Some(uid) = keys.uid {
            remove_if(&mut self.by_uid, &uid, index);
        }
        if let Some(user) = keys.user {
            remove_if(&mut self.by_user, &user, index);
        }
    }

    /// Sessions indexed by id.
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }
}

/// Removes `key` if it points at `index` (it always does unless a bug entered it twice).
fn remove_if<K: Eq + core::hash::Hash>(map: &mut HashMap<K, u32>, key: &K, index: u32) {
    if map.get(key) == Some(&index) {
        map.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_removes_exactly_the_keys_entered() {
        let mut ix = Index::new(4, [1; 32], 0);
        let alice = Username::new(b"alice").unwrap();
        let dev = DeviceUid::new(b"DEV1").unwrap();
        let id = ix.new_id();
        ix.insert(2, Key::Id(id));
        ix.insert(2, Key::User(alice));
        ix.insert(3, Key::Uid(dev));
        assert_eq!(
            (ix.by_id(id), ix.by_user(&alice), ix.by_uid(&dev)),
            (Some(2), Some(2), Some(3))
        );
        ix.remove(2);
        assert_eq!((ix.by_id(id), ix.by_user(&alice), ix.by_uid(&dev)), (None, None, Some(3)));
        // Slot 2 reused under other keys: nothing of its previous life remains.
        let id2 = ix.new_id();
        assert_ne!(id, id2);
        ix.insert(2, Key::Id(id2));
        assert_eq!(ix.by_user(&alice), None);
        ix.remove(3);
        assert_eq!((ix.by_uid(&dev), ix.len()), (None, 1));
    }
}
