extern crate std;

use crate::table::{check, field, prefix_matches, preflight_method, route, strip_port};
use alloc::borrow::Cow;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use alloc::{format, vec};
use portcullis_sdk::{Header, RequestHead, Verdict, find_header, list};

/// The host's field encoding.
fn enc(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\t', "%09")
        .replace('\n', "%0A")
}

struct R<'a> {
    name: &'a str,
    hosts: &'a [&'a str],
    exact: bool,
    path: &'a str,
    methods: &'a [&'a str],
    pools: &'a [&'a str],
    facts: &'a [&'a str],
}

const fn r<'a>(name: &'a str, hosts: &'a [&'a str], path: &'a str) -> R<'a> {
    R {
        name,
        hosts,
        exact: false,
        path,
        methods: &[],
        pools: &["default"],
        facts: &[],
    }
}

impl<'a> R<'a> {
    const fn exact(mut self) -> Self {
        self.exact = true;
        self
    }
    const fn methods(mut self, m: &'a [&'a str]) -> Self {
        self.methods = m;
        self
    }
    const fn pools(mut self, p: &'a [&'a str]) -> Self {
        self.pools = p;
        self
    }
    const fn facts(mut self, f: &'a [&'a str]) -> Self {
        self.facts = f;
        self
    }
    fn line(&self) -> String {
        [
            enc(self.name),
            enc(&list::encode(self.hosts)),
            enc(if self.exact { "exact" } else { "prefix" }),
            enc(self.path),
            enc(&list::encode(self.methods)),
            enc(&list::encode(self.pools)),
            enc(&list::encode(self.facts)),
        ]
        .join("\t")
    }
}

