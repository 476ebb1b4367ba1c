//! In-process change notification for device shadows: a handler that stores a shadow change
//! publishes the shadow's new version here, and whoever waits on that shadow wakes up. HTTP
//! long-polls wait here now; MQTT delta publishing will too.
//!
//! Only waiters are tracked. A shadow has an entry while someone waits on it and loses it when the
//! last waiter leaves, so memory grows with the number of open long-polls, never with the fleet,
//! and publishing a change nobody waits for costs one map lookup.
//!
//! Changes of desired state are also broadcast to the MQTT transport ([`ShadowHub::desired_changes`]),
//! which publishes the delta to the device. The broadcast is bounded: a transport that falls more
//! than [`DESIRED_BACKLOG`] changes behind skips the oldest, and the devices concerned converge
//! when they next fetch their shadow (as they do on every reconnect).
//!
//! This hub only sees changes made through this server process. With several replicas, a change
//! made through another replica does not wake a waiter here; waiters therefore also re-read the
//! store every few seconds (see `routes::shadow`), which keeps them correct, only slower to wake,
//! until a cross-replica notification (MQTT, database notifications) exists.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use drover_core::shadow::ShadowName;
use drover_core::DeviceId;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

/// Desired-state changes the MQTT transport may fall behind by before it skips some.
pub const DESIRED_BACKLOG: usize = 4096;

/// A shadow whose desired state changed, at `version`.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredChange {
    pub device: DeviceId,
    pub name: Option<ShadowName>,
    pub version: u64,
}

/// The notification hub; cheap to clone, all clones share the waiters.
#[derive(Clone, Default)]
pub struct ShadowHub {
    inner: Arc<Inner>,
}

/// A subscription to one shadow's changes. Dropping it unsubscribes.
pub struct ShadowWatch {
    inner: Arc<Inner>,
    key: Key,
    /// Always `Some` until dropped; taken in `drop` so it is released while the map is locked.
    rx: Option<watch::Receiver<u64>>,
}

struct Inner {
    /// The highest version published for each watched shadow since its first waiter arrived.
    watches: Mutex<HashMap<Key, watch::Sender<u64>>>,
    /// Cancelled at shutdown, so that long-polls answer at once instead of holding shutdown up.
    closed: CancellationToken,
    desired: broadcast::Sender<DesiredChange>,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            watches: Mutex::default(),
            closed: CancellationToken::new(),
            desired: broadcast::channel(DESIRED_BACKLOG).0,
        }
    }
}

/// A device and a shadow name (`''` for the classic shadow, as in the store).
type Key = (DeviceId, String);

impl ShadowHub {
    pub fn new() -> ShadowHub {
        ShadowHub::default()
    }

    /// Starts watching a shadow. Subscribe *before* reading the store: a change stored between the
    /// read and the wait then still wakes the waiter.
    pub fn subscribe(&self, device: &DeviceId, name: Option<&ShadowName>) -> ShadowWatch {
        let key = key(device, name);
        let rx = self
            .inner
            .lock()
            .entry(key.clone())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        ShadowWatch {
            inner: self.inner.clone(),
            key,
            rx: Some(rx),
        }
    }

    /// Announces that a shadow is now at `version`; wakes its waiters unless they have seen a
    /// version at least as new.
    pub fn publish(&self, device: &DeviceId, name: Option<&ShadowName>, version: u64) {
        if let Some(tx) = self.inner.lock().get(&key(device, name)) {
            tx.send_if_modified(|latest| {
                let newer = version > *latest;
                if newer {
                    *latest = version;
                }
                newer
            });
        }
    }

    /// Announces that operators changed a shadow's desired state (to whoever listens for deltas).
    pub fn desired_changed(&self, device: &DeviceId, name: Option<&ShadowName>, version: u64) {
        // No receiver (MQTT off) is not an error.
        let _ = self.inner.desired.send(DesiredChange {
            device: device.clone(),
            name: name.cloned(),
            version,
        });
    }

