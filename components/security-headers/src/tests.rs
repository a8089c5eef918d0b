extern crate std;

use crate::config::{self, Config, check_origin, parse};
use crate::cors::{
    Decision, Refusal, decide, merge_vary, origin_allowed, pattern_matches, preflight_method,
    requested_headers, response_edits,
};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use alloc::{format, vec};
use portcullis_sdk::{Header, Reply, RequestHead, ResponseEdits, find_header, list};

// ---------------------------------------------------------------------------
// Helpers.

fn pairs(kv: &[(&str, &str)]) -> Vec<(String, String)> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Parsed settings that live for the test (tests only).
fn cfg(p: Vec<(String, String)>) -> Config<'static> {
    parse(alloc::boxed::Box::leak(p.into_boxed_slice())).unwrap()
}

fn l(items: &[&str]) -> String {
    list::encode(items)
}

/// The ProCare dashboards' configuration.
fn procare() -> Vec<(String, String)> {
    vec![
        (
            "allow-origins".into(),
            l(&[
                "https://doctor.procare.health",
                "https://caregiver.procare.health",
            ]),
        ),
        ("allow-methods".into(), l(&["GET", "POST", "PUT"])),
        (
            "allow-headers".into(),
            l(&["Authorization", "Content-Type", "X-Request-Id"]),
        ),
        ("expose-headers".into(), l(&["x-request-id", "ratelimit"])),
        ("allow-credentials".into(), "true".into()),
        ("preflight-max-age".into(), "7200".into()),
    ]
}

fn req(method: &str, scheme: &str, headers: &[(&str, &str)]) -> RequestHead {
    RequestHead {
        id: "req-1".to_string(),
        method: method.to_string(),
        scheme: scheme.to_string(),
        authority: "api.procare.health".to_string(),
        path: "/api/clinical/vitals".to_string(),
        query: Some("patient=42".to_string()),
        headers: headers.iter().map(|(n, v)| Header::new(*n, *v)).collect(),
        client_ip: "192.0.2.7".to_string(),
        listener: "public".to_string(),
        route: Some("clinical".to_string()),
        facts: vec![],
    }
}

fn preflight_req(origin: &str, method: &str, headers: Option<&str>) -> RequestHead {
    let mut h = vec![
        ("origin", origin),
        ("access-control-request-method", method),
    ];
    if let Some(v) = headers {
        h.push(("access-control-request-headers", v));
    }
    req("OPTIONS", "https", &h)
}

fn hdr<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    find_header(headers, name).map(|v| core::str::from_utf8(v).unwrap())
}

fn names(headers: &[Header]) -> Vec<&str> {
    headers.iter().map(|h| h.name.as_str()).collect()
}

fn answered(d: Decision) -> (Reply, Option<Refusal>) {
    match d {
        Decision::Preflight(r, why) => (r, why),
        other => panic!("not a preflight answer: {other:?}"),
    }
}

fn set<'a>(e: &'a ResponseEdits, name: &str) -> Option<&'a str> {
    hdr(&e.set_headers, name)
}

// ---------------------------------------------------------------------------
// Origin matching.

#[test]
fn exact_origins_match_exactly() {
    let p = "https://doctor.procare.health";
    assert!(pattern_matches(p, "https://doctor.procare.health"));
    for o in [
        "http://doctor.procare.health",
        "https://doctor.procare.health:8443",
        "https://doctor.procare.health.evil.com",
        "https://xdoctor.procare.health",
        "https://doctor.procare.health/",
        "https://DOCTOR.procare.health",
        "null",
        "",
    ] {
        assert!(!pattern_matches(p, o), "{o}");
    }
}

