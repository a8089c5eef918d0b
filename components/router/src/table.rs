//! The route table and nginx-like matching, as pure functions over the
//! table text (so they are tested natively).
//!
//! The table is rendered by the host: one route per line, fields separated
//! by tabs, in the order of [`Field`]. Every field is percent-encoded for `%`,
//! tab and newline (`%25`, `%09`, `%0A`); list fields then use the contract's
//! list encoding.
//!
//! The request path never allocates unless a field it reads holds an
//! escape: the table is walked in place and only the winning route's name,
//! pools and facts are copied out.
//!
//! # CORS preflights
//!
//! A CORS preflight is an `OPTIONS` request carrying an
//! `access-control-request-method` header: the browser asks whether the
//! *requested* method may be sent. A route matches a preflight when it
//! allows `OPTIONS` itself **or the requested method** (and, as for every
//! request, when it has no `methods` at all). So a route with
//! `methods = ["GET", "PUT"]` receives the preflight of a `PUT` and its chain
//! (the security-headers policy, placed first) answers it; the route is never
//! forced to list `OPTIONS`. Among the routes that match, ranking is the
//! usual one, so the preflight lands on the route that will serve the actual
//! request. A preflight for a method no matching route allows is answered 405
//! with `allow`, like any other method. An `OPTIONS` request without
//! `access-control-request-method` is an ordinary request.

use alloc::borrow::Cow;
use alloc::string::String;
use alloc::vec::Vec;
use portcullis_sdk::{Edits, RequestHead, Verdict, header_value, json, list, problem};

/// The fields of a route line, in table order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(usize)]
pub enum Field {
    Name = 0,
    Hosts = 1,
    Match = 2,
    Path = 3,
    Methods = 4,
    Pools = 5,
    Facts = 6,
}

const FIELDS: usize = 7;
const FIELD_NAMES: [&str; FIELDS] = [
    "name", "hosts", "match", "path", "methods", "pools", "facts",
];

/// Fact keys the router writes itself; a route's `facts` cannot use them.
const RESERVED_KEYS: [&str; 2] = ["name", "pools"];

/// One line of the table, fields still encoded.
#[derive(Clone, Copy)]
struct Line<'a> {
    number: usize,
    fields: [&'a str; FIELDS],
    /// Whether any field holds a `%` (an escape, or a bad one): without
    /// one, every field is its own decoding and is used in place.
    escaped: bool,
}

impl<'a> Line<'a> {
    #[inline]
    fn raw(&self, f: Field) -> &'a str {
        self.fields[f as usize]
    }

    /// A field decoded ([`field`]); `None` for a bad escape.
    #[inline]
    fn field(&self, f: Field) -> Option<Cow<'a, str>> {
        if self.escaped { field(self.raw(f)) } else { Some(Cow::Borrowed(self.raw(f))) }
    }

    /// The items of a list field (field-decoded, then list-decoded).
    #[inline]
    fn items(&self, f: Field) -> impl Iterator<Item = Cow<'a, str>> + use<'a> {
        items(self.field(f).unwrap_or(Cow::Borrowed("")))
    }
}

/// The non-empty lines of the table with their 1-based line numbers, split
/// into fields, or the number of fields found when it is not 7.
///
/// A fresh instance walks the whole table on every request, so the walk
/// jumps from separator to separator ([`next_separator`], eight bytes at a
/// time) instead of looking at each byte.
fn lines(table: &str) -> impl Iterator<Item = Result<Line<'_>, (usize, usize)>> {
    let bytes = table.as_bytes();
    let mut pos = 0;
    let mut number = 0;
    core::iter::from_fn(move || {
        while pos < bytes.len() {
            number += 1;
            let start = pos;
            let mut fields = [""; FIELDS];
            let mut n = 0;
            let mut field_start = start;
            let mut escaped = false;
            let mut from = start;
            let end = loop {
                let i = next_separator(bytes, from);
                match bytes.get(i) {
                    Some(b'%') => {
                        escaped = true;
                        from = i + 1;
                    }
                    Some(b'\t') => {
                        if n < FIELDS {
                            // Tab and newline are ASCII: every cut is a char boundary.
                            fields[n] = &table[field_start..i];
                        }
                        n += 1;
                        field_start = i + 1;
                        from = i + 1;
                    }
                    _ => break i,
                }
            };
            pos = end + 1;
            if end == start {
                continue;
            }
            if n < FIELDS {
                fields[n] = &table[field_start..end];
            }
            n += 1;
            return Some(if n == FIELDS { Ok(Line { number, fields, escaped }) } else { Err((number, n)) });
        }
        None
    })
}