fn table(routes: &[R<'_>]) -> String {
    routes.iter().map(R::line).collect::<Vec<_>>().join("\n")
}

fn req(method: &str, authority: &str, path: &str) -> RequestHead {
    RequestHead {
        id: "req-1".to_string(),
        method: method.to_string(),
        scheme: "https".to_string(),
        authority: authority.to_string(),
        path: path.to_string(),
        query: Some("a=1".to_string()),
        headers: vec![],
        client_ip: "192.0.2.7".to_string(),
        listener: "public".to_string(),
        route: None,
        facts: vec![],
    }
}

#[derive(Debug, PartialEq)]
enum Out {
    Routed(Vec<(String, String)>),
    Answer {
        status: u16,
        allow: Option<String>,
        body: String,
    },
}

fn run(t: &str, method: &str, authority: &str, path: &str) -> Out {
    run_req(t, &req(method, authority, path))
}

fn run_req(t: &str, r: &RequestHead) -> Out {
    match route(t, r) {
        Verdict::Proceed(e) => {
            assert!(
                e.set_headers.is_empty()
                    && e.remove_headers.is_empty()
                    && e.response_headers.is_empty()
            );
            Out::Routed(e.facts)
        }
        Verdict::Respond(reply) => {
            assert_eq!(
                find_header(&reply.headers, "content-type"),
                Some(&b"application/problem+json"[..])
            );
            Out::Answer {
                status: reply.status,
                allow: find_header(&reply.headers, "allow")
                    .map(|v| String::from_utf8(v.to_vec()).unwrap()),
                body: String::from_utf8(reply.body).unwrap(),
            }
        }
    }
}

/// The name of the route chosen, or the status answered.
fn pick(t: &str, method: &str, authority: &str, path: &str) -> Result<String, u16> {
    match run(t, method, authority, path) {
        Out::Routed(facts) => {
            assert_eq!(facts[0].0, "route.name");
            Ok(facts[0].1.clone())
        }
        Out::Answer { status, .. } => Err(status),
    }
}

#[test]
fn prefixes_match_at_segment_boundaries() {
    let t = table(&[r("clinical", &[], "/api/clinical")]);
    for p in [
        "/api/clinical",
        "/api/clinical/",
        "/api/clinical/x",
        "/api/clinical/x/y",
    ] {
        assert_eq!(
            pick(&t, "GET", "a.example", p),
            Ok("clinical".into()),
            "{p}"
        );
    }
    for p in [
        "/api/clinicalx",
        "/api/clinica",
        "/api",
        "/",
        "/API/clinical",
    ] {
        assert_eq!(pick(&t, "GET", "a.example", p), Err(404), "{p}");
    }
    assert!(prefix_matches("/a/", "/a/b"));
    assert!(prefix_matches("/a/", "/a/"));
    assert!(!prefix_matches("/a/", "/a"));
    assert!(prefix_matches("/a/b", "/a/b"));
    assert!(prefix_matches("/", "/anything"));
    assert!(!prefix_matches("/a", "/ab"));
}

#[test]
fn trailing_slash_and_root_prefixes() {
    let t = table(&[r("static", &[], "/static/"), r("root", &[], "/")]);
    assert_eq!(pick(&t, "GET", "h", "/static/app.js"), Ok("static".into()));
    assert_eq!(pick(&t, "GET", "h", "/static/"), Ok("static".into()));
    assert_eq!(pick(&t, "GET", "h", "/static"), Ok("root".into()));
    assert_eq!(pick(&t, "GET", "h", "/staticx"), Ok("root".into()));
    assert_eq!(pick(&t, "GET", "h", "/"), Ok("root".into()));
}

#[test]
fn exact_beats_prefix_and_longer_prefix_beats_shorter() {
    let t = table(&[
        r("root", &[], "/"),
        r("api", &[], "/api"),
        r("api-v1", &[], "/api/v1"),
        r("health", &[], "/api/v1/health").exact(),
        r("health-prefix", &[], "/api/v1/health"),
    ]);
    assert_eq!(pick(&t, "GET", "h", "/api/v1/health"), Ok("health".into()));
    assert_eq!(
        pick(&t, "GET", "h", "/api/v1/health/deep"),
        Ok("health-prefix".into())
    );
    assert_eq!(pick(&t, "GET", "h", "/api/v1/x"), Ok("api-v1".into()));
    assert_eq!(pick(&t, "GET", "h", "/api/v2"), Ok("api".into()));
    assert_eq!(pick(&t, "GET", "h", "/other"), Ok("root".into()));
}

#[test]
fn exact_paths_match_exactly() {
    let t = table(&[r("login", &[], "/login").exact()]);
    assert_eq!(pick(&t, "POST", "h", "/login"), Ok("login".into()));
    assert_eq!(pick(&t, "POST", "h", "/login/"), Err(404));
    assert_eq!(pick(&t, "POST", "h", "/login/x"), Err(404));
}

#[test]
fn host_classes_rank_before_paths() {
    let t = table(&[
        r("any-long", &[], "/a/b/c"),
        r("wild", &["*.example.org"], "/a"),
        r("exact-host", &["api.example.org"], "/"),
    ]);
    // An exact host beats a wildcard, which beats any host, whatever the path.
    assert_eq!(
        pick(&t, "GET", "api.example.org", "/a/b/c"),
        Ok("exact-host".into())
    );
    assert_eq!(
        pick(&t, "GET", "www.example.org", "/a/b/c"),
        Ok("wild".into())
    );
    assert_eq!(
        pick(&t, "GET", "other.test", "/a/b/c"),
        Ok("any-long".into())
    );
    assert_eq!(pick(&t, "GET", "other.test", "/a"), Err(404));
}

#[test]
fn wildcards_match_subdomains_not_the_apex() {
    let t = table(&[r("wild", &["*.example.org"], "/")]);
    assert_eq!(pick(&t, "GET", "a.example.org", "/"), Ok("wild".into()));
    assert_eq!(pick(&t, "GET", "a.b.example.org", "/"), Ok("wild".into()));
    assert_eq!(pick(&t, "GET", "example.org", "/"), Err(404));
    assert_eq!(pick(&t, "GET", "badexample.org", "/"), Err(404));
    assert_eq!(pick(&t, "GET", ".example.org", "/"), Err(404));
}

#[test]
fn hosts_lists_and_ports() {
    let t = table(&[r("multi", &["a.test", "b.test"], "/")]);
    assert_eq!(pick(&t, "GET", "a.test", "/"), Ok("multi".into()));
    assert_eq!(pick(&t, "GET", "b.test:8443", "/"), Ok("multi".into()));
    assert_eq!(pick(&t, "GET", "B.TEST", "/"), Ok("multi".into()));
    assert_eq!(pick(&t, "GET", "c.test", "/"), Err(404));
    assert_eq!(strip_port("a.test:80"), "a.test");
    assert_eq!(strip_port("a.test"), "a.test");
    assert_eq!(strip_port("[::1]:80"), "[::1]");
    assert_eq!(strip_port("[::1]"), "[::1]");
    assert_eq!(strip_port("::1"), "::1");
    let v6 = table(&[r("v6", &["[::1]"], "/")]);
    assert_eq!(pick(&v6, "GET", "[::1]:8080", "/"), Ok("v6".into()));
}

#[test]
fn ties_go_to_the_first_route() {
    let t = table(&[
        r("first", &[], "/a"),
        r("second", &[], "/a"),
        r("third", &["h"], "/b"),
        r("fourth", &["h"], "/b"),
    ]);
    assert_eq!(pick(&t, "GET", "h", "/a"), Ok("first".into()));
    assert_eq!(pick(&t, "GET", "h", "/b"), Ok("third".into()));
}

#[test]
fn methods_filter_and_405_lists_allowed() {
    let t = table(&[
        r("read", &[], "/api").methods(&["GET", "HEAD"]),
        r("write", &[], "/api").methods(&["POST", "GET"]),
        r("other", &[], "/other").methods(&["PUT"]),
    ]);
    assert_eq!(pick(&t, "GET", "h", "/api/x"), Ok("read".into()));
    assert_eq!(pick(&t, "POST", "h", "/api/x"), Ok("write".into()));
    match run(&t, "DELETE", "h", "/api/x") {
        Out::Answer {
            status: 405,
            allow,
            body,
        } => {
            assert_eq!(allow.as_deref(), Some("GET, HEAD, POST"));
            assert_eq!(
                body,
                r#"{"type":"about:blank","title":"Method not allowed","status":405,"detail":"method DELETE is not allowed for /api/x"}"#
            );
        }
        o => panic!("{o:?}"),
    }
    // Methods are case-sensitive, as the head gives them upper-case.
    assert_eq!(pick(&t, "get", "h", "/api"), Err(405));
    assert_eq!(pick(&t, "PUT", "h", "/nothing"), Err(404));
}

#[test]
fn a_less_specific_route_that_allows_the_method_wins_over_405() {
    let t = table(&[
        r("catch-all", &[], "/"),
        r("read-only", &[], "/docs").methods(&["GET"]),
        r("host-read-only", &["h.test"], "/").methods(&["GET"]),
    ]);
    assert_eq!(pick(&t, "GET", "x.test", "/docs/a"), Ok("read-only".into()));
    assert_eq!(
        pick(&t, "POST", "x.test", "/docs/a"),
        Ok("catch-all".into())
    );
    assert_eq!(
        pick(&t, "GET", "h.test", "/docs/a"),
        Ok("host-read-only".into())
    );
    assert_eq!(
        pick(&t, "POST", "h.test", "/docs/a"),
        Ok("catch-all".into())
    );
}

#[test]
fn not_found_names_method_and_path_only() {
    let t = table(&[r("a", &["a.test"], "/a")]);
    match run(&t, "GET", "b.test", "/x\"y") {
        Out::Answer {
            status: 404,
            allow: None,
            body,
        } => assert_eq!(
            body,
            r#"{"type":"about:blank","title":"No route","status":404,"detail":"no route for GET /x\"y"}"#
        ),
        o => panic!("{o:?}"),
    }
    // An empty table routes nothing.
    assert_eq!(pick("", "GET", "h", "/"), Err(404));
}

#[test]
fn the_query_is_not_part_of_the_path() {
    let t = table(&[r("exact", &[], "/search").exact()]);
    assert_eq!(pick(&t, "GET", "h", "/search"), Ok("exact".into()));
    // Defensive: a path that still carries a query.
    assert_eq!(pick(&t, "GET", "h", "/search?q=1"), Ok("exact".into()));
}

#[test]
fn writes_name_pools_and_route_facts() {
    let t = table(&[r("clinical", &[], "/api")
        .pools(&["emr-primary", "emr,secondary"])
        .facts(&["tier=gold", "expr=a=b", "odd=50%,x", "tab=a\tb"])]);
    let Out::Routed(facts) = run(&t, "GET", "h", "/api") else {
        panic!()
    };
    let facts: Vec<(&str, &str)> = facts
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        facts,
        [
            ("route.name", "clinical"),
            ("route.pools", "emr-primary,emr%2Csecondary"),
            ("route.tier", "gold"),
            ("route.expr", "a=b"),
            ("route.odd", "50%,x"),
            ("route.tab", "a\tb"),
        ]
    );
    assert_eq!(list::decode(facts[1].1), ["emr-primary", "emr,secondary"]);
}

