//! What a bus backend shares among the clients of one key
//! (a stream key or a subject, made from the request's path): found by its
//! key while any client holds it, and gone from the map with its last
//! client. A key is a request value, so no entry may outlive the requests
//! that use it: an entry that merely waited for the next new key to be
//! swept would keep up to `max_keys` keys of any length for good.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

type Entries<T> = Mutex<HashMap<String, Weak<Registered<T>>>>;

/// Values of type `T` by key, each alive while an `Arc` of it is held.
pub(crate) struct Registry<T> {
    entries: Arc<Entries<T>>,
}

/// A value of a [`Registry`]; when its last `Arc` is dropped its entry
/// leaves the map.
pub(crate) struct Registered<T> {
    value: T,
    key: String,
    entries: Weak<Entries<T>>,
}

impl<T> Registry<T> {
    pub(crate) fn new() -> Self {
        Self {
            entries: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The live value of `key`.
    pub(crate) fn get(&self, key: &str) -> Option<Arc<Registered<T>>> {
        self.lock().get(key)
    }

    /// The map, to look up and insert under one lock. Drop no
    /// [`Registered`] while holding it (its drop takes the lock).
    pub(crate) fn lock(&self) -> Locked<'_, T> {
        Locked {
            map: self.entries.lock().unwrap_or_else(|e| e.into_inner()),
            entries: &self.entries,
        }
    }
}

/// The locked map of a [`Registry`].
pub(crate) struct Locked<'a, T> {
    map: MutexGuard<'a, HashMap<String, Weak<Registered<T>>>>,
    entries: &'a Arc<Entries<T>>,
}

impl<T> Locked<'_, T> {
    /// The live value of `key`.
    pub(crate) fn get(&self, key: &str) -> Option<Arc<Registered<T>>> {
        self.map.get(key).and_then(Weak::upgrade)
    }

    /// How many keys have a live value.
    pub(crate) fn len(&self) -> usize {
        // An entry whose last holder is dropping right now still counts
        // until its drop takes the lock: it is as good as live.
        self.map.len()
    }

    /// Registers `value` as `key`'s (replacing a value whose last holder is
    /// dropping right now).
    pub(crate) fn insert(&mut self, key: &str, value: T) -> Arc<Registered<T>> {
        let registered = Arc::new(Registered {
            value,
            key: key.to_string(),
            entries: Arc::downgrade(self.entries),
        });
        self.map
            .insert(key.to_string(), Arc::downgrade(&registered));
        registered
    }
}

impl<T> Deref for Registered<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> Drop for Registered<T> {
    fn drop(&mut self) {
        let Some(entries) = self.entries.upgrade() else {
            return;
        };
        let mut map = entries.lock().unwrap_or_else(|e| e.into_inner());
        // Unless a new value took the key meanwhile.
        if map
            .get(&self.key)
            .is_some_and(|weak| std::ptr::eq(weak.as_ptr(), self))
        {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_leaves_with_its_last_holder() {
        let registry = Registry::new();
        let first = registry.lock().insert("rooms:a", 1);
        let again = registry.get("rooms:a").unwrap();
        assert_eq!(**again, 1);
        assert_eq!(registry.lock().len(), 1);
        drop(first);
        assert_eq!(registry.lock().len(), 1, "a holder is left");
        drop(again);
        assert_eq!(registry.lock().len(), 0);
        assert!(registry.get("rooms:a").is_none());
    }

    #[test]
    fn a_value_dropped_after_its_key_was_taken_leaves_the_new_one() {
        let registry = Registry::new();
        let old = registry.lock().insert("k", "old");
        // As when the old value's last holder is dropping while a new
        // client registers the key again.
        let new = registry.lock().insert("k", "new");
        drop(old);
        assert_eq!(registry.get("k").as_deref().map(|v| **v), Some("new"));
        drop(new);
        assert_eq!(registry.lock().len(), 0);
    }
}