/// The index of the first tab, newline or `%` in `bytes` at or after
/// `from`, or `bytes.len()`. Eight bytes per step: a byte equal to the one
/// sought is a zero byte of `word ^ sought`, and `(x - 0x01..) & !x & 0x80..`
/// flags zero bytes exactly up to the first one (the lowest flag is always
/// true).
#[inline]
pub(crate) fn next_separator(bytes: &[u8], from: usize) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    const TABS: u64 = u64::from_ne_bytes([b'\t'; 8]);
    const NEWLINES: u64 = u64::from_ne_bytes([b'\n'; 8]);
    const PERCENTS: u64 = u64::from_ne_bytes([b'%'; 8]);
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut i = from;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let word = u64::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7]]);
        let found = zero(word ^ TABS) | zero(word ^ NEWLINES) | zero(word ^ PERCENTS);
        if found != 0 {
            return i + (found.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < bytes.len() && !matches!(bytes[i], b'\t' | b'\n' | b'%') {
        i += 1;
    }
    i
}

/// Undo the table's field encoding (`%25` `%09` `%0A`, hex in either case).
/// `None` when a `%` starts anything else.
pub fn field(raw: &str) -> Option<Cow<'_, str>> {
    // A plain loop: these fields are a few bytes long (see `lines`).
    if !raw.bytes().any(|b| b == b'%') {
        return Some(Cow::Borrowed(raw));
    }
    let b = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let c = match (b.get(i + 1), b.get(i + 2).map(u8::to_ascii_uppercase)) {
                (Some(b'2'), Some(b'5')) => '%',
                (Some(b'0'), Some(b'9')) => '\t',
                (Some(b'0'), Some(b'A')) => '\n',
                _ => return None,
            };
            out.push_str(&raw[start..i]);
            out.push(c);
            i += 3;
            start = i;
        } else {
            i += 1;
        }
    }
    out.push_str(&raw[start..]);
    Some(Cow::Owned(out))
}

/// The items of a list field (field-decoded, then list-decoded).
fn items(decoded: Cow<'_, str>) -> impl Iterator<Item = Cow<'_, str>> {
    // Borrowed in the common case: iterate in place. Escapes (rare) make
    // the decoded text owned; the items are then owned too.
    let owned: Option<Vec<String>> = match &decoded {
        Cow::Borrowed(_) => None,
        Cow::Owned(s) => Some(list::decode(s)),
    };
    let borrowed = match decoded {
        Cow::Borrowed(s) => Some(list::items(s)),
        Cow::Owned(_) => None,
    };
    borrowed
        .into_iter()
        .flatten()
        .chain(owned.into_iter().flatten().map(Cow::Owned))
}

// ---------------------------------------------------------------------------
// Matching.

/// How specific a host match is: exact > wildcard > any host.
fn host_rank(line: &Line<'_>, host: &str) -> Option<u8> {
    if line.raw(Field::Hosts).is_empty() {
        return Some(0);
    }
    let mut best = None;
    for item in line.items(Field::Hosts) {
        if let Some(suffix) = item.strip_prefix('*') {
            // `*.example.org`: any subdomain, not the apex.
            if suffix.starts_with('.')
                && host.len() > suffix.len()
                && host.as_bytes()[host.len() - suffix.len()..]
                    .eq_ignore_ascii_case(suffix.as_bytes())
            {
                best = Some(1);
            }
        } else if host.eq_ignore_ascii_case(&item) {
            return Some(2);
        }
    }
    best
}

/// Whether `path` matches; `(exact, prefix length)` when it does.
fn path_rank(line: &Line<'_>, path: &str) -> Option<(bool, usize)> {
    let route = line.field(Field::Path)?;
    let route = route.as_ref();
    match line.raw(Field::Match) {
        "exact" => (path == route).then_some((true, route.len())),
        "prefix" => prefix_matches(route, path).then_some((false, route.len())),
        _ => None,
    }
}

/// Prefix matching at a segment boundary: `/a` matches `/a`, `/a/`, `/a/b`
/// but not `/ab`; a prefix ending in `/` matches anything starting with it.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || path.as_bytes()[prefix.len()] == b'/')
}

fn method_allowed(line: &Line<'_>, method: &str) -> bool {
    line.raw(Field::Methods).is_empty() || line.items(Field::Methods).any(|m| m == method)
}

/// The method a CORS preflight asks about: the trimmed, non-empty value of
/// `access-control-request-method` on an `OPTIONS` request; `None` for every
/// other request.
pub fn preflight_method(req: &RequestHead) -> Option<&str> {
    if req.method != "OPTIONS" {
        return None;
    }
    let value = header_value(req, "access-control-request-method")?;
    let value = core::str::from_utf8(value).ok()?;
    let value = value.trim_matches([' ', '\t']);
    (!value.is_empty()).then_some(value)
}

