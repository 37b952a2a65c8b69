//! Dotted paths into JSON values: `user.address.city`, with numeric segments indexing
//! arrays (`items.0.sku`).

use serde_json::Value;

/// The value at `path`, if every segment exists.
pub fn get<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(value, |v, segment| match v {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// The value at `path` to modify, if every segment exists.
pub fn get_mut<'v>(value: &'v mut Value, path: &str) -> Option<&'v mut Value> {
    path.split('.').try_fold(value, |v, segment| match v {
        Value::Object(map) => map.get_mut(segment),
        Value::Array(items) => segment
            .parse::<usize>()
            .ok()
            .and_then(move |i| items.get_mut(i)),
        _ => None,
    })
}

/// A scalar as text for comparisons and lookups: strings unquoted, numbers and booleans
/// as JSON writes them, `null` as `null`; objects and arrays have none.
pub fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some("null".to_string()),
        Value::Array(_) | Value::Object(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dotted_paths() {
        let mut v = json!({"a": {"b": [10, {"c": "x"}]}, "n": null});
        assert_eq!(get(&v, "a.b.0"), Some(&json!(10)));
        assert_eq!(get(&v, "a.b.1.c"), Some(&json!("x")));
        assert_eq!(get(&v, "a.b.2"), None);
        assert_eq!(get(&v, "a.x"), None);
        assert_eq!(get(&v, "n.x"), None);
        *get_mut(&mut v, "a.b.1.c").unwrap() = json!("y");
        assert_eq!(get(&v, "a.b.1.c"), Some(&json!("y")));
        assert_eq!(scalar_text(&json!(1.5)).unwrap(), "1.5");
        assert_eq!(scalar_text(&json!({})), None);
    }
}