#[test]
fn escaped_fields_are_decoded() {
    let t = table(&[r("tab\tname%", &["*.ex.test"], "/caf%C3%A9").methods(&["GET"])]);
    assert!(t.contains("tab%09name%25") && t.contains("/caf%25C3%25A9"));
    assert_eq!(
        pick(&t, "GET", "a.ex.test", "/caf%C3%A9/menu"),
        Ok("tab\tname%".into())
    );
    assert_eq!(pick(&t, "GET", "a.ex.test", "/café"), Err(404));
    assert_eq!(
        field("a%0Ab%0a%09%25"),
        Some(Cow::Owned("a\nb\n\t%".into()))
    );
    assert_eq!(field("plain"), Some(Cow::Borrowed("plain")));
    assert_eq!(field("bad%2C"), None);
    assert_eq!(field("bad%"), None);
    assert_eq!(field("bad%0"), None);
}

#[test]
fn blank_lines_are_skipped_and_malformed_lines_ignored_when_routing() {
    let t = format!(
        "\n{}\nnot\ta\troute\n\n{}\n",
        r("a", &[], "/a").line(),
        r("b", &[], "/b").line()
    );
    assert_eq!(pick(&t, "GET", "h", "/a"), Ok("a".into()));
    assert_eq!(pick(&t, "GET", "h", "/b"), Ok("b".into()));
}

