//! The tier's tracking connections: one RESP3 connection per Redis node (per
//! primary on a cluster) with `CLIENT TRACKING ON BCAST`, opened, watched,
//! switched on again after a reconnection and closed as the topology
//! changes.

use std::{
    sync::{atomic::Ordering::SeqCst, Arc, Weak},
    time::Duration,
};

use fred::{
    clients::Client,
    error::ErrorKind,
    interfaces::{ClientLike, ClusterInterface, EventInterface, TrackingInterface},
    prelude::{Builder, ServerConfig},
    types::{cluster::ClusterRouting, config::Server, RespVersion},
};
use tokio::sync::Notify;

use super::{topology, Shared};
use crate::error::{Error, StoreError};

impl Shared {
    /// Takes fred's current view of the cluster: the slots that changed
    /// owner get a new version (nothing read before is served) and their
    /// entries are dropped; trackers of nodes that left are closed; the
    /// refresh task is woken to track new primaries.
    pub(super) fn apply_routing(&self, routing: &ClusterRouting) {
        // An empty table is a topology not known (yet), not one without
        // owners: keep the current one rather than close every tracker.
        if routing.slots().is_empty() {
            return;
        }
        let owners = topology::owners(routing);
        let (moved, retired, tracked, first) = {
            let mut topology = self.topology();
            if topology.owners == owners {
                return;
            }
            let first = topology.owners.iter().all(Option::is_none);
            let (moved, retired) = topology.set_owners(owners);
            topology.sync(&self.slots, |i| moved[i]);
            let tracked = topology.trackers.len();
            (moved, retired, tracked, first)
        };
        let count = moved.iter().filter(|m| **m).count();
        let gone: Vec<Arc<String>> = self
            .entries
            .iter()
            .filter(|(_, local)| {
                moved[usize::from(local.slot)] || moved[usize::from(local.generation_slot)]
            })
            .map(|(k, _)| k)
            .collect();
        for key in &gone {
            self.drop_key(key);
        }
        // Generations are few and read again on the next miss.
        self.generations.clear();
        for e in &self.epochs {
            e.fetch_add(1, SeqCst);
        }
        if !first {
            tracing::info!(
                moved_slots = count,
                dropped = gone.len(),
                tracked_nodes = tracked,
                retired_nodes = retired.len(),
                "cache L1: cluster topology changed; entries of moved slots dropped"
            );
        }
        for client in retired {
            tokio::spawn(async move {
                let _ = client.quit().await;
            });
        }
        self.wake.notify_one();
    }

    /// Follows the topology changes fred sees on a pool client (after a
    /// `MOVED`, a lost connection, a resync).
    pub(super) fn follow(shared: &Arc<Self>, client: &Client) {
        let weak = Arc::downgrade(shared);
        let client_ = client.clone();
        crate::store::listen(client.cluster_change_rx(), move |_| {
            let shared = weak.upgrade();
            if let Some(shared) = &shared {
                if let Some(routing) = client_.cached_cluster_state() {
                    shared.apply_routing(&routing);
                }
            }
            std::future::ready(shared.is_some())
        });
    }

    /// Reads a cluster's topology again every `every`, and opens tracking
    /// connections to primaries (or the single Redis) that have none, when
    /// woken or on time.
    pub(super) async fn refresh_topology(weak: Weak<Self>, wake: Arc<Notify>, every: Duration) {
        loop {
            let on_time = tokio::time::timeout(every, wake.notified()).await.is_err();
            let Some(shared) = weak.upgrade() else {
                return;
            };
            if on_time && shared.clustered {
                let client = shared.redis.pool().next().clone();
                if let Err(error) = client.sync_cluster().await {
                    tracing::debug!(%error, "cache L1: cluster topology not read");
                }
                if let Some(routing) = client.cached_cluster_state() {
                    shared.apply_routing(&routing);
                }
            }
            // Failures are retried on the next round.
            let _ = Self::open_missing(&shared, false).await;
        }
    }

