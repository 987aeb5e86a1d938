//! Per-route policies: TTL, jitter, namespace, cacheable statuses and whether
//! requests with `Authorization` may be cached.
//!
//! A layer has a default policy and any number of rules,
//! each keyed by an axum route pattern (`/products/{id}`, matched through
//! axum's `MatchedPath` when present and against the request path otherwise,
//! so plain hyper services and the [`CacheHandle`](crate::CacheHandle) resolve
//! the same rule) or by a path prefix. Fields a rule does not set are taken
//! from the layer's default policy when the layer is built, and fields the
//! default policy does not set from `Resolved::defaults`.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, RwLock,
    },
    time::Duration,
};

use http::StatusCode;

use crate::{
    entry::Lifetimes,
    error::Error,
    jitter,
    key::{check_component, KeySpace},
    shape::{KeySettings, KeyShape},
    tags::Tagger,
};

/// How the responses of one route are cached.
///
/// Every setter is optional. What a route's policy leaves unset comes from
/// the layer's
/// [`default_policy`](crate::RedisCacheLayerBuilder::default_policy), and
/// what that one leaves unset from the defaults each setter names.
///
/// ```
/// use std::time::Duration;
/// use http::StatusCode;
/// use tower_redis_cache::CachePolicy;
///
/// let items = CachePolicy::new()
///     .ttl(Duration::from_secs(900))
///     .jitter(0.1)
///     .namespace("products")
///     .statuses([StatusCode::OK, StatusCode::NOT_FOUND]);
/// let never = CachePolicy::bypass();
/// # let _ = (items, never);
/// ```
#[derive(Clone, Debug, Default)]
pub struct CachePolicy {
    ttl: Option<Duration>,
    jitter: Option<f64>,
    namespace: Option<String>,
    statuses: Option<Vec<StatusCode>>,
    allow_authorization: Option<bool>,
    stale_while_revalidate: Option<Duration>,
    stale_if_error: Option<Duration>,
    early_refresh: Option<f64>,
    tagger: Option<Tagger>,
    mode: Option<FreshnessMode>,
    respect_max_age: Option<bool>,
    heuristic: Option<Option<f64>>,
    heuristic_max: Option<Duration>,
    revalidate_window: Option<Duration>,
    etag: Option<bool>,
    strip_set_cookie: Option<bool>,
    invalidate_on_unsafe: Option<bool>,
    request_directives: Option<bool>,
    cookies: Option<CookiePolicy>,
    compression: Option<Compression>,
    key: KeySettings,
    bypass: bool,
}

/// How a route's bodies are stored: gzip-compressed (the default) or as the
/// origin sent them. See docs/compression.md.
///
/// A stored body is compressed when it is at least [`threshold`] bytes, its
/// `Content-Type` is text or structured text (JSON, XML, JavaScript, SVG),
/// the origin did not encode it (`Content-Encoding`), its `Cache-Control`
/// does not say `no-transform`, and compression brings it to
/// [`max_ratio`] of its size or less. Clients that accept gzip get the
/// stored bytes as they are (`Content-Encoding: gzip`); others get the
/// body decompressed as it is sent.
///
/// [`threshold`]: Compression::threshold
/// [`max_ratio`]: Compression::max_ratio
///
/// ```
/// use tower_redis_cache::{CachePolicy, Compression};
///
/// // Catalogue pages: compress from 4 KiB, as hard as gzip goes.
/// let pages = CachePolicy::new().compression(Compression::gzip().threshold(4096).level(9));
/// // Bodies that must reach clients byte for byte as the origin sent them.
/// let exact = CachePolicy::new().compression(Compression::off());
/// # let _ = (pages, exact);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Compression {
    pub(crate) codec: Option<Codec>,
    pub(crate) threshold: usize,
    pub(crate) level: u32,
    pub(crate) max_ratio: f32,
}

/// The codings a body can be stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Codec {
    /// gzip (RFC 1952): accepted by nearly every HTTP client, so one stored
    /// coding serves them as it is.
    Gzip,
}

impl Compression {
    /// gzip at level 6 for bodies of 1 KiB and up that shrink to 90% or
    /// less (the default).
    pub fn gzip() -> Self {
        Self {
            codec: Some(Codec::Gzip),
            threshold: 1024,
            level: 6,
            max_ratio: 0.9,
        }
    }

    /// Bodies are stored as the origin sent them.
    pub fn off() -> Self {
        Self {
            codec: None,
            ..Self::gzip()
        }
    }

    /// The coding used, `None` when off.
    pub fn codec(&self) -> Option<Codec> {
        self.codec
    }

    /// Bodies shorter than this many bytes are stored as they are (default
    /// 1024): below about a kilobyte gzip saves little, and every client
    /// that does not accept gzip pays a decompression.
    pub fn threshold(mut self, bytes: usize) -> Self {
        self.threshold = bytes;
        self
    }

    /// The gzip level, 1 (fastest) to 9 (smallest); default 6. It is paid
    /// once, on the miss that stores the body; decompression costs about
    /// the same at every level.
    pub fn level(mut self, level: u32) -> Self {
        self.level = level;
        self
    }

    /// The largest compressed size, as a fraction of the body, for which the
    /// compressed body is stored (default 0.9): a body that does not shrink
    /// that much is stored as it is, sparing decompression for little
    /// memory.
    pub fn max_ratio(mut self, ratio: f32) -> Self {
        self.max_ratio = ratio;
        self
    }

