//! The check that Redis cannot evict what invalidation relies on.

use std::collections::HashMap;

use fred::{prelude::ClientLike, types::CustomCommand};

/// Checks once, in a task of its own, that Redis cannot evict what
/// invalidation relies on (see [`eviction_risk`]), and warns if it can.
/// Listens to `client`'s connections (subscribed before it connects, so the
/// first is not missed) and reads the settings (see [`eviction_settings`])
/// from the server of each: on a single Redis once, on a Cluster from every
/// primary of the first connection, until one is found unsafe. Settings that
/// cannot be read are logged at `info` and end the check.
pub(super) fn check_eviction(client: fred::prelude::Client) {
    use fred::interfaces::EventInterface;
    use tokio::sync::broadcast::error::RecvError;
    let mut connections = client.reconnect_rx();
    tokio::spawn(async move {
        let mut checked = std::collections::HashSet::new();
        loop {
            let server = match connections.recv().await {
                Ok(server) => server,
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            };
            if !checked.insert(server.clone()) {
                continue;
            }
            let (maxmemory, policy) = match eviction_settings(&client, &server).await {
                Ok(settings) => settings,
                Err(error) => {
                    tracing::info!(
                        %server, %error,
                        "could not read Redis's maxmemory-policy; check by hand that it cannot \
                         evict the cache's generation counters and tag indexes (docs/operations.md)"
                    );
                    return;
                }
            };
            let (maxmemory, policy) = (maxmemory.as_str(), policy.as_str());
            if let Some(risk) = eviction_risk(maxmemory, policy) {
                tracing::warn!(%server, maxmemory, maxmemory_policy = policy, "{risk}");
                return;
            }
            tracing::debug!(
                %server, maxmemory, maxmemory_policy = policy,
                "Redis eviction policy checked: it cannot evict what cache invalidation relies on"
            );
            let all_checked = client.is_connected()
                && client
                    .active_connections()
                    .iter()
                    .all(|s| checked.contains(s));
            if !client.is_clustered() || all_checked {
                return;
            }
        }
    });
}

/// `maxmemory` and `maxmemory-policy` of `server`: from `CONFIG GET`, or
/// where that is refused (managed Redis often forbids it) from `INFO memory`.
async fn eviction_settings(
    client: &fred::prelude::Client,
    server: &fred::types::config::Server,
) -> Result<(String, String), String> {
    async fn ask<R: fred::types::FromValue>(
        client: &fred::prelude::Client,
        server: &fred::types::config::Server,
        command: &'static str,
        args: Vec<&'static str>,
    ) -> Result<R, fred::error::Error> {
        let command = CustomCommand::new_static(command, None, false);
        if client.is_clustered() {
            client.with_cluster_node(server).custom(command, args).await
        } else {
            client.custom(command, args).await
        }
    }
    let config =
        ask::<HashMap<String, String>>(client, server, "CONFIG", vec!["GET", "maxmemory*"]);
    let config_error = match config.await {
        Ok(mut config) => match (
            config.remove("maxmemory"),
            config.remove("maxmemory-policy"),
        ) {
            (Some(maxmemory), Some(policy)) => return Ok((maxmemory, policy)),
            _ => "CONFIG GET maxmemory* lacks maxmemory or maxmemory-policy".to_owned(),
        },
        Err(e) => e.to_string(),
    };
    let info: String = ask(client, server, "INFO", vec!["memory"])
        .await
        .map_err(|e| format!("{config_error}; INFO memory: {e}"))?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
    };
    match (field("maxmemory"), field("maxmemory_policy")) {
        (Some(maxmemory), Some(policy)) => Ok((maxmemory, policy)),
        _ => Err(format!(
            "{config_error}; INFO memory lacks maxmemory or maxmemory_policy"
        )),
    }
}

/// What Redis's eviction can break, given `maxmemory` and
/// `maxmemory-policy`; `None` when it cannot break invalidation.
///
/// Entries and tag indexes expire (tag indexes with their longest-lived
/// entry); namespace generation counters never do. An evicted counter reads
/// as generation 0 again, so entries written under an earlier generation
/// match again; an evicted tag index loses the keys of entries that still
/// live, which `invalidate_tags` then misses. With `maxmemory` 0 nothing is
/// evicted; `noeviction` refuses writes instead.
fn eviction_risk(maxmemory: &str, policy: &str) -> Option<&'static str> {
    if maxmemory.trim() == "0" || policy == "noeviction" {
        None
    } else if policy.starts_with("allkeys-") {
        Some(
            "Redis may evict the cache's namespace generation counters and tag indexes \
             (maxmemory-policy allkeys-*): an evicted counter starts again at 0, so invalidated \
             entries can be served again, and an evicted tag index hides its entries from \
             invalidate_tags; set maxmemory-policy to noeviction, or to volatile-lru if no \
             response carries tags (docs/operations.md)",
        )
    } else if policy.starts_with("volatile-") {
        Some(
            "Redis may evict the cache's tag indexes while their entries live (they expire, so \
             maxmemory-policy volatile-* can evict them): invalidate_tags then misses those \
             entries; if responses carry tags, set maxmemory-policy to noeviction \
             (docs/operations.md)",
        )
    } else {
        Some(
            "Redis's maxmemory-policy is not one the cache knows, and may evict the cache's \
             namespace generation counters or tag indexes; set it to noeviction \
             (docs/operations.md)",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_policies_that_cannot_evict_counters_or_tag_indexes_are_safe() {
        for (maxmemory, policy) in [
            ("0", "allkeys-lru"),
            ("0", "volatile-lru"),
            ("104857600", "noeviction"),
        ] {
            assert_eq!(eviction_risk(maxmemory, policy), None, "{policy}");
        }
        for policy in ["allkeys-lru", "allkeys-lfu", "allkeys-random"] {
            let risk = eviction_risk("104857600", policy).unwrap();
            assert!(risk.contains("generation counters"), "{risk}");
            assert!(
                risk.contains("set maxmemory-policy to noeviction"),
                "{risk}"
            );
        }
        for policy in [
            "volatile-lru",
            "volatile-lfu",
            "volatile-random",
            "volatile-ttl",
        ] {
            let risk = eviction_risk("104857600", policy).unwrap();
            assert!(risk.contains("tag indexes"), "{risk}");
            assert!(
                risk.contains("set maxmemory-policy to noeviction"),
                "{risk}"
            );
        }
        assert!(eviction_risk("104857600", "").is_some());
    }
}
