//! `Cache-Control` (RFC 9111 §5.2) and `Pragma` (§5.4), from a request or a
//! response: the directives the cache acts on, parsed as the RFC's grammar
//! says, with the most restrictive reading of anything malformed.

use http::{header, HeaderMap, HeaderName};

/// The largest delta-seconds value kept (RFC 9111 §1.2.2: 2^31).
const MAX_DELTA: u64 = 2_147_483_648;

/// The `Cache-Control` directives the cache acts on, from a request or a
/// response. Durations are in seconds. A directive given twice keeps its
/// first value (RFC 9111 §4.2.1); a malformed value counts as `0`, the most
/// restrictive reading. An item that does not follow the grammar grants
/// nothing, and a `no-store`, `no-cache` or `private` token anywhere in it
/// counts as that directive, unqualified.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct CacheControl {
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) private: bool,
    pub(crate) public: bool,
    pub(crate) must_revalidate: bool,
    pub(crate) proxy_revalidate: bool,
    pub(crate) only_if_cached: bool,
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
    /// `max-stale` without a value accepts any staleness: `u64::MAX`.
    pub(crate) max_stale: Option<u64>,
    pub(crate) min_fresh: Option<u64>,
    pub(crate) stale_while_revalidate: Option<u64>,
    pub(crate) stale_if_error: Option<u64>,
    /// Header fields named by `no-cache="..."` or `private="..."`: not
    /// stored.
    pub(crate) omit: Vec<String>,
    /// Read from a targeted field (RFC 9213), which replaces
    /// `Cache-Control` and `Expires` for this cache.
    pub(crate) targeted: bool,
    /// `no-transform` (RFC 9111 §5.2.1.6, §5.2.2.6): the body is stored and
    /// served as it was sent.
    pub(crate) no_transform: bool,
}