    fn validate(&self, what: &str) -> Result<(), Error> {
        if self.codec.is_none() {
            return Ok(());
        }
        if !(1..=9).contains(&self.level) {
            return Err(Error::config(format!(
                "{what}: compression level {} is outside 1..=9; use 1 (fastest) to 9 \
                 (smallest), or Compression::off()",
                self.level
            )));
        }
        if !(self.max_ratio > 0.0 && self.max_ratio <= 1.0) {
            return Err(Error::config(format!(
                "{what}: compression max_ratio {} is outside 0.0 (excluded) to 1.0; use e.g. 0.9",
                self.max_ratio
            )));
        }
        Ok(())
    }
}

impl Default for Compression {
    fn default() -> Self {
        Self::gzip()
    }
}

/// Where an entry's freshness comes from.
///
/// In both modes a response with `no-store`, `private`, `Set-Cookie` or
/// `Vary: *` is never stored, `Vary` selects variants, validators answer
/// conditional requests with `304`, and request directives are honoured
/// (unless [`CachePolicy::honor_request_cache_control`] turns them off).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum FreshnessMode {
    /// The route's TTL (jittered) decides how long a response is fresh; with
    /// [`CachePolicy::respect_max_age`] the response's `s-maxage` or
    /// `max-age` may shorten it. Which statuses are stored is the policy's
    /// [`statuses`](CachePolicy::statuses) list. This is what an application
    /// wants in front of its own handlers.
    #[default]
    PolicyDriven,
    /// The response decides, as a shared cache computes it (RFC 9111 §4.2):
    /// `s-maxage`, `max-age`, `Expires` minus `Date`, upstream `Age`; no
    /// heuristic freshness unless [`CachePolicy::heuristic_freshness`] sets
    /// one; `no-cache`, `must-revalidate` and `proxy-revalidate` obeyed;
    /// `stale-while-revalidate` and `stale-if-error` taken from the response
    /// (the policy's windows apply when it gives none). Any final status but
    /// `206` and `304` may be stored; the policy's TTL and statuses are not
    /// used. This is the mode for a cache in front of an origin you do not
    /// control (see `examples/reverse_proxy.rs`).
    OriginDriven,
}

/// What a request carrying `Cookie` may get from the cache, and give it.
///
/// A shared cache cannot know whether a response depends on a cookie the
/// request carried: a session cookie usually makes the page one user's.
/// Caches disagree on the default: Varnish's built-in rules pass such
/// requests to the origin, nginx and Squid ignore `Cookie`. This layer
/// follows the mode: in [`FreshnessMode::OriginDriven`] (an origin you do not
/// control) the default is [`SharedOnly`](CookiePolicy::SharedOnly); in
/// [`FreshnessMode::PolicyDriven`] (your own handlers, whose routes you
/// chose to cache) it is [`Ignore`](CookiePolicy::Ignore).
///
/// ```
/// use tower_redis_cache::{CachePolicy, CookiePolicy};
///
/// // In front of an origin whose pages never depend on cookies.
/// let assets = CachePolicy::new().origin_driven().cookies(CookiePolicy::Ignore);
/// // Never serve or store anything for a request with a cookie.
/// let strict = CachePolicy::new().origin_driven().cookies(CookiePolicy::Pass);
/// # let _ = (assets, strict);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CookiePolicy {
    /// `Cookie` plays no part: such a request is served and stored like any
    /// other. Right when responses do not depend on cookies, or say so with
    /// `Cache-Control: private` or `Vary: Cookie`. The default in
    /// policy-driven mode.
    Ignore,
    /// A request with `Cookie` is treated like one with `Authorization`
    /// (RFC 9111 §3.5): it is served only a stored response that explicitly
    /// allows sharing (`public`, `s-maxage` or `must-revalidate`), and its
    /// own response is stored only if it says one of those. The default in
    /// origin-driven mode.
    SharedOnly,
    /// A request with `Cookie` passes through (`x-cache: BYPASS`): it is not
    /// looked up and its response is not stored.
    Pass,
}

impl CachePolicy {
    /// A policy that sets nothing: a route's takes every setting from the
    /// layer's default policy, the default policy takes the defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// A policy that never caches: requests pass through (`x-cache: BYPASS`).
    pub fn bypass() -> Self {
        Self {
            bypass: true,
            ..Self::default()
        }
    }

