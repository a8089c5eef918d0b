//! Just enough JSON to write problem details, without `core::fmt`.

use alloc::string::String;
use alloc::vec::Vec;

/// Append `s` to `out` as a JSON string, quotes included. Escapes `"`, `\`
/// and every control character (U+0000..U+001F, U+007F); the rest of UTF-8
/// is written as it is.
pub fn push_string(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let short = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f | 0x7f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if short.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        } else {
            out.push_str(short);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// `s` as a JSON string, quotes included.
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    push_string(&mut out, s);
    out
}

/// Append the decimal digits of `n`.
pub fn push_u64(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &buf[i..] {
        out.push(d as char);
    }
}

/// The body of an RFC 9457 problem:
/// `{"type":"about:blank","title":…,"status":…,"detail":…}`.
pub fn problem(status: u16, title: &str, detail: &str) -> Vec<u8> {
    let mut out = String::with_capacity(64 + title.len() + detail.len());
    out.push_str("{\"type\":\"about:blank\",\"title\":");
    push_string(&mut out, title);
    out.push_str(",\"status\":");
    push_u64(&mut out, status.into());
    out.push_str(",\"detail\":");
    push_string(&mut out, detail);
    out.push('}');
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_strings() {
        assert_eq!(string(""), r#""""#);
        assert_eq!(string("plain /path"), r#""plain /path""#);
        assert_eq!(string("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(string("\n\r\t\u{8}\u{c}"), r#""\n\r\t\b\f""#);
        assert_eq!(string("\u{0}\u{1f}\u{7f}x"), r#""\u0000\u001f\u007fx""#);
        assert_eq!(string("é ü ☃ </script>"), "\"é ü ☃ </script>\"");
    }

    #[test]
    fn writes_numbers() {
        for n in [0u64, 7, 10, 404, 65535, u64::MAX] {
            let mut s = String::new();
            push_u64(&mut s, n);
            assert_eq!(s, alloc::format!("{n}"));
        }
    }

    #[test]
    fn writes_problems() {
        assert_eq!(
            problem(405, "Method not allowed", "DELETE is not allowed on \"/a\"\n"),
            br#"{"type":"about:blank","title":"Method not allowed","status":405,"detail":"DELETE is not allowed on \"/a\"\n"}"#
        );
    }
}