#[test]
fn wildcard_patterns_match_subdomains_only() {
    let p = "https://*.procare.health";
    for o in [
        "https://a.procare.health",
        "https://doctor.procare.health",
        "https://a.b.procare.health",
        "https://x-1.procare.health",
    ] {
        assert!(pattern_matches(p, o), "{o}");
    }
    for o in [
        "https://procare.health",
        "http://a.procare.health",
        "https://a.procare.health.evil.com",
        "https://a.procare.health:8443",
        "https://.procare.health",
        "https://a..procare.health",
        "https://evil.com/.procare.health",
        "https://evil.com:1@x.procare.health",
        "https://a_b.procare.health",
        "https://aprocare.health",
        "wss://a.procare.health",
        "https://A.procare.health",
    ] {
        assert!(!pattern_matches(p, o), "{o}");
    }
    let with_port = "http://*.dev.test:8443";
    assert!(pattern_matches(with_port, "http://a.dev.test:8443"));
    assert!(!pattern_matches(with_port, "http://a.dev.test"));
    assert!(!pattern_matches(with_port, "http://a.dev.test:84431"));
}

#[test]
fn the_allow_list_combines_exact_origins_and_patterns() {
    let p = pairs(&[(
        "allow-origins",
        &l(&["https://app.nutri.test", "https://*.procare.health"]),
    )]);
    let c = parse(&p).unwrap();
    assert!(origin_allowed(&c, "https://app.nutri.test"));
    assert!(origin_allowed(&c, "https://caregiver.procare.health"));
    assert!(!origin_allowed(&c, "https://procare.health"));
    assert!(!origin_allowed(&c, "https://evil.test"));
    let any = pairs(&[("allow-origins", "*")]);
    assert!(origin_allowed(&parse(&any).unwrap(), "https://evil.test"));
}

// ---------------------------------------------------------------------------
// check-config.

#[test]
fn defaults_are_secure_and_cors_is_off() {
    let c = parse(&[]).unwrap();
    assert_eq!(c, Config::default());
    assert!(!c.cors());
    assert_eq!(c.methods, ["GET", "HEAD", "POST"]);
    assert!(c.hsts && c.hsts_include_subdomains && !c.hsts_preload);
    assert_eq!(c.hsts_max_age, 63_072_000);
    assert_eq!(c.frame_options, "DENY");
    assert_eq!(c.referrer_policy, "strict-origin-when-cross-origin");
    assert_eq!(c.remove, ["server", "x-powered-by"]);
    assert!(!c.redirect_https && !c.credentials);
}

#[test]
fn parses_every_setting() {
    let p = pairs(&[
        (
            "allow-origins",
            &l(&[
                "https://doctor.procare.health",
                "https://*.procare.health",
                "http://127.0.0.1:8080",
                "http://[::1]:3000",
            ]),
        ),
        ("allow-methods", &l(&["GET", "PUT"])),
        ("allow-headers", &l(&["Authorization", "X-Trace"])),
        ("expose-headers", &l(&["X-Request-Id"])),
        ("allow-credentials", "true"),
        ("preflight-max-age", "86400"),
        ("hsts", "true"),
        ("hsts-max-age", "31536000"),
        ("hsts-include-subdomains", "true"),
        ("hsts-preload", "true"),
        ("nosniff", "false"),
        ("frame-options", "SAMEORIGIN"),
        (
            "referrer-policy",
            "no-referrer, strict-origin-when-cross-origin",
        ),
        ("permissions-policy", "camera=(self)"),
        (
            "content-security-policy",
            "default-src 'self'; img-src 'self' data:",
        ),
        ("remove-headers", &l(&["Server", "X-AspNet-Version"])),
        ("redirect-https", "true"),
    ]);
    let c = parse(&p).unwrap();
    assert_eq!(c.origins.len(), 4);
    assert_eq!(c.methods, ["GET", "PUT"]);
    assert_eq!(c.headers, ["authorization", "x-trace"]);
    assert_eq!(c.expose, ["X-Request-Id"]);
    assert!(c.credentials && c.hsts_preload && !c.nosniff && c.redirect_https);
    assert_eq!((c.preflight_max_age, c.hsts_max_age), (86_400, 31_536_000));
    assert_eq!(c.frame_options, "SAMEORIGIN");
    assert_eq!(c.permissions_policy, "camera=(self)");
    assert_eq!(c.remove, ["server", "x-aspnet-version"]);
    // Empty strings turn headers off.
    let c = cfg(pairs(&[
        ("frame-options", ""),
        ("referrer-policy", ""),
        ("permissions-policy", ""),
    ]));
    assert_eq!(
        (c.frame_options, c.referrer_policy, c.permissions_policy),
        ("", "", "")
    );
    // An empty list is allowed: nothing removed, CORS off.
    let c = cfg(pairs(&[("remove-headers", ""), ("allow-origins", "")]));
    assert!(c.remove.is_empty() && !c.cors());
}