    /// How long entries live in the store (before jitter; default 60 s).
    /// Must not be zero.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The jitter fraction: each TTL is scaled by a uniform factor in
    /// `1 - fraction ..= 1 + fraction` (default `0.1`, ±10%). `0.0` turns
    /// jitter off; must be below `1.0`.
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = Some(fraction);
        self
    }

    /// The namespace of this route's keys (default `default`); one
    /// [`CacheHandle::invalidate_namespace`](crate::CacheHandle::invalidate_namespace)
    /// call drops every entry in it.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// The response statuses that are stored (default: `200 OK` only).
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.statuses = Some(statuses.into_iter().collect());
        self
    }

    /// Whether requests carrying `Authorization` may be served from and stored
    /// in the cache (default: `false`, they pass through). Turn it on only for
    /// routes whose responses are the same for every user.
    pub fn allow_authorization(mut self, allow: bool) -> Self {
        self.allow_authorization = Some(allow);
        self
    }

    /// How long after its TTL an entry may still be served (`x-cache: STALE`)
    /// while one background request refreshes it (default: 0, off).
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = Some(window);
        self
    }

    /// How long after its TTL an entry may still be served when the service
    /// fails: returns an error or a 5xx status (default: 0, off).
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = Some(window);
        self
    }

    /// Probabilistic early refresh (the XFetch rule): a hit close to expiry
    /// starts one background refresh with a probability that grows as expiry
    /// nears and with how long the service took to produce the entry. `beta`
    /// scales it: `1.0` is the usual choice, larger refreshes earlier, `0.0`
    /// (the default) turns it off.
    pub fn early_refresh(mut self, beta: f64) -> Self {
        self.early_refresh = Some(beta);
        self
    }

    /// Tags for this route's entries, computed from the request URI and the
    /// response head; [`CacheHandle::invalidate_tags`](crate::CacheHandle::invalidate_tags)
    /// drops every entry carrying one of them.
    ///
    /// ```
    /// use tower_redis_cache::CachePolicy;
    ///
    /// let policy = CachePolicy::new().tags(|uri, _response| {
    ///     let id = uri.path().rsplit('/').next().unwrap_or_default();
    ///     vec![format!("product:{id}"), "products".to_owned()]
    /// });
    /// # let _ = policy;
    /// ```
    pub fn tags<F>(mut self, tags: F) -> Self
    where
        F: Fn(&http::Uri, &http::response::Parts) -> Vec<String> + Send + Sync + 'static,
    {
        self.tagger = Some(Tagger(Arc::new(tags)));
        self
    }

    /// Where freshness comes from (default: [`FreshnessMode::PolicyDriven`]).
    pub fn mode(mut self, mode: FreshnessMode) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Shorthand for `.mode(FreshnessMode::OriginDriven)`.
    pub fn origin_driven(self) -> Self {
        self.mode(FreshnessMode::OriginDriven)
    }

    /// Policy-driven mode: a response's `s-maxage` (or else `max-age`) shortens
    /// the TTL when it is smaller (default: `false`, the TTL alone decides).
    pub fn respect_max_age(mut self, respect: bool) -> Self {
        self.respect_max_age = Some(respect);
        self
    }

    /// Origin-driven mode: gives a response without explicit freshness
    /// `fraction` of the time since its `Last-Modified` (RFC 9111 §4.2.2;
    /// `0.1` is the usual value). Default: off, such responses are stored
    /// only to be revalidated. Must be in `0.0..=1.0`.
    ///
    /// The heuristic never exceeds [`heuristic_freshness_max`](Self::heuristic_freshness_max)
    /// (default one day), applies only to the statuses RFC 9110 §15.1 calls
    /// heuristically cacheable (or a `public` response), and never to a
    /// response to a request with credentials (`Authorization`, or a
    /// `Cookie` the route keys as shared-only): those are stored only on
    /// the response's explicit word.
    pub fn heuristic_freshness(mut self, fraction: f64) -> Self {
        self.heuristic = Some(Some(fraction));
        self
    }

    /// The longest freshness the heuristic gives (default: one day). Must
    /// be more than zero.
    pub fn heuristic_freshness_max(mut self, max: Duration) -> Self {
        self.heuristic_max = Some(max);
        self
    }

    /// How long past its freshness a response is kept: so the cache can
    /// revalidate it with a conditional request (when it has an `ETag` or
    /// `Last-Modified`) instead of fetching it whole, and serve it to
    /// requests whose `max-stale` accepts it. Default: 1 hour in
    /// origin-driven mode, 0 (off) in policy-driven mode.
    pub fn revalidate_window(mut self, window: Duration) -> Self {
        self.revalidate_window = Some(window);
        self
    }

    /// How this route's bodies are stored (default: [`Compression::gzip`]).
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = Some(compression);
        self
    }

    /// Adds a strong `ETag` computed from the body (SHA-256, the same on every
    /// process and machine) to stored responses that have none, so clients
    /// can revalidate with `If-None-Match` and get a `304` from the cache
    /// (default: `false`).
    pub fn etag(mut self, add: bool) -> Self {
        self.etag = Some(add);
        self
    }

    /// Stores responses that carry `Set-Cookie`, without the `Set-Cookie`
    /// header (the client that caused the miss still gets it). Default:
    /// `false`, such responses are not stored. Turn it on only where the
    /// cookie is not per user (a consent banner, a load-balancer hint).
    pub fn strip_set_cookie(mut self, strip: bool) -> Self {
        self.strip_set_cookie = Some(strip);
        self
    }

    /// A successful request with an unsafe method (`POST`, `PUT`, `PATCH`,
    /// `DELETE`, or any other not defined as safe) removes the stored
    /// response for its URI, and for its same-origin `Location` and
    /// `Content-Location` (RFC 9111 §4.4). Default: on in origin-driven mode,
    /// off in policy-driven mode (use the [`CacheHandle`](crate::CacheHandle)
    /// there).
    pub fn invalidate_on_unsafe(mut self, invalidate: bool) -> Self {
        self.invalidate_on_unsafe = Some(invalidate);
        self
    }

    /// Whether the request's `Cache-Control` (`no-cache`, `max-age`,
    /// `min-fresh`, `max-stale`, `only-if-cached`, and `Pragma: no-cache`)
    /// is honoured (default: `true`). Browsers send `max-age=0` on reload and
    /// `no-cache` on a forced reload; turn this off on routes where every
    /// client must be served from the cache whatever it asks (the request's
    /// `no-store` is honoured either way).
    pub fn honor_request_cache_control(mut self, honor: bool) -> Self {
        self.request_directives = Some(honor);
        self
    }

    /// What a request carrying `Cookie` may be served and store; see
    /// [`CookiePolicy`]. Default: [`CookiePolicy::SharedOnly`] in
    /// origin-driven mode, [`CookiePolicy::Ignore`] in policy-driven mode.
    pub fn cookies(mut self, cookies: CookiePolicy) -> Self {
        self.cookies = Some(cookies);
        self
    }

    /// Query parameters the key leaves out: names (`fbclid`, `gclid`) or
    /// name prefixes ending in `*` (`utm_*`), compared with names as the
    /// key holds them (percent-encodings of unreserved characters decoded;
    /// case matters). Requests that differ only in these parameters share
    /// an entry.
    ///
    /// The parameters are also **taken off the request** before the service
    /// sees it (unless [`forward_ignored_params`](Self::forward_ignored_params)):
    /// a parameter the key ignores but the handler reads would let one
    /// client store, under the shared key, a page every other client is
    /// then served. Default: none, every parameter is in the key.
    ///
    /// ```
    /// use tower_redis_cache::CachePolicy;
    ///
    /// // `/products?page=2&utm_source=mail` is keyed, and handled, as `/products?page=2`.
    /// let policy = CachePolicy::new().ignore_params(["utm_*", "fbclid", "gclid"]);
    /// # let _ = policy;
    /// ```
    pub fn ignore_params<I, P>(mut self, patterns: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<String>,
    {
        self.key.ignore = Some(patterns.into_iter().map(Into::into).collect());
        self
    }

    /// The only query parameters the key holds (names, or prefixes ending
    /// in `*`); every other parameter is left out of the key and taken off
    /// the request as with [`ignore_params`](Self::ignore_params). Give
    /// either this list or `ignore_params`, not both. Default: every
    /// parameter is in the key.
    ///
    /// ```
    /// use tower_redis_cache::CachePolicy;
    ///
    /// let search = CachePolicy::new().key_params(["q", "page", "sort"]);
    /// # let _ = search;
    /// ```
    pub fn key_params<I, P>(mut self, patterns: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<String>,
    {
        self.key.only = Some(patterns.into_iter().map(Into::into).collect());
        self
    }

    /// Leaves the parameters the key ignores on the request (default
    /// `false`: they are taken off). Turn it on only when the service
    /// never reads them to build the response, such as tracking parameters
    /// an analytics middleware behind the cache records: otherwise
    /// `?utm_source=x` could store a page that `?` is then served.
    pub fn forward_ignored_params(mut self, forward: bool) -> Self {
        self.key.forward = Some(forward);
        self
    }

    /// Request headers whose values go into the key (a tenant id, an API
    /// version), each request getting its own entry per value (an absent
    /// header is a value of its own). They go into the variant part of
    /// the key, as `Vary` does, and are added to the response's `Vary` for
    /// caches downstream. Default: none.
    ///
    /// ```
    /// use http::HeaderName;
    /// use tower_redis_cache::CachePolicy;
    ///
    /// let per_tenant = CachePolicy::new().key_headers([HeaderName::from_static("x-tenant-id")]);
    /// # let _ = per_tenant;
    /// ```
    pub fn key_headers(mut self, names: impl IntoIterator<Item = http::HeaderName>) -> Self {
        self.key.headers = Some(names.into_iter().collect());
        self
    }

    /// Extra key material computed from the request's head (the escape
    /// hatch: a claim of a token an earlier layer verified, a value of an
    /// extension): requests whose material differs get their own entries.
    /// It goes into the variant part of the key, escaped, after the key
    /// headers. The layer cannot name it in `Vary`: if caches downstream
    /// may store the response, name in its `Vary` the request field the
    /// material comes from. It runs on every request the policy caches, so
    /// keep it cheap. Default: none.
    ///
    /// ```
    /// use tower_redis_cache::CachePolicy;
    ///
    /// #[derive(Clone)]
    /// struct Plan(&'static str); // set by an authentication layer
    ///
    /// let by_plan = CachePolicy::new().key_fn(|parts| {
    ///     parts.extensions.get::<Plan>().map_or("anonymous", |p| p.0).to_owned()
    /// });
    /// # let _ = by_plan;
    /// ```
    pub fn key_fn<F>(mut self, material: F) -> Self
    where
        F: Fn(&http::request::Parts) -> String + Send + Sync + 'static,
    {
        self.key.func = Some(Arc::new(material));
        self
    }

    /// Fills what this policy leaves unset from `base` and validates the result.
    pub(crate) fn resolve(
        &self,
        base: &Resolved,
        what: &str,
        keys: &KeySpace,
    ) -> Result<Rule, Error> {
        if self.bypass {
            return Ok(None);
        }
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| base.namespace.clone());
        let resolved = Resolved {
            generation_key: keys.generation_key(&namespace),
            ttl: self.ttl.unwrap_or(base.ttl),
            jitter: self.jitter.unwrap_or(base.jitter),
            namespace,
            statuses: self
                .statuses
                .clone()
                .unwrap_or_else(|| base.statuses.clone()),
            allow_authorization: self.allow_authorization.unwrap_or(base.allow_authorization),
            stale_while_revalidate: self
                .stale_while_revalidate
                .unwrap_or(base.stale_while_revalidate),
            stale_if_error: self.stale_if_error.unwrap_or(base.stale_if_error),
            early_refresh: self.early_refresh.unwrap_or(base.early_refresh),
            tagger: self.tagger.clone().or_else(|| base.tagger.clone()),
            http: self.http(&base.http),
            shape: None,
            key: self.key.over(&base.key),
            compression: self.compression.unwrap_or(base.compression),
        };
        let resolved = Resolved {
            shape: resolved.key.shape(what)?,
            ..resolved
        };
        resolved.validate(what)?;
        Ok(Some(Arc::new(resolved)))
    }

    /// The HTTP options of this policy, with what it leaves unset from
    /// `base`; the mode-dependent defaults follow the mode.
    pub(crate) fn http(&self, base: &HttpRules) -> HttpRules {
        let mode = self.mode.unwrap_or(base.mode);
        let mode_changed = mode != base.mode;
        let origin = mode == FreshnessMode::OriginDriven;
        HttpRules {
            mode,
            respect_max_age: self.respect_max_age.unwrap_or(base.respect_max_age),
            heuristic: self.heuristic.unwrap_or(base.heuristic),
            heuristic_max: self.heuristic_max.unwrap_or(base.heuristic_max),
            revalidate_window: self.revalidate_window.unwrap_or(if mode_changed {
                HttpRules::default_window(origin)
            } else {
                base.revalidate_window
            }),
            etag: self.etag.unwrap_or(base.etag),
            strip_set_cookie: self.strip_set_cookie.unwrap_or(base.strip_set_cookie),
            invalidate_on_unsafe: self.invalidate_on_unsafe.unwrap_or(if mode_changed {
                origin
            } else {
                base.invalidate_on_unsafe
            }),
            request_directives: self.request_directives.unwrap_or(base.request_directives),
            cookies: self.cookies.unwrap_or(if mode_changed {
                HttpRules::default_cookies(origin)
            } else {
                base.cookies
            }),
        }
    }
}

