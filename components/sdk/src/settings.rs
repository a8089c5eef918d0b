//! Typed settings: a policy's settings deserialised with serde into its own
//! struct, with errors that name the key.
//!
//! The host hands a policy its settings flattened: dotted keys with text
//! values (`issuers.procare.audience = "procare-api"`), lists in the
//! contract's list encoding, arrays of tables indexed (`rules.0.name`). This
//! module rebuilds the tree and lets serde read it, parsing numbers and
//! booleans from their text:
//!
//! ```ignore
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields, rename_all = "kebab-case")]
//! struct Settings {
//!     header: String,
//!     #[serde(default)]
//!     max_age_s: u32,
//!     allow: Vec<String>,
//! }
//!
//! fn check_config() -> Result<(), String> {
//!     portcullis_sdk::settings::load::<Settings>().map(drop)
//! }
//! ```
//!
//! An error reads `setting "max-age-s": expected an unsigned integer, got "ten"`,
//! which is what `check-config` reports (the gateway adds file and line).

use alloc::borrow::ToOwned;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};

/// This policy's settings (route overrides applied), as `T`.
pub fn load<T: DeserializeOwned>() -> Result<T, String> {
    from_pairs(&crate::host::settings(""))
}

/// Settings given as flattened `(key, value)` pairs, as `T` (what [`load`]
/// does with the host's answer; use it in native unit tests).
pub fn from_pairs<T: DeserializeOwned>(pairs: &[(String, String)]) -> Result<T, String> {
    let tree = Node::build(pairs).map_err(|e| e.to_string())?;
    T::deserialize(NodeDe { node: &tree, path: String::new() }).map_err(|e| e.to_string())
}

/// A settings error: the dotted key (empty for the whole table) and why.
#[derive(Debug)]
pub struct Error {
    path: Option<String>,
    reason: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.path.as_deref() {
            Some(p) if !p.is_empty() => f.write_str(&crate::setting_error(p, &self.reason)),
            _ => write!(f, "settings: {}", self.reason),
        }
    }
}

impl de::Error for Error {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        Error { path: None, reason: msg.to_string() }
    }
}

impl core::error::Error for Error {}

impl Error {
    fn at(path: &str, reason: impl Into<String>) -> Self {
        Error { path: Some(path.to_owned()), reason: reason.into() }
    }

    /// Name the key an error arose under, unless a deeper key is named already.
    fn under(mut self, path: &str) -> Self {
        if self.path.is_none() {
            self.path = Some(path.to_owned());
        }
        self
    }
}

/// The settings tree.
enum Node {
    Leaf(String),
    Table(BTreeMap<String, Node>),
}

impl Node {
    fn build(pairs: &[(String, String)]) -> Result<Node, Error> {
        let mut root = BTreeMap::new();
        for (key, value) in pairs {
            let mut table = &mut root;
            let mut parts = key.split('.').peekable();
            let mut path = String::new();
            while let Some(part) = parts.next() {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(part);
                if parts.peek().is_none() {
                    if table.insert(part.to_owned(), Node::Leaf(value.clone())).is_some() {
                        return Err(Error::at(&path, "is both a value and a table"));
                    }
                    break;
                }
                let next = table.entry(part.to_owned()).or_insert_with(|| Node::Table(BTreeMap::new()));
                match next {
                    Node::Table(t) => table = t,
                    Node::Leaf(_) => return Err(Error::at(&path, "is both a value and a table")),
                }
            }
        }
        Ok(Node::Table(root))
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

struct NodeDe<'a> {
    node: &'a Node,
    path: String,
}

impl<'a> NodeDe<'a> {
    fn text(&self, expected: &str) -> Result<&'a str, Error> {
        match self.node {
            Node::Leaf(s) => Ok(s),
            Node::Table(_) => Err(Error::at(&self.path, format!("expected {expected}, got a table"))),
        }
    }

    fn parse<N: core::str::FromStr>(&self, expected: &str) -> Result<N, Error> {
        let s = self.text(expected)?;
        s.trim().parse().map_err(|_| Error::at(&self.path, format!("expected {expected}, got {}", quoted(s))))
    }
}

fn quoted(s: &str) -> String {
    let mut out = String::new();
    crate::json::push_string(&mut out, s);
    out
}

macro_rules! numbers {
    ($($method:ident $visit:ident $ty:ty, $what:literal;)*) => {$(
        fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            let n: $ty = self.parse($what)?;
            v.$visit(n).map_err(|e: Error| e.under(&self.path))
        }
    )*};
}

