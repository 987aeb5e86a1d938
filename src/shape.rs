//! Per-policy key settings ([`CachePolicy::ignore_params`] and its
//! siblings): which query parameters a key holds, and the request headers
//! and application material added to it.
//!
//! A parameter the key leaves out is taken off the request before the
//! service sees it (unless the policy forwards it): a parameter the key
//! ignores but the handler reads would let one client store what every
//! other client is served. Header and function material goes after the
//! URI's key, behind a `#k` marker, as a `Vary` variant goes behind `#v`:
//! every key of a URI still starts with the URI's key, so invalidations
//! find them all.
//!
//! [`CachePolicy::ignore_params`]: crate::CachePolicy::ignore_params

use std::{fmt, sync::Arc};

use http::{header, request::Parts, HeaderMap, HeaderName, HeaderValue, Request};

use crate::{error::Error, key::normalize_percent};

/// A function from a request's head to extra key material.
pub(crate) type KeyFn = Arc<dyn Fn(&Parts) -> String + Send + Sync>;

/// Material longer than this many bytes is replaced by its digest.
const READABLE_MATERIAL: usize = 256;

/// One parameter name pattern: a name, or a prefix ending in `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn parse(what: &str, pattern: &str) -> Result<Self, Error> {
        let (name, prefix) = match pattern.strip_suffix('*') {
            Some(name) => (name, true),
            None => (pattern, false),
        };
        if pattern.is_empty() {
            return Err(Error::config(format!(
                "{what}: an empty parameter name; give names such as \"fbclid\" or \"utm_*\""
            )));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !c.is_ascii_graphic() || matches!(c, '&' | '=' | '#' | '*' | '?'))
        {
            return Err(Error::config(format!(
                "{what}: parameter pattern {pattern:?} contains {bad:?}; give a name \
                 (\"fbclid\") or a name prefix ending in '*' (\"utm_*\")"
            )));
        }
        // Compared with names as keys hold them.
        let name = normalize_percent(name).into_owned();
        Ok(if prefix {
            Self::Prefix(name)
        } else {
            Self::Exact(name)
        })
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Self::Exact(n) => n == name,
            Self::Prefix(p) => name.starts_with(p.as_str()),
        }
    }
}

/// The key settings of one policy, as the user gave them (every field
/// optional, so that a route inherits what it leaves unset).
#[derive(Clone, Default)]
pub(crate) struct KeySettings {
    pub(crate) ignore: Option<Vec<String>>,
    pub(crate) only: Option<Vec<String>>,
    pub(crate) forward: Option<bool>,
    pub(crate) headers: Option<Vec<HeaderName>>,
    pub(crate) func: Option<KeyFn>,
}

impl fmt::Debug for KeySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySettings")
            .field("ignore", &self.ignore)
            .field("only", &self.only)
            .field("forward", &self.forward)
            .field("headers", &self.headers)
            .field("func", &self.func.as_ref().map(|_| "Fn(&Parts) -> String"))
            .finish()
    }
}

impl KeySettings {
    /// These settings, with what they leave unset from `base`.
    pub(crate) fn over(&self, base: &KeySettings) -> KeySettings {
        KeySettings {
            ignore: self.ignore.clone().or_else(|| base.ignore.clone()),
            only: self.only.clone().or_else(|| base.only.clone()),
            forward: self.forward.or(base.forward),
            headers: self.headers.clone().or_else(|| base.headers.clone()),
            func: self.func.clone().or_else(|| base.func.clone()),
        }
    }

