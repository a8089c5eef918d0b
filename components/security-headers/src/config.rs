//! The policy's settings: parsed (and checked) from the flattened pairs the
//! host gives (`portcullis_sdk::settings("")`, route overrides already merged), as a
//! pure function so it is tested natively.

use alloc::borrow::Cow;
use alloc::string::String;
use alloc::vec::Vec;
use portcullis_sdk::{json, list};

/// Every setting the policy reads, in documentation order.
pub const KNOWN: [&str; 20] = [
    "allow-origins",
    "allow-methods",
    "allow-headers",
    "expose-headers",
    "allow-credentials",
    "preflight-max-age",
    "hsts",
    "hsts-max-age",
    "hsts-include-subdomains",
    "hsts-preload",
    "nosniff",
    "frame-options",
    "referrer-policy",
    "permissions-policy",
    "content-security-policy",
    "remove-headers",
    "redirect-https",
    // Reserved so that a typo of a common header name gets a precise answer.
    "x-frame-options",
    "x-content-type-options",
    "strict-transport-security",
];

/// How many of [`KNOWN`] are real settings (the rest are aliases refused
/// with a hint).
const REAL: usize = 17;

/// Default `allow-methods`: the CORS-safelisted methods.
pub const DEFAULT_METHODS: [&str; 3] = ["GET", "HEAD", "POST"];
/// Default `preflight-max-age`, seconds.
pub const DEFAULT_PREFLIGHT_MAX_AGE: u64 = 600;
/// Largest `preflight-max-age` accepted (Firefox's cap; Chromium caps at 7200).
pub const MAX_PREFLIGHT_MAX_AGE: u64 = 86_400;
/// Default `hsts-max-age`: two years.
pub const DEFAULT_HSTS_MAX_AGE: u64 = 63_072_000;
/// Smallest `hsts-max-age` the preload list accepts: one year.
pub const PRELOAD_MIN_MAX_AGE: u64 = 31_536_000;
/// Default `referrer-policy`.
pub const DEFAULT_REFERRER_POLICY: &str = "strict-origin-when-cross-origin";
/// Default `permissions-policy`: powerful features off.
pub const DEFAULT_PERMISSIONS_POLICY: &str =
    "camera=(), microphone=(), geolocation=(), payment=(), usb=()";
/// Default `remove-headers`.
pub const DEFAULT_REMOVE: [&str; 2] = ["server", "x-powered-by"];

/// Referrer-Policy tokens (W3C Referrer Policy).
const REFERRER_POLICIES: [&str; 8] = [
    "no-referrer",
    "no-referrer-when-downgrade",
    "origin",
    "origin-when-cross-origin",
    "same-origin",
    "strict-origin",
    "strict-origin-when-cross-origin",
    "unsafe-url",
];

/// The parsed settings. Lists of header names are lower-case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config<'a> {
    /// Exact origins and `scheme://*.domain[:port]` patterns; empty: CORS off.
    pub origins: Vec<Cow<'a, str>>,
    /// `allow-origins = ["*"]`: any origin (never with credentials).
    pub any_origin: bool,
    /// Methods a preflight may ask for.
    pub methods: Vec<Cow<'a, str>>,
    /// `allow-methods = ["*"]`: any method (never with credentials).
    pub any_method: bool,
    /// Request headers a preflight may ask for, lower-case.
    pub headers: Vec<String>,
    /// `allow-headers` holds `*`: any header but `authorization` (never with
    /// credentials).
    pub any_header: bool,
    /// Response headers exposed to scripts (`access-control-expose-headers`).
    pub expose: Vec<Cow<'a, str>>,
    /// `access-control-allow-credentials: true`.
    pub credentials: bool,
    /// `access-control-max-age`, seconds.
    pub preflight_max_age: u64,
    /// Send `strict-transport-security` on https.
    pub hsts: bool,
    /// Its `max-age`, seconds.
    pub hsts_max_age: u64,
    /// Its `includeSubDomains`.
    pub hsts_include_subdomains: bool,
    /// Its `preload`.
    pub hsts_preload: bool,
    /// Send `x-content-type-options: nosniff`.
    pub nosniff: bool,
    /// `x-frame-options` (`DENY`, `SAMEORIGIN`), empty: not sent.
    pub frame_options: &'a str,
    /// `referrer-policy`, empty: not sent.
    pub referrer_policy: &'a str,
    /// `permissions-policy`, empty: not sent.
    pub permissions_policy: &'a str,
    /// `content-security-policy`, empty: not sent.
    pub content_security_policy: &'a str,
    /// Response headers removed, lower-case.
    pub remove: Vec<String>,
    /// Answer plain-http requests with a 308 to https.
    pub redirect_https: bool,
}

