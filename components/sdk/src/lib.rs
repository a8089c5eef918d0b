//! The Portcullis guest SDK: the only crate that touches wit-bindgen.
//!
//! A policy implements [`Policy`] and exports it with [`export_policy!`]:
//!
//! ```ignore
//! use portcullis_sdk::{Policy, RequestHead, Verdict, proceed};
//!
//! struct Allow;
//! impl Policy for Allow {
//!     fn on_request(_req: RequestHead) -> Verdict {
//!         proceed()
//!     }
//! }
//! portcullis_sdk::export_policy!(Allow);
//! ```
//!
//! On wasm32 the SDK also provides the global allocator (a bump allocator
//! over a static 32 KiB arena, see [`heap`]), `cabi_realloc` and a panic
//! handler that traps, so policy crates are `#![no_std]` and link nothing
//! else. Those three are the default feature `allocator`; a policy that
//! needs std (e.g. `jwt-auth`, for `jsonwebtoken`) depends on the SDK with
//! `default-features = false` and gets them from std and wasi-libc instead.
//! On other targets it links `std`, so policy logic can be unit-tested
//! natively (the host functions are not available there: calling one
//! panics).
#![no_std]

extern crate alloc;
#[cfg(any(not(target_arch = "wasm32"), feature = "embedded"))]
extern crate std;

use alloc::string::String;
use alloc::vec::Vec;

pub mod heap;
pub mod json;
pub mod list;
pub mod packed;
#[cfg(feature = "settings")]
pub mod settings;

/// The generated bindings of world `policy-component`. Prefer the
/// re-exports at the crate root.
#[cfg(not(feature = "embedded"))]
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "policy-component",
        path: "../../wit",
        pub_export_macro: true,
        default_bindings_module: "portcullis_sdk::bindings",
        export_macro_name: "export",
        // `request-head` is what `packed-head` encodes; no function takes it.
        generate_unused_types: true,
    });
}

/// Embedded (feature `embedded`): the contract's types only; no imports, no exports.
#[cfg(feature = "embedded")]
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        inline: "package portcullis:embedded; world policy-types { import portcullis:gateway/types@0.2.0; }",
        path: "../../wit",
        world: "portcullis:embedded/policy-types",
        generate_all,
        generate_unused_types: true,
    });
}

#[cfg(feature = "embedded")]
pub mod embedded;

pub use bindings::portcullis::gateway::types::{
    Completion, Edits, Fact, Header, HookSet, JwksError, Level, RateError, RateOutcome, Reply,
    RequestHead, ResponseEdits, ResponseHead, Verdict,
};

/// The hooks a policy declares (the WIT's `hook-set`).
pub type Hooks = HookSet;

/// What the host offers, answered from memory (`host` interface; the
/// settings come with each call, see [`packed`]).
#[cfg(not(feature = "embedded"))]
pub mod host {
    pub use crate::bindings::portcullis::gateway::host::{
        audit, limit_policy, log, now_ms, pseudonym, verified_token_cached, verified_token_put,
    };
    pub use crate::packed::host::{setting, settings};
}

/// What the host offers that may wait on the network (`io` interface).
#[cfg(not(feature = "embedded"))]
pub mod io {
    pub use crate::bindings::portcullis::gateway::io::{jwks, rate_acquire};
}

#[cfg(feature = "embedded")]
pub use embedded::{host, io};

pub use host::{
    audit, limit_policy, log, now_ms, pseudonym, setting, settings, verified_token_cached, verified_token_put,
};
pub use io::{jwks, rate_acquire};

/// One audit field, for [`audit`]: `audit(&[field("outcome", "ok")])`.
pub fn field(key: &str, value: impl Into<String>) -> (String, String) {
    (String::from(key), value.into())
}

/// A `check-config` error naming a setting: `setting "<key>": <reason>`.
pub fn setting_error(key: &str, reason: &str) -> String {
    let mut e = String::with_capacity(16 + key.len() + reason.len());
    e.push_str("setting \"");
    e.push_str(key);
    e.push_str("\": ");
    e.push_str(reason);
    e
}

/// The same with the refused value: `setting "<key>": <reason>, got "<value>"`.
pub fn setting_error_got(key: &str, reason: &str, value: &str) -> String {
    let mut e = setting_error(key, reason);
    e.push_str(", got ");
    json::push_string(&mut e, value);
    e
}

