//! Plan: whether a request is served through the cache, and with which
//! route policy, key and request directives.

use std::sync::{atomic::AtomicUsize, Arc};

use http::{Method, Request};

use crate::{
    core::CacheCore,
    entry::Marker,
    http::CacheControl,
    policy::{CookiePolicy, Resolved, Rule},
    stampede::HeldLock,
    status::bypassed,
};

/// What a cacheable request will use.
#[derive(Clone)]
pub(crate) struct Plan {
    pub(crate) rule: Arc<Resolved>,
    /// The key of the URI: where the response, or its `Vary` marker, lives.
    pub(crate) primary: String,
    /// The variant key, once a `Vary` marker was found at `primary`.
    pub(crate) variant: Option<String>,
    /// The `Vary` marker found at `primary`.
    pub(crate) marker: Option<Arc<Marker>>,
    pub(crate) head: bool,
    /// The request's `Cache-Control` (only `no-store` when the route ignores
    /// request directives).
    pub(crate) cc: CacheControl,
    /// The request carries `Authorization` and the route does not open
    /// itself to it, or `Cookie` under [`CookiePolicy::SharedOnly`]: only
    /// responses that allow sharing are served and stored.
    pub(crate) shared_only: bool,
    /// The request carries `If-None-Match` or `If-Modified-Since`.
    pub(crate) conditional: bool,
    /// The request's `Accept-Encoding` accepts gzip and its `Cache-Control`
    /// does not say `no-transform`: an entry stored compressed is served as
    /// stored.
    pub(crate) accepts_gzip: bool,
    /// The request carries `Range` or `If-Range`.
    pub(crate) range: bool,
    /// The cross-instance lock of the key, once this request holds it.
    pub(crate) lock: Option<Arc<HeldLock>>,
    /// How many requests in this process wait for this one's response,
    /// once it leads a flight.
    pub(crate) followers: Option<Arc<AtomicUsize>>,
}

/// The plan of a cacheable request; `None` passes it through. `checks` is
/// what the walk over the request's field names found (see
/// [`crate::request::RequestChecks`]).
///
/// On a route whose policy shapes its keys, the query parameters the key
/// leaves out are taken off `req` here (unless the policy forwards them).
///
/// `route` is the policy the layer carries for its route, if it does.
pub(crate) fn plan<B>(
    core: &CacheCore,
    req: &mut Request<B>,
    checks: &crate::request::RequestChecks,
    route: Option<&Rule>,
) -> Option<Plan> {
    let head = req.method() == Method::HEAD;
    if !head && req.method() != Method::GET {
        bypassed(req.method(), req.uri(), "only GET and HEAD are cached");
        return None;
    }
    let rule = route.unwrap_or_else(|| core.policies.for_request(req));
    let Some(rule) = rule.as_ref() else {
        let reason = if route.is_none() && core.policies.is_default(rule) {
            "no route rule matches, and unmatched routes pass through \
             (bypass_unmatched, or a bypass default_policy)"
        } else {
            "the route's policy is CachePolicy::bypass()"
        };
        bypassed(req.method(), req.uri(), reason);
        return None;
    };
    let shape = rule.shape.as_deref();
    let shaped = shape.and_then(|s| s.shape_request(req));
    let uri = req.uri();
    let headers = req.headers();
    let refused = checks.refused;
    let fields = checks.http;
    if fields.passes_through {
        bypassed(
            req.method(),
            uri,
            "a precondition field meant for the origin (If-Match, If-Unmodified-Since)",
        );
        return None;
    }
    if let Some(reason) = refused {
        bypassed(req.method(), uri, reason);
        return None;
    }
    let cc = if !fields.directives {
        CacheControl::default()
    } else if rule.http.request_directives {
        CacheControl::parse_request(headers)
    } else {
        // `no-store` and `no-transform` hold whatever the route says of
        // request directives: they protect the client, not freshness.
        let parsed = CacheControl::parse(headers);
        CacheControl {
            no_store: parsed.no_store,
            no_transform: parsed.no_transform,
            ..CacheControl::default()
        }
    };
    let cookies = if fields.cookie {
        rule.http.cookies
    } else {
        CookiePolicy::Ignore
    };
    if cookies == CookiePolicy::Pass {
        bypassed(
            req.method(),
            uri,
            "a Cookie field, and the route's cookies(CookiePolicy::Pass)",
        );
        return None;
    }
    let origin = match core.settings.origin_key.of(uri, headers) {
        Ok(origin) => origin,
        Err(reason) => {
            bypassed(req.method(), uri, reason);
            return None;
        }
    };
    let mut key = match &shaped {
        None => core.keys.uri_key(&rule.namespace, &origin, uri),
        Some(query) => core.keys.entry_key_at(
            &rule.namespace,
            &Method::GET,
            &origin,
            uri.path(),
            Some(query),
        ),
    };
    let accepts_gzip =
        fields.accept_encoding && !cc.no_transform && crate::http::accepts_gzip(headers);
    if let Some(shape) = shape.filter(|s| s.has_material()) {
        shape.push_material(&mut key, req);
    }
    Some(Plan {
        primary: key,
        variant: None,
        marker: None,
        rule: rule.clone(),
        head,
        cc,
        shared_only: (!rule.allow_authorization && fields.authorization)
            || cookies == CookiePolicy::SharedOnly,
        conditional: fields.conditional,
        accepts_gzip,
        range: fields.range,
        lock: None,
        followers: None,
    })
}

impl Plan {
    /// The key of this request's entry: the variant key once a `Vary`
    /// marker was found, else the URI's key.
    pub(crate) fn key(&self) -> &str {
        self.variant.as_deref().unwrap_or(&self.primary)
    }
}