impl Default for Config<'_> {
    fn default() -> Self {
        Config {
            origins: Vec::new(),
            any_origin: false,
            methods: DEFAULT_METHODS.iter().map(|m| Cow::Borrowed(*m)).collect(),
            any_method: false,
            headers: Vec::new(),
            any_header: false,
            expose: Vec::new(),
            credentials: false,
            preflight_max_age: DEFAULT_PREFLIGHT_MAX_AGE,
            hsts: true,
            hsts_max_age: DEFAULT_HSTS_MAX_AGE,
            hsts_include_subdomains: true,
            hsts_preload: false,
            nosniff: true,
            frame_options: "DENY",
            referrer_policy: DEFAULT_REFERRER_POLICY,
            permissions_policy: DEFAULT_PERMISSIONS_POLICY,
            content_security_policy: "",
            remove: DEFAULT_REMOVE.iter().map(|h| String::from(*h)).collect(),
            redirect_https: false,
        }
    }
}

impl Config<'_> {
    /// CORS is on when `allow-origins` is not empty.
    pub fn cors(&self) -> bool {
        self.any_origin || !self.origins.is_empty()
    }
}

/// `setting "<key>": <reason>` (the SDK's one format for settings errors).
pub use portcullis_sdk::setting_error as error;

use portcullis_sdk::setting_error_got as error_got;

fn boolean(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(error_got(key, "expected true or false", v)),
    }
}

fn number(key: &str, v: &str, max: u64) -> Result<u64, String> {
    let n = if !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()) {
        v.parse::<u64>().ok()
    } else {
        None
    };
    match n {
        Some(n) if n <= max => Ok(n),
        _ => {
            let mut reason = String::from("expected a whole number of seconds, at most ");
            json::push_u64(&mut reason, max);
            Err(error_got(key, &reason, v))
        }
    }
}

/// An RFC 9110 token (method or header name).
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header value the host will accept and that cannot split a header:
/// visible ASCII, spaces and tabs (and obs-text), no control characters.
fn header_value(key: &str, v: &str) -> Result<(), String> {
    if v.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
        return Err(error_got(
            key,
            "expected a header value without control characters",
            v,
        ));
    }
    if v.starts_with([' ', '\t']) || v.ends_with([' ', '\t']) {
        return Err(error_got(
            key,
            "expected a header value without leading or trailing spaces",
            v,
        ));
    }
    Ok(())
}