/// The HTTP options of a route, every one decided.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct HttpRules {
    pub(crate) mode: FreshnessMode,
    pub(crate) respect_max_age: bool,
    pub(crate) heuristic: Option<f64>,
    pub(crate) heuristic_max: Duration,
    pub(crate) revalidate_window: Duration,
    pub(crate) etag: bool,
    pub(crate) strip_set_cookie: bool,
    pub(crate) invalidate_on_unsafe: bool,
    pub(crate) request_directives: bool,
    pub(crate) cookies: CookiePolicy,
}

impl Default for HttpRules {
    fn default() -> Self {
        Self {
            mode: FreshnessMode::PolicyDriven,
            respect_max_age: false,
            heuristic: None,
            heuristic_max: Duration::from_secs(86_400),
            revalidate_window: Self::default_window(false),
            etag: false,
            strip_set_cookie: false,
            invalidate_on_unsafe: false,
            request_directives: true,
            cookies: Self::default_cookies(false),
        }
    }
}

impl HttpRules {
    fn default_window(origin: bool) -> Duration {
        if origin {
            Duration::from_secs(3600)
        } else {
            Duration::ZERO
        }
    }

    fn default_cookies(origin: bool) -> CookiePolicy {
        if origin {
            CookiePolicy::SharedOnly
        } else {
            CookiePolicy::Ignore
        }
    }

