//! The policy's logic as pure functions (tested natively): settings to
//! rules, a request to each rule's key, decisions to headers.
//!
//! Settings are named rules, so a route can add or switch off one rule by
//! its name (`[routes.settings.rate-limit] rules.notify-daily.key = [...]`)
//! without restating the others (overrides merge key by key).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use portcullis_sdk::{RequestHead, fact, header_value, list};

/// Settings of one rule, below `rules.<name>.`.
const RULE_KEYS: [&str; 4] = ["limit", "key", "cost", "enabled"];

/// One part of a rule's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// The client's address (`request-head.client-ip`); IPv6 clients by
    /// their /64 (see [`client_network`]).
    Ip,
    /// The route's name.
    Route,
    /// The request method.
    Method,
    /// A fact written by an earlier policy (`fact:jwt.sub`).
    Fact(String),
    /// A request header (`header:x-api-key`), lower-case name.
    Header(String),
}

impl KeyPart {
    fn parse(text: &str) -> Result<KeyPart, String> {
        match text {
            "ip" => Ok(KeyPart::Ip),
            "route" => Ok(KeyPart::Route),
            "method" => Ok(KeyPart::Method),
            _ => {
                if let Some(name) = text.strip_prefix("fact:").filter(|n| !n.is_empty()) {
                    Ok(KeyPart::Fact(name.to_string()))
                } else if let Some(name) = text.strip_prefix("header:").filter(|n| !n.is_empty()) {
                    Ok(KeyPart::Header(name.to_ascii_lowercase()))
                } else {
                    Err(format!("unknown key part {text:?} (ip, route, method, fact:<name>, header:<name>)"))
                }
            }
        }
    }

    /// How the part is named in the audit record (never its value).
    pub fn kind(&self) -> String {
        match self {
            KeyPart::Ip => "ip".into(),
            KeyPart::Route => "route".into(),
            KeyPart::Method => "method".into(),
            KeyPart::Fact(n) => format!("fact:{n}"),
            KeyPart::Header(n) => format!("header:{n}"),
        }
    }
}

/// A rule: which limit, keyed by what, costing how much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub limit: String,
    pub key: Vec<KeyPart>,
    pub cost: u32,
}

impl Rule {
    /// The key parts as the audit record names them (`ip`, `fact:jwt.sub`).
    pub fn key_kinds(&self) -> String {
        let kinds: Vec<String> = self.key.iter().map(KeyPart::kind).collect();
        list::encode(&kinds)
    }
}

/// Parse the rules from the flattened settings (route overrides merged),
/// in name order. Disabled rules are left out.
pub fn parse(pairs: &[(String, String)]) -> Result<Vec<Rule>, String> {
    let mut names: Vec<&str> = Vec::new();
    for (k, _) in pairs {
        let Some(rest) = k.strip_prefix("rules.") else {
            return Err(format!("{k}: unknown setting (rules are set as rules.<name>.limit / key / cost / enabled)"));
        };
        let Some((name, field)) = rest.split_once('.') else {
            return Err(format!("{k}: a rule is a table (rules.<name>.key = [...])"));
        };
        if !RULE_KEYS.contains(&field) {
            return Err(format!("{k}: unknown rule setting {field:?} (limit, key, cost, enabled)"));
        }
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let get = |name: &str, field: &str| -> Option<&str> {
        let want = format!("rules.{name}.{field}");
        pairs.iter().find(|(k, _)| *k == want).map(|(_, v)| v.as_str())
    };
    let mut rules = Vec::new();
    for name in names {
        let enabled = match get(name, "enabled") {
            None | Some("true") => true,
            Some("false") => false,
            Some(v) => return Err(format!("rules.{name}.enabled: expected true or false, got {v:?}")),
        };
        let limit = get(name, "limit").unwrap_or(name).to_string();
        let key_text = get(name, "key").ok_or_else(|| format!("rules.{name}.key: missing (e.g. [\"ip\"] or [\"fact:jwt.sub\"])"))?;
        let mut key = Vec::new();
        for part in list::items(key_text) {
            key.push(KeyPart::parse(&part).map_err(|why| format!("rules.{name}.key: {why}"))?);
        }
        if key.is_empty() {
            return Err(format!("rules.{name}.key: at least one part is needed"));
        }
        let cost = match get(name, "cost") {
            None => 1,
            Some(v) => match v.parse::<u32>() {
                Ok(n) if n >= 1 => n,
                _ => return Err(format!("rules.{name}.cost: expected a whole number of at least 1, got {v:?}")),
            },
        };
        if enabled {
            rules.push(Rule { name: name.to_string(), limit, key, cost });
        }
    }
    Ok(rules)
}

/// The budget an address draws on: an IPv4 address itself (an IPv4-mapped
/// IPv6 address too), an IPv6 address by its /64. One IPv6 subscriber gets
/// a whole /64 (RFC 6177) and can rotate addresses inside it at will, so a
/// per-address budget would be no budget at all.
pub fn client_network(ip: &str) -> String {
    match ip.parse::<core::net::Ipv6Addr>() {
        Ok(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                let net = core::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{net}/64")
            }
        },
        Err(_) => ip.to_string(),
    }
}

