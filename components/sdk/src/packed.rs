//! The contract's packed encodings (`packed-head`, `packed-settings`, see
//! `wit/gateway.wit`): how the request head and a call's settings cross into
//! the guest as one byte string each instead of one allocator call per
//! string. Decoding is plain slicing over the bytes; a malformed buffer is a
//! host bug and traps the call (fail closed).

use alloc::string::String;
use alloc::vec::Vec;

use crate::{Header, RequestHead};

/// A reader over one packed buffer.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    #[inline]
    fn u32(&mut self) -> usize {
        let Some((n, rest)) = self.bytes.split_first_chunk::<4>() else { crate::trap() };
        self.bytes = rest;
        u32::from_le_bytes(*n) as usize
    }

    #[inline]
    fn bytes(&mut self) -> &'a [u8] {
        let len = self.u32();
        if len > self.bytes.len() {
            crate::trap()
        }
        let (b, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        b
    }

    /// Strings come from the host's own `String`s. As wit-bindgen does for
    /// strings the canonical ABI lowers, they are checked in debug builds
    /// only: validating every head byte again costs each fresh instance.
    #[inline]
    fn str(&mut self) -> &'a str {
        let b = self.bytes();
        #[cfg(debug_assertions)]
        let s = match core::str::from_utf8(b) {
            Ok(s) => s,
            Err(_) => crate::trap(),
        };
        // SAFETY: the host encodes only `str`s (see `wit/gateway.wit`).
        #[cfg(not(debug_assertions))]
        let s = unsafe { core::str::from_utf8_unchecked(b) };
        s
    }

    #[inline]
    fn string(&mut self) -> String {
        String::from(self.str())
    }

    fn opt(&mut self) -> Option<String> {
        let Some((&tag, rest)) = self.bytes.split_first() else { crate::trap() };
        self.bytes = rest;
        match tag {
            0 => None,
            1 => Some(self.string()),
            _ => crate::trap(),
        }
    }

    /// A count, bounded by what the rest of the buffer can hold (each item
    /// is at least `min` bytes), so a bad count cannot reserve memory.
    fn count(&mut self, min: usize) -> usize {
        let n = self.u32();
        if n > self.bytes.len() / min {
            crate::trap()
        }
        n
    }
}

/// Decode a `packed-head` into the head policies see.
pub fn decode_head(bytes: &[u8]) -> RequestHead {
    let mut r = Reader { bytes };
    let id = r.string();
    let method = r.string();
    let scheme = r.string();
    let authority = r.string();
    let path = r.string();
    let query = r.opt();
    let n = r.count(8);
    let mut headers = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.string();
        let value = r.bytes().to_vec();
        headers.push(Header { name, value });
    }
    let client_ip = r.string();
    let listener = r.string();
    let route = r.opt();
    let n = r.count(8);
    let mut facts = Vec::with_capacity(n);
    for _ in 0..n {
        let k = r.string();
        let v = r.string();
        facts.push((k, v));
    }
    if !r.bytes.is_empty() {
        crate::trap()
    }
    RequestHead { id, method, scheme, authority, path, query, headers, client_ip, listener, route, facts }
}

/// The settings pairs of a `packed-settings`, in their (sorted) order.
pub fn settings_pairs(bytes: &[u8]) -> impl Iterator<Item = (&str, &str)> {
    let mut r = Reader { bytes };
    let n = if bytes.is_empty() { 0 } else { r.count(8) };
    (0..n).map(move |_| (r.str(), r.str()))
}

/// The value of `key` in a `packed-settings`.
pub fn setting<'a>(bytes: &'a [u8], key: &str) -> Option<&'a str> {
    settings_pairs(bytes).find(|(k, _)| *k == key).map(|(_, v)| v)
}

/// Encode a head: the host's side of the contract, written again from the
/// `.wit` so the tests check the decoder against the text, not against
/// the host's code.
#[cfg(test)]
pub fn encode_head(h: &RequestHead) -> Vec<u8> {
    let mut out = Vec::new();
    let str = |out: &mut Vec<u8>, s: &[u8]| {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s);
    };
    let opt = |out: &mut Vec<u8>, s: &Option<String>| match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            str(out, s.as_bytes());
        }
    };
    for s in [&h.id, &h.method, &h.scheme, &h.authority, &h.path] {
        str(&mut out, s.as_bytes());
    }
    opt(&mut out, &h.query);
    out.extend_from_slice(&(h.headers.len() as u32).to_le_bytes());
    for x in &h.headers {
        str(&mut out, x.name.as_bytes());
        str(&mut out, &x.value);
    }
    str(&mut out, h.client_ip.as_bytes());
    str(&mut out, h.listener.as_bytes());
    opt(&mut out, &h.route);
    out.extend_from_slice(&(h.facts.len() as u32).to_le_bytes());
    for (k, v) in &h.facts {
        str(&mut out, k.as_bytes());
        str(&mut out, v.as_bytes());
    }
    out
}

/// Encode settings pairs (sorted by key by the caller).
#[cfg(test)]
pub fn encode_settings<'a>(pairs: impl ExactSizeIterator<Item = (&'a str, &'a str)>) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        for s in [k, v] {
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
    out
}