/// Parse `pairs` (`portcullis_sdk::settings("")`); every problem is an error naming the
/// setting.
pub fn parse(pairs: &[(String, String)]) -> Result<Config<'_>, String> {
    let mut c = Config::default();
    for (key, value) in pairs {
        let (k, v) = (key.as_str(), value.as_str());
        match k {
            "allow-origins" => {
                c.origins.clear();
                for item in list::items(v) {
                    if item == "*" {
                        c.any_origin = true;
                        continue;
                    }
                    check_origin(&item).map_err(|reason| error_got(k, reason, &item))?;
                    c.origins.push(item);
                }
                if c.any_origin && !c.origins.is_empty() {
                    return Err(error(
                        k,
                        "\"*\" (any origin) must be the only entry when present",
                    ));
                }
            }
            "allow-methods" => {
                c.methods.clear();
                for item in list::items(v) {
                    if item == "*" {
                        c.any_method = true;
                    } else if is_token(&item) && !item.bytes().any(|b| b.is_ascii_lowercase()) {
                        c.methods.push(item);
                    } else {
                        return Err(error_got(
                            k,
                            "expected upper-case method names or \"*\"",
                            &item,
                        ));
                    }
                }
            }
            "allow-headers" => {
                c.headers = header_names(k, v, true)?;
                if let Some(i) = c.headers.iter().position(|h| h == "*") {
                    c.headers.remove(i);
                    c.any_header = true;
                }
            }
            "expose-headers" => {
                c.expose.clear();
                for item in list::items(v) {
                    if item != "*" && !is_token(&item) {
                        return Err(error_got(k, "expected header names or \"*\"", &item));
                    }
                    c.expose.push(item);
                }
            }
            "allow-credentials" => c.credentials = boolean(k, v)?,
            "preflight-max-age" => c.preflight_max_age = number(k, v, MAX_PREFLIGHT_MAX_AGE)?,
            "hsts" => c.hsts = boolean(k, v)?,
            "hsts-max-age" => c.hsts_max_age = number(k, v, u64::MAX)?,
            "hsts-include-subdomains" => c.hsts_include_subdomains = boolean(k, v)?,
            "hsts-preload" => c.hsts_preload = boolean(k, v)?,
            "nosniff" => c.nosniff = boolean(k, v)?,
            "frame-options" => {
                if !matches!(v, "DENY" | "SAMEORIGIN" | "") {
                    return Err(error_got(
                        k,
                        "expected DENY, SAMEORIGIN or \"\" (not sent)",
                        v,
                    ));
                }
                c.frame_options = v;
            }
            "referrer-policy" => {
                // A comma-separated list is allowed: browsers use the last
                // token they know (fallbacks for old browsers).
                let tokens = v.split(',').map(|t| t.trim_matches([' ', '\t']));
                for token in tokens.filter(|_| !v.is_empty()) {
                    if !REFERRER_POLICIES.contains(&token) {
                        let mut reason = String::from("expected a referrer policy (");
                        push_joined(&mut reason, &REFERRER_POLICIES, ", ");
                        reason.push_str(") or \"\" (not sent)");
                        return Err(error_got(k, &reason, v));
                    }
                }
                c.referrer_policy = v;
            }
            "permissions-policy" => {
                header_value(k, v)?;
                c.permissions_policy = v;
            }
            "content-security-policy" => {
                header_value(k, v)?;
                c.content_security_policy = v;
            }
            "remove-headers" => {
                c.remove = header_names(k, v, false)?;
                if let Some(h) = c.remove.iter().find(|h| {
                    matches!(
                        h.as_str(),
                        "content-length" | "transfer-encoding" | "content-type"
                    )
                }) {
                    return Err(error_got(
                        k,
                        "framing and content headers cannot be removed",
                        h,
                    ));
                }
            }
            "redirect-https" => c.redirect_https = boolean(k, v)?,
            "x-frame-options" | "x-content-type-options" | "strict-transport-security" => {
                let hint = match k {
                    "x-frame-options" => "not a setting; use \"frame-options\"",
                    "x-content-type-options" => "not a setting; use \"nosniff\"",
                    _ => {
                        "not a setting; use \"hsts\", \"hsts-max-age\", \"hsts-include-subdomains\" and \"hsts-preload\""
                    }
                };
                return Err(error(k, hint));
            }
            _ => {
                let mut reason = String::from("unknown setting (known: ");
                push_joined(&mut reason, &KNOWN[..REAL], ", ");
                reason.push(')');
                return Err(error(k, &reason));
            }
        }
    }
    cross_check(&c)?;
    Ok(c)
}

