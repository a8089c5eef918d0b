//! The admin listener's `/metrics` after a known sequence of requests: the
//! request histogram by route, method and status, policy verdicts and
//! failures, the gateway's own errors, requests in flight, upstream targets,
//! reloads.
use crate::support::*;

fn config(up: &Upstream) -> String {
    format!(
        r#"
[gateway]
audit_log = "audit.jsonl"
watch = false

[admin]
address = "127.0.0.1:0"

[[listeners]]
name = "public"
address = "127.0.0.1:0"

[policies.router]
component = "builtin:router"

[policies.stamp]
component = "{TEST_POLICY}"
settings = {{ mode = "header", name = "x-stamp", value = "v1" }}

[policies.deny]
component = "{TEST_POLICY}"
settings = {{ mode = "respond", status = 429 }}

[policies.crash]
component = "{TEST_POLICY}"
settings = {{ mode = "trap" }}

[[pools]]
name = "up"
targets = ["{addr}"]

[[routes]]
name = "open"
path = "/open"
methods = ["GET", "POST"]
pools = ["up"]
chain = ["stamp"]

[[routes]]
name = "limited"
path = "/limited"
pools = ["up"]
chain = ["stamp", "deny"]

[[routes]]
name = "broken"
path = "/broken"
pools = ["up"]
chain = ["crash", "stamp"]
"#,
        addr = up.addr
    )
}

/// The value of the one sample line that starts with `series` (name and labels, exactly as exposed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_move_with_requests() {
    let up = Upstream::start("up").await;
    let gw = Gateway::start(&config(&up));

    for _ in 0..3 {
        assert_eq!(get(&gw.url("/open/a"), &[]).await.status, 200);
    }
    assert_eq!(request("POST", &gw.url("/open/b"), &[]).await.status, 200);
    assert_eq!(request("DELETE", &gw.url("/open/c"), &[]).await.status, 405);
    for _ in 0..2 {
        assert_eq!(get(&gw.url("/limited"), &[]).await.status, 429);
    }
    assert_eq!(get(&gw.url("/broken"), &[]).await.status, 500);
    assert_eq!(get(&gw.url("/nowhere"), &[]).await.status, 404);
    assert_eq!(request("BREW", &gw.url("/open/pot"), &[]).await.status, 405);

    // Completion (and so the count) follows the end of each response body.
    let mut text = String::new();
    for _ in 0..100 {
        text = String::from_utf8(gw.admin("GET", "/metrics", None).await.body.to_vec()).unwrap();
        if sample(&text, "http_requests_in_flight") == Some(0.0) && sample(&text, r#"portcullis_request_outcomes_total{outcome="ok"}"#) == Some(10.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let count = |labels: &str| sample(&text, &format!("http_request_duration_seconds_count{{{labels}}}"));
    assert_eq!(count(r#"method="GET",route="open",status_code="200""#), Some(3.0), "{text}");
    assert_eq!(count(r#"method="POST",route="open",status_code="200""#), Some(1.0), "{text}");
    // The router's own answers (405, 404) choose no route: `route=""`.
    assert_eq!(count(r#"method="DELETE",route="",status_code="405""#), Some(1.0), "{text}");
    assert_eq!(count(r#"method="GET",route="limited",status_code="429""#), Some(2.0), "{text}");
    assert_eq!(count(r#"method="GET",route="broken",status_code="500""#), Some(1.0), "{text}");
    assert_eq!(count(r#"method="GET",route="",status_code="404""#), Some(1.0), "{text}");
    // A method nobody configured is counted, without becoming a label value.
    assert_eq!(count(r#"method="other",route="",status_code="405""#), Some(1.0), "{text}");
    assert!(!text.contains("BREW"), "{text}");
    // Buckets are cumulative: every request is in the +Inf bucket.
    assert_eq!(sample(&text, r#"http_request_duration_seconds_bucket{method="GET",route="open",status_code="200",le="+Inf"}"#), Some(3.0), "{text}");

    let verdict = |policy: &str, v: &str| sample(&text, &format!("portcullis_policy_verdicts_total{{policy=\"{policy}\",verdict=\"{v}\"}}"));
    // The router decided all ten requests: 7 routed (4 open, 2 limited, 1 broken), 3 answered itself (405, 405, 404).
    assert_eq!(verdict("router", "proceed"), Some(7.0), "{text}");
    assert_eq!(verdict("router", "respond:405"), Some(2.0), "{text}");
    assert_eq!(verdict("router", "respond:404"), Some(1.0), "{text}");
    assert_eq!(verdict("stamp", "proceed"), Some(6.0), "{text}");
    assert_eq!(verdict("stamp", "skipped"), Some(1.0), "{text}");
    assert_eq!(verdict("deny", "respond:429"), Some(2.0), "{text}");
    assert_eq!(verdict("crash", "failed:trap"), Some(1.0), "{text}");
    assert_eq!(sample(&text, r#"portcullis_policy_failures_total{class="trap",policy="crash"}"#), Some(1.0), "{text}");
    assert_eq!(sample(&text, r#"portcullis_gateway_errors_total{error="policy-trap"}"#), Some(1.0), "{text}");
    assert_eq!(sample(&text, r#"portcullis_request_outcomes_total{outcome="ok"}"#), Some(10.0), "{text}");

    // Scrape-time metrics: the upstream target (nothing in flight now), reloads, the chain.
    assert_eq!(sample(&text, &format!("portcullis_upstream_in_flight{{pool=\"up\",target=\"{}\"}}", up.addr)), Some(0.0), "{text}");
    assert_eq!(sample(&text, r#"portcullis_reloads_total{result="ok"}"#), Some(0.0), "{text}");
    assert!(text.contains("# TYPE http_request_duration_seconds histogram"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("portcullis_chain_info{version=")), "{text}");
    // Every answer has been sent: no instance is held for an on-response.
    assert_eq!(sample(&text, "portcullis_policy_instances_kept"), Some(0.0), "{text}");
}