#[test]
fn a_wildcard_origin_with_credentials_is_refused_naming_the_setting() {
    let p = pairs(&[("allow-origins", "*"), ("allow-credentials", "true")]);
    let e = parse(&p).unwrap_err();
    assert!(
        e.starts_with(
            "setting \"allow-origins\": \"*\" cannot be combined with allow-credentials = true"
        ),
        "{e}"
    );
    assert!(e.ends_with("list the origins instead"), "{e}");
    // The same without credentials is fine.
    assert!(parse(&pairs(&[("allow-origins", "*")])).is_ok());
    for (key, value) in [
        ("allow-methods", "*"),
        ("allow-headers", "x-a,*"),
        ("expose-headers", "*"),
    ] {
        let mut p = procare();
        p.push((key.into(), value.into()));
        let e = parse(&p).unwrap_err();
        assert!(
            e.starts_with(&format!(
                "setting \"{key}\": \"*\" cannot be combined with allow-credentials = true"
            )),
            "{e}"
        );
    }
}

#[test]
fn refuses_bad_origins() {
    for bad in [
        "https://doctor.procare.health/",
        "https://doctor.procare.health/app",
        "https://Doctor.procare.health",
        "HTTPS://doctor.procare.health",
        "doctor.procare.health",
        "https://",
        "https://*",
        "https://*.",
        "https://a.*.procare.health",
        "https://*procare.health",
        "https://user@doctor.procare.health",
        "https://doctor.procare.health:0",
        "https://doctor.procare.health:65536",
        "https://doctor.procare.health:x",
        "https://doctor.procare.health?x",
        "https://doc tor.procare.health",
        "https://a..b",
        "https://[::G]",
    ] {
        assert!(check_origin(bad).is_err(), "{bad}");
    }
    assert_eq!(
        check_origin("https://doctor.procare.health:443"),
        Err("browsers never send the scheme's default port in an origin: drop the port")
    );
    assert!(check_origin("http://a.test:80").is_err());
    assert!(check_origin("http://a.test:443").is_ok());
    assert!(
        check_origin("null")
            .unwrap_err()
            .contains("\"null\" origin")
    );
    assert!(
        check_origin("https://*.health")
            .unwrap_err()
            .contains("registrable domain")
    );
    for good in [
        "https://a.test",
        "http://127.0.0.1:3000",
        "http://[::1]:3000",
        "https://*.procare.health",
        "app+x://a.test",
        "http://localhost",
    ] {
        assert_eq!(check_origin(good), Ok(()), "{good}");
    }
    let e = parse(&pairs(&[(
        "allow-origins",
        "https://ok.test,https://bad.test/",
    )]))
    .unwrap_err();
    assert!(
        e.starts_with("setting \"allow-origins\": expected an origin like https://app.example.org"),
        "{e}"
    );
    assert!(e.ends_with(", got \"https://bad.test/\""), "{e}");
    let e = parse(&pairs(&[("allow-origins", "*,https://a.test")])).unwrap_err();
    assert_eq!(
        e,
        "setting \"allow-origins\": \"*\" (any origin) must be the only entry when present"
    );
}