/// The settings of the current call (set by the export glue before the
/// policy runs). A guest is single-threaded and every call is a fresh
/// instance, so one slot holds exactly this call's settings.
#[cfg(all(target_arch = "wasm32", not(feature = "embedded")))]
mod current {
    use alloc::vec::Vec;
    use core::cell::UnsafeCell;

    struct Slot(UnsafeCell<Vec<u8>>);
    // SAFETY: wasm32 guests run one thread.
    unsafe impl Sync for Slot {}
    static SETTINGS: Slot = Slot(UnsafeCell::new(Vec::new()));

    pub fn set(bytes: Vec<u8>) {
        // SAFETY: one thread; no reference from `get` outlives a hook call,
        // and this runs only at a hook's entry.
        unsafe { *SETTINGS.0.get() = bytes }
    }

    pub fn get() -> &'static [u8] {
        // SAFETY: see `set`.
        unsafe { &*SETTINGS.0.get() }
    }
}

/// Natively (policy unit tests) each test thread has its own slot.
#[cfg(all(not(target_arch = "wasm32"), not(feature = "embedded")))]
mod current {
    use alloc::vec::Vec;
    use core::cell::RefCell;

    std::thread_local! {
        static SETTINGS: RefCell<&'static [u8]> = const { RefCell::new(&[]) };
    }

    pub fn set(bytes: Vec<u8>) {
        // Leaked: a test sets settings a handful of times.
        SETTINGS.with(|s| *s.borrow_mut() = alloc::boxed::Box::leak(bytes.into_boxed_slice()));
    }

    pub fn get() -> &'static [u8] {
        SETTINGS.with(|s| *s.borrow())
    }
}

/// Set this call's settings (the export glue does; native tests may too).
#[cfg(not(feature = "embedded"))]
pub fn set_call_settings(bytes: Vec<u8>) {
    current::set(bytes)
}

/// The `host` functions answered from this call's settings.
#[cfg(not(feature = "embedded"))]
pub(crate) mod host {
    use alloc::string::String;
    use alloc::vec::Vec;

    /// A setting of this policy, for the current route when the route
    /// overrides it, else the policy's own.
    pub fn setting(key: &str) -> Option<String> {
        super::setting(super::current::get(), key).map(String::from)
    }

    /// Every setting whose key starts with `prefix` (route overrides win),
    /// sorted by key.
    pub fn settings(prefix: &str) -> Vec<(String, String)> {
        super::settings_pairs(super::current::get())
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (String::from(k), String::from(v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    fn head() -> RequestHead {
        RequestHead {
            path: "/a b/ü".to_string(),
            query: Some("x=1".to_string()),
            headers: vec![Header::new("x-a", "1"), Header::new("x-bin", vec![0xff, 0, 0x80])],
            facts: vec![("route.name".to_string(), "a".to_string())],
            ..crate::tests::head()
        }
    }

    #[test]
    fn a_head_survives_encoding() {
        for h in [head(), RequestHead { query: None, route: Some("r".into()), headers: vec![], facts: vec![], ..head() }] {
            let d = decode_head(&encode_head(&h));
            assert_eq!((d.id, d.method, d.scheme, d.authority, d.path), (h.id, h.method, h.scheme, h.authority, h.path));
            assert_eq!((d.query, d.client_ip, d.listener, d.route, d.facts), (h.query, h.client_ip, h.listener, h.route, h.facts));
            assert_eq!(d.headers.len(), h.headers.len());
            for (a, b) in d.headers.iter().zip(&h.headers) {
                assert_eq!((&a.name, &a.value), (&b.name, &b.value));
            }
        }
    }

    #[test]
    #[should_panic(expected = "trap")]
    fn a_truncated_head_traps() {
        let b = encode_head(&head());
        decode_head(&b[..b.len() - 1]);
    }

    #[test]
    #[should_panic(expected = "trap")]
    fn trailing_bytes_trap() {
        let mut b = encode_head(&head());
        b.push(0);
        decode_head(&b);
    }

    #[test]
    #[should_panic(expected = "trap")]
    fn a_huge_header_count_traps_before_allocating() {
        let mut h = head();
        h.headers.clear();
        let mut b = encode_head(&h);
        // The header count follows id..path (5 str) and the query (opt).
        let at = [&h.id, &h.method, &h.scheme, &h.authority, &h.path].iter().map(|s| 4 + s.len()).sum::<usize>() + 1 + 4 + 3;
        b[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        decode_head(&b);
    }

    #[test]
    fn settings_are_looked_up_by_key() {
        let b = encode_settings([("a", "1"), ("b.c", "x,y"), ("b.d", "")].into_iter());
        assert_eq!(setting(&b, "b.c"), Some("x,y"));
        assert_eq!(setting(&b, "b.d"), Some(""));
        assert_eq!(setting(&b, "b"), None);
        assert_eq!(settings_pairs(&b).count(), 3);
        assert_eq!(setting(&[], "a"), None);
        #[cfg(not(feature = "embedded"))]
        {
            set_call_settings(b);
            assert_eq!(host::setting("a").as_deref(), Some("1"));
            assert_eq!(host::settings("b."), [("b.c".to_string(), "x,y".to_string()), ("b.d".to_string(), String::new())]);
        }
    }
}
