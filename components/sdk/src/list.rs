//! The contract's list encoding, used in facts and settings: items joined by
//! `,`; inside an item `%` is written `%25` and `,` is written `%2C`. The
//! empty string is the empty list (so a list of one empty item cannot be
//! written: it encodes to the empty list).

use alloc::borrow::Cow;
use alloc::string::String;
use alloc::vec::Vec;

/// Encode `items`.
pub fn encode<S: AsRef<str>>(items: &[S]) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_item(&mut out, item.as_ref());
    }
    out
}

/// Append one escaped item (without a separator) to `out`.
pub fn push_item(out: &mut String, item: &str) {
    let mut rest = item;
    while let Some(i) = rest.find(['%', ',']) {
        out.push_str(&rest[..i]);
        out.push_str(if rest.as_bytes()[i] == b'%' {
            "%25"
        } else {
            "%2C"
        });
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
}

/// Decode a list.
pub fn decode(text: &str) -> Vec<String> {
    items(text).map(Cow::into_owned).collect()
}

/// The decoded items of a list, borrowed unless an item has escapes.
pub fn items(text: &str) -> Items<'_> {
    Items {
        rest: if text.is_empty() { None } else { Some(text) },
    }
}

/// Iterator returned by [`items`].
#[derive(Clone)]
pub struct Items<'a> {
    rest: Option<&'a str>,
}

impl<'a> Iterator for Items<'a> {
    type Item = Cow<'a, str>;

    fn next(&mut self) -> Option<Cow<'a, str>> {
        let rest = self.rest?;
        let raw = match rest.find(',') {
            Some(i) => {
                self.rest = Some(&rest[i + 1..]);
                &rest[..i]
            }
            None => {
                self.rest = None;
                rest
            }
        };
        Some(unescape(raw))
    }
}

/// Unescape one item: `%25` → `%`, `%2C` → `,` (hex case-insensitive);
/// any other `%` is kept as it is.
pub fn unescape(item: &str) -> Cow<'_, str> {
    if !item.contains('%') {
        return Cow::Borrowed(item);
    }
    let b = item.as_bytes();
    let mut out = String::with_capacity(item.len());
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let c = match (b[i + 1], b[i + 2]) {
                (b'2', b'5') => Some('%'),
                (b'2', b'C' | b'c') => Some(','),
                _ => None,
            };
            if let Some(c) = c {
                out.push_str(&item[start..i]);
                out.push(c);
                i += 3;
                start = i;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&item[start..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes() {
        assert_eq!(encode::<&str>(&[]), "");
        assert_eq!(encode(&["a"]), "a");
        assert_eq!(encode(&["a", "b"]), "a,b");
        assert_eq!(encode(&["a,b", "100%", "%2C"]), "a%2Cb,100%25,%252C");
        assert_eq!(encode(&["", ""]), ",");
        assert_eq!(encode(&[String::from("x")]), "x");
    }

    #[test]
    fn decodes() {
        assert_eq!(decode(""), Vec::<String>::new());
        assert_eq!(decode("a"), ["a"]);
        assert_eq!(decode("a,b"), ["a", "b"]);
        assert_eq!(decode(","), ["", ""]);
        assert_eq!(decode("a%2Cb,100%25,%252C"), ["a,b", "100%", "%2C"]);
        assert_eq!(decode("a%2cb"), ["a,b"]);
        // Unknown or truncated escapes are kept.
        assert_eq!(decode("%41,%2,%"), ["%41", "%2", "%"]);
    }

    #[test]
    fn round_trips() {
        let cases: &[&[&str]] = &[
            &["a"],
            &["x", "", "y"],
            &["%", ",", "%%,,", "%25", "%2C", "%2c", "é,ü"],
            &["a=b", "key=va,lue"],
        ];
        for items in cases {
            assert_eq!(decode(&encode(items)), *items, "{items:?}");
        }
    }

    #[test]
    fn borrows_when_it_can() {
        let v: Vec<_> = items("a,b%2C").collect();
        assert!(matches!(v[0], Cow::Borrowed("a")));
        assert!(matches!(&v[1], Cow::Owned(s) if s == "b,"));
        assert_eq!(items("").count(), 0);
    }
}