/// A policy. Only [`Policy::on_request`] is required; the host calls
/// `on_response` / `on_complete` only when [`Policy::hooks`] declares them.
///
/// Every request runs in a fresh instance: statics never carry anything from
/// one request to the next. `on_response` may or may not run in the
/// instance of the same request's `on_request`; depend on neither.
pub trait Policy {
    /// The optional hooks this policy implements. May read settings.
    fn hooks() -> Hooks {
        Hooks::empty()
    }

    /// Validate the settings; an error names the key and says why.
    fn check_config() -> Result<(), String> {
        Ok(())
    }

    /// Decide on a request head.
    fn on_request(req: RequestHead) -> Verdict;

    /// Edit the response head (only called if declared in `hooks`).
    fn on_response(req: RequestHead, resp: ResponseHead) -> ResponseEdits {
        let _ = (req, resp);
        ResponseEdits::new()
    }

    /// After the response body has ended (only called if declared in `hooks`).
    fn on_complete(req: RequestHead, done: Completion) {
        let _ = (req, done);
    }
}

#[cfg(not(feature = "embedded"))]
impl<T: Policy> bindings::exports::portcullis::gateway::policy::Guest for T {
    #[inline]
    fn hooks(settings: Vec<u8>) -> Hooks {
        packed::set_call_settings(settings);
        <T as Policy>::hooks()
    }
    #[inline]
    fn check_config(settings: Vec<u8>) -> Result<(), String> {
        packed::set_call_settings(settings);
        <T as Policy>::check_config()
    }
    #[inline]
    fn on_request(settings: Vec<u8>, req: Vec<u8>) -> Verdict {
        packed::set_call_settings(settings);
        <T as Policy>::on_request(packed::decode_head(&req))
    }
    #[inline]
    fn on_response(settings: Vec<u8>, req: Vec<u8>, resp: ResponseHead) -> ResponseEdits {
        packed::set_call_settings(settings);
        <T as Policy>::on_response(packed::decode_head(&req), resp)
    }
    #[inline]
    fn on_complete(settings: Vec<u8>, req: Vec<u8>, done: Completion) {
        packed::set_call_settings(settings);
        <T as Policy>::on_complete(packed::decode_head(&req), done)
    }
}

/// Export a type implementing [`Policy`] as the component's `policy`
/// interface. Takes a type name (an identifier in scope), once per crate.
///
/// Expands to nothing on other targets than wasm32 (the export names are not
/// valid native symbols), so policy crates build and test natively.
#[cfg(not(feature = "embedded"))]
#[macro_export]
macro_rules! export_policy {
    ($ty:ident) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
    $crate::bindings::export!($ty with_types_in $crate::bindings);
        };
    };
}

/// Embedded (feature `embedded`): no wasm exports; the crate offers its
/// policy as `embedded_policy()`, a [`embedded::PolicyVTable`].
#[cfg(feature = "embedded")]
#[macro_export]
macro_rules! export_policy {
    ($ty:ident) => {
        /// This crate's policy, for an embedder that compiles it in.
        pub fn embedded_policy() -> $crate::embedded::PolicyVTable {
            $crate::embedded::PolicyVTable::of::<$ty>()
        }
    };
}

/// Trap: end this call as failed (`unreachable`). Natively, panics.
#[inline(always)]
pub fn trap() -> ! {
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
    #[cfg(not(target_arch = "wasm32"))]
    panic!("trap");
}

// ---------------------------------------------------------------------------
// Reading the request head.

/// The value of the first header named `name` (ASCII case-insensitive).
pub fn header_value<'a>(req: &'a RequestHead, name: &str) -> Option<&'a [u8]> {
    find_header(&req.headers, name)
}

/// The value of the first header named `name` in `headers`.
pub fn find_header<'a>(headers: &'a [Header], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_slice())
}

/// The value of fact `name` (`namespace.key`); the latest one if written
/// more than once.
pub fn fact<'a>(req: &'a RequestHead, name: &str) -> Option<&'a str> {
    req.facts
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

// ---------------------------------------------------------------------------
// Building answers.

/// Proceed without edits.
#[inline]
pub fn proceed() -> Verdict {
    Verdict::Proceed(Edits::new())
}

/// Proceed with these edits.
#[inline]
pub fn proceed_with(edits: Edits) -> Verdict {
    Verdict::Proceed(edits)
}

/// Answer the client with this reply.
#[inline]
pub fn respond(reply: Reply) -> Verdict {
    Verdict::Respond(reply)
}