#[test]
fn refuses_bad_values_naming_the_setting() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "allow-credentials",
            "yes",
            r#"setting "allow-credentials": expected true or false, got "yes""#,
        ),
        (
            "hsts",
            "1",
            r#"setting "hsts": expected true or false, got "1""#,
        ),
        (
            "redirect-https",
            "TRUE",
            r#"setting "redirect-https": expected true or false, got "TRUE""#,
        ),
        (
            "preflight-max-age",
            "86401",
            r#"setting "preflight-max-age": expected a whole number of seconds, at most 86400, got "86401""#,
        ),
        (
            "preflight-max-age",
            "-1",
            r#"setting "preflight-max-age": expected a whole number of seconds, at most 86400, got "-1""#,
        ),
        (
            "hsts-max-age",
            "2y",
            r#"setting "hsts-max-age": expected a whole number of seconds, at most 18446744073709551615, got "2y""#,
        ),
        (
            "allow-methods",
            "get",
            r#"setting "allow-methods": expected upper-case method names or "*", got "get""#,
        ),
        (
            "allow-headers",
            "x a",
            r#"setting "allow-headers": expected header names or "*", got "x a""#,
        ),
        (
            "expose-headers",
            "x:a",
            r#"setting "expose-headers": expected header names or "*", got "x:a""#,
        ),
        (
            "remove-headers",
            "*",
            r#"setting "remove-headers": expected header names, got "*""#,
        ),
        (
            "remove-headers",
            "server,Content-Length",
            r#"setting "remove-headers": framing and content headers cannot be removed, got "content-length""#,
        ),
        (
            "frame-options",
            "deny",
            r#"setting "frame-options": expected DENY, SAMEORIGIN or "" (not sent), got "deny""#,
        ),
        (
            "frame-options",
            "ALLOW-FROM https://a.test",
            r#"setting "frame-options": expected DENY, SAMEORIGIN or "" (not sent), got "ALLOW-FROM https://a.test""#,
        ),
        (
            "content-security-policy",
            "default-src 'self'\r\nx-evil: 1",
            r#"setting "content-security-policy": expected a header value without control characters, got "default-src 'self'\r\nx-evil: 1""#,
        ),
        (
            "permissions-policy",
            " camera=()",
            r#"setting "permissions-policy": expected a header value without leading or trailing spaces, got " camera=()""#,
        ),
        (
            "x-frame-options",
            "DENY",
            r#"setting "x-frame-options": not a setting; use "frame-options""#,
        ),
    ];
    for (key, value, want) in cases {
        assert_eq!(parse(&pairs(&[(key, value)])).unwrap_err(), *want, "{key}");
    }
    let e = parse(&pairs(&[("referrer-policy", "strict-origin, nope")])).unwrap_err();
    assert!(
        e.starts_with("setting \"referrer-policy\": expected a referrer policy (no-referrer, "),
        "{e}"
    );
    let e = parse(&pairs(&[("allow-origin", "https://a.test")])).unwrap_err();
    assert!(
        e.starts_with(
            "setting \"allow-origin\": unknown setting (known: allow-origins, allow-methods,"
        ),
        "{e}"
    );
    assert!(e.ends_with("remove-headers, redirect-https)"), "{e}");
    // Nested tables flatten to dotted keys: unknown too.
    assert!(
        parse(&pairs(&[("cors.allow-origins", "https://a.test")]))
            .unwrap_err()
            .contains("unknown setting")
    );
}

#[test]
fn hsts_preload_needs_subdomains_and_a_year() {
    let e = parse(&pairs(&[
        ("hsts-preload", "true"),
        ("hsts-include-subdomains", "false"),
    ]))
    .unwrap_err();
    assert_eq!(
        e,
        "setting \"hsts-preload\": preload requires hsts-include-subdomains = true"
    );
    let e = parse(&pairs(&[
        ("hsts-preload", "true"),
        ("hsts-max-age", "86400"),
    ]))
    .unwrap_err();
    assert_eq!(
        e,
        "setting \"hsts-preload\": preload requires hsts-max-age of at least 31536000 (one year)"
    );
    assert!(cfg(pairs(&[("hsts-preload", "true")])).hsts_preload);
}