/// The host part of an authority: lower-case is assumed, a `:port` is
/// stripped (`[v6]:port` too).
pub fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        match authority.find(']') {
            Some(i) => &authority[..=i],
            None => authority,
        }
    } else {
        match authority.rfind(':') {
            Some(i)
                if !authority[..i].contains(':')
                    && authority[i + 1..].bytes().all(|b| b.is_ascii_digit()) =>
            {
                &authority[..i]
            }
            _ => authority,
        }
    }
}

/// Host class, exact path, prefix length: greater is more specific.
type Rank = (u8, bool, usize);

/// Route `req` through `table`: proceed with the route's facts, or answer
/// 404 / 405 as problem+json.
pub fn route(table: &str, req: &RequestHead) -> Verdict {
    let host = strip_port(&req.authority);
    let path = match req.path.find('?') {
        Some(i) => &req.path[..i],
        None => &req.path,
    };
    let preflight = preflight_method(req);
    let mut best: Option<(Rank, Line<'_>)> = None;
    let mut path_matched = false;
    for line in lines(table) {
        let Ok(line) = line else { continue };
        // The path first: the cheapest test, and the one most lines fail.
        let Some((exact, len)) = path_rank(&line, path) else {
            continue;
        };
        let Some(h) = host_rank(&line, host) else {
            continue;
        };
        path_matched = true;
        if !method_allowed(&line, &req.method)
            && !preflight.is_some_and(|m| method_allowed(&line, m))
        {
            continue;
        }
        let rank = (h, exact, len);
        if best.as_ref().is_none_or(|(r, _)| rank > *r) {
            best = Some((rank, line));
        }
    }
    match best {
        Some((_, line)) => matched(line),
        None if path_matched => not_allowed(table, host, path, &req.method),
        None => not_found(&req.method, path),
    }
}

fn matched(line: Line<'_>) -> Verdict {
    let name = line.field(Field::Name).unwrap_or_default();
    let pools = line.field(Field::Pools).unwrap_or_default();
    let mut edits = Edits::new();
    let raw_facts = line.raw(Field::Facts);
    edits.facts.reserve_exact(
        2 + if raw_facts.is_empty() {
            0
        } else {
            raw_facts.split(',').count()
        },
    );
    edits = edits.fact("route.name", name).fact("route.pools", pools);
    for item in line.items(Field::Facts) {
        let Some((key, value)) = item.split_once('=') else {
            continue;
        };
        if key.is_empty() || RESERVED_KEYS.contains(&key) {
            continue;
        }
        let mut name = String::with_capacity(6 + key.len());
        name.push_str("route.");
        name.push_str(key);
        edits = edits.fact(name, value);
    }
    edits.proceed()
}

fn not_allowed(table: &str, host: &str, path: &str, method: &str) -> Verdict {
    // Rare: walk the table again for every method allowed on this host+path.
    let mut allowed: Vec<Cow<'_, str>> = Vec::new();
    for line in lines(table).flatten() {
        if host_rank(&line, host).is_some() && path_rank(&line, path).is_some() {
            for m in line.items(Field::Methods) {
                if !allowed.contains(&m) {
                    allowed.push(m);
                }
            }
        }
    }
    let mut allow = String::new();
    for (i, m) in allowed.iter().enumerate() {
        if i > 0 {
            allow.push_str(", ");
        }
        allow.push_str(m);
    }
    let mut detail = String::with_capacity(32 + method.len() + path.len());
    detail.push_str("method ");
    detail.push_str(method);
    detail.push_str(" is not allowed for ");
    detail.push_str(path);
    problem(405, "Method not allowed", &detail)
        .header("allow", allow)
        .respond()
}

fn not_found(method: &str, path: &str) -> Verdict {
    let mut detail = String::with_capacity(16 + method.len() + path.len());
    detail.push_str("no route for ");
    detail.push_str(method);
    detail.push(' ');
    detail.push_str(path);
    problem(404, "No route", &detail).respond()
}

// ---------------------------------------------------------------------------
// Validation (check-config).

/// Validate the whole table; errors name the route (or line), the field and
/// the reason.
pub fn check(table: &str) -> Result<(), String> {
    let mut names: Vec<(Cow<'_, str>, usize)> = Vec::new();
    for line in lines(table) {
        let line = line.map_err(|(number, n)| {
            let mut e = at_line(number);
            e.push_str("expected 7 tab-separated fields (name, hosts, match, path, methods, pools, facts), got ");
            json::push_u64(&mut e, n as u64);
            e
        })?;
        let name = field(line.raw(Field::Name))
            .ok_or_else(|| field_error(&at_line(line.number), Field::Name, BAD_ESCAPE))?;
        if name.is_empty() {
            return Err(field_error(
                &at_line(line.number),
                Field::Name,
                "must not be empty",
            ));
        }
        let mut who = String::from("route ");
        json::push_string(&mut who, &name);
        who.push_str(": ");
        if let Some((_, first)) = names.iter().find(|(n, _)| *n == name) {
            let mut reason = String::from("duplicate route name (first on line ");
            json::push_u64(&mut reason, *first as u64);
            reason.push(')');
            return Err(field_error(&who, Field::Name, &reason));
        }
        check_route(&line, &who)?;
        names.push((name, line.number));
    }
    if names.is_empty() {
        return Err(String::from(
            "setting \"table\": no routes (the route table is empty)",
        ));
    }
    Ok(())
}

const BAD_ESCAPE: &str = "invalid percent-escape (only %25, %09 and %0A are allowed)";

fn at_line(number: usize) -> String {
    let mut s = String::from("line ");
    json::push_u64(&mut s, number as u64);
    s.push_str(": ");
    s
}

fn field_error(who: &str, f: Field, reason: &str) -> String {
    let mut e = String::with_capacity(who.len() + reason.len() + 20);
    e.push_str(who);
    e.push_str("field \"");
    e.push_str(FIELD_NAMES[f as usize]);
    e.push_str("\": ");
    e.push_str(reason);
    e
}

/// `what`, then the offending value quoted.
fn got(what: &str, value: &str) -> String {
    let mut s = String::from(what);
    s.push_str(", got ");
    json::push_string(&mut s, value);
    s
}

fn check_route(line: &Line<'_>, who: &str) -> Result<(), String> {
    let err = |f: Field, reason: &str| field_error(who, f, reason);
    let decoded = |f: Field| field(line.raw(f)).ok_or_else(|| err(f, BAD_ESCAPE));

    for f in [Field::Hosts, Field::Methods, Field::Pools, Field::Facts] {
        decoded(f)?;
    }

    for host in line.items(Field::Hosts) {
        check_host(&host).map_err(|r| err(Field::Hosts, &r))?;
    }

    let kind = decoded(Field::Match)?;
    if kind != "prefix" && kind != "exact" {
        return Err(err(Field::Match, &got("expected prefix or exact", &kind)));
    }

    let path = decoded(Field::Path)?;
    if !path.starts_with('/') {
        return Err(err(
            Field::Path,
            &got("expected a path starting with \"/\"", &path),
        ));
    }
    if path.contains(['?', '#']) || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(err(
            Field::Path,
            &got(
                "expected a path without query, fragment, spaces or control characters",
                &path,
            ),
        ));
    }

    for method in line.items(Field::Methods) {
        let token =
            |b: u8| b.is_ascii_uppercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b);
        if method.is_empty() || !method.bytes().all(token) {
            return Err(err(
                Field::Methods,
                &got("expected upper-case method names", &method),
            ));
        }
    }

    let mut pools = 0;
    for pool in line.items(Field::Pools) {
        if pool.is_empty() {
            return Err(err(Field::Pools, "pool names must not be empty"));
        }
        pools += 1;
    }
    if pools == 0 {
        return Err(err(Field::Pools, "expected at least one pool"));
    }

    for fact in line.items(Field::Facts) {
        let Some((key, _)) = fact.split_once('=') else {
            return Err(err(Field::Facts, &got("expected key=value", &fact)));
        };
        if key.is_empty() || key.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(err(
                Field::Facts,
                &got("expected a non-empty key without spaces", &fact),
            ));
        }
        if RESERVED_KEYS.contains(&key) {
            let mut reason = got("key is reserved for the router", key);
            reason.push_str(" (it writes route.name and route.pools itself)");
            return Err(err(Field::Facts, &reason));
        }
    }
    Ok(())
}

fn check_host(host: &str) -> Result<(), String> {
    let domain = host.strip_prefix("*.").unwrap_or(host);
    let ok = match domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        // An IPv6 literal (not as a wildcard).
        Some(inner) => {
            domain.len() == host.len()
                && !inner.is_empty()
                && inner.bytes().all(|b| {
                    b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b':' || b == b'.'
                })
        }
        None => {
            !domain.is_empty()
                && !domain.starts_with('.')
                && !domain.contains("..")
                && domain.bytes().all(|b| {
                    !(b.is_ascii_uppercase()
                        || b <= b' '
                        || b == 0x7f
                        || b"*:/?#@[]\\%,".contains(&b))
                })
        }
    };
    if ok {
        Ok(())
    } else {
        Err(got(
            "expected a lower-case host without port, or *.domain",
            host,
        ))
    }
}
