//! OLPC canonical JSON, byte for byte as securesystemslib's `encode_canonical` writes it.
//!
//! TUF signs the canonical form of the `signed` object, so a signature made here verifies in
//! python-tuf only if both sides produce the same bytes. The rules, taken from securesystemslib
//! rather than from the (looser) OLPC text:
//!
//! - object keys sorted by code point (UTF-8 byte order is the same order), no whitespace;
//! - strings in double quotes with only `"` and `\` escaped — every other character, control
//!   characters and non-ASCII included, is written as its raw UTF-8;
//! - integers only: a float has no canonical form, so it is refused rather than rounded;
//! - `true`, `false`, `null` as usual.

use serde_json::Value;

use crate::Error;

/// Encodes `value` as canonical JSON.
///
/// Fails on floating-point numbers (including integers too large for `i64`/`u64`, which
/// `serde_json` stores as floats), which securesystemslib refuses too.
pub fn to_canonical_json(value: &Value) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(256);
    write_value(value, &mut out)?;
    Ok(out)
}

fn write_value(value: &Value, out: &mut Vec<u8>) -> Result<(), Error> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(number) => {
            // `as_i64`/`as_u64` rather than `to_string`, so that `1.0` (a float that prints like
            // an integer under some serde_json features) is still refused.
            if let Some(n) = number.as_i64() {
                out.extend_from_slice(n.to_string().as_bytes());
            } else if let Some(n) = number.as_u64() {
                out.extend_from_slice(n.to_string().as_bytes());
            } else {
                return Err(Error::CanonicalJson(format!(
                    "floating-point number {number} (only integers are allowed)"
                )));
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (item_idx, item) in items.iter().enumerate() {
                if item_idx > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            // Sort explicitly: the map's own order depends on serde_json's `preserve_order`
            // feature, which any crate in the workspace may switch on.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (entry_idx, (key, item)) in entries.into_iter().enumerate() {
                if entry_idx > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write_value(item, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for byte in s.bytes() {
        // Both are ASCII, so they never occur inside a multi-byte UTF-8 sequence.
        if byte == b'"' || byte == b'\\' {
            out.push(b'\\');
        }
        out.push(byte);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canonical(value: Value) -> String {
        String::from_utf8(to_canonical_json(&value).unwrap()).unwrap()
    }

    #[test]
    fn object_keys_are_sorted_and_whitespace_is_dropped() {
        let value = json!({"b": [1, 2, {"d": null, "c": true}], "a": false, "A": -3});
        assert_eq!(
            canonical(value),
            r#"{"A":-3,"a":false,"b":[1,2,{"c":true,"d":null}]}"#
        );
    }

    #[test]
    fn only_quote_and_backslash_are_escaped_in_strings() {
        let value = json!({"k": "say \"hi\"\\\n\t\u{1}é"});
        assert_eq!(canonical(value), "{\"k\":\"say \\\"hi\\\"\\\\\n\t\u{1}é\"}");
    }

    #[test]
    fn keys_sort_by_code_point_not_by_utf16_or_locale() {
        // U+00E9 (é) sorts after "z"; U+FF21 after U+00E9; an emoji (outside the BMP) last.
        let value = json!({"\u{1F600}": 4, "\u{FF21}": 3, "é": 2, "z": 1});
        assert_eq!(
            canonical(value),
            "{\"z\":1,\"é\":2,\"\u{FF21}\":3,\"\u{1F600}\":4}"
        );
    }

    #[test]
    fn large_unsigned_and_negative_integers_are_written_exactly() {
        let value = json!([u64::MAX, i64::MIN, 0]);
        assert_eq!(canonical(value), format!("[{},{},0]", u64::MAX, i64::MIN));
    }

    #[test]
    fn floats_are_refused() {
        let error = to_canonical_json(&json!({"x": 1.5})).unwrap_err();
        assert!(
            error.to_string().contains("floating-point number 1.5"),
            "{error}"
        );
        let parsed: Value = serde_json::from_str(r#"{"x": 1.0}"#).unwrap();
        assert!(to_canonical_json(&parsed).is_err());
    }
}
