//! A deliberately configurable, hostile policy for the host's end-to-end
//! tests. Setting `mode` picks the behaviour of `on-request`:
//!
//! * `loop`: spins forever (the host's deadline must end it).
//! * `grow`: allocates without end (the host's memory cap must end it; the
//!   refused `memory.grow` makes the allocator trap).
//! * `trap`: executes `unreachable`.
//! * `work`: holds setting `kib` KiB of memory (default 0) and busy-waits
//!   setting `ms` milliseconds of host time (default 0), then proceeds with
//!   response header `x-worked: 1` (per-policy memory and deadline limits).
//! * `remember`: keeps the request path in a global and proceeds with
//!   response header `x-previous-path` = the path kept by an earlier call, or
//!   `none`. Each request runs in a fresh instance, so it must always be
//!   `none`. With setting `response-header`, its `on-response` also sets
//!   `x-remembered-on-response` to the path the instance holds: the request's
//!   own when the host kept the instance of its `on-request`, else `none`.
//! * `fail-check`: `check-config` always fails.
//! * `header`: response header named by setting `name` = setting `value`,
//!   and upstream request header `x-test-policy: <value>`.
//! * `respond`: answers with status from setting `status` (default 418),
//!   problem+json.
//! * `bad-fact`: writes fact `route.name` = `hijacked`, outside its namespace
//!   (the host must refuse the verdict).
//! * `facts`: writes fact `<namespace>.seen` = `1` (setting `namespace`,
//!   default `test`) and upstream header `x-seen-facts` = the incoming facts
//!   as `k=v` joined by `;`.
//!
//! In every mode, when setting `response-header` is present, `hooks`
//! declares `on-response`, which sets that header to `1` on the response;
//! when setting `complete-ms` is present, `hooks` declares `on-complete`,
//! which busy-waits that many milliseconds (a deadline broken after the
//! answer was sent).
#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use core::cell::Cell;
use portcullis_sdk::{
    Completion, Edits, Hooks, Policy, RequestHead, ResponseEdits, ResponseHead, Verdict, export_policy, json,
    problem, setting, trap,
};

const MODES: &str = "loop, grow, trap, remember, fail-check, header, respond, bad-fact, facts, work";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Loop,
    Grow,
    Trap,
    Remember,
    FailCheck,
    Header,
    Respond,
    BadFact,
    Facts,
    Work,
}

impl Mode {
    fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "loop" => Mode::Loop,
            "grow" => Mode::Grow,
            "trap" => Mode::Trap,
            "remember" => Mode::Remember,
            "fail-check" => Mode::FailCheck,
            "header" => Mode::Header,
            "respond" => Mode::Respond,
            "bad-fact" => Mode::BadFact,
            "facts" => Mode::Facts,
            "work" => Mode::Work,
            _ => return None,
        })
    }
}

fn mode_error(got: Option<&str>) -> String {
    let mut e = String::from("setting \"mode\": ");
    match got {
        None => e.push_str("missing; expected one of "),
        Some(_) => e.push_str("expected one of "),
    }
    e.push_str(MODES);
    if let Some(got) = got {
        e.push_str(", got ");
        json::push_string(&mut e, got);
    }
    e
}

/// `status` setting: 100..=599, default 418.
fn parse_status(s: Option<&str>) -> Result<u16, String> {
    let Some(s) = s else { return Ok(418) };
    match s.parse::<u16>() {
        Ok(n) if (100..=599).contains(&n) => Ok(n),
        _ => {
            let mut e = String::from("setting \"status\": expected an HTTP status 100..=599, got ");
            json::push_string(&mut e, s);
            Err(e)
        }
    }
}

/// A global the guest tries to carry from one call to the next.
struct Global<T>(Cell<T>);

// SAFETY: wasm32 guests are single-threaded; natively it is only used by
// single-threaded code paths that tests do not exercise concurrently.
unsafe impl<T> Sync for Global<T> {}

static PREVIOUS_PATH: Global<Option<String>> = Global(Cell::new(None));

/// The path the `remember` step kept in this instance (or `none`).
fn kept_path() -> String {
    let kept = PREVIOUS_PATH.0.take();
    let shown = kept.clone().unwrap_or_else(|| String::from("none"));
    PREVIOUS_PATH.0.set(kept);
    shown
}

/// The `remember` step: the previously kept path (or `none`), keeping `path`.
fn remember(path: &str) -> String {
    let previous = PREVIOUS_PATH.0.replace(Some(String::from(path)));
    previous.unwrap_or_else(|| String::from("none"))
}