#[test]
fn every_known_setting_is_documented() {
    let doc = include_str!("lib.rs");
    for key in &config::KNOWN[..17] {
        assert!(
            doc.contains(&format!("//! | `{key}` |")),
            "{key} is not in the settings table"
        );
    }
}

// ---------------------------------------------------------------------------
// Preflights.

#[test]
fn an_allowed_preflight_is_answered_204_with_exact_headers() {
    let p = procare();
    let c = parse(&p).unwrap();
    let r = preflight_req(
        "https://doctor.procare.health",
        "PUT",
        Some("content-type,authorization"),
    );
    let (reply, why) = answered(decide(&c, &r));
    assert_eq!(why, None);
    assert_eq!(reply.status, 204);
    assert!(reply.body.is_empty());
    assert_eq!(
        names(&reply.headers),
        [
            "access-control-allow-origin",
            "access-control-allow-credentials",
            "access-control-allow-methods",
            "access-control-allow-headers",
            "access-control-max-age",
            "vary"
        ]
    );
    let h = &reply.headers;
    assert_eq!(
        hdr(h, "access-control-allow-origin"),
        Some("https://doctor.procare.health")
    );
    assert_eq!(hdr(h, "access-control-allow-credentials"), Some("true"));
    assert_eq!(
        hdr(h, "access-control-allow-methods"),
        Some("GET, POST, PUT")
    );
    assert_eq!(
        hdr(h, "access-control-allow-headers"),
        Some("authorization, content-type, x-request-id")
    );
    assert_eq!(hdr(h, "access-control-max-age"), Some("7200"));
    assert_eq!(
        hdr(h, "vary"),
        Some("origin, access-control-request-method, access-control-request-headers")
    );
}

#[test]
fn requested_headers_are_compared_case_insensitively() {
    let c = cfg(procare());
    let r = preflight_req(
        "https://caregiver.procare.health",
        "POST",
        Some(" Content-Type ,\tX-REQUEST-ID,, "),
    );
    assert_eq!(requested_headers(&r), ["content-type", "x-request-id"]);
    assert_eq!(answered(decide(&c, &r)).0.status, 204);
    // No requested headers at all is fine too.
    let r = preflight_req("https://caregiver.procare.health", "GET", None);
    assert_eq!(answered(decide(&c, &r)).0.status, 204);
}

#[test]
fn a_disallowed_preflight_is_refused_403_without_cors_headers() {
    let c = cfg(procare());
    let cases = [
        (
            preflight_req("https://evil.test", "GET", None),
            Refusal::Origin,
            r#"CORS preflight refused: origin \"https://evil.test\" is not allowed"#,
        ),
        (
            preflight_req("https://procare.health", "GET", None),
            Refusal::Origin,
            "origin",
        ),
        (
            preflight_req("https://doctor.procare.health", "DELETE", None),
            Refusal::Method,
            r#"CORS preflight refused: method \"DELETE\" is not allowed"#,
        ),
        (
            preflight_req("https://doctor.procare.health", "put", None),
            Refusal::Method,
            "method",
        ),
        (
            preflight_req(
                "https://doctor.procare.health",
                "PUT",
                Some("content-type, x-patient-id"),
            ),
            Refusal::Header("x-patient-id".into()),
            r#"CORS preflight refused: request header \"x-patient-id\" is not allowed"#,
        ),
        (
            req(
                "OPTIONS",
                "https",
                &[("access-control-request-method", "GET")],
            ),
            Refusal::Origin,
            "the request has no Origin",
        ),
    ];
    for (r, refusal, detail) in cases {
        let (reply, why) = answered(decide(&c, &r));
        assert_eq!(why.as_ref(), Some(&refusal));
        assert_eq!(reply.status, 403);
        assert_eq!(
            hdr(&reply.headers, "content-type"),
            Some("application/problem+json")
        );
        assert!(
            reply
                .headers
                .iter()
                .all(|h| !h.name.starts_with("access-control-")),
            "{:?}",
            names(&reply.headers)
        );
        let body = String::from_utf8(reply.body).unwrap();
        assert!(body.contains(detail), "{body}");
        assert!(body.contains("\"status\":403"), "{body}");
    }
    assert_eq!(Refusal::Header("x".into()).slug(), "header");
}

