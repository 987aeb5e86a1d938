//! Invalidate: an unsafe request (RFC 9111 §4.4) that succeeds removes the
//! stored responses of its target and of its same-origin `Location` and
//! `Content-Location`.

use std::sync::Arc;

use http::{
    header::{self},
    Request, Response,
};
use http_body::Body;

use crate::{
    body::CacheBody,
    core::{bump, CacheCore},
    http::same_origin,
    status::{cache_status, mark, CacheStatus, Detail, Fwd},
};

/// What a request with an unsafe method may invalidate (RFC 9111 §4.4): its
/// target's key, and the origin and base path to resolve `Location` and
/// `Content-Location` against. `None` when the method is safe or the route
/// does not invalidate on unsafe methods.
pub(crate) struct UnsafeTargets {
    pub(crate) keys: Vec<String>,
    pub(crate) origin: String,
    pub(crate) authority: Option<String>,
    pub(crate) path: String,
}

pub(crate) fn unsafe_targets<B>(core: &CacheCore, req: &Request<B>) -> Option<UnsafeTargets> {
    // Any method not defined as safe (RFC 9110 §9.2.1), extension
    // methods included.
    if req.method().is_safe() {
        return None;
    }
    let uri = req.uri();
    let rule = core
        .policies
        .for_request(req)
        .as_ref()
        .filter(|r| r.http.invalidate_on_unsafe)?;
    // A request whose host cannot be keyed (two `Host` fields, a target
    // that disagrees with `Host`) may still change what the origin serves
    // under either host: every host it names is invalidated.
    let origins = match core.settings.origin_key.of(uri, req.headers()) {
        Ok(origin) => vec![origin],
        Err(_) => core.settings.origin_key.candidates(uri, req.headers()),
    };
    let origin = origins.first()?.clone();
    let keys = origins
        .iter()
        .map(|o| core.keys.uri_key(&rule.namespace, o, uri))
        .collect();
    let scheme = uri.scheme_str().unwrap_or("http");
    let authority = crate::request_authority(uri, req.headers(), scheme).ok();
    Some(UnsafeTargets {
        keys,
        origin,
        authority,
        path: uri.path().to_owned(),
    })
}

/// Runs an unsafe request, then, if it succeeded (2xx or 3xx), removes the
/// stored responses for its target and its same-origin `Location` and
/// `Content-Location` before answering.
pub(crate) async fn invalidate_after<F, B, E>(
    core: Arc<CacheCore>,
    call: F,
    mut targets: UnsafeTargets,
) -> Result<Response<CacheBody<B>>, E>
where
    F: std::future::Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    let (mut parts, body) = call.await?.into_parts();
    core.settings.strip_cache_fields(&mut parts);
    if parts.status.is_success() || parts.status.is_redirection() {
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            let Some(uri) = parts
                .headers
                .get(&name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| same_origin(v, targets.authority.as_deref(), &targets.path))
            else {
                continue;
            };
            if let Some(rule) = core.policies.lookup(None, uri.path()).as_ref() {
                targets
                    .keys
                    .push(core.keys.uri_key(&rule.namespace, &targets.origin, &uri));
            }
        }
        targets.keys.dedup();
        // Confirmed or queued for replay: either way no stale hit follows.
        crate::replay::invalidate(&core, crate::replay::Item::Keys(targets.keys)).await;
        bump(&core.counters.unsafe_invalidations);
    }
    mark(
        core.settings.status_header.as_ref(),
        &mut parts.headers,
        CacheStatus::Bypass,
    );
    let detail = Detail {
        fwd: Some(Fwd::Method),
        fwd_status: Some(parts.status),
        ..Detail::default()
    };
    cache_status(
        core.settings.cache_status.as_ref(),
        &mut parts.headers,
        detail,
    );
    Ok(Response::from_parts(parts, CacheBody::inner(body)))
}