/// The incoming facts as `k=v` joined by `;`, in order.
fn seen_facts(req: &RequestHead) -> String {
    let mut out = String::new();
    for (i, (k, v)) in req.facts.iter().enumerate() {
        if i > 0 {
            out.push(';');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

fn spin() -> ! {
    let mut n = 0u64;
    loop {
        n = core::hint::black_box(n).wrapping_add(1);
    }
}

/// The `work` step: hold `kib` KiB, spin until `ms` of host time passed.
fn work(kib: u64, ms: u64) {
    let hoard = core::hint::black_box(alloc::vec![1u8; (kib * 1024) as usize]);
    let start = portcullis_sdk::now_ms();
    while portcullis_sdk::now_ms().saturating_sub(start) < ms {
        core::hint::black_box(&hoard);
    }
    drop(hoard);
}

fn grow() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let chunk = core::hint::black_box(alloc::vec![1u8; 64 * 1024]);
        hoard.push(chunk);
        core::hint::black_box(&mut hoard);
    }
}

pub struct TestPolicy;

impl Policy for TestPolicy {
    fn hooks() -> Hooks {
        let mut hooks = Hooks::empty();
        if setting("response-header").is_some() {
            hooks = hooks | Hooks::ON_RESPONSE;
        }
        if setting("complete-ms").is_some() {
            hooks = hooks | Hooks::ON_COMPLETE;
        }
        hooks
    }

    fn check_config() -> Result<(), String> {
        let mode = setting("mode");
        let Some(m) = mode.as_deref().and_then(Mode::parse) else {
            return Err(mode_error(mode.as_deref()));
        };
        match m {
            Mode::FailCheck => Err(String::from(
                "setting \"mode\": fail-check always fails its check",
            )),
            Mode::Header => {
                for key in ["name", "value"] {
                    if setting(key).is_none() {
                        let mut e = String::from("setting \"");
                        e.push_str(key);
                        e.push_str("\": required in mode header");
                        return Err(e);
                    }
                }
                Ok(())
            }
            Mode::Respond => parse_status(setting("status").as_deref()).map(drop),
            _ => Ok(()),
        }
    }

    fn on_request(req: RequestHead) -> Verdict {
        let mode = setting("mode");
        match mode.as_deref().and_then(Mode::parse) {
            Some(Mode::Loop) => spin(),
            Some(Mode::Grow) => grow(),
            Some(Mode::Trap) | None => trap(),
            Some(Mode::FailCheck) => portcullis_sdk::proceed(),
            Some(Mode::Remember) => Edits::new()
                .response_header("x-previous-path", remember(&req.path))
                .proceed(),
            Some(Mode::Header) => {
                let name = setting("name").unwrap_or_else(|| trap());
                let value = setting("value").unwrap_or_else(|| trap());
                Edits::new()
                    .set_header("x-test-policy", value.as_str())
                    .response_header(name, value)
                    .proceed()
            }
            Some(Mode::Respond) => {
                let status = parse_status(setting("status").as_deref()).unwrap_or_else(|_| trap());
                problem(
                    status,
                    "Test policy",
                    "test-policy answered in mode respond",
                )
                .respond()
            }
            Some(Mode::BadFact) => Edits::new().fact("route.name", "hijacked").proceed(),
            Some(Mode::Work) => {
                let number = |key: &str| setting(key).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                work(number("kib"), number("ms"));
                Edits::new().response_header("x-worked", "1").proceed()
            }
            Some(Mode::Facts) => {
                let mut name = setting("namespace").unwrap_or_else(|| String::from("test"));
                name.push_str(".seen");
                Edits::new()
                    .fact(name, "1")
                    .set_header("x-seen-facts", seen_facts(&req))
                    .proceed()
            }
        }
    }

    fn on_complete(_req: RequestHead, _done: Completion) {
        let ms = setting("complete-ms").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        work(0, ms);
    }

    fn on_response(_req: RequestHead, _resp: ResponseHead) -> ResponseEdits {
        let edits = match setting("response-header") {
            Some(name) => ResponseEdits::new().set_header(name, "1"),
            None => ResponseEdits::new(),
        };
        // What the global holds now: this request's own path when on-response
        // runs in the instance its on-request used, `none` in a fresh one,
        // never another request's.
        match setting("mode").as_deref() {
            Some("remember") => edits.set_header("x-remembered-on-response", kept_path()),
            _ => edits,
        }
    }
}

export_policy!(TestPolicy);

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    #[test]
    fn parses_modes_and_names_them_in_errors() {
        for m in MODES.split(", ") {
            assert!(Mode::parse(m).is_some(), "{m}");
        }
        assert_eq!(Mode::parse("nope"), None);
        assert_eq!(
            mode_error(Some("nope")),
            "setting \"mode\": expected one of loop, grow, trap, remember, fail-check, header, respond, bad-fact, facts, work, got \"nope\""
        );
        assert!(mode_error(None).starts_with("setting \"mode\": missing; expected one of loop,"));
    }

    #[test]
    fn parses_status() {
        assert_eq!(parse_status(None), Ok(418));
        assert_eq!(parse_status(Some("503")), Ok(503));
        assert!(parse_status(Some("600")).is_err());
        assert!(parse_status(Some("x")).is_err());
    }

    #[test]
    fn remembers_within_one_instance() {
        assert_eq!(remember("/a"), "none");
        assert_eq!(remember("/b"), "/a");
    }

    #[test]
    fn lists_seen_facts() {
        let req = RequestHead {
            id: "1".to_string(),
            method: "GET".to_string(),
            scheme: "http".to_string(),
            authority: "h".to_string(),
            path: "/".to_string(),
            query: None,
            headers: vec![],
            client_ip: "::1".to_string(),
            listener: "l".to_string(),
            route: Some("r".to_string()),
            facts: vec![
                ("route.name".to_string(), "r".to_string()),
                ("route.pools".to_string(), "a,b".to_string()),
            ],
        };
        assert_eq!(seen_facts(&req), "route.name=r;route.pools=a,b");
    }
}