impl<'de, 'a> de::Deserializer<'de> for NodeDe<'a> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.node {
            Node::Leaf(s) => v.visit_str(s).map_err(|e: Error| e.under(&self.path)),
            Node::Table(_) => self.deserialize_map(v),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let b = match self.text("true or false")?.trim() {
            "true" => true,
            "false" => false,
            other => return Err(Error::at(&self.path, format!("expected true or false, got {}", quoted(other)))),
        };
        v.visit_bool(b).map_err(|e: Error| e.under(&self.path))
    }

    numbers! {
        deserialize_i8 visit_i8 i8, "an integer";
        deserialize_i16 visit_i16 i16, "an integer";
        deserialize_i32 visit_i32 i32, "an integer";
        deserialize_i64 visit_i64 i64, "an integer";
        deserialize_u8 visit_u8 u8, "an unsigned integer";
        deserialize_u16 visit_u16 u16, "an unsigned integer";
        deserialize_u32 visit_u32 u32, "an unsigned integer";
        deserialize_u64 visit_u64 u64, "an unsigned integer";
        deserialize_f32 visit_f32 f32, "a number";
        deserialize_f64 visit_f64 f64, "a number";
    }

    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_str(v)
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let s = self.text("text")?;
        v.visit_str(s).map_err(|e: Error| e.under(&self.path))
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_str(v)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let s = self.text("text")?;
        v.visit_bytes(s.as_bytes()).map_err(|e: Error| e.under(&self.path))
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_bytes(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        // A key that is present is `Some`; an absent one never gets here.
        v.visit_some(self)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _name: &'static str, v: V) -> Result<V::Value, Error> {
        v.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, v: V) -> Result<V::Value, Error> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.node {
            // A list of values: the contract's list encoding.
            Node::Leaf(s) => {
                let items: Vec<String> = crate::list::decode(s);
                let leaves: Vec<Node> = items.into_iter().map(Node::Leaf).collect();
                let path = self.path.clone();
                v.visit_seq(Items { nodes: leaves.iter().collect(), next: 0, path: &path }).map_err(|e: Error| e.under(&self.path))
            }
            // An array of tables: keys `0`, `1`, ... in numeric order.
            Node::Table(t) => {
                let mut indexed = Vec::with_capacity(t.len());
                for (k, node) in t {
                    let i: usize = k.parse().map_err(|_| Error::at(&join(&self.path, k), "expected a list item index"))?;
                    indexed.push((i, node));
                }
                indexed.sort_by_key(|(i, _)| *i);
                v.visit_seq(Items { nodes: indexed.into_iter().map(|(_, n)| n).collect(), next: 0, path: &self.path }).map_err(|e: Error| e.under(&self.path))
            }
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, Error> {
        self.deserialize_seq(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(self, _name: &'static str, _len: usize, v: V) -> Result<V::Value, Error> {
        self.deserialize_seq(v)
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.node {
            Node::Table(t) => v.visit_map(Entries { iter: t.iter(), value: None, path: &self.path }).map_err(|e: Error| e.under(&self.path)),
            Node::Leaf(s) => Err(Error::at(&self.path, format!("expected a table, got {}", quoted(s)))),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(self, _name: &'static str, _fields: &'static [&'static str], v: V) -> Result<V::Value, Error> {
        self.deserialize_map(v)
    }

    fn deserialize_enum<V: Visitor<'de>>(self, _name: &'static str, _variants: &'static [&'static str], v: V) -> Result<V::Value, Error> {
        // Unit variants by name: `mode = "strict"`.
        let s = self.text("one of the variants")?;
        let de: de::value::StrDeserializer<'_, Error> = s.into_deserializer();
        v.visit_enum(de).map_err(|e: Error| e.under(&self.path))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_str(v)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_unit()
    }
}

struct Items<'a, 'p> {
    nodes: Vec<&'a Node>,
    next: usize,
    path: &'p str,
}

impl<'de, 'a, 'p> SeqAccess<'de> for Items<'a, 'p> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        let Some(node) = self.nodes.get(self.next) else { return Ok(None) };
        let path = join(self.path, &self.next.to_string());
        self.next += 1;
        seed.deserialize(NodeDe { node, path: path.clone() }).map(Some).map_err(|e: Error| e.under(&path))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.nodes.len() - self.next)
    }
}