impl CacheControl {
    /// Parses every `Cache-Control` line of `headers`.
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        let mut cc = Self::default();
        for line in headers.get_all(header::CACHE_CONTROL) {
            let Ok(line) = std::str::from_utf8(line.as_bytes()) else {
                continue;
            };
            for item in directives(line) {
                cc.apply(item);
            }
        }
        cc
    }

    /// The directives this cache follows for a response (RFC 9213 §2.2): the
    /// first of `targeted` (most specific first) that is present and a
    /// valid, non-empty structured-field dictionary, which replaces
    /// `Cache-Control` and `Expires`; else `Cache-Control`.
    pub(crate) fn parse_response(headers: &HeaderMap, targeted: &[HeaderName]) -> Self {
        targeted
            .iter()
            .find_map(|name| Self::parse_targeted(headers, name))
            .unwrap_or_else(|| Self::parse(headers))
    }

    /// A targeted field (RFC 9213 §2.1) as directives: `None` when it is
    /// absent, empty or not a dictionary (then it is ignored as a whole).
    /// A delta-seconds directive with a value that is not a non-negative
    /// integer counts as `0`, and a `no-cache` or `private` with a value
    /// that is not a list of field names counts unqualified: the most
    /// restrictive reading, as for `Cache-Control`.
    fn parse_targeted(headers: &HeaderMap, name: &HeaderName) -> Option<Self> {
        let mut lines = headers.get_all(name).iter();
        let first = lines.next()?;
        let mut joined = first.as_bytes().to_vec();
        for line in lines {
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(line.as_bytes());
        }
        let dictionary = sfv::Parser::new(&joined).parse::<sfv::Dictionary>().ok()?;
        if dictionary.is_empty() {
            return None;
        }
        let mut cc = Self {
            targeted: true,
            ..Self::default()
        };
        for (key, member) in &dictionary {
            let item = match member {
                sfv::ListEntry::Item(item) => Some(&item.bare_item),
                sfv::ListEntry::InnerList(_) => None,
            };
            let flag = item.and_then(sfv::BareItem::as_boolean);
            let seconds = || {
                item.and_then(sfv::BareItem::as_integer)
                    .and_then(|i| u64::try_from(i64::from(i)).ok())
                    .map_or(0, |s| s.min(MAX_DELTA))
            };
            // `no-cache=("set-cookie")` or `private="x"`: fields left out.
            let fields = || -> Option<Vec<String>> {
                let names: Vec<String> = match member {
                    sfv::ListEntry::InnerList(list) => list
                        .items
                        .iter()
                        .map(|i| field_name(&i.bare_item))
                        .collect::<Option<_>>()?,
                    sfv::ListEntry::Item(item) => vec![field_name(&item.bare_item)?],
                };
                (!names.is_empty()).then_some(names)
            };
            match key.as_str() {
                "no-store" => cc.no_store |= flag != Some(false),
                "no-cache" | "private" if flag == Some(false) => {}
                "no-cache" | "private" => match (flag, fields()) {
                    (None, Some(names)) => cc.omit.extend(names),
                    _ if key.as_str() == "no-cache" => cc.no_cache = true,
                    _ => cc.private = true,
                },
                "public" => cc.public |= flag == Some(true),
                "must-revalidate" => cc.must_revalidate |= flag != Some(false),
                "proxy-revalidate" => cc.proxy_revalidate |= flag != Some(false),
                "no-transform" => cc.no_transform |= flag != Some(false),
                "max-age" => cc.max_age = Some(seconds()),
                "s-maxage" => cc.s_maxage = Some(seconds()),
                "stale-while-revalidate" => cc.stale_while_revalidate = Some(seconds()),
                "stale-if-error" => cc.stale_if_error = Some(seconds()),
                _ => {}
            }
        }
        Some(cc)
    }

    /// Request directives: `Pragma: no-cache` stands for `no-cache` when the
    /// request has no `Cache-Control` (RFC 9111 §5.4).
    pub(crate) fn parse_request(headers: &HeaderMap) -> Self {
        let mut cc = Self::parse(headers);
        if !headers.contains_key(header::CACHE_CONTROL)
            && headers
                .get_all(header::PRAGMA)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|d| d.trim().eq_ignore_ascii_case("no-cache"))
        {
            cc.no_cache = true;
        }
        cc
    }

    fn apply(&mut self, item: Item<'_>) {
        let (name, arg) = match item {
            Item::Directive { name, arg } => (name, arg),
            Item::Malformed(raw) => return self.apply_malformed(raw),
        };
        let value = arg.map(Arg::text);
        let seconds = || value.map_or(0, parse_seconds);
        let set = |slot: &mut Option<u64>, v: u64| {
            if slot.is_none() {
                *slot = Some(v);
            }
        };
        // The qualified forms (`no-cache="set-cookie"`, `private="x"`) name
        // header fields that must not be reused: they are left out of the
        // stored response, which may be stored and reused. Only a quoted,
        // non-empty list of field names qualifies (RFC 9111 §5.2.2.4,
        // §5.2.2.7); any other argument (`private=x`, `private=`,
        // `private=""`) reads as the unqualified, stricter directive.
        let qualified = || match arg {
            Some(Arg::Quoted(list)) => field_list(list),
            _ => None,
        };
        match name.to_ascii_lowercase().as_str() {
            "no-store" => self.no_store = true,
            "no-cache" => match qualified() {
                Some(fields) => self.omit.extend(fields),
                None => self.no_cache = true,
            },
            "private" => match qualified() {
                Some(fields) => self.omit.extend(fields),
                None => self.private = true,
            },
            "public" => self.public = true,
            "must-revalidate" => self.must_revalidate = true,
            "no-transform" => self.no_transform = true,
            "proxy-revalidate" => self.proxy_revalidate = true,
            "only-if-cached" => self.only_if_cached = true,
            "max-age" => set(&mut self.max_age, seconds()),
            "s-maxage" => set(&mut self.s_maxage, seconds()),
            "max-stale" => set(&mut self.max_stale, value.map_or(u64::MAX, parse_seconds)),
            "min-fresh" => set(&mut self.min_fresh, seconds()),
            "stale-while-revalidate" => set(&mut self.stale_while_revalidate, seconds()),
            "stale-if-error" => set(&mut self.stale_if_error, seconds()),
            _ => {}
        }
    }

    /// A malformed item (`private ="x"`, `max-age=60;private`): what it
    /// grants (a lifetime, `public`) is ignored, and any `no-store`,
    /// `no-cache` or `private` token in it counts as that directive,
    /// unqualified. A sender that garbled a restriction still meant it.
    fn apply_malformed(&mut self, raw: &str) {
        for token in raw.split(|c: char| !c.is_ascii() || !is_tchar(c as u8)) {
            if token.eq_ignore_ascii_case("no-store") {
                self.no_store = true;
            } else if token.eq_ignore_ascii_case("no-cache") {
                self.no_cache = true;
            } else if token.eq_ignore_ascii_case("private") {
                self.private = true;
            }
        }
    }

    /// Whether a stored response may be served to a request carrying
    /// `Authorization` (RFC 9111 §3.5).
    pub(crate) fn allows_authorized(&self) -> bool {
        self.public || self.s_maxage.is_some() || self.must_revalidate
    }

    /// Whether a stale response must not be served without revalidation
    /// (`must-revalidate`; for a shared cache also `proxy-revalidate` and
    /// `s-maxage`, RFC 9111 §5.2.2).
    pub(crate) fn forbids_stale(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate || self.s_maxage.is_some()
    }
}