    pub(crate) fn origin_driven(&self) -> bool {
        self.mode == FreshnessMode::OriginDriven
    }
}

/// A policy with every field decided.
#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    pub(crate) ttl: Duration,
    pub(crate) jitter: f64,
    pub(crate) namespace: String,
    pub(crate) statuses: Vec<StatusCode>,
    pub(crate) allow_authorization: bool,
    pub(crate) stale_while_revalidate: Duration,
    pub(crate) stale_if_error: Duration,
    /// XFetch beta; 0 is off.
    pub(crate) early_refresh: f64,
    pub(crate) tagger: Option<Tagger>,
    pub(crate) http: HttpRules,
    /// Where this namespace's generation counter lives.
    pub(crate) generation_key: String,
    /// The key settings as given, for the routes that inherit them.
    pub(crate) key: KeySettings,
    /// How the key is shaped; `None` for the default format.
    pub(crate) shape: Option<Arc<KeyShape>>,
    pub(crate) compression: Compression,
}

impl Resolved {
    /// What a default policy that sets nothing resolves to.
    pub(crate) fn defaults(keys: &KeySpace) -> Self {
        Self {
            ttl: Duration::from_secs(60),
            jitter: 0.1,
            generation_key: keys.generation_key("default"),
            namespace: "default".into(),
            statuses: vec![StatusCode::OK],
            allow_authorization: false,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            early_refresh: 0.0,
            tagger: None,
            http: HttpRules::default(),
            key: KeySettings::default(),
            shape: None,
            compression: Compression::gzip(),
        }
    }

