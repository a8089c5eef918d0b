//! Rate limits in the real gateway: the rate-limit component asking the
//! host's local limiter (governor) and a real `redis-server` for shared
//! budgets. Client addresses come from `x-forwarded-for` through a trusted
//! proxy (loopback), so each test has its own clients.

use crate::support::*;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The rate-limit component (see components/rate-limit).
const RATE_LIMIT: &str = env!("PORTCULLIS_RATE_LIMIT_WASM");
const TOKEN: &str = "test-admin-token-0123456789";

/// A real `redis-server` on a loopback port, no persistence; killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Redis::start_on(port)
    }

    fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server (installed by scripts/setup test)");
        let r = Redis { child, port };
        let end = Instant::now() + Duration::from_secs(10);
        while !r.ping() {
            assert!(Instant::now() < end, "redis-server did not answer PING within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gateway trusting loopback's `x-forwarded-for`, with an admin listener,
/// the rate-limit component on route `/api`, and `limits` (TOML) appended.
fn config(up: &Upstream, component: &str, rules: &str, limits: &str) -> String {
    let head = config_head().replace("[gateway]\n", "[gateway]\ntrusted_proxies = [\"127.0.0.0/8\"]\npseudonym_key_file = \"pseudonym.key\"\nwatch = false\n");
    format!(
        r#"{head}
[admin]
address = "127.0.0.1:0"
token_file = "admin.token"

[policies.rate-limit]
component = "{component}"
{rules}

[[pools]]
name = "up"
targets = ["{addr}"]

[[routes]]
name = "api"
path = "/api"
pools = ["up"]
chain = ["rate-limit"]
{limits}
"#,
        addr = up.addr
    )
}

fn start(config: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
    // Every node of a shared budget has the same pseudonym key.
    std::fs::write(dir.path().join("pseudonym.key"), b"a key shared by the nodes of one platform").unwrap();
    std::fs::copy(RATE_LIMIT, dir.path().join("rate-limit.wasm")).unwrap();
    Gateway::start_in(dir, config)
}

const PER_IP: &str = r#"[policies.rate-limit.settings.rules.per-ip]
key = ["ip"]"#;

async fn from(gw: &Gateway, ip: &str) -> Answer {
    get(&gw.url("/api/x"), &[("x-forwarded-for", ip)]).await
}

async fn metrics(gw: &Gateway) -> String {
    String::from_utf8(gw.admin("GET", "/metrics", None).await.body.to_vec()).unwrap()
}

/// The value of one metric line (`name{labels}`), 0 when absent.
fn metric(text: &str, series: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse::<f64>().ok())).unwrap_or(0.0) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_per_second_burst_twenty_allows_twenty_then_429_with_retry_after() {
    let up = Upstream::start("api").await;
    let gw = start(&config(&up, "rate-limit.wasm", PER_IP, "[[limits]]\nname = \"per-ip\"\nrate = 10\nper = \"1s\"\nburst = 20\n"));

    // 30 requests at once from one client: the burst, plus whatever the
    // rate gave back while they were in flight (one per 100 ms).
    let started = Instant::now();
    let answers = futures_util::future::join_all((0..30).map(|_| from(&gw, "198.51.100.7"))).await;
    let elapsed = started.elapsed();
    let allowed: Vec<_> = answers.iter().filter(|a| a.status == 200).collect();
    let limited: Vec<_> = answers.iter().filter(|a| a.status == 429).collect();
    assert_eq!(allowed.len() + limited.len(), 30, "only 200 and 429: {:?}", answers.iter().map(|a| a.status).collect::<Vec<_>>());
    let refilled = (elapsed.as_millis() / 100) as usize;
    assert!(allowed.len() >= 20 && allowed.len() <= 20 + refilled, "{} allowed in {elapsed:?}", allowed.len());
    eprintln!("{} of 30 allowed in {elapsed:?}", allowed.len());

    for a in &allowed {
        assert_eq!(a.header("ratelimit-policy"), Some("\"per-ip\";q=10;w=1;burst=20"));
        assert!(a.header("ratelimit").is_some_and(|v| v.starts_with("\"per-ip\";r=")), "{:?}", a.header("ratelimit"));
    }
    let a = limited[0];
    let p = assert_problem(a, 429);
    assert!(p["detail"].as_str().unwrap().contains("per-ip"), "{p}");
    // One unit comes back every 100 ms: a whole second, rounded up.
    assert_eq!(a.header("retry-after"), Some("1"));
    assert_eq!(a.header("ratelimit-policy"), Some("\"per-ip\";q=10;w=1;burst=20"));
    assert!(a.header("ratelimit").is_some_and(|v| v.starts_with("\"per-ip\";r=0;t=")), "{:?}", a.header("ratelimit"));

    // Another client has its own budget; the first one, after Retry-After, passes again.
    assert_eq!(from(&gw, "198.51.100.8").await.status, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(from(&gw, "198.51.100.7").await.status, 200);

    // The 429 is audited with the limit and the key's parts, never the address.
    assert!(
        eventually(Duration::from_secs(5), || gw.audit_records().iter().any(|r| r["status"] == 429)).await,
        "no audit record of a 429"
    );
    let records = gw.audit_records();
    let rec = records.iter().find(|r| r["status"] == 429).unwrap();
    let fields = &rec["policies"]["rate-limit"];
    assert_eq!(fields["outcome"], "limited", "{rec}");
    assert_eq!(fields["limit"], "per-ip", "{rec}");
    assert_eq!(fields["key"], "ip", "{rec}");
    assert_eq!(fields["source"], "local", "{rec}");
    assert!(!fields.to_string().contains("198.51.100.7"), "the policy's fields never carry the key: {fields}");
    let m = metrics(&gw).await;
    assert!(metric(&m, "portcullis_rate_limit_decisions_total{limit=\"per-ip\",outcome=\"limited\",source=\"local\"}") >= 10, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_sharing_one_redis_admit_the_budget_once() {
    let redis = Redis::start();
    let up = Upstream::start("api").await;
    // 200 per hour: nothing comes back during the test, so the budget is exact.
    let limits = format!("[[limits]]\nname = \"per-ip\"\nrate = 200\nper = \"1h\"\nshared = true\n\n[shared_limits]\nredis = \"{}\"\nnodes = 2\ntimeout_ms = 80\n", redis.url());
    let text = config(&up, "rate-limit.wasm", PER_IP, &limits);
    let (a, b) = (start(&text), start(&text));
    let (a, b) = (Arc::new(a), Arc::new(b));
    let allowed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let (gw, allowed) = (if worker % 2 == 0 { a.clone() } else { b.clone() }, allowed.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..75 {
                let ans = from(&gw, "203.0.113.50").await;
                assert!(ans.status == 200 || ans.status == 429, "status {}", ans.status);
                if ans.status == 200 {
                    allowed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = allowed.load(Ordering::Relaxed);
    eprintln!("600 requests over two gateways, {total} admitted of a shared budget of 200");
    // Within 1 % of the budget (in fact exact: one script per decision).
    assert!((198..=202).contains(&total), "{total} admitted, budget 200");
    for gw in [&a, &b] {
        let m = metrics(gw).await;
        assert!(metric(&m, "portcullis_rate_limit_decisions_total{limit=\"per-ip\",outcome=\"allowed\",source=\"shared\"}") > 0, "{m}");
        assert_eq!(metric(&m, "portcullis_rate_limit_redis_up"), 1, "{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_falls_back_to_local_without_5xx_and_its_return_restores_sharing() {
    let mut redis = Redis::start();
    let port = redis.port;
    let up = Upstream::start("api").await;
    // Burst 10 shared by 2 nodes: the local fallback allows 5 per client.
    let limits = format!(
        "[[limits]]\nname = \"per-ip\"\nrate = 10\nper = \"1h\"\nshared = true\n\n[shared_limits]\nredis = \"{}\"\nnodes = 2\ntimeout_ms = 50\nretry_ms = 200\nwhen_unavailable = \"local\"\n",
        redis.url()
    );
    let gw = start(&config(&up, "rate-limit.wasm", PER_IP, &limits));
    for _ in 0..3 {
        assert_eq!(from(&gw, "192.0.2.1").await.status, 200);
    }

    // Redis stops: answers keep coming, from the fallback, never a 5xx.
    let _ = redis.child.kill();
    let _ = redis.child.wait();
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(from(&gw, "192.0.2.2").await.status);
    }
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    // The fallback's budget is this node's share: 10 / 2 nodes.
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 5, "{statuses:?}");
    let m = metrics(&gw).await;
    assert!(metric(&m, "portcullis_rate_limit_decisions_total{limit=\"per-ip\",outcome=\"allowed\",source=\"local-fallback\"}") >= 5, "{m}");
    assert_eq!(metric(&m, "portcullis_rate_limit_redis_up"), 0, "{m}");
    assert!(metric(&m, "portcullis_rate_limit_redis_errors_total") >= 1, "{m}");

    // Redis is back (empty): shared counting resumes by itself.
    let redis = Redis::start_on(port);
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let before = metric(&metrics(&gw).await, "portcullis_rate_limit_decisions_total{limit=\"per-ip\",outcome=\"allowed\",source=\"shared\"}");
        let status = from(&gw, &format!("192.0.2.{}", 10 + (Instant::now().elapsed().as_nanos() % 200))).await.status;
        assert!(status == 200 || status == 429, "{status}");
        let after = metric(&metrics(&gw).await, "portcullis_rate_limit_decisions_total{limit=\"per-ip\",outcome=\"allowed\",source=\"shared\"}");
        if after > before {
            break;
        }
        assert!(Instant::now() < end, "shared counting did not resume within 20 s of redis coming back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(&metrics(&gw).await, "portcullis_rate_limit_redis_up"), 1);
    // A fresh client now counts in Redis: 10 allowed, not 5.
    let mut ok = 0;
    for _ in 0..12 {
        if from(&gw, "192.0.2.250").await.status == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 10);
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_mode_fails_closed_with_503_while_redis_is_unreachable() {
    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let up = Upstream::start("api").await;
    let limits = format!("[[limits]]\nname = \"per-ip\"\nrate = 10\nper = \"1s\"\nshared = true\n\n[shared_limits]\nredis = \"redis://127.0.0.1:{port}/0\"\ntimeout_ms = 50\nwhen_unavailable = \"deny\"\n");
    let gw = start(&config(&up, "rate-limit.wasm", PER_IP, &limits));
    let a = from(&gw, "192.0.2.77").await;
    assert_problem(&a, 503);
    assert_eq!(a.header("retry-after"), Some("1"));
    assert_eq!(up.requests.load(Ordering::SeqCst), 0, "nothing forwarded while the limit cannot be checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_client_addresses_stay_within_the_key_bound() {
    let up = Upstream::start("api").await;
    let limits = "[[limits]]\nname = \"per-ip\"\nrate = 1\nper = \"1h\"\nburst = 3\nmax_keys = 1000\n";
    let gw = Arc::new(start(&config(&up, "rate-limit.wasm", PER_IP, limits)));
    let before_kib = gw.rss_kib();
    let client = client();
    let mut tasks = Vec::new();
    for worker in 0..8u32 {
        let (gw, client) = (gw.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..1250u32 {
                let n = worker * 1250 + i;
                let ip = format!("10.{}.{}.{}", n >> 16 & 255, n >> 8 & 255, n & 255);
                let req = http::Request::get(gw.url("/api/x")).header("x-forwarded-for", ip).body(full("")).unwrap();
                let a = send(&client, req).await;
                assert_eq!(a.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let m = metrics(&gw).await;
    let keys = metric(&m, "portcullis_rate_limit_keys{limit=\"per-ip\"}");
    eprintln!("10000 client addresses: {keys} keys held (bound 1000); RSS {before_kib} KiB -> {} KiB", gw.rss_kib());
    assert!(keys > 0 && keys <= 1000, "{keys} keys held, bound 1000");
    // A client that keeps coming is still limited after the flood.
    let statuses: Vec<u16> = futures_util::future::join_all((0..5).map(|_| from(&gw, "172.16.0.1"))).await.iter().map(|a| a.status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3, "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_replaces_the_component_keeps_the_counts() {
    let up = Upstream::start("api").await;
    let limits = "[[limits]]\nname = \"per-ip\"\nrate = 5\nper = \"1h\"\n";
    let gw = start(&config(&up, "rate-limit.wasm", PER_IP, limits));
    for _ in 0..5 {
        assert_eq!(from(&gw, "198.51.100.99").await.status, 200);
    }
    assert_eq!(from(&gw, "198.51.100.99").await.status, 429);

    // A new component file, new settings (a second, disabled rule): the
    // policy is reloaded; the budget lives in the host and is kept.
    std::fs::copy(RATE_LIMIT, gw.dir().join("rate-limit-v2.wasm")).unwrap();
    let rules = format!("{PER_IP}\n[policies.rate-limit.settings.rules.spare]\nlimit = \"per-ip\"\nkey = [\"route\"]\nenabled = false");
    std::fs::write(gw.dir().join("gateway.toml"), config(&up, "rate-limit-v2.wasm", &rules, limits)).unwrap();
    let a = gw.admin("POST", "/admin/reload", Some(TOKEN)).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let policies = gw.admin("GET", "/admin/policies", Some(TOKEN)).await;
    assert!(String::from_utf8_lossy(&policies.body).contains("rate-limit-v2.wasm"), "{}", String::from_utf8_lossy(&policies.body));
    assert_eq!(from(&gw, "198.51.100.99").await.status, 429, "the reload reset a used-up budget");
    assert_eq!(from(&gw, "198.51.100.100").await.status, 200);

    // Changing the limit's definition starts it afresh (the old counts were for another budget).
    std::fs::write(gw.dir().join("gateway.toml"), config(&up, "rate-limit-v2.wasm", &rules, "[[limits]]\nname = \"per-ip\"\nrate = 6\nper = \"1h\"\n")).unwrap();
    assert_eq!(gw.admin("POST", "/admin/reload", Some(TOKEN)).await.status, 200);
    assert_eq!(from(&gw, "198.51.100.99").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_refuses_unknown_limits_and_bad_limit_settings() {
    let up = Upstream::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(RATE_LIMIT, dir.path().join("rate-limit.wasm")).unwrap();
    std::fs::write(dir.path().join("pseudonym.key"), b"k").unwrap();
    std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
    let cases = [
        (config(&up, "rate-limit.wasm", "[policies.rate-limit.settings.rules.per-ip]\nkey = [\"ip\"]\nlimit = \"nope\"", "[[limits]]\nname = \"per-ip\"\nrate = 1\nper = \"1s\"\n"), "rules.per-ip.limit: no limit named \"nope\""),
        (config(&up, "rate-limit.wasm", "[policies.rate-limit.settings.rules.per-ip]\nkey = [\"cookie:x\"]", "[[limits]]\nname = \"per-ip\"\nrate = 1\nper = \"1s\"\n"), "rules.per-ip.key: unknown key part"),
        (config(&up, "rate-limit.wasm", PER_IP, "[[limits]]\nname = \"per-ip\"\nrate = 1\nper = \"fortnight\"\n"), "limits[0].per"),
        (config(&up, "rate-limit.wasm", PER_IP, "[[limits]]\nname = \"per-ip\"\nrate = 0\nper = \"1s\"\n"), "limits[0].rate: must be at least 1"),
        (config(&up, "rate-limit.wasm", PER_IP, "[[limits]]\nname = \"per-ip\"\nrate = 1\nper = \"1s\"\nshared = true\n"), "limits[0].shared: a shared limit needs a [shared_limits] section"),
        (
            config(&up, "rate-limit.wasm", PER_IP, "[[limits]]\nname = \"per-ip\"\nrate = 1\nper = \"1s\"\n\n[shared_limits]\nredis = \"http://nope\"\n"),
            "shared_limits.redis: not a Redis URL",
        ),
        (
            config(&up, "rate-limit.wasm", PER_IP, "[[limits]]\nname = \"per-ip\"\nrate = 1\nper = \"1s\"\n\n[shared_limits]\nredis = \"redis://127.0.0.1:1/0\"\ntimeout_ms = 100\n"),
            "shared_limits.timeout_ms: 100 ms must be below runtime.policy_deadline_ms",
        ),
    ];
    for (text, want) in cases {
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, &text).unwrap();
        let out = run_check(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "check passed, wanted {want:?}");
        assert!(stderr.contains(want), "wanted {want:?} in:\n{stderr}");
        assert!(stderr.contains("gateway.toml:"), "errors name the file: {stderr}");
    }
}