#[test]
fn wildcards_without_credentials() {
    let p = pairs(&[
        ("allow-origins", "*"),
        ("allow-methods", "*"),
        ("allow-headers", "*,authorization-x"),
    ]);
    let c = parse(&p).unwrap();
    let r = preflight_req("https://anyone.test", "PATCH", Some("x-a, x-b"));
    let (reply, why) = answered(decide(&c, &r));
    assert_eq!(why, None);
    let h = &reply.headers;
    assert_eq!(hdr(h, "access-control-allow-origin"), Some("*"));
    assert_eq!(hdr(h, "access-control-allow-methods"), Some("PATCH"));
    assert_eq!(hdr(h, "access-control-allow-headers"), Some("x-a, x-b"));
    assert_eq!(hdr(h, "access-control-allow-credentials"), None);
    assert_eq!(
        hdr(h, "vary"),
        Some("access-control-request-method, access-control-request-headers")
    );
    // `*` never covers authorization (as in the Fetch standard).
    let r = preflight_req("https://anyone.test", "GET", Some("authorization"));
    assert_eq!(
        answered(decide(&c, &r)).1,
        Some(Refusal::Header("authorization".into()))
    );
    let p = pairs(&[("allow-origins", "*"), ("allow-headers", "*,Authorization")]);
    assert_eq!(answered(decide(&parse(&p).unwrap(), &r)).1, None);
}

#[test]
fn preflights_are_recognised_only_with_cors_on() {
    let c = cfg(procare());
    // OPTIONS without access-control-request-method is an actual request.
    let r = req(
        "OPTIONS",
        "https",
        &[("origin", "https://doctor.procare.health")],
    );
    assert!(preflight_method(&r).is_none());
    assert!(matches!(decide(&c, &r), Decision::Proceed));
    // A GET is never a preflight.
    let r = req(
        "GET",
        "https",
        &[
            ("origin", "https://doctor.procare.health"),
            ("access-control-request-method", "PUT"),
        ],
    );
    assert!(matches!(decide(&c, &r), Decision::Proceed));
    // CORS off: preflights go to the upstream.
    let off = parse(&[]).unwrap();
    assert!(matches!(
        decide(&off, &preflight_req("https://a.test", "GET", None)),
        Decision::Proceed
    ));
}

// ---------------------------------------------------------------------------
// Redirect.

#[test]
fn redirects_plain_http_to_https_when_configured() {
    let p = pairs(&[("redirect-https", "true")]);
    let c = parse(&p).unwrap();
    let Decision::Redirect(reply) = decide(&c, &req("POST", "http", &[])) else {
        panic!()
    };
    assert_eq!(reply.status, 308);
    assert_eq!(
        hdr(&reply.headers, "location"),
        Some("https://api.procare.health/api/clinical/vitals?patient=42")
    );
    let mut r = req("GET", "http", &[]);
    r.query = None;
    r.authority = "localhost:8080".into();
    let Decision::Redirect(reply) = decide(&c, &r) else {
        panic!()
    };
    assert_eq!(
        hdr(&reply.headers, "location"),
        Some("https://localhost:8080/api/clinical/vitals")
    );
    assert!(matches!(
        decide(&c, &req("GET", "https", &[])),
        Decision::Proceed
    ));
    assert!(matches!(
        decide(&parse(&[]).unwrap(), &req("GET", "http", &[])),
        Decision::Proceed
    ));
    // The redirect comes before CORS: browsers must not preflight plain http.
    let mut p = procare();
    p.push(("redirect-https".into(), "true".into()));
    let mut r = preflight_req("https://doctor.procare.health", "PUT", None);
    r.scheme = "http".into();
    assert!(matches!(
        decide(&parse(&p).unwrap(), &r),
        Decision::Redirect(_)
    ));
}

