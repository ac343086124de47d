//! A small JSON writer for the output records: appends to a reused buffer,
//! integers by `itoa`, floats by `ryu` (shortest round-trip form), strings
//! escaped per RFC 8259. Non-finite floats, which JSON cannot hold, are
//! written as `null`.
//!
//! The output record is the service's most frequent allocation-free work
//! (one per scored point); writing it directly costs about half of going
//! through serde's data model.

/// Append `"s"`, escaped.
pub fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Append an integer.
pub fn int(out: &mut Vec<u8>, x: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(x).as_bytes());
}

/// Append a 64-bit float (`null` if not finite).
pub fn f64(out: &mut Vec<u8>, x: f64) {
    if x.is_finite() {
        out.extend_from_slice(ryu::Buffer::new().format_finite(x).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Append a 32-bit float (`null` if not finite).
pub fn f32(out: &mut Vec<u8>, x: f32) {
    if x.is_finite() {
        out.extend_from_slice(ryu::Buffer::new().format_finite(x).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Append `"key":`.
pub fn key(out: &mut Vec<u8>, k: &str) {
    string(out, k);
    out.push(b':');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_and_numbers_round_trip() {
        let mut out = Vec::new();
        out.push(b'[');
        string(&mut out, "a\"b\\c\nd\u{1}é/");
        out.push(b',');
        int(&mut out, -1_700_000_000_000);
        out.push(b',');
        f64(&mut out, 0.1 + 0.2);
        out.push(b',');
        f32(&mut out, 1.5e-7);
        out.push(b',');
        f64(&mut out, f64::NAN);
        out.push(b']');
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v[0], "a\"b\\c\nd\u{1}é/");
        assert_eq!(v[1], -1_700_000_000_000i64);
        assert_eq!(v[2].as_f64().unwrap(), 0.1 + 0.2);
        assert_eq!(v[3].as_f64().unwrap() as f32, 1.5e-7);
        assert!(v[4].is_null());
    }
}