    pub(crate) fn validate(&self, what: &str) -> Result<(), Error> {
        if self.ttl.is_zero() {
            return Err(Error::config(format!(
                "{what}: TTL is zero; give a positive TTL, or use CachePolicy::bypass() \
                 to turn caching off"
            )));
        }
        if self.ttl < Duration::from_millis(1) {
            return Err(Error::config(format!(
                "{what}: TTL {:?} is below the store's 1 ms precision",
                self.ttl
            )));
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(Error::config(format!(
                "{what}: jitter {} is outside 0.0..1.0; use e.g. 0.1 for ±10%, 0.0 for none",
                self.jitter
            )));
        }
        if !(0.0..=100.0).contains(&self.early_refresh) {
            return Err(Error::config(format!(
                "{what}: early_refresh beta {} is outside 0.0..=100.0; use 1.0, or 0.0 for off",
                self.early_refresh
            )));
        }
        if let Some(f) = self.http.heuristic {
            if !(0.0..=1.0).contains(&f) {
                return Err(Error::config(format!(
                    "{what}: heuristic_freshness {f} is outside 0.0..=1.0; use e.g. 0.1"
                )));
            }
        }
        if self.http.heuristic_max.is_zero() {
            return Err(Error::config(format!(
                "{what}: heuristic_freshness_max is zero; use e.g. Duration::from_secs(86_400), \
                 or leave heuristic_freshness off"
            )));
        }
        check_component(&format!("{what}: namespace"), &self.namespace)?;
        self.compression.validate(what)?;
        if self.statuses.is_empty() {
            return Err(Error::config(format!(
                "{what}: no cacheable statuses; list at least one, or use CachePolicy::bypass()"
            )));
        }
        if let Some(status) = self
            .statuses
            .iter()
            .find(|s| s.is_informational() || matches!(s.as_u16(), 206 | 304))
        {
            return Err(Error::config(format!(
                "{what}: status {status} cannot be stored (an interim response, a partial \
                 one or a 304 is never a complete response); remove it from statuses"
            )));
        }
        Ok(())
    }

    pub(crate) fn stores_status(&self, status: StatusCode) -> bool {
        self.statuses.contains(&status)
    }

    /// The lifetimes of an entry written now (TTL jittered).
    pub(crate) fn lifetimes(&self) -> Lifetimes {
        Lifetimes {
            fresh: jitter::jittered(self.ttl, self.jitter),
            stale_while_revalidate: self.stale_while_revalidate,
            stale_if_error: self.stale_if_error,
            revalidate: Duration::ZERO,
        }
    }
}

/// A resolved rule: `None` means "bypass".
pub(crate) type Rule = Option<Arc<Resolved>>;

/// One axum-style route pattern, split into segments.
#[derive(Debug)]
struct RoutePattern {
    segments: Vec<Segment>,
    /// Literal segments count most, then fewer wildcards: axum prefers static
    /// routes over captures, and captures over catch-alls.
    specificity: (usize, usize),
}

#[derive(Debug, PartialEq)]
enum Segment {
    Literal(String),
    Capture,
    CatchAll,
}