// ---------------------------------------------------------------------------
// on-response.

#[test]
fn security_headers_land_on_every_answer_and_hsts_only_on_https() {
    let p = pairs(&[
        (
            "content-security-policy",
            "default-src 'self'; frame-ancestors 'none'",
        ),
        ("hsts-preload", "true"),
    ]);
    let c = parse(&p).unwrap();
    let upstream = [
        Header::new("server", "nginx/1.25"),
        Header::new("x-powered-by", "Express"),
    ];
    let e = response_edits(&c, &req("GET", "https", &[]), &upstream);
    assert_eq!(e.remove_headers, ["server", "x-powered-by"]);
    assert_eq!(
        set(&e, "strict-transport-security"),
        Some("max-age=63072000; includeSubDomains; preload")
    );
    assert_eq!(set(&e, "x-content-type-options"), Some("nosniff"));
    assert_eq!(set(&e, "x-frame-options"), Some("DENY"));
    assert_eq!(
        set(&e, "referrer-policy"),
        Some("strict-origin-when-cross-origin")
    );
    assert_eq!(
        set(&e, "permissions-policy"),
        Some(config::DEFAULT_PERMISSIONS_POLICY)
    );
    assert_eq!(
        set(&e, "content-security-policy"),
        Some("default-src 'self'; frame-ancestors 'none'")
    );
    // CORS off: no CORS header, no vary.
    assert!(
        e.set_headers
            .iter()
            .all(|h| !h.name.starts_with("access-control-") && h.name != "vary")
    );

    let e = response_edits(&c, &req("GET", "http", &[]), &[]);
    assert_eq!(set(&e, "strict-transport-security"), None);
    assert_eq!(set(&e, "x-content-type-options"), Some("nosniff"));

    let p = pairs(&[
        ("hsts-max-age", "300"),
        ("hsts-include-subdomains", "false"),
        ("nosniff", "false"),
        ("frame-options", ""),
        ("referrer-policy", "no-referrer"),
        ("remove-headers", "x-envoy-upstream-service-time"),
    ]);
    let e = response_edits(&parse(&p).unwrap(), &req("GET", "https", &[]), &[]);
    assert_eq!(set(&e, "strict-transport-security"), Some("max-age=300"));
    assert_eq!(set(&e, "x-content-type-options"), None);
    assert_eq!(set(&e, "x-frame-options"), None);
    assert_eq!(set(&e, "content-security-policy"), None);
    assert_eq!(set(&e, "referrer-policy"), Some("no-referrer"));
    assert_eq!(e.remove_headers, ["x-envoy-upstream-service-time"]);
    let e = response_edits(
        &cfg(pairs(&[("hsts", "false")])),
        &req("GET", "https", &[]),
        &[],
    );
    assert_eq!(set(&e, "strict-transport-security"), None);
}

#[test]
fn an_allowed_origin_gets_cors_headers_on_the_actual_response() {
    let c = cfg(procare());
    let r = req(
        "GET",
        "https",
        &[("origin", "https://doctor.procare.health")],
    );
    let upstream = [
        Header::new("vary", "Accept-Encoding"),
        Header::new("access-control-allow-origin", "*"),
    ];
    let e = response_edits(&c, &r, &upstream);
    assert_eq!(
        set(&e, "access-control-allow-origin"),
        Some("https://doctor.procare.health")
    );
    assert_eq!(set(&e, "access-control-allow-credentials"), Some("true"));
    assert_eq!(
        set(&e, "access-control-expose-headers"),
        Some("x-request-id, ratelimit")
    );
    assert_eq!(set(&e, "vary"), Some("Accept-Encoding, origin"));
    // The upstream's own CORS answer is removed (then replaced).
    assert!(
        e.remove_headers
            .iter()
            .any(|h| h == "access-control-allow-origin")
    );
    // Only for the answer to a preflight: no methods, headers or max-age.
    assert_eq!(set(&e, "access-control-allow-methods"), None);
    assert_eq!(set(&e, "access-control-max-age"), None);
}

