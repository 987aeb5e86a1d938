//! What `RedisStore` tells an operator about Redis's eviction policy when it
//! first connects: a warning where eviction can undo invalidation (namespace
//! generation counters, tag indexes), none where it cannot.

mod support;

use std::time::{Duration, Instant};

use support::{Captured, RedisServer};

impl Captured {
    /// The log so far, once a line contains `needle` (up to 10 s: the check
    /// runs in a task of its own after the connection).
    async fn once_logged(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.text();
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "never logged {needle:?}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The lines at `level` that speak of the eviction policy.
    fn eviction_lines(&self, level: &str) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains(level) && l.contains("maxmemory"))
            .map(str::to_owned)
            .collect()
    }
}

/// Captures this thread's `tracing` output (the tests run on a
/// current-thread runtime, so the store's tasks log here too).
fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}

fn config_set(redis: &RedisServer, node: usize, setting: &str) {
    let reply = redis.node_command(node, &format!("CONFIG SET {setting}"));
    assert!(reply.starts_with("+OK"), "CONFIG SET {setting}: {reply}");
}

const CHECKED: &str = "Redis eviction policy checked";

#[tokio::test]
async fn allkeys_lru_with_a_memory_limit_is_warned_about() {
    let redis = RedisServer::start();
    config_set(&redis, 0, "maxmemory 100mb");
    config_set(&redis, 0, "maxmemory-policy allkeys-lru");
    let (logs, _guard) = capture();
    let _store = redis.store().await;
    let text = logs.once_logged("may evict").await;
    let warnings = logs.eviction_lines("WARN");
    assert_eq!(warnings.len(), 1, "{text}");
    let warning = &warnings[0];
    for words in [
        "allkeys-lru",
        "generation counters",
        "set maxmemory-policy to noeviction",
    ] {
        assert!(warning.contains(words), "{words:?} in {warning}");
    }
    assert!(warning.contains(&format!(":{}", redis.port())), "{warning}");
}

#[tokio::test]
async fn volatile_policies_are_warned_about_for_tag_indexes() {
    let redis = RedisServer::start();
    config_set(&redis, 0, "maxmemory 100mb");
    config_set(&redis, 0, "maxmemory-policy volatile-lru");
    let (logs, _guard) = capture();
    let _store = redis.store().await;
    let text = logs.once_logged("may evict").await;
    let warnings = logs.eviction_lines("WARN");
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(warnings[0].contains("tag indexes"), "{}", warnings[0]);
    assert!(warnings[0].contains("volatile-lru"), "{}", warnings[0]);
}

#[tokio::test]
async fn noeviction_or_no_memory_limit_is_not_warned_about() {
    for settings in [
        &["maxmemory 100mb", "maxmemory-policy noeviction"][..],
        &["maxmemory 0", "maxmemory-policy allkeys-lru"][..],
    ] {
        let redis = RedisServer::start();
        for setting in settings {
            config_set(&redis, 0, setting);
        }
        let (logs, _guard) = capture();
        let _store = redis.store().await;
        let text = logs.once_logged(CHECKED).await;
        assert_eq!(logs.eviction_lines("WARN"), Vec::<String>::new(), "{text}");
    }
}

#[tokio::test]
async fn where_config_is_forbidden_info_memory_tells() {
    let redis = RedisServer::start();
    config_set(&redis, 0, "maxmemory 100mb");
    config_set(&redis, 0, "maxmemory-policy allkeys-random");
    // As on a managed Redis that forbids CONFIG.
    let reply = redis.node_command(0, "ACL SETUSER default -config");
    assert!(reply.starts_with("+OK"), "{reply}");
    let (logs, _guard) = capture();
    let _store = redis.store().await;
    let text = logs.once_logged("may evict").await;
    let warnings = logs.eviction_lines("WARN");
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(warnings[0].contains("allkeys-random"), "{}", warnings[0]);
}

#[tokio::test]
async fn settings_that_cannot_be_read_are_logged_at_info_not_warned_about() {
    let redis = RedisServer::start();
    config_set(&redis, 0, "maxmemory 100mb");
    config_set(&redis, 0, "maxmemory-policy allkeys-lru");
    let reply = redis.node_command(0, "ACL SETUSER default -config -info");
    assert!(reply.starts_with("+OK"), "{reply}");
    let (logs, _guard) = capture();
    let _store = redis.store().await;
    let text = logs
        .once_logged("could not read Redis's maxmemory-policy")
        .await;
    assert_eq!(logs.eviction_lines("WARN"), Vec::<String>::new(), "{text}");
    assert_eq!(logs.eviction_lines("INFO").len(), 1, "{text}");
}

#[tokio::test]
async fn on_a_cluster_every_primary_is_checked() {
    let redis = RedisServer::start_cluster();
    let (logs, _guard) = capture();
    let store = redis.store().await;
    let text = logs.once_logged(CHECKED).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while logs.eviction_lines("DEBUG").len() < 3 {
        assert!(Instant::now() < deadline, "{}", logs.text());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(logs.eviction_lines("WARN"), Vec::<String>::new(), "{text}");
    drop(store);

    // One primary of three evicts: the store says which.
    let port = |node: usize| {
        let reply = redis.node_command(node, "CONFIG GET port");
        reply.lines().nth(4).unwrap_or_default().to_owned()
    };
    config_set(&redis, 2, "maxmemory 100mb");
    config_set(&redis, 2, "maxmemory-policy allkeys-lfu");
    let (logs, _guard) = capture();
    let _store = redis.store().await;
    let text = logs.once_logged("may evict").await;
    let warnings = logs.eviction_lines("WARN");
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(
        warnings[0].contains(&format!("127.0.0.1:{}", port(2))),
        "{}",
        warnings[0]
    );
    assert!(warnings[0].contains("allkeys-lfu"), "{}", warnings[0]);
}