impl RoutePattern {
    fn parse(pattern: &str) -> Result<Self, Error> {
        let Some(rest) = pattern.strip_prefix('/') else {
            return Err(Error::config(format!(
                "route pattern {pattern:?} must start with '/' (e.g. \"/products/{{id}}\")"
            )));
        };
        if pattern.matches('{').count() != pattern.matches('}').count() {
            return Err(Error::config(format!(
                "route pattern {pattern:?} has unbalanced braces: a capture is a whole \
                 segment {{name}}, a catch-all a last segment {{*name}}"
            )));
        }
        let mut segments = Vec::new();
        let parts: Vec<&str> = rest.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            let segment = if let Some(inner) =
                part.strip_prefix('{').and_then(|p| p.strip_suffix('}'))
            {
                let name = inner.strip_prefix('*').unwrap_or(inner);
                if name.is_empty() || name.contains(['{', '}', '*', ':']) {
                    return Err(Error::config(format!(
                        "route pattern {pattern:?}: {part:?} is not a capture axum 0.8 \
                         accepts; give it a plain name, e.g. {{id}} or {{*rest}}"
                    )));
                }
                if inner.starts_with('*') {
                    if i + 1 != parts.len() {
                        return Err(Error::config(format!(
                            "route pattern {pattern:?}: a catch-all {{*name}} must be the last segment"
                        )));
                    }
                    Segment::CatchAll
                } else {
                    Segment::Capture
                }
            } else if let Some(name) = part.strip_prefix(':') {
                return Err(Error::config(format!(
                    "route pattern {pattern:?}: {part:?} is axum 0.7 syntax, which axum 0.8 \
                     refuses; write {{{name}}} instead"
                )));
            } else if let Some(name) = part.strip_prefix('*') {
                return Err(Error::config(format!(
                    "route pattern {pattern:?}: {part:?} is axum 0.7 syntax, which axum 0.8 \
                     refuses; write {{*{name}}} instead"
                )));
            } else if part.contains(['{', '}']) {
                return Err(Error::config(format!(
                    "route pattern {pattern:?}: {part:?} puts a capture inside a segment; \
                     make it a whole segment, e.g. /files/{{name}}"
                )));
            } else {
                Segment::Literal((*part).to_owned())
            };
            segments.push(segment);
        }
        let literals = segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        let catch_alls = segments.iter().filter(|s| **s == Segment::CatchAll).count();
        Ok(Self {
            specificity: (
                literals,
                usize::MAX - catch_alls - (segments.len() - literals),
            ),
            segments,
        })
    }

    fn matches(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let mut parts = rest.split('/');
        for segment in &self.segments {
            match segment {
                Segment::CatchAll => return parts.next().is_some_and(|p| !p.is_empty()),
                Segment::Literal(l) => {
                    if parts.next() != Some(l.as_str()) {
                        return false;
                    }
                }
                Segment::Capture => {
                    if parts.next().is_none_or(str::is_empty) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

/// All the rules of one layer, ready for lookups.
#[derive(Debug)]
pub(crate) struct Policies {
    default: Rule,
    by_pattern: HashMap<String, Rule>,
    patterns: Vec<(RoutePattern, Rule)>,
    /// Longest prefix first.
    prefixes: Vec<(String, Rule)>,
    /// Routes that carry their own policy (registered with
    /// `CacheRouterExt::cached_route` after the layer was built).
    carried: RwLock<Carried>,
    /// Whether `carried` holds any route: requests of layers without such
    /// routes never take its lock.
    any_carried: AtomicBool,
}

/// Routes registered with their own policy, and their layer caches them.
#[derive(Debug, Default)]
struct Carried {
    by_pattern: HashMap<String, Rule>,
    patterns: Vec<(RoutePattern, Rule)>,
}

impl Policies {
    pub(crate) fn new(
        default: Rule,
        routes: Vec<(String, Rule)>,
        mut prefixes: Vec<(String, Rule)>,
    ) -> Result<Self, Error> {
        let mut by_pattern = HashMap::new();
        let mut patterns = Vec::new();
        for (pattern, rule) in routes {
            patterns.push((RoutePattern::parse(&pattern)?, rule.clone()));
            if by_pattern.insert(pattern.clone(), rule).is_some() {
                return Err(Error::config(format!(
                    "route pattern {pattern:?} is given twice; give each route one policy"
                )));
            }
        }
        for (prefix, _) in &prefixes {
            if !prefix.starts_with('/') {
                return Err(Error::config(format!(
                    "path prefix {prefix:?} must start with '/'"
                )));
            }
        }
        prefixes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Ok(Self {
            default,
            by_pattern,
            patterns,
            prefixes,
            carried: RwLock::default(),
            any_carried: AtomicBool::new(false),
        })
    }

    fn carried(&self) -> std::sync::RwLockReadGuard<'_, Carried> {
        // Only whole routes are ever added: a poisoned lock is used as is.
        self.carried.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a route that carries its own policy: its own layer caches
    /// it, the layers around it step aside, and the handle resolves its
    /// paths to it.
    pub(crate) fn carry(&self, pattern: &str, rule: Rule) -> Result<(), Error> {
        let parsed = RoutePattern::parse(pattern)?;
        let twice = || {
            Error::config(format!(
                "route pattern {pattern:?} is given twice; give each route one policy"
            ))
        };
        if self.by_pattern.contains_key(pattern) {
            return Err(twice());
        }
        let mut carried = self.carried.write().unwrap_or_else(|e| e.into_inner());
        if carried
            .by_pattern
            .insert(pattern.to_owned(), rule.clone())
            .is_some()
        {
            return Err(twice());
        }
        carried.patterns.push((parsed, rule));
        self.any_carried.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether the route axum matched for `req` carries its own policy, so
    /// that the layer made for it caches it and this one steps aside.
    pub(crate) fn carried_route<B>(&self, req: &http::Request<B>) -> bool {
        self.any_carried.load(Ordering::Acquire)
            && matched_route(req).is_some_and(|m| self.carried().by_pattern.contains_key(m))
    }

    /// The rule of `path` where no request is at hand (the handle, the
    /// `Location` of an unsafe request): as [`lookup`](Self::lookup) finds
    /// it, routes with their own policy included.
    pub(crate) fn for_path(&self, path: &str) -> Rule {
        if !self.any_carried.load(Ordering::Acquire) {
            return self.lookup(None, path).clone();
        }
        let carried = self.carried();
        let best = |patterns: &[(RoutePattern, Rule)]| {
            patterns
                .iter()
                .filter(|(p, _)| p.matches(path))
                .max_by_key(|(p, _)| p.specificity)
                .map(|(p, rule)| (p.specificity, rule.clone()))
        };
        match (best(&self.patterns), best(&carried.patterns)) {
            (Some((built, rule)), Some((own, _))) if built > own => rule,
            (_, Some((_, rule))) | (Some((_, rule)), None) => rule,
            (None, None) => self.lookup(None, path).clone(),
        }
    }

    /// The rule of a request: by the route axum matched (its `MatchedPath`),
    /// else by its path.
    pub(crate) fn for_request<B>(&self, req: &http::Request<B>) -> &Rule {
        self.lookup(matched_route(req), req.uri().path())
    }

    /// Whether `rule` is the default one: no route pattern or prefix
    /// matched.
    pub(crate) fn is_default(&self, rule: &Rule) -> bool {
        std::ptr::eq(rule, &self.default)
    }

    /// The rule for a request: the route pattern axum matched (if any), else
    /// the most specific pattern matching `path`, else the longest path
    /// prefix, else the default.
    pub(crate) fn lookup(&self, matched_route: Option<&str>, path: &str) -> &Rule {
        if let Some(rule) = matched_route.and_then(|m| self.by_pattern.get(m)) {
            return rule;
        }
        if let Some((_, rule)) = self
            .patterns
            .iter()
            .filter(|(p, _)| p.matches(path))
            .max_by_key(|(p, _)| p.specificity)
        {
            return rule;
        }
        self.prefixes
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map_or(&self.default, |(_, rule)| rule)
    }
}

/// The route pattern axum matched for the request, if any.
#[cfg(feature = "axum")]
fn matched_route<B>(req: &http::Request<B>) -> Option<&str> {
    req.extensions()
        .get::<axum::extract::MatchedPath>()
        .map(axum::extract::MatchedPath::as_str)
}

#[cfg(not(feature = "axum"))]
fn matched_route<B>(_: &http::Request<B>) -> Option<&str> {
    None
}
#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Resolved {
        Resolved::defaults(&keys())
    }

    fn keys() -> KeySpace {
        KeySpace::new("t", "v1").unwrap()
    }

    fn rule(ns: &str) -> Rule {
        CachePolicy::new()
            .namespace(ns)
            .resolve(&base(), "test", &keys())
            .unwrap()
    }

    fn ns(rule: &Rule) -> &str {
        rule.as_ref().map_or("BYPASS", |r| r.namespace.as_str())
    }

    fn policies() -> Policies {
        Policies::new(
            rule("default"),
            vec![
                ("/products/{id}".into(), rule("item")),
                ("/products/new".into(), rule("new")),
                ("/products".into(), rule("list")),
                ("/files/{*rest}".into(), rule("files")),
                ("/admin/{id}".into(), None),
            ],
            vec![
                ("/static/".into(), rule("static")),
                ("/static/big/".into(), None),
            ],
        )
        .unwrap()
    }

    #[test]
    fn patterns_prefixes_and_default() {
        let p = policies();
        assert_eq!(ns(p.lookup(None, "/products/42")), "item");
        assert_eq!(ns(p.lookup(None, "/products/new")), "new");
        assert_eq!(ns(p.lookup(None, "/products")), "list");
        assert_eq!(ns(p.lookup(None, "/products/")), "default");
        assert_eq!(ns(p.lookup(None, "/products/1/2")), "default");
        assert_eq!(ns(p.lookup(None, "/files/a/b/c")), "files");
        assert_eq!(ns(p.lookup(None, "/files/")), "default");
        assert_eq!(ns(p.lookup(None, "/admin/1")), "BYPASS");
        assert_eq!(ns(p.lookup(None, "/static/app.js")), "static");
        assert_eq!(ns(p.lookup(None, "/static/big/x.iso")), "BYPASS");
        assert_eq!(ns(p.lookup(None, "/other")), "default");
    }

    #[test]
    fn matched_route_wins_over_path_matching() {
        let p = policies();
        assert_eq!(
            ns(p.lookup(Some("/products/{id}"), "/products/new")),
            "item"
        );
        assert_eq!(ns(p.lookup(Some("/unknown/{x}"), "/products/9")), "item");
    }

    #[test]
    fn the_cookie_policy_follows_the_mode_unless_set() {
        let cookies = |policy: CachePolicy, base: &HttpRules| policy.http(base).cookies;
        let policy_driven = HttpRules::default();
        assert_eq!(
            cookies(CachePolicy::new(), &policy_driven),
            CookiePolicy::Ignore
        );
        let origin = CachePolicy::new().origin_driven();
        assert_eq!(
            cookies(origin.clone(), &policy_driven),
            CookiePolicy::SharedOnly
        );
        // A route inherits the layer's origin-driven default, and may set its own.
        let layer = origin.http(&policy_driven);
        assert_eq!(
            cookies(CachePolicy::new(), &layer),
            CookiePolicy::SharedOnly
        );
        assert_eq!(
            cookies(CachePolicy::new().cookies(CookiePolicy::Pass), &layer),
            CookiePolicy::Pass
        );
        assert_eq!(
            cookies(CachePolicy::new().mode(FreshnessMode::PolicyDriven), &layer),
            CookiePolicy::Ignore
        );
    }

    #[test]
    fn bad_rules_fail_with_a_message() {
        let e = CachePolicy::new()
            .ttl(Duration::ZERO)
            .resolve(&base(), "route /x", &keys())
            .unwrap_err();
        assert!(e.to_string().contains("route /x: TTL is zero"), "{e}");
        let e = CachePolicy::new()
            .jitter(1.0)
            .resolve(&base(), "r", &keys())
            .unwrap_err();
        assert!(e.to_string().contains("jitter"), "{e}");
        let e = CachePolicy::new()
            .jitter(-0.1)
            .resolve(&base(), "r", &keys())
            .unwrap_err();
        assert!(e.to_string().contains("jitter"), "{e}");
        assert!(CachePolicy::new()
            .statuses([])
            .resolve(&base(), "r", &keys())
            .is_err());
        assert!(CachePolicy::new()
            .namespace("a b")
            .resolve(&base(), "r", &keys())
            .is_err());
        for (bad, fix) in [
            ("products", "must start with '/'"),
            ("/p/:id", "write {id} instead"),
            ("/p/*rest", "write {*rest} instead"),
            ("/p/{}", "give it a plain name"),
            ("/p/{*}", "give it a plain name"),
            ("/p/{id", "unbalanced braces"),
            ("/p/id}", "unbalanced braces"),
            ("/p/{{id}}", "give it a plain name"),
            ("/p/{*rest}/x", "must be the last segment"),
            ("/p/x{id}", "whole segment"),
        ] {
            let e = Policies::new(None, vec![(bad.into(), None)], vec![]).unwrap_err();
            let e = e.to_string();
            assert!(e.contains(&format!("{bad:?}")) && e.contains(fix), "{e}");
        }
        assert!(Policies::new(None, vec![], vec![("static".into(), None)]).is_err());
    }
}