/// One item of a `Cache-Control` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item<'a> {
    /// `token [ "=" ( token / quoted-string ) ]`.
    Directive { name: &'a str, arg: Option<Arg<'a>> },
    /// Anything else (whitespace around `=`, an argument that is neither a
    /// token nor a whole quoted-string, a name that is not a token): the
    /// item as sent.
    Malformed(&'a str),
}

/// A directive's argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arg<'a> {
    /// Unquoted (possibly empty, as in `max-age=`).
    Token(&'a str),
    /// A quoted-string, without its quotes.
    Quoted(&'a str),
}

impl<'a> Arg<'a> {
    fn text(self) -> &'a str {
        match self {
            Arg::Token(t) | Arg::Quoted(t) => t,
        }
    }
}

/// A `tchar` of RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// Splits a `Cache-Control` line into its items (RFC 9111 §5.2): commas
/// inside a quoted-string do not split, and a quoted argument is unquoted.
/// An item that does not follow the grammar is returned as
/// [`Item::Malformed`], for the caller to read restrictively.
fn directives(line: &str) -> Vec<Item<'_>> {
    let mut out = Vec::new();
    let bytes = line.as_bytes();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for i in 0..=bytes.len() {
        let b = bytes.get(i).copied();
        if quoted {
            match b {
                _ if escaped => escaped = false,
                Some(b'\\') => escaped = true,
                Some(b'"') => quoted = false,
                _ => {}
            }
            if b.is_some() {
                continue;
            }
        }
        match b {
            Some(b'"') => quoted = true,
            Some(b',') | None => {
                let item = line[start..i].trim_matches([' ', '\t']);
                if !item.is_empty() {
                    out.push(item_of(item));
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    out
}

/// Parses one item, trimmed and not empty.
fn item_of(item: &str) -> Item<'_> {
    let Some((name, rest)) = item.split_once('=') else {
        return if is_token(item) {
            Item::Directive {
                name: item,
                arg: None,
            }
        } else {
            Item::Malformed(item)
        };
    };
    if !is_token(name) {
        return Item::Malformed(item);
    }
    let arg = if let Some(quoted) = rest.strip_prefix('"') {
        // The closing quote must end the item.
        let mut escaped = false;
        let close = quoted.bytes().position(|b| {
            let closes = !escaped && b == b'"';
            escaped = !escaped && b == b'\\';
            closes
        });
        match close {
            Some(c) if c + 1 == quoted.len() => Arg::Quoted(&quoted[..c]),
            _ => return Item::Malformed(item),
        }
    } else if rest.is_empty() || is_token(rest) {
        Arg::Token(rest)
    } else {
        return Item::Malformed(item);
    };
    Item::Directive {
        name,
        arg: Some(arg),
    }
}

/// The field names of a qualified `no-cache="..."` or `private="..."`;
/// `None` when the list is empty or holds anything but field names.
fn field_list(list: &str) -> Option<Vec<String>> {
    let mut names = Vec::new();
    for field in list.split(',').map(|f| f.trim_matches([' ', '\t'])) {
        if field.is_empty() {
            continue;
        }
        if !is_token(field) {
            return None;
        }
        names.push(field.to_ascii_lowercase());
    }
    (!names.is_empty()).then_some(names)
}

/// delta-seconds: the leading digits (`3600.5` is 3600); no digits is `0`,
/// a value too large is capped at 2^31.
/// A field name in a targeted field's `no-cache` or `private` list: a
/// string or token that is a valid header name, in lower case.
fn field_name(item: &sfv::BareItem) -> Option<String> {
    let name = item
        .as_string()
        .map(|s| s.as_str())
        .or_else(|| item.as_token().map(|t| t.as_str()))?;
    let name = name.to_ascii_lowercase();
    HeaderName::from_bytes(name.as_bytes()).ok()?;
    Some(name)
}

pub(crate) fn parse_seconds(v: &str) -> u64 {
    let digits = v.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return 0;
    }
    v[..digits]
        .parse::<u64>()
        .unwrap_or(MAX_DELTA)
        .min(MAX_DELTA)
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::test_headers::{cc, with};

    #[test]
    fn rfc9111_5_2_directives_parse_in_any_case_and_with_quotes() {
        let c = cc("Max-Age=60, s-maxage=\"30\", No-Store, no-cache=\"set-cookie, x\", private");
        assert_eq!(c.max_age, Some(60));
        assert_eq!(c.s_maxage, Some(30));
        assert!(c.no_store && c.private);
        assert!(!c.no_cache, "a qualified no-cache only omits fields");
        assert_eq!(c.omit, ["set-cookie", "x"]);
        assert!(!c.public);
        assert_eq!(cc("max-age=1, max-age=99").max_age, Some(1));
        assert_eq!(cc("max-age=-1").max_age, Some(0));
        assert_eq!(cc("max-age=1.5").max_age, Some(1));
        assert_eq!(cc("max-age=003600").max_age, Some(3600));
        assert_eq!(cc("max-age='3600'").max_age, Some(0));
        assert_eq!(cc("max-age =3600").max_age, None);
        assert_eq!(cc("max-age= 3600").max_age, None);
        assert_eq!(cc("ext=\"max-age=3600\", max-age=1").max_age, Some(1));
        let q = cc("no-cache=\"A, b\", private=\"c\", max-age=9");
        assert!(!q.no_cache && !q.private);
        assert_eq!(q.omit, ["a", "b", "c"]);
        assert_eq!(cc("max-age=99999999999999999999").max_age, Some(MAX_DELTA));
        assert_eq!(cc("max-stale").max_stale, Some(u64::MAX));
        assert_eq!(cc("max-stale=5").max_stale, Some(5));
    }

    #[test]
    fn rfc9111_5_2_2_7_a_malformed_restriction_counts_as_the_unqualified_directive() {
        for line in [
            "private =\"x\"",
            "private= \"x\"",
            "private=",
            "private=\"\"",
            "private=x",
            "private=\"x",
            "private=\"x\" y",
            "private=\"a b\"",
            "max-age=60;private",
            "max-age=60 private",
            "public, private;max-age=60",
            "max-age=60, PRIVATE=set-cookie",
        ] {
            let c = cc(line);
            assert!(c.private, "{line:?} is private");
            assert!(c.omit.is_empty(), "{line:?} names no field");
        }
        for line in [
            "no-cache =\"x\"",
            "no-cache=",
            "no-cache=x",
            "max-age=60;no-cache",
        ] {
            assert!(cc(line).no_cache, "{line:?} is no-cache");
        }
        for line in ["no-store =\"x\"", "no-store=x", "max-age=60;no-store"] {
            assert!(cc(line).no_store, "{line:?} is no-store");
        }
        // What a malformed item grants is ignored.
        let c = cc("max-age=60;private");
        assert_eq!(c.max_age, None);
        assert!(!cc("public;max-age=60").public);
        // A well-formed qualified form still only omits its fields, and a
        // restriction inside another directive's quoted argument is not one.
        let q = cc("private=\"set-cookie\", no-cache=\"x, y\", max-age=60");
        assert!(!q.private && !q.no_cache);
        assert_eq!(q.omit, ["set-cookie", "x", "y"]);
        assert_eq!(q.max_age, Some(60));
        let ext = cc("ext=\"private, no-store\", max-age=5");
        assert!(!ext.private && !ext.no_store);
        assert_eq!(ext.max_age, Some(5));
        // A comma inside a quoted argument does not end the item.
        assert_eq!(
            directives("a=\"x,y\", b"),
            [
                Item::Directive {
                    name: "a",
                    arg: Some(Arg::Quoted("x,y"))
                },
                Item::Directive {
                    name: "b",
                    arg: None
                }
            ]
        );
    }

    #[test]
    fn rfc9111_5_4_pragma_no_cache_only_without_cache_control() {
        let r = CacheControl::parse_request(&with(&[("pragma", "no-cache")]));
        assert!(r.no_cache);
        let r = CacheControl::parse_request(&with(&[
            ("pragma", "no-cache"),
            ("cache-control", "max-age=5"),
        ]));
        assert!(!r.no_cache);
    }

    fn targeted(pairs: &[(&'static str, &'static str)]) -> CacheControl {
        let names = [
            HeaderName::from_static("api-cache-control"),
            HeaderName::from_static("cdn-cache-control"),
        ];
        CacheControl::parse_response(&with(pairs), &names)
    }

    #[test]
    fn rfc9213_2_2_the_first_valid_targeted_field_replaces_cache_control() {
        let c = targeted(&[
            ("cache-control", "no-store"),
            (
                "cdn-cache-control",
                "max-age=600, stale-while-revalidate=30",
            ),
        ]);
        assert!(c.targeted && !c.no_store);
        assert_eq!((c.max_age, c.stale_while_revalidate), (Some(600), Some(30)));
        // The most specific one present wins.
        let c = targeted(&[
            ("cdn-cache-control", "max-age=600"),
            ("api-cache-control", "s-maxage=5, must-revalidate"),
        ]);
        assert_eq!(
            (c.max_age, c.s_maxage, c.must_revalidate),
            (None, Some(5), true)
        );
        // Several lines make one dictionary.
        let mut h = with(&[("cdn-cache-control", "max-age=60")]);
        h.append("cdn-cache-control", "private".parse().unwrap());
        let c = CacheControl::parse_response(&h, &[HeaderName::from_static("cdn-cache-control")]);
        assert!(c.private && c.max_age == Some(60));
    }

    #[test]
    fn rfc9213_2_1_an_invalid_or_empty_targeted_field_is_ignored_as_a_whole() {
        for bad in [
            "max-age=60, no-store;;",
            "max-age=\"60",
            "",
            "Max-Age=60",
            "a=1,",
        ] {
            let c = targeted(&[("cache-control", "max-age=9"), ("cdn-cache-control", bad)]);
            assert!(!c.targeted, "{bad:?} must be ignored");
            assert_eq!(c.max_age, Some(9), "{bad:?}: Cache-Control applies");
        }
        // The next field in the list is tried.
        let c = targeted(&[
            ("api-cache-control", "max-age=("),
            ("cdn-cache-control", "max-age=7"),
        ]);
        assert_eq!(c.max_age, Some(7));
    }

    #[test]
    fn rfc9213_2_1_directive_values_read_strictly() {
        // A lifetime that is not a non-negative integer counts as 0.
        for v in [
            "max-age=-1",
            "max-age=1.5",
            "max-age=\"60\"",
            "max-age=?1",
            "max-age",
        ] {
            assert_eq!(
                targeted(&[("cdn-cache-control", v)]).max_age,
                Some(0),
                "{v}"
            );
        }
        let c = targeted(&[("cdn-cache-control", "no-store=?0, public=?1, max-age=3")]);
        assert!(!c.no_store && c.public);
        // A list of field names qualifies no-cache and private; anything
        // else reads as the unqualified directive.
        let c = targeted(&[(
            "cdn-cache-control",
            "no-cache=(\"Set-Cookie\" x-a), private=\"x-b\"",
        )]);
        assert!(!c.no_cache && !c.private);
        assert_eq!(c.omit, ["set-cookie", "x-a", "x-b"]);
        let c = targeted(&[("cdn-cache-control", "no-cache=5, private=()")]);
        assert!(c.no_cache && c.private);
        // Directives a cache does not know are ignored.
        let c = targeted(&[("cdn-cache-control", "max-age=3, x-ext=\"y\";p=1")]);
        assert_eq!(c.max_age, Some(3));
    }
}