#[test]
fn a_disallowed_or_missing_origin_gets_no_cors_headers_but_vary() {
    let c = cfg(procare());
    for r in [
        req("GET", "https", &[("origin", "https://evil.test")]),
        req("GET", "https", &[("origin", "null")]),
        req("GET", "https", &[]),
    ] {
        let e = response_edits(&c, &r, &[Header::new("access-control-allow-origin", "*")]);
        assert!(
            e.set_headers
                .iter()
                .all(|h| !h.name.starts_with("access-control-"))
        );
        assert!(
            e.remove_headers
                .iter()
                .any(|h| h == "access-control-allow-origin"),
            "the upstream's `*` must not leak"
        );
        assert_eq!(set(&e, "vary"), Some("origin"));
    }
}

#[test]
fn the_answer_to_a_preflight_gets_no_cors_edits() {
    // The policy's own 204 / 403 already says everything.
    let c = cfg(procare());
    let r = preflight_req("https://doctor.procare.health", "PUT", None);
    let e = response_edits(
        &c,
        &r,
        &[Header::new("vary", "origin, access-control-request-method")],
    );
    assert!(
        e.set_headers
            .iter()
            .all(|h| !h.name.starts_with("access-control-") && h.name != "vary")
    );
    assert!(
        e.remove_headers
            .iter()
            .all(|h| !h.starts_with("access-control-"))
    );
    assert_eq!(
        set(&e, "strict-transport-security"),
        Some("max-age=63072000; includeSubDomains")
    );
}

#[test]
fn any_origin_answers_star_without_vary() {
    let c = cfg(pairs(&[("allow-origins", "*"), ("expose-headers", "*")]));
    for r in [
        req("GET", "https", &[("origin", "https://x.test")]),
        req("GET", "https", &[]),
    ] {
        let e = response_edits(&c, &r, &[]);
        assert_eq!(set(&e, "access-control-allow-origin"), Some("*"));
        assert_eq!(set(&e, "access-control-expose-headers"), Some("*"));
        assert_eq!(set(&e, "access-control-allow-credentials"), None);
        assert_eq!(set(&e, "vary"), None);
    }
}

#[test]
fn vary_is_merged_not_clobbered() {
    let v = |hs: &[&str]| {
        let headers: Vec<Header> = hs.iter().map(|v| Header::new("vary", *v)).collect();
        merge_vary(&headers, "origin").map(|b| String::from_utf8(b).unwrap())
    };
    assert_eq!(v(&[]).as_deref(), Some("origin"));
    assert_eq!(
        v(&["accept-encoding"]).as_deref(),
        Some("accept-encoding, origin")
    );
    assert_eq!(
        v(&["Accept-Encoding, Accept-Language", "Cookie"]).as_deref(),
        Some("Accept-Encoding, Accept-Language, Cookie, origin")
    );
    assert_eq!(v(&["accept, ,Accept ,"]).as_deref(), Some("accept, origin"));
    assert_eq!(v(&["Accept", "Origin"]), None);
    assert_eq!(v(&["accept,ORIGIN"]), None);
    assert_eq!(v(&["*"]), None);
    assert_eq!(v(&["accept", "*"]), None);
    // Other headers are not looked at.
    let h = [
        Header::new("x-vary", "origin"),
        Header::new("Vary", "accept"),
    ];
    assert_eq!(merge_vary(&h, "origin"), Some(b"accept, origin".to_vec()));
}