    /// Desired-state changes from now on.
    pub fn desired_changes(&self) -> broadcast::Receiver<DesiredChange> {
        self.inner.desired.subscribe()
    }

    /// Wakes every current and future waiter for good (server shutdown).
    pub fn close(&self) {
        self.inner.closed.cancel();
    }

    /// How many shadows have waiters.
    pub fn n_watched(&self) -> usize {
        self.inner.lock().len()
    }
}

impl ShadowWatch {
    /// Waits for a version published after this subscription (or after the last `changed`) and
    /// returns it; `None` once the hub is closed.
    pub async fn changed(&mut self) -> Option<u64> {
        let rx = self.rx.as_mut()?;
        tokio::select! {
            biased;
            () = self.inner.closed.cancelled() => None,
            result = rx.changed() => result.ok().map(|()| *rx.borrow_and_update()),
        }
    }
}

impl Drop for ShadowWatch {
    fn drop(&mut self) {
        // Release the receiver and check for other waiters under the same lock `subscribe` takes,
        // so an entry is never removed while a new waiter is joining it.
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
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, watch::Sender<u64>>> {
        // The map stays consistent even if a holder panicked: every change is one insert or remove.
        self.watches.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn key(device: &DeviceId, name: Option<&ShadowName>) -> Key {
    (
        device.clone(),
        name.map_or_else(String::new, |name| name.as_str().to_owned()),
    )
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    fn device(text: &str) -> DeviceId {
        DeviceId::parse(text).unwrap()
    }

    #[tokio::test]
    async fn a_newer_version_wakes_waiters_of_that_shadow_only() {
        let hub = ShadowHub::new();
        let config = ShadowName::parse("config").unwrap();
        let mut classic = hub.subscribe(&device("d-1"), None);
        let mut named = hub.subscribe(&device("d-1"), Some(&config));
        let mut other = hub.subscribe(&device("d-2"), None);

        hub.publish(&device("d-1"), None, 3);
        assert_eq!(classic.changed().now_or_never(), Some(Some(3)));
        assert_eq!(named.changed().now_or_never(), None);
        assert_eq!(other.changed().now_or_never(), None);

        // A version that is not newer than what was published is old news.
        hub.publish(&device("d-1"), None, 2);
        assert_eq!(classic.changed().now_or_never(), None);
        hub.publish(&device("d-1"), Some(&config), 1);
        assert_eq!(named.changed().now_or_never(), Some(Some(1)));
    }

    #[tokio::test]
    async fn a_change_published_before_the_wait_is_not_missed() {
        let hub = ShadowHub::new();
        let mut watch = hub.subscribe(&device("d-1"), None);
        hub.publish(&device("d-1"), None, 7);
        assert_eq!(watch.changed().await, Some(7));
    }

    #[tokio::test]
    async fn entries_live_only_while_someone_waits() {
        let hub = ShadowHub::new();
        hub.publish(&device("d-1"), None, 1);
        assert_eq!(hub.n_watched(), 0, "publishing to nobody keeps nothing");
        let first = hub.subscribe(&device("d-1"), None);
        let second = hub.subscribe(&device("d-1"), None);
        assert_eq!(hub.n_watched(), 1);
        drop(first);
        assert_eq!(hub.n_watched(), 1, "one waiter is left");
        drop(second);
        assert_eq!(hub.n_watched(), 0);
    }

    #[tokio::test]
    async fn closing_the_hub_releases_every_waiter() {
        let hub = ShadowHub::new();
        let mut watch = hub.subscribe(&device("d-1"), None);
        assert_eq!(watch.changed().now_or_never(), None);
        hub.close();
        assert_eq!(watch.changed().now_or_never(), Some(None));
        let mut late = hub.subscribe(&device("d-2"), None);
        assert_eq!(late.changed().now_or_never(), Some(None));
    }
}
