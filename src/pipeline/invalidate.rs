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
    key::ExactPaths,
    policy::{Resolved, Rule},
    status::{cache_status, mark, CacheStatus, Detail, Fwd},
};

/// What a request with an unsafe method may invalidate (RFC 9111 §4.4): its
/// target's key, and the origin and base path to resolve `Location` and
/// `Content-Location` against. `None` when the method is safe or the route
/// does not invalidate on unsafe methods.
pub(crate) struct UnsafeTargets {
    pub(crate) keys: Vec<String>,
    /// Targets whose keys hold request headers or key function material:
    /// every such entry of the path is removed.
    pub(crate) paths: Vec<ExactPaths>,
    pub(crate) origin: String,
    pub(crate) authority: Option<String>,
    pub(crate) path: String,
}

/// `route` is the policy the layer carries for its route, if it does.
pub(crate) fn unsafe_targets<B>(
    core: &CacheCore,
    req: &Request<B>,
    route: Option<&Rule>,
) -> Option<UnsafeTargets> {
    // Any method not defined as safe (RFC 9110 §9.2.1), extension
    // methods included.
    if req.method().is_safe() {
        return None;
    }
    let uri = req.uri();
    let rule = route
        .unwrap_or_else(|| core.policies.for_request(req))
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
    let mut keys = Vec::new();
    let mut paths = Vec::new();
    for o in &origins {
        add_target(core, rule, o, uri, &mut keys, &mut paths);
    }
    let scheme = uri.scheme_str().unwrap_or("http");
    let authority = crate::request_authority(uri, req.headers(), scheme).ok();
    Some(UnsafeTargets {
        keys,
        paths,
        origin,
        authority,
        path: uri.path().to_owned(),
    })
}

/// Adds what removes the stored responses of `uri` under `origin`: its key,
/// with the query shaped as `rule` keys it, or, when the key holds request
/// headers or key function material, every entry of the path.
fn add_target(
    core: &CacheCore,
    rule: &Resolved,
    origin: &str,
    uri: &http::Uri,
    keys: &mut Vec<String>,
    paths: &mut Vec<ExactPaths>,
) {
    let shape = rule.shape.as_deref();
    let shaped = shape.and_then(|s| s.query(uri.query()));
    let query = shaped.as_deref().or(uri.query());
    if shape.is_some_and(|s| s.has_material()) {
        paths.push(ExactPaths {
            namespaces: vec![rule.namespace.clone()],
            origin: Some(origin.to_owned()),
            path: uri.path().to_owned(),
            queries: vec![query.map(str::to_owned)],
        });
    } else {
        keys.push(core.keys.entry_key_at(
            &rule.namespace,
            &http::Method::GET,
            origin,
            uri.path(),
            query,
        ));
    }
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
            if let Some(rule) = core.policies.for_path(uri.path()) {
                add_target(
                    &core,
                    &rule,
                    &targets.origin,
                    &uri,
                    &mut targets.keys,
                    &mut targets.paths,
                );
            }
        }
        targets.keys.dedup();
        // Confirmed or queued for replay: either way no stale hit follows.
        if !targets.keys.is_empty() {
            crate::replay::invalidate(&core, crate::replay::Item::Keys(targets.keys)).await;
        }
        for paths in targets.paths {
            crate::replay::invalidate(&core, crate::replay::Item::Path(paths)).await;
        }
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
