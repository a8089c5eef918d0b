//! The host's side of the contract's packed encodings (`packed-head`,
//! `packed-settings` in `wit/gateway.wit`; the SDK's `packed` module decodes
//! them): the head and a call's settings cross into the guest as one byte
//! string each, one allocator call instead of one per string.

use super::bindings::types;
use super::settings::Settings;

fn push_str(out: &mut Vec<u8>, s: &[u8]) {
    // Heads are bounded far below 4 GiB (431 above the configured limit).
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s);
}

fn push_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            push_str(out, s.as_bytes());
        }
    }
}

/// A request head in the head encoding.
pub fn head(h: &types::RequestHead) -> Vec<u8> {
    let strings = h.id.len() + h.method.len() + h.scheme.len() + h.authority.len() + h.path.len() + h.client_ip.len() + h.listener.len();
    let headers: usize = h.headers.iter().map(|x| 8 + x.name.len() + x.value.len()).sum();
    let facts: usize = h.facts.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(7 * 4 + strings + 2 * 5 + h.query.as_ref().map_or(0, String::len) + h.route.as_ref().map_or(0, String::len) + 8 + headers + facts);
    for s in [&h.id, &h.method, &h.scheme, &h.authority, &h.path] {
        push_str(&mut out, s.as_bytes());
    }
    push_opt(&mut out, h.query.as_deref());
    out.extend_from_slice(&(h.headers.len() as u32).to_le_bytes());
    for x in &h.headers {
        push_str(&mut out, x.name.as_bytes());
        push_str(&mut out, &x.value);
    }
    push_str(&mut out, h.client_ip.as_bytes());
    push_str(&mut out, h.listener.as_bytes());
    push_opt(&mut out, h.route.as_deref());
    out.extend_from_slice(&(h.facts.len() as u32).to_le_bytes());
    for (k, v) in &h.facts {
        push_str(&mut out, k.as_bytes());
        push_str(&mut out, v.as_bytes());
    }
    out
}

/// A policy's effective settings for one call in the settings encoding:
/// the route's `overrides` merged over `settings`, sorted by key.
pub fn settings(settings: &Settings, overrides: Option<&Settings>) -> Vec<u8> {
    let merged: Vec<(&String, &String)> = match overrides {
        None => settings.iter().collect(),
        Some(o) => {
            let mut m: std::collections::BTreeMap<&String, &String> = settings.iter().collect();
            m.extend(o.iter());
            m.into_iter().collect()
        }
    };
    let size: usize = merged.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(4 + size);
    out.extend_from_slice(&(merged.len() as u32).to_le_bytes());
    for (k, v) in merged {
        push_str(&mut out, k.as_bytes());
        push_str(&mut out, v.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    #[test]
    fn a_head_is_laid_out_as_the_contract_says() {
        let h = types::RequestHead {
            id: "i".into(),
            method: "GET".into(),
            scheme: "https".into(),
            authority: "a".into(),
            path: "/".into(),
            query: None,
            headers: vec![types::Header { name: "x".into(), value: vec![0xff] }],
            client_ip: "c".into(),
            listener: "l".into(),
            route: Some("r".into()),
            facts: vec![("k".into(), "v".into())],
        };
        let mut want = Vec::new();
        for s in ["i", "GET", "https", "a", "/"] {
            want.extend_from_slice(&(s.len() as u32).to_le_bytes());
            want.extend_from_slice(s.as_bytes());
        }
        want.push(0);
        want.extend_from_slice(&[1, 0, 0, 0, 1, 0, 0, 0, b'x', 1, 0, 0, 0, 0xff]);
        want.extend_from_slice(&[1, 0, 0, 0, b'c', 1, 0, 0, 0, b'l', 1, 1, 0, 0, 0, b'r']);
        want.extend_from_slice(&[1, 0, 0, 0, 1, 0, 0, 0, b'k', 1, 0, 0, 0, b'v']);
        assert_eq!(head(&h), want);
    }

    #[test]
    fn route_overrides_win_and_keys_stay_sorted() {
        let s: Settings = Arc::new(BTreeMap::from([("b".to_string(), "1".to_string()), ("d".to_string(), "2".to_string())]));
        let o: Settings = Arc::new(BTreeMap::from([("c".to_string(), "3".to_string()), ("d".to_string(), "4".to_string())]));
        let mut want = vec![3, 0, 0, 0];
        for (k, v) in [("b", "1"), ("c", "3"), ("d", "4")] {
            want.extend_from_slice(&[1, 0, 0, 0, k.as_bytes()[0], 1, 0, 0, 0, v.as_bytes()[0]]);
        }
        assert_eq!(settings(&s, Some(&o)), want);
        assert_eq!(settings(&s, None)[..4], [2, 0, 0, 0]);
    }
}
