//! In-process wake-ups for the job and diagnostics long-polls: a handler that stores something a
//! waiter cares about (a job offered to a device, a diagnostics request, a device's answer) wakes
//! the waiters of that key (`Wake::job(device)`, …).
//!
//! The same pattern as [`crate::shadow_hub`]: only waiters are tracked, a key has an entry while
//! someone waits on it, and a wake nobody waits for costs one map lookup. It sees only this
//! process's changes, so waiters also re-read the store every few seconds to catch what another
//! replica stored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use drover_core::DeviceId;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What a waiter waits for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WakeKey {
    /// A job execution was offered to the device.
    Job(DeviceId),
    /// A diagnostics request for the device was stored.
    Diag(DeviceId),
    /// The device answered this diagnostics request.
    Answer(String),
}

/// The hub; cheap to clone, all clones share the waiters.
#[derive(Clone, Default)]
pub struct WakeHub {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    watches: Mutex<HashMap<WakeKey, watch::Sender<u64>>>,
    /// Cancelled at shutdown, so that long-polls answer at once instead of holding shutdown up.
    closed: CancellationToken,
}

/// A subscription to one key. Dropping it unsubscribes.
pub struct Waiter {
    inner: Arc<Inner>,
    key: WakeKey,
    /// Always `Some` until dropped; taken in `drop` so it is released while the map is locked.
    rx: Option<watch::Receiver<u64>>,
}

impl WakeHub {
    /// Starts waiting on `key`. Subscribe *before* reading the store, so that a change stored
    /// between the read and the wait still wakes the waiter.
    pub fn subscribe(&self, key: WakeKey) -> Waiter {
        let rx = self
            .inner
            .lock()
            .entry(key.clone())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Waiter {
            inner: self.inner.clone(),
            key,
            rx: Some(rx),
        }
    }

    /// Wakes every waiter of `key`.
    pub fn wake(&self, key: &WakeKey) {
        if let Some(tx) = self.inner.lock().get(key) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Wakes every current and future waiter for good (server shutdown).
    pub fn close(&self) {
        self.inner.closed.cancel();
    }
}

impl Waiter {
    /// Waits for a wake after the subscription (or after the last `woken`); `false` once the hub
    /// is closed.
    pub async fn woken(&mut self) -> bool {
        let Some(rx) = self.rx.as_mut() else {
            return false;
        };
        tokio::select! {
            biased;
            () = self.inner.closed.cancelled() => false,
            result = rx.changed() => result.is_ok(),
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut watches = self.inner.lock();
        drop(self.rx.take());
        if watches
            .get(&self.key)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            watches.remove(&self.key);
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<WakeKey, watch::Sender<u64>>> {
        self.watches.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[tokio::test]
    async fn a_wake_reaches_the_waiters_of_its_key_only_and_entries_leave_with_them() {
        let hub = WakeHub::default();
        let device = DeviceId::parse("d-1").unwrap();
        let mut job = hub.subscribe(WakeKey::Job(device.clone()));
        let mut diag = hub.subscribe(WakeKey::Diag(device.clone()));
        hub.wake(&WakeKey::Job(device.clone()));
        assert_eq!(job.woken().now_or_never(), Some(true));
        assert_eq!(diag.woken().now_or_never(), None);
        drop((job, diag));
        assert!(hub.inner.lock().is_empty());
        let mut late = hub.subscribe(WakeKey::Answer("r".into()));
        hub.close();
        assert_eq!(late.woken().now_or_never(), Some(false));
    }
}