// ---------------------------------------------------------------------------
// check-config

fn check_err(t: &str) -> String {
    check(t).expect_err("should be rejected")
}

#[test]
fn accepts_a_good_table() {
    let t = table(&[
        r("root", &[], "/"),
        r(
            "clinical",
            &["api.example.org", "*.clinical.example.org"],
            "/api/clinical",
        )
        .methods(&["GET", "POST"])
        .pools(&["a", "b"])
        .facts(&["tier=gold", "audit=full"]),
        r("login", &["[::1]"], "/login").exact(),
    ]);
    assert_eq!(check(&t), Ok(()));
    assert_eq!(check(&format!("{t}\n")), Ok(()));
}

#[test]
fn rejects_empty_tables() {
    assert_eq!(
        check_err(""),
        "setting \"table\": no routes (the route table is empty)"
    );
    assert_eq!(
        check_err("\n\n"),
        "setting \"table\": no routes (the route table is empty)"
    );
}

#[test]
fn rejects_bad_match_kinds_naming_route_and_field() {
    let t = r("clinical", &[], "/api")
        .line()
        .replace("\tprefix\t", "\tregex\t");
    assert_eq!(
        check_err(&t),
        r#"route "clinical": field "match": expected prefix or exact, got "regex""#
    );
}

#[test]
fn rejects_wrong_field_counts_by_line() {
    let t = format!("{}\na\tb", r("ok", &[], "/").line());
    assert_eq!(
        check_err(&t),
        "line 2: expected 7 tab-separated fields (name, hosts, match, path, methods, pools, facts), got 2"
    );
    let t = format!("{}\tx", r("ok", &[], "/").line());
    assert!(check_err(&t).ends_with("got 8"));
}