/// An RFC 9457 `application/problem+json` reply:
/// `{"type":"about:blank","title":…,"status":…,"detail":…}`.
pub fn problem(status: u16, title: &str, detail: &str) -> Reply {
    Reply::new(status)
        .header("content-type", "application/problem+json")
        .body(json::problem(status, title, detail))
}

impl Header {
    /// A header; `name` should be lower-case.
    #[inline]
    pub fn new(name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Header {
            name: name.into(),
            value: value.into(),
        }
    }
}

impl Default for Edits {
    fn default() -> Self {
        Self::new()
    }
}

impl Edits {
    /// No edits.
    #[inline]
    pub const fn new() -> Self {
        Edits {
            set_headers: Vec::new(),
            remove_headers: Vec::new(),
            facts: Vec::new(),
            response_headers: Vec::new(),
        }
    }

    /// Set a header on the upstream request (replacing any of that name).
    pub fn set_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.set_headers.push(Header::new(name, value));
        self
    }

    /// Remove a header from the upstream request.
    pub fn remove_header(mut self, name: impl Into<String>) -> Self {
        self.remove_headers.push(name.into());
        self
    }

    /// Write a fact; `name` must be `<own policy name>.<key>`.
    pub fn fact(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.facts.push((name.into(), value.into()));
        self
    }

    /// Set a header on the response to the client, whatever answers it.
    pub fn response_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.response_headers.push(Header::new(name, value));
        self
    }

    /// `Verdict::Proceed(self)`.
    #[inline]
    pub fn proceed(self) -> Verdict {
        Verdict::Proceed(self)
    }
}

impl Reply {
    /// An empty reply with this status.
    #[inline]
    pub const fn new(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Add a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push(Header::new(name, value));
        self
    }

    /// Set the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// `Verdict::Respond(self)`.
    #[inline]
    pub fn respond(self) -> Verdict {
        Verdict::Respond(self)
    }
}

impl Default for ResponseEdits {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseEdits {
    /// No edits.
    #[inline]
    pub const fn new() -> Self {
        ResponseEdits {
            set_headers: Vec::new(),
            remove_headers: Vec::new(),
        }
    }

    /// Set a response header (replacing any of that name).
    pub fn set_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.set_headers.push(Header::new(name, value));
        self
    }

    /// Remove a response header.
    pub fn remove_header(mut self, name: impl Into<String>) -> Self {
        self.remove_headers.push(name.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    pub(crate) fn head() -> RequestHead {
        RequestHead {
            id: "r1".to_string(),
            method: "GET".to_string(),
            scheme: "https".to_string(),
            authority: "example.org".to_string(),
            path: "/".to_string(),
            query: None,
            headers: vec![
                Header::new("x-a", "1"),
                Header::new("Content-Type", "text/plain"),
            ],
            client_ip: "192.0.2.1".to_string(),
            listener: "main".to_string(),
            route: None,
            facts: vec![
                ("route.name".to_string(), "a".to_string()),
                ("route.name".to_string(), "b".to_string()),
            ],
        }
    }

    #[test]
    fn reads_headers_and_facts() {
        let req = head();
        assert_eq!(header_value(&req, "content-type"), Some(&b"text/plain"[..]));
        assert_eq!(header_value(&req, "X-A"), Some(&b"1"[..]));
        assert_eq!(header_value(&req, "x-b"), None);
        assert_eq!(fact(&req, "route.name"), Some("b"));
        assert_eq!(fact(&req, "route.pools"), None);
    }

    #[test]
    fn builds_problem_replies() {
        let r = problem(404, "No route", "GET /x \"y\"");
        assert_eq!(r.status, 404);
        assert_eq!(r.headers.len(), 1);
        assert_eq!(r.headers[0].name, "content-type");
        assert_eq!(r.headers[0].value, b"application/problem+json");
        assert_eq!(
            core::str::from_utf8(&r.body).unwrap(),
            r#"{"type":"about:blank","title":"No route","status":404,"detail":"GET /x \"y\""}"#
        );
    }

    #[test]
    fn builds_edits() {
        let Verdict::Proceed(e) = Edits::new()
            .set_header("x-a", "1")
            .remove_header("x-b")
            .fact("t.k", "v")
            .response_header("x-c", b"2".as_slice())
            .proceed()
        else {
            panic!("not proceed")
        };
        assert_eq!(e.set_headers[0].name, "x-a");
        assert_eq!(e.remove_headers, ["x-b"]);
        assert_eq!(e.facts, [("t.k".to_string(), "v".to_string())]);
        assert_eq!(e.response_headers[0].value, b"2");
    }
}