    /// The shape these settings give keys; `None` when they leave the key
    /// as the default format has it.
    pub(crate) fn shape(&self, what: &str) -> Result<Option<Arc<KeyShape>>, Error> {
        let parse = |list: &Option<Vec<String>>| -> Result<Option<Vec<Pattern>>, Error> {
            list.as_ref()
                .map(|l| l.iter().map(|p| Pattern::parse(what, p)).collect())
                .transpose()
        };
        let ignore = parse(&self.ignore)?.unwrap_or_default();
        let only = parse(&self.only)?;
        if !ignore.is_empty() && only.is_some() {
            return Err(Error::config(format!(
                "{what}: both ignore_params and key_params are set; list the parameters \
                 the key holds (key_params) or those it leaves out (ignore_params), not both"
            )));
        }
        let mut headers = self.headers.clone().unwrap_or_default();
        headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        headers.dedup();
        if let Some(h) = headers
            .iter()
            .find(|h| **h == header::HOST || **h == header::CONNECTION || **h == header::UPGRADE)
        {
            return Err(Error::config(format!(
                "{what}: key_headers lists {h}; use key_host on the layer builder for the \
                 host, and leave connection fields out (the layer removes them)"
            )));
        }
        let shape = KeyShape {
            ignore,
            only,
            forward: self.forward.unwrap_or(false),
            headers,
            func: self.func.clone(),
        };
        if shape.ignore.is_empty()
            && shape.only.is_none()
            && shape.headers.is_empty()
            && shape.func.is_none()
        {
            return Ok(None);
        }
        Ok(Some(Arc::new(shape)))
    }
}

/// The key settings of a resolved policy.
pub(crate) struct KeyShape {
    ignore: Vec<Pattern>,
    only: Option<Vec<Pattern>>,
    forward: bool,
    headers: Vec<HeaderName>,
    func: Option<KeyFn>,
}

impl fmt::Debug for KeyShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyShape")
            .field("ignore", &self.ignore)
            .field("only", &self.only)
            .field("forward", &self.forward)
            .field("headers", &self.headers)
            .field("func", &self.func.is_some())
            .finish()
    }
}

impl KeyShape {
    /// Whether the key holds more than the URI: request headers or the
    /// key function's material.
    pub(crate) fn has_material(&self) -> bool {
        !self.headers.is_empty() || self.func.is_some()
    }

    /// Whether this shape leaves parameters out of the key.
    fn shapes_query(&self) -> bool {
        !self.ignore.is_empty() || self.only.is_some()
    }

    fn keeps(&self, param: &str) -> bool {
        let name = param.split_once('=').map_or(param, |(n, _)| n);
        let name = normalize_percent(name);
        match &self.only {
            Some(only) => only.iter().any(|p| p.matches(&name)),
            None => !self.ignore.iter().any(|p| p.matches(&name)),
        }
    }

    /// The query the key holds, when it differs from `query`: the kept
    /// parameters in their order, raw (the key normalises them as any
    /// query). `Some("")` when none is kept.
    pub(crate) fn query(&self, query: Option<&str>) -> Option<String> {
        let query = query?;
        if !self.shapes_query() || query.split('&').all(|p| p.is_empty() || self.keeps(p)) {
            return None;
        }
        let mut out = String::with_capacity(query.len());
        for p in query.split('&').filter(|p| !p.is_empty() && self.keeps(p)) {
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(p);
        }
        Some(out)
    }

    /// Takes the parameters the key leaves out off the request (unless the
    /// policy forwards them); the query the key holds, when it differs
    /// from the request's.
    pub(crate) fn shape_request<B>(&self, req: &mut Request<B>) -> Option<String> {
        let kept = self.query(req.uri().query())?;
        if !self.forward {
            let path = req.uri().path();
            let target = if kept.is_empty() {
                path.to_owned()
            } else {
                format!("{path}?{kept}")
            };
            let mut parts = req.uri().clone().into_parts();
            // A path and query made of a valid one's pieces is valid; were
            // it not, the request keeps every parameter and so does its
            // key: the service never sees one the key leaves out.
            parts.path_and_query = Some(http::uri::PathAndQuery::try_from(target).ok()?);
            *req.uri_mut() = http::Uri::from_parts(parts).ok()?;
        }
        Some(kept)
    }

    /// Appends this request's material to `key`: `#k`, then each key
    /// header as `name=value` (values percent-encoded, lines joined with
    /// `,`; a bare `name` when absent), and the key function's output as
    /// `@=value`, joined with `&`. Past 256 bytes the material is
    /// `#k~` and a digest of it.
    pub(crate) fn push_material<B>(&self, key: &mut String, req: &mut Request<B>) {
        let func = self
            .func
            .as_ref()
            .map(|f| with_parts(req, |parts| f(parts)));
        self.push_material_with(key, req.headers(), func.as_deref());
    }