    /// Opens a tracking connection to each primary that has none. With
    /// `strict`, the first that cannot be opened fails the call.
    pub(super) async fn open_missing(shared: &Arc<Self>, strict: bool) -> Result<(), Error> {
        let missing = shared.topology().missing();
        for server in missing {
            match Self::open_tracker(shared, &server).await {
                Ok(()) => {
                    shared.topology().failing.remove(&server);
                }
                Err(error) if strict => return Err(error),
                Err(error) => {
                    if shared.topology().failing.insert(server.clone()) {
                        tracing::warn!(
                            %server, %error,
                            "cache L1 tracking connection not opened; keys of this node not served from L1"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Opens the tracking connection to `server` and switches tracking on.
    /// A refusal of `CLIENT TRACKING` is no error: the node's keys stay
    /// off the L1, with a warning.
    async fn open_tracker(shared: &Arc<Self>, server: &Server) -> Result<(), Error> {
        let pool_client = shared.redis.pool().next();
        let mut config = pool_client.client_config();
        if shared.clustered {
            config.server = ServerConfig::Centralized {
                server: server.clone(),
            };
        }
        config.version = RespVersion::RESP3;
        let mut builder = Builder::from_config(config);
        if let Some(policy) = pool_client.client_reconnect_policy() {
            builder.set_policy(policy);
        }
        let client = builder
            .build()
            .map_err(|e| Error::config(format!("tracking client: {e}")))?;
        // A node that does not answer must not hold up the refresh task.
        let within = pool_client.connection_config().connection_timeout + Duration::from_secs(1);
        let connected = match tokio::time::timeout(within, client.init()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no connection within {within:?}")),
        };
        if let Err(e) = connected {
            let _ = client.quit().await;
            return Err(Error::Store(StoreError::Backend(format!(
                "tracking connection: {e}"
            ))));
        }
        let id = {
            let mut topology = shared.topology();
            if !topology.owns_slots(server) {
                None
            } else {
                let id = topology.next_id();
                let tracker = topology::Tracker {
                    id,
                    client: client.clone(),
                    up: false,
                    losses: 0,
                };
                if let Some(old) = topology.trackers.insert(server.clone(), tracker) {
                    tokio::spawn(async move {
                        let _ = old.client.quit().await;
                    });
                }
                Some(id)
            }
        };
        // The node left meanwhile.
        let Some(id) = id else {
            let _ = client.quit().await;
            return Ok(());
        };
        Self::watch(shared, &client, server, id);
        let tracking = client.start_tracking(shared.prefixes.clone(), true, false, false, false);
        let tracked = tokio::time::timeout(within, tracking)
            .await
            .unwrap_or_else(|_| {
                Err(fred::error::Error::new(
                    ErrorKind::Timeout,
                    "no answer to CLIENT TRACKING",
                ))
            });
        match tracked {
            Ok(()) => {
                if shared.tracker_restored(server, id, 0) == Some(false) && shared.clustered {
                    tracing::info!(%server, "cache L1 tracking on; keys of this node served from L1");
                }
                Ok(())
            }
            Err(e) => {
                let refused = refused(&e);
                shared.retire(server, id, refused.then_some(&e));
                let _ = client.quit().await;
                if refused {
                    Ok(())
                } else {
                    Err(Error::Store(StoreError::Backend(format!(
                        "CLIENT TRACKING: {e}"
                    ))))
                }
            }
        }
    }

    /// Closes the tracker `id` of `server` after `CLIENT TRACKING` failed:
    /// the refresh task opens a new one, unless the server refused it
    /// (`refused` holds its answer; then the node's keys stay off the L1,
    /// with a warning).
    fn retire(
        &self,
        server: &Server,
        id: u64,
        refused: Option<&fred::error::Error>,
    ) -> Option<Client> {
        let mut topology = self.topology();
        let retired = match topology.trackers.get(server) {
            Some(t) if t.id == id => topology.trackers.remove(server).map(|t| t.client),
            _ => None,
        };
        topology.sync(&self.slots, |_| false);
        let Some(error) = refused else {
            return retired;
        };
        if topology.refused.insert(server.clone()) {
            drop(topology);
            tracing::warn!(
                %server, %error,
                "cache L1 off: Redis refused CLIENT TRACKING, which keeps the L1 coherent; \
                 every lookup of this node's keys goes to Redis (allow `client|tracking` \
                 to the cache's user to use the L1)"
            );
        }
        retired
    }

    /// Marks the tracker `id` of `server` down, and the slots of its node
    /// with it. Whether it was up; `None` when that tracker was closed since.
    fn tracker_lost(&self, server: &Server, id: u64) -> Option<bool> {
        let mut topology = self.topology();
        let tracker = topology.trackers.get_mut(server).filter(|t| t.id == id)?;
        tracker.losses += 1;
        let was = std::mem::replace(&mut tracker.up, false);
        topology.sync(&self.slots, |_| false);
        Some(was)
    }

    /// Marks the tracker `id` of `server` up, unless its connection was lost
    /// again since `losses` was read: the slots of its node get a new
    /// version (nothing read before is served). Whether it was up; `None`
    /// when that tracker was closed since.
    fn tracker_restored(&self, server: &Server, id: u64, losses: u64) -> Option<bool> {
        let mut topology = self.topology();
        let tracker = topology.trackers.get_mut(server).filter(|t| t.id == id)?;
        let was = tracker.up;
        if tracker.losses != losses {
            return Some(was);
        }
        tracker.up = true;
        let topology = &*topology;
        topology.sync(&self.slots, |i| topology.owners[i].as_ref() == Some(server));
        Some(was)
    }

    /// Wires a tracking client's events to the tier. Events dropped because
    /// a listener fell behind count as the worst they could have been: a
    /// flush, a lost connection, a reconnection.
    fn watch(shared: &Arc<Self>, client: &Client, server: &Server, id: u64) {
        let weak = Arc::downgrade(shared);
        crate::store::listen(client.invalidation_rx(), move |invalidation| {
            let shared = weak.upgrade();
            if let Some(shared) = &shared {
                match invalidation {
                    // FLUSHALL / FLUSHDB, or some were missed.
                    None => shared.flush(),
                    Some(invalidation) if invalidation.keys.is_empty() => shared.flush(),
                    Some(invalidation) => {
                        for key in &invalidation.keys {
                            match key.as_str() {
                                Some(k) => shared.drop_key(k),
                                None => shared.flush(),
                            }
                        }
                    }
                }
            }
            std::future::ready(shared.is_some())
        });
        let weak = Arc::downgrade(shared);
        let server_ = server.clone();
        crate::store::listen(client.error_rx(), move |error| {
            let shared = weak.upgrade();
            let current = shared.as_ref().and_then(|shared| {
                let was = shared.tracker_lost(&server_, id)?;
                if was {
                    let error =
                        error.map_or_else(|| "events missed".to_owned(), |(e, _)| e.to_string());
                    tracing::warn!(
                        server = %server_, %error,
                        "cache L1 tracking connection lost; L1 flushed and bypassed for this node"
                    );
                }
                shared.flush();
                Some(())
            });
            std::future::ready(current.is_some())
        });
        let weak = Arc::downgrade(shared);
        let server = server.clone();
        crate::store::listen(client.reconnect_rx(), move |_| {
            let weak = weak.clone();
            let server = server.clone();
            async move {
                let Some(shared) = weak.upgrade() else {
                    return false;
                };
                let (client, losses) = {
                    let topology = shared.topology();
                    match topology.trackers.get(&server).filter(|t| t.id == id) {
                        Some(t) => (t.client.clone(), t.losses),
                        None => return false,
                    }
                };
                let tracked = client
                    .start_tracking(shared.prefixes.clone(), true, false, false, false)
                    .await;
                match tracked {
                    Ok(()) => {
                        shared.flush();
                        // Whatever was read before is of unknown freshness.
                        match shared.tracker_restored(&server, id, losses) {
                            Some(false) => tracing::info!(
                                %server,
                                "cache L1 tracking restored; L1 back in use"
                            ),
                            Some(true) => {}
                            None => return false,
                        }
                    }
                    Err(error) => {
                        tracing::warn!(
                            %server, %error,
                            "cache L1 tracking not restored; L1 bypassed for this node until a new tracking connection is opened"
                        );
                        let refused = refused(&error).then_some(&error);
                        if let Some(client) = shared.retire(&server, id, refused) {
                            let _ = client.quit().await;
                        }
                        return false;
                    }
                }
                true
            }
        });
    }
}

/// Whether `CLIENT TRACKING` failed because the server refused it (an error
/// reply such as `NOPERM ...` or `ERR unknown command ...`), rather than on
/// the way there.
fn refused(error: &fred::error::Error) -> bool {
    let code = error.details().split(' ').next().unwrap_or("");
    !matches!(
        error.kind(),
        ErrorKind::IO | ErrorKind::Timeout | ErrorKind::Canceled
    ) && code.len() >= 2
        && code.bytes().all(|b| b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use fred::error::{Error, ErrorKind};

    #[test]
    fn only_an_error_reply_of_the_server_is_a_refusal() {
        let refusal = |kind, details: &str| super::refused(&Error::new(kind, details.to_owned()));
        assert!(refusal(
            ErrorKind::Unknown,
            "NOPERM this user has no permissions to run the 'client|tracking' command"
        ));
        assert!(refusal(
            ErrorKind::Unknown,
            "ERR unknown command 'CLIENT', with args beginning with: 'TRACKING'"
        ));
        assert!(!refusal(
            ErrorKind::Unknown,
            "Too many failed write attempts."
        ));
        assert!(!refusal(ErrorKind::IO, "ERR connection reset"));
        assert!(!refusal(ErrorKind::Timeout, "Request timed out."));
        assert!(!refusal(ErrorKind::Canceled, "Canceled."));
    }
}
