//! Policy settings: TOML tables flattened to dotted keys with string values,
//! the shape packed into each call (`packed-settings`) and read with the SDK's `setting`.

use std::collections::BTreeMap;
use std::sync::Arc;

/// A policy's settings, flattened (`issuers.procare.audience` → value).
pub type Settings = Arc<BTreeMap<String, String>>;

/// Flatten a TOML table: nested tables become dotted keys, arrays of scalars
/// use the contract's list encoding, arrays of tables are indexed (`a.0.b`).
pub fn flatten(table: &toml::Table) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in table {
        flatten_value(k, v, &mut out);
    }
    out
}

fn flatten_value(key: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                flatten_value(&format!("{key}.{k}"), v, out);
            }
        }
        toml::Value::Array(items) if items.iter().any(|v| v.is_table()) => {
            for (i, v) in items.iter().enumerate() {
                flatten_value(&format!("{key}.{i}"), v, out);
            }
        }
        toml::Value::Array(items) => {
            let strings: Vec<String> = items.iter().map(scalar).collect();
            out.insert(key.to_string(), encode_list(strings.iter().map(String::as_str)));
        }
        other => {
            out.insert(key.to_string(), scalar(other));
        }
    }
}

/// A scalar as text: strings as they are, numbers and booleans as TOML writes them.
pub fn scalar(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(items) => encode_list(items.iter().map(scalar).collect::<Vec<_>>().iter().map(String::as_str)),
        other => other.to_string(),
    }
}

/// The contract's list encoding: items joined by `,`; `%` → `%25`, `,` → `%2C` inside items.
pub fn encode_list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for c in item.chars() {
            match c {
                '%' => out.push_str("%25"),
                ',' => out.push_str("%2C"),
                c => out.push(c),
            }
        }
    }
    out
}

/// Inverse of [`encode_list`].
pub fn decode_list(text: &str) -> Vec<String> {
    if text.is_empty() {
        return Vec::new();
    }
    text.split(',').map(|item| item.replace("%2C", ",").replace("%2c", ",").replace("%25", "%")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_round_trip() {
        let items = ["a", "b,c", "100%", ""];
        let text = encode_list(items);
        assert_eq!(text, "a,b%2Cc,100%25,");
        assert_eq!(decode_list(&text), items);
        assert!(decode_list("").is_empty());
    }

    #[test]
    fn flattens_nested_tables_and_arrays() {
        let t: toml::Table = toml::from_str(
            r#"
            mode = "required"
            leeway = 30
            algs = ["RS256", "ES256"]
            [issuers.procare]
            audience = "api"
            [[limits]]
            name = "ip"
        "#,
        )
        .unwrap();
        let f = flatten(&t);
        assert_eq!(f["mode"], "required");
        assert_eq!(f["leeway"], "30");
        assert_eq!(f["algs"], "RS256,ES256");
        assert_eq!(f["issuers.procare.audience"], "api");
        assert_eq!(f["limits.0.name"], "ip");
    }
}