    fn push_material_with(&self, key: &mut String, headers: &HeaderMap, func: Option<&str>) {
        let mut material = String::new();
        for name in &self.headers {
            if !material.is_empty() {
                material.push('&');
            }
            material.push_str(name.as_str());
            let mut values = headers.get_all(name).iter().peekable();
            if values.peek().is_none() {
                continue;
            }
            material.push('=');
            let mut first = true;
            for value in values {
                for item in value.as_bytes().split(|b| *b == b',') {
                    if !first {
                        material.push(',');
                    }
                    first = false;
                    percent_encode(&mut material, item.trim_ascii());
                }
            }
        }
        if let Some(value) = func {
            if !material.is_empty() {
                material.push('&');
            }
            material.push_str("@=");
            percent_encode(&mut material, value.as_bytes());
        }
        key.push_str("#k");
        if material.len() <= READABLE_MATERIAL {
            key.push_str(&material);
        } else {
            use sha2::{Digest, Sha256};
            key.push('~');
            crate::hex::push(key, &Sha256::digest(material.as_bytes())[..16]);
        }
    }

    /// Adds the key headers to the response's `Vary` (those it does not
    /// list yet), so that caches downstream keep the variants apart too.
    pub(crate) fn add_vary(&self, headers: &mut HeaderMap) {
        if self.headers.is_empty() {
            return;
        }
        let listed = crate::http::vary(headers);
        let missing: Vec<&str> = self
            .headers
            .iter()
            .map(HeaderName::as_str)
            .filter(|n| match &listed {
                crate::http::Vary::Headers(names) => !names.iter().any(|l| l == n),
                crate::http::Vary::Any => false,
                crate::http::Vary::None => true,
            })
            .collect();
        if missing.is_empty() {
            return;
        }
        if let Ok(value) = HeaderValue::from_str(&missing.join(", ")) {
            headers.append(header::VARY, value);
        }
    }

    /// Whether the response's own `Vary` names more than the key headers
    /// (which the key already holds): only then does it need variants.
    pub(crate) fn varies_beyond_key(&self, names: &[String]) -> bool {
        names
            .iter()
            .any(|n| !self.headers.iter().any(|h| h.as_str() == n))
    }
}

/// Runs `f` on the head of `req`, lent as [`Parts`] for the call.
fn with_parts<B, T>(req: &mut Request<B>, f: impl FnOnce(&Parts) -> T) -> T {
    let (mut parts, ()) = Request::new(()).into_parts();
    std::mem::swap(&mut parts.method, req.method_mut());
    std::mem::swap(&mut parts.uri, req.uri_mut());
    std::mem::swap(&mut parts.version, req.version_mut());
    std::mem::swap(&mut parts.headers, req.headers_mut());
    std::mem::swap(&mut parts.extensions, req.extensions_mut());
    let out = f(&parts);
    std::mem::swap(&mut parts.method, req.method_mut());
    std::mem::swap(&mut parts.uri, req.uri_mut());
    std::mem::swap(&mut parts.version, req.version_mut());
    std::mem::swap(&mut parts.headers, req.headers_mut());
    std::mem::swap(&mut parts.extensions, req.extensions_mut());
    out
}