/// The rule's key for this request, or `None` when a part is absent (a
/// per-subject rule does not apply to an anonymous request). Parts are
/// joined with the contract's list encoding, so no two requests with
/// different parts share a key.
pub fn key_of(rule: &Rule, req: &RequestHead) -> Option<String> {
    let mut parts: Vec<String> = Vec::with_capacity(rule.key.len());
    for part in &rule.key {
        let value = match part {
            KeyPart::Ip => client_network(&req.client_ip),
            KeyPart::Route => req.route.clone()?,
            KeyPart::Method => req.method.clone(),
            KeyPart::Fact(name) => fact(req, name).filter(|v| !v.is_empty())?.to_string(),
            KeyPart::Header(name) => {
                let v = header_value(req, name).filter(|v| !v.is_empty())?;
                String::from_utf8_lossy(v).into_owned()
            }
        };
        parts.push(value);
    }
    Some(list::encode(&parts))
}

/// Whole seconds, rounded up (a client told to wait 0 s would come back at once).
pub fn ceil_secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

/// One item of the `RateLimit` header (IETF httpapi rate-limit headers
/// draft): `"<limit>";r=<remaining>;t=<seconds until whole>`.
pub fn ratelimit_item(limit: &str, remaining: u64, reset_ms: u64) -> String {
    format!("\"{limit}\";r={remaining};t={}", ceil_secs(reset_ms))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use alloc::vec;
    use portcullis_sdk::Header;

    fn pairs(kv: &[(&str, &str)]) -> Vec<(String, String)> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn req() -> RequestHead {
        RequestHead {
            id: "r1".into(),
            method: "GET".into(),
            scheme: "http".into(),
            authority: "api.example".into(),
            path: "/x".into(),
            query: None,
            headers: vec![Header::new("x-api-key", "k,1")],
            client_ip: "10.0.0.7".into(),
            listener: "public".into(),
            route: Some("notifications".into()),
            facts: vec![("jwt.sub".into(), "patient-42".into())],
        }
    }

    #[test]
    fn parses_named_rules_with_defaults() {
        let rules = parse(&pairs(&[("rules.per-ip.key", "ip"), ("rules.daily.limit", "notify-daily"), ("rules.daily.key", "fact:jwt.sub,route"), ("rules.daily.cost", "2")])).unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0], Rule { name: "per-ip".into(), limit: "per-ip".into(), key: vec![KeyPart::Ip], cost: 1 });
        assert_eq!(rules[1].limit, "notify-daily");
        assert_eq!(rules[1].key, vec![KeyPart::Fact("jwt.sub".into()), KeyPart::Route]);
        assert_eq!(rules[1].cost, 2);
    }

    #[test]
    fn a_disabled_rule_is_left_out() {
        let rules = parse(&pairs(&[("rules.per-ip.key", "ip"), ("rules.per-ip.enabled", "false")])).unwrap();
        assert!(rules.is_empty());
    }

    #[test]
    fn refuses_bad_settings_naming_the_key() {
        for (kv, want) in [
            (vec![("limit", "x")], "limit: unknown setting"),
            (vec![("rules.a", "x")], "rules.a: a rule is a table"),
            (vec![("rules.a.keys", "ip")], "rules.a.keys: unknown rule setting"),
            (vec![("rules.a.cost", "1")], "rules.a.key: missing"),
            (vec![("rules.a.key", "ip"), ("rules.a.cost", "0")], "rules.a.cost: expected a whole number"),
            (vec![("rules.a.key", "ip"), ("rules.a.cost", "-1")], "rules.a.cost"),
            (vec![("rules.a.key", "cookie:sid")], "rules.a.key: unknown key part \"cookie:sid\""),
            (vec![("rules.a.key", "fact:")], "unknown key part"),
            (vec![("rules.a.key", "")], "at least one part"),
            (vec![("rules.a.key", "ip"), ("rules.a.enabled", "yes")], "rules.a.enabled"),
        ] {
            let err = parse(&pairs(&kv)).unwrap_err();
            assert!(err.contains(want), "{kv:?}: {err}");
        }
    }

    #[test]
    fn keys_join_parts_unambiguously_and_skip_when_absent() {
        let r = req();
        let rule = |key: Vec<KeyPart>| Rule { name: "a".into(), limit: "a".into(), key, cost: 1 };
        assert_eq!(key_of(&rule(vec![KeyPart::Ip]), &r).unwrap(), "10.0.0.7");
        // IPv6: one budget per /64, whichever address of it a client uses.
        let mut v6 = req();
        v6.client_ip = "2001:db8:1:2:aaaa::1".into();
        assert_eq!(key_of(&rule(vec![KeyPart::Ip]), &v6).unwrap(), "2001:db8:1:2::/64");
        v6.client_ip = "2001:db8:1:2:ffff:ffff:ffff:fffe".into();
        assert_eq!(key_of(&rule(vec![KeyPart::Ip]), &v6).unwrap(), "2001:db8:1:2::/64");
        v6.client_ip = "2001:db8:1:3::1".into();
        assert_eq!(key_of(&rule(vec![KeyPart::Ip]), &v6).unwrap(), "2001:db8:1:3::/64");
        v6.client_ip = "::ffff:192.0.2.9".into();
        assert_eq!(key_of(&rule(vec![KeyPart::Ip]), &v6).unwrap(), "192.0.2.9");
        assert_eq!(key_of(&rule(vec![KeyPart::Fact("jwt.sub".into()), KeyPart::Route]), &r).unwrap(), "patient-42,notifications");
        // A comma inside a part is escaped, so ("k,1") differs from ("k", "1").
        assert_eq!(key_of(&rule(vec![KeyPart::Header("x-api-key".into())]), &r).unwrap(), "k%2C1");
        assert_eq!(key_of(&rule(vec![KeyPart::Fact("jwt.roles".into())]), &r), None);
        assert_eq!(key_of(&rule(vec![KeyPart::Header("authorization".into())]), &r), None);
        let mut anonymous = req();
        anonymous.facts.clear();
        assert_eq!(key_of(&rule(vec![KeyPart::Fact("jwt.sub".into())]), &anonymous), None);
    }

    #[test]
    fn header_items_round_seconds_up() {
        assert_eq!(ratelimit_item("per-ip", 19, 100), "\"per-ip\";r=19;t=1");
        assert_eq!(ratelimit_item("per-ip", 0, 2000), "\"per-ip\";r=0;t=2");
        assert_eq!(ceil_secs(0), 0);
        assert_eq!(ceil_secs(1), 1);
        assert_eq!(ceil_secs(1001), 2);
    }
}