struct Entries<'a, 'p> {
    iter: alloc::collections::btree_map::Iter<'a, String, Node>,
    value: Option<(String, &'a Node)>,
    path: &'p str,
}

impl<'de, 'a, 'p> MapAccess<'de> for Entries<'a, 'p> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        let Some((key, node)) = self.iter.next() else { return Ok(None) };
        let path = join(self.path, key);
        // An unknown key is reported under its own name.
        let de: de::value::StrDeserializer<'_, Error> = key.as_str().into_deserializer();
        let k = seed.deserialize(de).map_err(|e: Error| e.under(&path))?;
        self.value = Some((path, node));
        Ok(Some(k))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let (path, node) = self.value.take().expect("next_value_seed after next_key_seed");
        seed.deserialize(NodeDe { node, path: path.clone() }).map_err(|e: Error| e.under(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use serde::Deserialize;

    #[derive(Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    struct Settings {
        header: String,
        #[serde(default)]
        max_age_s: u32,
        #[serde(default)]
        allow: Vec<String>,
        strict: Option<bool>,
        mode: Mode,
        #[serde(default)]
        issuers: BTreeMap<String, Issuer>,
        #[serde(default)]
        rules: Vec<Rule>,
    }

    #[derive(Deserialize, Debug, PartialEq)]
    #[serde(rename_all = "kebab-case")]
    enum Mode {
        Strict,
        Lenient,
    }

    #[derive(Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    struct Issuer {
        issuer: String,
        audience: Vec<String>,
    }

    #[derive(Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Rule {
        name: String,
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn reads_nested_tables_lists_numbers_and_enums() {
        let s: Settings = from_pairs(&pairs(&[
            ("header", "x-sig"),
            ("max-age-s", "300"),
            ("allow", "a,b%2Cc"),
            ("strict", "true"),
            ("mode", "lenient"),
            ("issuers.procare.issuer", "https://auth"),
            ("issuers.procare.audience", "api"),
            ("rules.1.name", "second"),
            ("rules.0.name", "first"),
        ]))
        .unwrap();
        assert_eq!(s.header, "x-sig");
        assert_eq!(s.max_age_s, 300);
        assert_eq!(s.allow, vec!["a".to_string(), "b,c".to_string()]);
        assert_eq!(s.strict, Some(true));
        assert_eq!(s.mode, Mode::Lenient);
        assert_eq!(s.issuers["procare"], Issuer { issuer: "https://auth".into(), audience: vec!["api".into()] });
        assert_eq!(s.rules, vec![Rule { name: "first".into() }, Rule { name: "second".into() }]);
    }

    #[test]
    fn errors_name_the_key() {
        let base = [("header", "x"), ("mode", "strict")];
        let err = |extra: &[(&str, &str)]| {
            let mut p = pairs(&base);
            p.extend(pairs(extra));
            from_pairs::<Settings>(&p).unwrap_err()
        };
        assert_eq!(err(&[("max-age-s", "ten")]), r#"setting "max-age-s": expected an unsigned integer, got "ten""#);
        assert_eq!(err(&[("strict", "yes")]), r#"setting "strict": expected true or false, got "yes""#);
        assert!(err(&[("colour", "red")]).starts_with(r#"setting "colour": unknown field `colour`"#), "{}", err(&[("colour", "red")]));
        assert!(err(&[("issuers.procare.issuer", "i")]).starts_with(r#"setting "issuers.procare": missing field `audience`"#));
        assert!(err(&[("issuers.procare.issuer", "i"), ("issuers.procare.audience", "a"), ("issuers.procare.typo", "t")]).starts_with(r#"setting "issuers.procare.typo": unknown field"#));
        assert!(err(&[("rules.0.nme", "x")]).starts_with(r#"setting "rules.0.nme": unknown field"#));
        let p = pairs(&[("header", "x"), ("mode", "hard")]);
        assert!(from_pairs::<Settings>(&p).unwrap_err().starts_with(r#"setting "mode": unknown variant `hard`"#));
        let p = pairs(&[("mode", "strict")]);
        assert_eq!(from_pairs::<Settings>(&p).unwrap_err(), "settings: missing field `header`");
        let p = pairs(&[("header", "x"), ("header.sub", "y"), ("mode", "strict")]);
        assert_eq!(from_pairs::<Settings>(&p).unwrap_err(), r#"setting "header": is both a value and a table"#);
    }
}
