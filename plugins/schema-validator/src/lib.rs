//! A filter that checks each record's JSON value against a JSON Schema (a practical
//! subset, see the README) and reports records that do not match as record errors, so
//! the attachment's failure policy rejects, skips or dead-letters them.

use meridian_plugin::{filter, Error, Filter, Params, Record};
use serde_json::{Map, Value};

pub struct SchemaValidator {
    schema: Value,
}

const KEYWORDS: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "$schema",
    "title",
    "description",
];

/// Refuses keywords this validator does not implement, so a schema is never silently
/// half-enforced.
fn check_schema(schema: &Value, at: &str) -> Result<(), String> {
    let Value::Object(map) = schema else {
        return Err(format!("schema at `{at}` is not an object"));
    };
    for (key, value) in map {
        if !KEYWORDS.contains(&key.as_str()) {
            return Err(format!("schema keyword `{key}` at `{at}` is not supported"));
        }
        match key.as_str() {
            "properties" => {
                let Value::Object(props) = value else {
                    return Err(format!("`properties` at `{at}` is not an object"));
                };
                for (name, sub) in props {
                    check_schema(sub, &format!("{at}.{name}"))?;
                }
            }
            "items" => check_schema(value, &format!("{at}[]"))?,
            "additionalProperties" if !value.is_boolean() => {
                return Err(format!(
                    "`additionalProperties` at `{at}` must be a boolean"
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

fn type_matches(name: &str, value: &Value) -> bool {
    match name {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        _ => false,
    }
}

/// The first violation of `schema` by `value`, with its path.
pub fn violation(schema: &Map<String, Value>, value: &Value, at: &str) -> Option<String> {
    if let Some(t) = schema.get("type") {
        let ok = match t {
            Value::String(name) => type_matches(name, value),
            Value::Array(names) => names
                .iter()
                .any(|n| n.as_str().is_some_and(|n| type_matches(n, value))),
            _ => false,
        };
        if !ok {
            return Some(format!("`{at}` is not of type {t}"));
        }
    }
    if let Some(Value::Array(options)) = schema.get("enum") {
        if !options.contains(value) {
            return Some(format!(
                "`{at}` is not one of {}",
                Value::Array(options.clone())
            ));
        }
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
            if n < min {
                return Some(format!("`{at}` is below the minimum {min}"));
            }
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
            if n > max {
                return Some(format!("`{at}` is above the maximum {max}"));
            }
        }
    }
    let bounds = |min: &str, max: &str, len: usize, what: &str| -> Option<String> {
        if let Some(m) = schema.get(min).and_then(Value::as_u64) {
            if (len as u64) < m {
                return Some(format!("`{at}` has fewer than {m} {what}"));
            }
        }
        if let Some(m) = schema.get(max).and_then(Value::as_u64) {
            if len as u64 > m {
                return Some(format!("`{at}` has more than {m} {what}"));
            }
        }
        None
    };
    match value {
        Value::String(s) => bounds("minLength", "maxLength", s.chars().count(), "characters"),
        Value::Array(items) => bounds("minItems", "maxItems", items.len(), "items").or_else(|| {
            let Some(Value::Object(item_schema)) = schema.get("items") else {
                return None;
            };
            items
                .iter()
                .enumerate()
                .find_map(|(i, item)| violation(item_schema, item, &format!("{at}[{i}]")))
        }),
        Value::Object(fields) => {
            if let Some(Value::Array(required)) = schema.get("required") {
                for name in required.iter().filter_map(Value::as_str) {
                    if !fields.contains_key(name) {
                        return Some(format!("`{at}.{name}` is required"));
                    }
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            for (name, field) in fields {
                match props.and_then(|p| p.get(name)).and_then(Value::as_object) {
                    Some(sub) => {
                        if let Some(v) = violation(sub, field, &format!("{at}.{name}")) {
                            return Some(v);
                        }
                    }
                    None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                        return Some(format!("`{at}.{name}` is not allowed"));
                    }
                    None => {}
                }
            }
            None
        }
        _ => None,
    }
}

#[filter]
impl Filter for SchemaValidator {
    fn new(params: &Params) -> Result<Self, Error> {
        let schema: Value = serde_json::from_str(params.require("schema")?)
            .map_err(|e| format!("parameter `schema` is not JSON: {e}"))?;
        check_schema(&schema, "$")?;
        Ok(SchemaValidator { schema })
    }

    fn filter(&mut self, record: &Record<'_>) -> Result<bool, Error> {
        let value = record.value.ok_or("record has no value")?;
        let json: Value =
            serde_json::from_slice(value).map_err(|e| format!("value is not JSON: {e}"))?;
        let Value::Object(schema) = &self.schema else {
            unreachable!("check_schema accepted only an object");
        };
        match violation(schema, &json, "$") {
            None => Ok(true),
            Some(v) => Err(format!("schema violation: {v}").into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_plugin::testing::run_filter;

    const ORDER: &str = r#"{
        "type": "object",
        "required": ["id", "total"],
        "additionalProperties": false,
        "properties": {
            "id": {"type": "string", "minLength": 3},
            "total": {"type": "number", "minimum": 0},
            "status": {"enum": ["new", "paid"]},
            "items": {"type": "array", "maxItems": 2, "items": {"type": "integer"}}
        }
    }"#;

    fn check(value: &str) -> Result<bool, String> {
        let out = run_filter::<SchemaValidator>(
            &[("schema", ORDER)],
            &[Record::with_value(value.as_bytes())],
        );
        out.unwrap().remove(0)
    }

    #[test]
    fn valid_records_pass() {
        assert_eq!(check(r#"{"id":"abc","total":3.5}"#), Ok(true));
        assert_eq!(
            check(r#"{"id":"abc","total":0,"status":"paid","items":[1,2]}"#),
            Ok(true)
        );
    }

    #[test]
    fn violations_name_the_path() {
        for (value, message) in [
            (r#"{"total":1}"#, "`$.id` is required"),
            (
                r#"{"id":"ab","total":1}"#,
                "`$.id` has fewer than 3 characters",
            ),
            (
                r#"{"id":"abc","total":-1}"#,
                "`$.total` is below the minimum 0",
            ),
            (
                r#"{"id":"abc","total":"1"}"#,
                "`$.total` is not of type \"number\"",
            ),
            (
                r#"{"id":"abc","total":1,"status":"lost"}"#,
                "`$.status` is not one of",
            ),
            (
                r#"{"id":"abc","total":1,"items":[1,2.5]}"#,
                "`$.items[1]` is not of type",
            ),
            (
                r#"{"id":"abc","total":1,"items":[1,2,3]}"#,
                "has more than 2 items",
            ),
            (
                r#"{"id":"abc","total":1,"extra":true}"#,
                "`$.extra` is not allowed",
            ),
            ("[]", "`$` is not of type \"object\""),
            ("nope", "value is not JSON"),
        ] {
            let err = check(value).unwrap_err();
            assert!(err.contains(message), "{value}: {err}");
        }
    }

    #[test]
    fn unsupported_schemas_are_refused() {
        for (schema, message) in [
            (
                r#"{"pattern": "a+"}"#,
                "keyword `pattern` at `$` is not supported",
            ),
            (
                r#"{"properties": {"a": {"oneOf": []}}}"#,
                "keyword `oneOf` at `$.a`",
            ),
            ("[1]", "is not an object"),
            ("{", "not JSON"),
        ] {
            let err = run_filter::<SchemaValidator>(&[("schema", schema)], &[]).unwrap_err();
            assert!(err.contains(message), "{schema}: {err}");
        }
    }
}