/// Appends `bytes` with every byte but the unreserved ones (RFC 3986
/// §2.3) percent-encoded: the result holds no key separator, glob
/// character or `#`.
fn percent_encode(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(settings: KeySettings) -> Arc<KeyShape> {
        settings.shape("test").unwrap().unwrap()
    }

    fn ignoring(patterns: &[&str]) -> Arc<KeyShape> {
        shape(KeySettings {
            ignore: Some(patterns.iter().map(|p| (*p).to_owned()).collect()),
            ..KeySettings::default()
        })
    }

    #[test]
    fn ignored_parameters_leave_the_key_and_the_request() {
        let s = ignoring(&["utm_*", "fbclid"]);
        assert_eq!(s.query(Some("a=1&b=2")), None);
        assert_eq!(
            s.query(Some("utm_source=x&a=1&fbclid=9&utm_medium=y")),
            Some("a=1".into())
        );
        assert_eq!(s.query(Some("utm_source=x")), Some(String::new()));
        // Names as keys hold them: `%5F` is `_`.
        assert_eq!(s.query(Some("utm%5Fsource=x&b")), Some("b".into()));
        // Not the same name: kept, in the key and for the service.
        assert_eq!(s.query(Some("UTM_source=x&fbclidx=1")), None);
        let mut req = Request::get("/p?utm_source=evil&a=1").body(()).unwrap();
        assert_eq!(s.shape_request(&mut req), Some("a=1".into()));
        assert_eq!(req.uri(), "/p?a=1");
        let mut req = Request::get("/p?utm_source=evil").body(()).unwrap();
        s.shape_request(&mut req);
        assert_eq!(req.uri(), "/p");
    }

    #[test]
    fn an_allow_list_keeps_only_its_parameters() {
        let s = shape(KeySettings {
            only: Some(vec!["page".into(), "sort".into()]),
            ..KeySettings::default()
        });
        assert_eq!(
            s.query(Some("sort=a&x=1&page=2&PAGE=3")),
            Some("sort=a&page=2".into())
        );
        assert_eq!(s.query(Some("page=1")), None);
    }

    #[test]
    fn forwarded_parameters_stay_on_the_request() {
        let s = shape(KeySettings {
            ignore: Some(vec!["ref".into()]),
            forward: Some(true),
            ..KeySettings::default()
        });
        let mut req = Request::get("/p?ref=x&a=1").body(()).unwrap();
        assert_eq!(s.shape_request(&mut req), Some("a=1".into()));
        assert_eq!(req.uri(), "/p?ref=x&a=1");
    }

    #[test]
    fn material_is_escaped_and_bounded() {
        let s = shape(KeySettings {
            headers: Some(vec![HeaderName::from_static("x-tenant")]),
            func: Some(Arc::new(|p: &Parts| p.method.as_str().to_owned() + ":*#")),
            ..KeySettings::default()
        });
        let key = |tenant: Option<&str>| {
            let mut req = Request::get("/p").body(()).unwrap();
            if let Some(t) = tenant {
                req.headers_mut()
                    .insert("x-tenant", HeaderValue::from_str(t).unwrap());
            }
            let mut key = String::from("k");
            s.push_material(&mut key, &mut req);
            key
        };
        assert_eq!(key(Some("acme")), "k#kx-tenant=acme&@=GET%3A%2A%23");
        assert_eq!(key(None), "k#kx-tenant&@=GET%3A%2A%23");
        assert_eq!(key(Some("")), "k#kx-tenant=&@=GET%3A%2A%23");
        assert_eq!(
            key(Some("a b*?[")),
            "k#kx-tenant=a%20b%2A%3F%5B&@=GET%3A%2A%23"
        );
        let long = key(Some(&"t".repeat(400)));
        assert!(long.starts_with("k#k~") && long.len() == 4 + 32, "{long}");
        assert_ne!(long, key(Some(&"t".repeat(401))));
    }

    #[test]
    fn bad_settings_say_what_to_fix() {
        let e = |settings: KeySettings| settings.shape("route \"/p\"").unwrap_err().to_string();
        let list = |p: &[&str]| Some(p.iter().map(|p| (*p).to_owned()).collect());
        assert!(e(KeySettings {
            ignore: list(&["a*b"]),
            ..KeySettings::default()
        })
        .contains("\"a*b\""));
        assert!(e(KeySettings {
            ignore: list(&[""]),
            ..KeySettings::default()
        })
        .contains("empty parameter name"));
        assert!(e(KeySettings {
            ignore: list(&["a"]),
            only: list(&["b"]),
            ..KeySettings::default()
        })
        .contains("not both"));
        assert!(e(KeySettings {
            headers: Some(vec![header::HOST]),
            ..KeySettings::default()
        })
        .contains("key_host"));
        assert!(KeySettings::default().shape("x").unwrap().is_none());
    }

    #[test]
    fn vary_gets_the_key_headers_once() {
        let s = shape(KeySettings {
            headers: Some(vec![HeaderName::from_static("x-tenant")]),
            ..KeySettings::default()
        });
        let mut h = HeaderMap::new();
        s.add_vary(&mut h);
        s.add_vary(&mut h);
        assert_eq!(h.get_all(header::VARY).iter().count(), 1);
        assert_eq!(h[header::VARY], "x-tenant");
        assert!(!s.varies_beyond_key(&["x-tenant".into()]));
        assert!(s.varies_beyond_key(&["accept".into(), "x-tenant".into()]));
    }
}
