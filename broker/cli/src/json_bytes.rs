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

/// A record as one `consume --format json` line holds it (the input of `produce
/// --format json` and `plugin test`). Missing fields are null or absent.
pub struct JsonRecord {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<meridian_wire::batch::Header>,
    pub timestamp: Option<i64>,
    pub partition: Option<u32>,
}

/// Reads the fields of a [`JsonRecord`] from a JSON object.
pub fn record(v: &serde_json::Value) -> anyhow::Result<JsonRecord> {
    let serde_json::Value::Object(fields) = v else {
        anyhow::bail!("expected a JSON object");
    };
    let bytes = |name: &str| {
        fields
            .get(name)
            .map_or(Ok(None), from_json)
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))
    };
    let headers = match fields.get("headers") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Object(map)) => map
            .iter()
            .map(|(k, v)| {
                Ok(meridian_wire::batch::Header {
                    key: k.clone(),
                    value: from_json(v).map_err(|e| anyhow::anyhow!("header `{k}`: {e}"))?,
                })
            })
            .collect::<anyhow::Result<_>>()?,
        Some(_) => anyhow::bail!("headers: expected an object of name: value"),
    };
    let number = |name: &str| -> anyhow::Result<Option<i64>> {
        match fields.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v
                .as_i64()
                .filter(|n| *n >= 0)
                .map(Some)
                .ok_or_else(|| anyhow::anyhow!("{name}: expected a number, got {v}")),
        }
    };
    let partition = number("partition")?
        .map(|p| u32::try_from(p).map_err(|_| anyhow::anyhow!("partition {p} is too large")))
        .transpose()?;
    Ok(JsonRecord {
        key: bytes("key")?,
        value: bytes("value")?,
        headers,
        timestamp: number("timestamp")?,
        partition,
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

    #[test]
    fn a_consumed_json_line_reads_back_as_a_record() {
        let line = serde_json::json!({
            "topic": "t", "partition": 2, "offset": 9, "timestamp": 1700000000000i64,
            "key": "k", "value": {"base64": "AJ+Slv8="}, "headers": {"h": "v", "n": null}
        });
        let r = record(&line).unwrap();
        assert_eq!(r.key, Some(Bytes::from_static(b"k")));
        assert_eq!(r.value, Some(Bytes::from_static(&[0, 159, 146, 150, 255])));
        assert_eq!(
            (r.timestamp, r.partition),
            (Some(1_700_000_000_000), Some(2))
        );
        assert_eq!(r.headers.len(), 2);
        assert_eq!(r.headers[1].value, None);
        let bare = record(&serde_json::json!({"value": "v"})).unwrap();
        assert_eq!(
            (bare.key, bare.timestamp, bare.partition),
            (None, None, None)
        );
        for bad in [
            serde_json::json!([1]),
            serde_json::json!({"partition": -1}),
            serde_json::json!({"timestamp": "soon"}),
            serde_json::json!({"headers": [1]}),
            serde_json::json!({"value": {"base64": "!!"}}),
        ] {
            assert!(record(&bad).is_err(), "{bad}");
        }
    }
}
