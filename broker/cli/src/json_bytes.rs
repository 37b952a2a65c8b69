//! Record keys, values and header values in JSON lines (`consume --format json`,
//! `plugin test`): UTF-8 bytes as a string, other bytes as `{"base64": "…"}`, so
//! binary payloads survive the round trip instead of being mangled into U+FFFD.

use base64::Engine;
use bytes::Bytes;

/// `null`, a string, or `{"base64": …}` for bytes that are not UTF-8.
pub fn to_json(bytes: &Option<Bytes>) -> serde_json::Value {
    match bytes {
        None => serde_json::Value::Null,
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => text.into(),
            Err(_) => serde_json::json!({
                "base64": base64::engine::general_purpose::STANDARD.encode(bytes)
            }),
        },
    }
}

/// The inverse of [`to_json`]; any other JSON value stands for its JSON text.
pub fn from_json(value: &serde_json::Value) -> anyhow::Result<Option<Bytes>> {
    Ok(match value {
        serde_json::Value::Null => None,
        serde_json::Value::String(text) => Some(Bytes::from(text.clone())),
        serde_json::Value::Object(fields) if fields.len() == 1 && fields.contains_key("base64") => {
            let encoded = fields["base64"]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("`base64` must be a string"))?;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| anyhow::anyhow!("`base64`: {e}"))?;
            Some(Bytes::from(decoded))
        }
        other => Some(Bytes::from(other.to_string())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_stays_text_and_other_bytes_round_trip_as_base64() {
        let text = Some(Bytes::from_static("héllo".as_bytes()));
        assert_eq!(to_json(&text), serde_json::json!("héllo"));
        assert_eq!(from_json(&to_json(&text)).unwrap(), text);
        let binary = Some(Bytes::from_static(&[0, 159, 146, 150, 255]));
        assert_eq!(to_json(&binary), serde_json::json!({"base64": "AJ+Slv8="}));
        assert_eq!(from_json(&to_json(&binary)).unwrap(), binary);
        assert_eq!(to_json(&None), serde_json::Value::Null);
        assert_eq!(from_json(&serde_json::Value::Null).unwrap(), None);
        // Other JSON stands for its text, as plugin test inputs have always allowed.
        assert_eq!(
            from_json(&serde_json::json!({"id": 7})).unwrap(),
            Some(Bytes::from_static(br#"{"id":7}"#))
        );
        assert!(from_json(&serde_json::json!({"base64": "!!"})).is_err());
    }
}