#[test]
fn rejects_duplicates_and_empty_names() {
    let t = table(&[r("a", &[], "/a"), r("b", &[], "/b"), r("a", &[], "/c")]);
    assert_eq!(
        check_err(&t),
        r#"route "a": field "name": duplicate route name (first on line 1)"#
    );
    let t = format!("{}\n{}", r("a", &[], "/a").line(), r("", &[], "/b").line());
    assert_eq!(check_err(&t), r#"line 2: field "name": must not be empty"#);
}

#[test]
fn rejects_bad_fields() {
    let cases: &[(R<'_>, &str)] = &[
        (
            r("p", &[], "api"),
            r#"route "p": field "path": expected a path starting with "/", got "api""#,
        ),
        (
            r("p", &[], ""),
            r#"route "p": field "path": expected a path starting with "/", got """#,
        ),
        (
            r("p", &[], "/a?b"),
            r#"route "p": field "path": expected a path without query, fragment, spaces or control characters, got "/a?b""#,
        ),
        (
            r("h", &["API.example.org"], "/"),
            r#"route "h": field "hosts": expected a lower-case host without port, or *.domain, got "API.example.org""#,
        ),
        (
            r("h", &["a.test:80"], "/"),
            r#"route "h": field "hosts": expected a lower-case host without port, or *.domain, got "a.test:80""#,
        ),
        (
            r("h", &["a.*.test"], "/"),
            r#"route "h": field "hosts": expected a lower-case host without port, or *.domain, got "a.*.test""#,
        ),
        (
            r("h", &["*example.org"], "/"),
            r#"route "h": field "hosts": expected a lower-case host without port, or *.domain, got "*example.org""#,
        ),
        (
            r("h", &["*."], "/"),
            r#"route "h": field "hosts": expected a lower-case host without port, or *.domain, got "*.""#,
        ),
        (
            r("h", &["a.test", ""], "/"),
            r#"route "h": field "hosts": expected a lower-case host without port, or *.domain, got """#,
        ),
        (
            r("m", &[], "/").methods(&["get"]),
            r#"route "m": field "methods": expected upper-case method names, got "get""#,
        ),
        (
            r("m", &[], "/").methods(&["GET", ""]),
            r#"route "m": field "methods": expected upper-case method names, got """#,
        ),
        (
            r("m", &[], "/").methods(&["GE T"]),
            r#"route "m": field "methods": expected upper-case method names, got "GE T""#,
        ),
        (
            r("o", &[], "/").pools(&[]),
            r#"route "o": field "pools": expected at least one pool"#,
        ),
        (
            r("o", &[], "/").pools(&["a", ""]),
            r#"route "o": field "pools": pool names must not be empty"#,
        ),
        (
            r("f", &[], "/").facts(&["tier"]),
            r#"route "f": field "facts": expected key=value, got "tier""#,
        ),
        (
            r("f", &[], "/").facts(&["=gold"]),
            r#"route "f": field "facts": expected a non-empty key without spaces, got "=gold""#,
        ),
        (
            r("f", &[], "/").facts(&["name=x"]),
            r#"route "f": field "facts": key is reserved for the router, got "name" (it writes route.name and route.pools itself)"#,
        ),
        (
            r("q\"uote", &[], "x"),
            r#"route "q\"uote": field "path": expected a path starting with "/", got "x""#,
        ),
    ];
    for (route, want) in cases {
        assert_eq!(check_err(&route.line()), *want);
    }
}

#[test]
fn rejects_bad_escapes() {
    let t = r("e", &[], "/")
        .line()
        .replace("\tdefault\t", "\tdef%2Cault\t");
    assert_eq!(
        check_err(&t),
        r#"route "e": field "pools": invalid percent-escape (only %25, %09 and %0A are allowed)"#
    );
    let t = r("e", &[], "/").line().replacen('e', "e%zz", 1);
    assert_eq!(
        check_err(&t),
        r#"line 1: field "name": invalid percent-escape (only %25, %09 and %0A are allowed)"#
    );
}

#[test]
fn reserved_fact_keys_never_override_router_facts() {
    // check-config refuses them; routing skips them anyway.
    let t = r("n", &[], "/").line() + "name=evil";
    let Out::Routed(facts) = run(&t, "GET", "h", "/") else {
        panic!()
    };
    assert_eq!(facts.len(), 2);
    assert_eq!(facts[0], ("route.name".to_string(), "n".to_string()));
}

// ---------------------------------------------------------------------------
// CORS preflights

/// An `OPTIONS` request with these headers.
fn options(path: &str, headers: &[(&str, &str)]) -> RequestHead {
    let mut r = req("OPTIONS", "h", path);
    r.headers = headers.iter().map(|(n, v)| Header::new(*n, *v)).collect();
    r
}

fn pick_req(t: &str, r: &RequestHead) -> Result<String, u16> {
    match run_req(t, r) {
        Out::Routed(facts) => Ok(facts[0].1.clone()),
        Out::Answer { status, .. } => Err(status),
    }
}

#[test]
fn a_preflight_matches_a_route_that_allows_the_requested_method() {
    let t = table(&[r("api", &[], "/api").methods(&["GET", "PUT"])]);
    let pre = |m: &str| {
        options(
            "/api/x",
            &[
                ("origin", "https://a.test"),
                ("access-control-request-method", m),
            ],
        )
    };
    assert_eq!(pick_req(&t, &pre("PUT")), Ok("api".into()));
    assert_eq!(pick_req(&t, &pre("GET")), Ok("api".into()));
    // A method the route does not allow: 405 with the route's methods, as before.
    match run_req(&t, &pre("DELETE")) {
        Out::Answer {
            status: 405, allow, ..
        } => assert_eq!(allow.as_deref(), Some("GET, PUT")),
        o => panic!("{o:?}"),
    }
    // Without access-control-request-method, OPTIONS is an ordinary method.
    assert_eq!(
        pick_req(&t, &options("/api/x", &[("origin", "https://a.test")])),
        Err(405)
    );
    assert_eq!(pick(&t, "OPTIONS", "h", "/api/x"), Err(405));
    // An empty requested method is no preflight.
    assert_eq!(pick_req(&t, &pre("")), Err(405));
    // Only OPTIONS carries a preflight: a GET with the header routes as a GET.
    let mut get = pre("PUT");
    get.method = "DELETE".into();
    assert_eq!(pick_req(&t, &get), Err(405));
    // Paths and hosts still have to match.
    assert_eq!(
        pick_req(
            &t,
            &options("/other", &[("access-control-request-method", "GET")])
        ),
        Err(404)
    );
}

#[test]
fn a_preflight_matches_routes_allowing_options_or_any_method() {
    let t = table(&[
        r("opts", &[], "/opts").methods(&["OPTIONS"]),
        r("any", &[], "/any"),
    ]);
    let pre = |p: &str| options(p, &[("access-control-request-method", "PATCH")]);
    assert_eq!(pick_req(&t, &pre("/opts")), Ok("opts".into()));
    assert_eq!(pick_req(&t, &pre("/any/x")), Ok("any".into()));
}

#[test]
fn a_preflight_lands_on_the_route_that_serves_the_actual_request() {
    let t = table(&[
        r("read", &[], "/api").methods(&["GET"]),
        r("write", &[], "/api").methods(&["POST", "PUT"]),
        r("deep-read", &[], "/api/deep").methods(&["GET"]),
    ]);
    let pre = |p: &str, m: &str| options(p, &[("Access-Control-Request-Method", m)]);
    assert_eq!(pick_req(&t, &pre("/api/x", "GET")), Ok("read".into()));
    assert_eq!(pick_req(&t, &pre("/api/x", "PUT")), Ok("write".into()));
    // The longer prefix does not allow PUT: the less specific route does.
    assert_eq!(pick_req(&t, &pre("/api/deep/x", "PUT")), Ok("write".into()));
    assert_eq!(
        pick_req(&t, &pre("/api/deep/x", "GET")),
        Ok("deep-read".into())
    );
    // Method names are case-sensitive; surrounding whitespace is ignored.
    assert_eq!(pick_req(&t, &pre("/api/x", " PUT\t")), Ok("write".into()));
    assert_eq!(pick_req(&t, &pre("/api/x", "put")), Err(405));
}

#[test]
fn reads_the_preflight_method() {
    let h = |m: &str, v: Option<&str>| {
        let mut r = req(m, "h", "/");
        r.headers = v
            .map(|v| Header::new("access-control-request-method", v))
            .into_iter()
            .collect();
        r
    };
    assert_eq!(preflight_method(&h("OPTIONS", Some("PUT"))), Some("PUT"));
    assert_eq!(
        preflight_method(&h("OPTIONS", Some("  DELETE "))),
        Some("DELETE")
    );
    assert_eq!(preflight_method(&h("OPTIONS", Some(" "))), None);
    assert_eq!(preflight_method(&h("OPTIONS", None)), None);
    assert_eq!(preflight_method(&h("GET", Some("PUT"))), None);
}

/// The word-at-a-time search for tab, newline and `%` agrees with a byte
/// loop for every start, length and position, including bytes that differ
/// from a sought one only in the high bit (which a sloppy zero-byte test
/// confuses).
#[test]
fn separator_search_agrees_with_a_byte_loop() {
    let naive = |b: &[u8], from: usize| (from..b.len()).find(|&i| matches!(b[i], b'\t' | b'\n' | b'%')).unwrap_or(b.len());
    let fillers = [b'a', 0x89, 0x8a, 0xa5, 0x08, 0x0b, 0x24, 0x00, 0xff];
    for len in 0..40 {
        for &filler in &fillers {
            for sep_at in 0..=len {
                for sep in [b'\t', b'\n', b'%'] {
                    let mut b = std::vec![filler; len];
                    if sep_at < len {
                        b[sep_at] = sep;
                    }
                    if len > 3 && sep_at + 2 < len {
                        b[sep_at + 2] = if sep == b'\n' { b'\t' } else { b'\n' };
                    }
                    for from in 0..=len {
                        assert_eq!(crate::table::next_separator(&b, from), naive(&b, from), "{b:?} from {from}");
                    }
                }
            }
        }
    }
}