/// Checks between settings.
fn cross_check(c: &Config<'_>) -> Result<(), String> {
    if c.credentials {
        const WHY: &str = " cannot be combined with allow-credentials = true (browsers take a wildcard literally or refuse it when credentials are included)";
        let wildcard = |what: &str, fix: &str| {
            let mut reason = String::from("\"*\"");
            reason.push_str(WHY);
            reason.push_str("; ");
            reason.push_str(fix);
            error(what, &reason)
        };
        if c.any_origin {
            return Err(wildcard("allow-origins", "list the origins instead"));
        }
        if c.any_method {
            return Err(wildcard("allow-methods", "list the methods instead"));
        }
        if c.any_header {
            return Err(wildcard("allow-headers", "list the headers instead"));
        }
        if c.expose.iter().any(|h| h == "*") {
            return Err(wildcard("expose-headers", "list the headers instead"));
        }
    }
    if c.hsts_preload {
        if !c.hsts_include_subdomains {
            return Err(error(
                "hsts-preload",
                "preload requires hsts-include-subdomains = true",
            ));
        }
        if c.hsts_max_age < PRELOAD_MIN_MAX_AGE {
            return Err(error(
                "hsts-preload",
                "preload requires hsts-max-age of at least 31536000 (one year)",
            ));
        }
    }
    Ok(())
}

/// A list of header names, lower-cased; `*` allowed when `star`.
fn header_names(key: &str, v: &str, star: bool) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for item in list::items(v) {
        if (star && item == "*") || (is_token(&item) && item != "*") {
            out.push(item.to_ascii_lowercase());
        } else if star {
            return Err(error_got(key, "expected header names or \"*\"", &item));
        } else {
            return Err(error_got(key, "expected header names", &item));
        }
    }
    Ok(out)
}

/// Append `items` separated by `sep`.
pub fn push_joined<S: AsRef<str>>(out: &mut String, items: &[S], sep: &str) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        out.push_str(item.as_ref());
    }
}

/// Check one `allow-origins` entry: `scheme://host[:port]`, lower-case, no
/// path, or `scheme://*.domain[:port]`.
pub fn check_origin(entry: &str) -> Result<(), &'static str> {
    const SHAPE: &str = "expected an origin like https://app.example.org (scheme://host[:port], lower-case, no path or trailing slash), a pattern like https://*.example.org, or \"*\"";
    if entry == "null" {
        return Err(
            "the \"null\" origin (sandboxed frames, file: pages) cannot be allowed: any page can send it",
        );
    }
    let Some((scheme, rest)) = entry.split_once("://") else {
        return Err(SHAPE);
    };
    let scheme_ok = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    if !scheme_ok {
        return Err(SHAPE);
    }
    let (host, port) = split_port(rest).ok_or(SHAPE)?;
    if let Some(port) = port {
        let n: u32 =
            if !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()) {
                port.parse().unwrap_or(0)
            } else {
                0
            };
        if n == 0 || n > 65535 || port.starts_with('0') {
            return Err(SHAPE);
        }
        if (scheme == "https" && n == 443) || (scheme == "http" && n == 80) {
            return Err(
                "browsers never send the scheme's default port in an origin: drop the port",
            );
        }
    }
    if let Some(domain) = host.strip_prefix("*.") {
        if !domain_ok(domain) {
            return Err(SHAPE);
        }
        if !domain.contains('.') {
            return Err(
                "a wildcard must be below a registrable domain, like https://*.example.org",
            );
        }
        return Ok(());
    }
    let ipv6 = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .is_some_and(|h| {
            !h.is_empty()
                && h.bytes().all(|b| {
                    b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b':' || b == b'.'
                })
        });
    if ipv6 || domain_ok(host) {
        Ok(())
    } else {
        Err(SHAPE)
    }
}

/// `host[:port]` → `(host, port)`; `None` when a path, query, user or other
/// stray character is present.
fn split_port(rest: &str) -> Option<(&str, Option<&str>)> {
    if rest.contains(['/', '?', '#', '@']) {
        return None;
    }
    if rest.starts_with('[') {
        let end = rest.find(']')?;
        let (host, after) = rest.split_at(end + 1);
        return match after {
            "" => Some((host, None)),
            p => p.strip_prefix(':').map(|p| (host, Some(p))),
        };
    }
    match rest.split_once(':') {
        Some((h, p)) => Some((h, Some(p))),
        None => Some((rest, None)),
    }
}

/// A lower-case DNS name (or IPv4 literal): labels of `[a-z0-9-]`, no empty
/// label.
fn domain_ok(d: &str) -> bool {
    !d.is_empty()
        && d.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}
