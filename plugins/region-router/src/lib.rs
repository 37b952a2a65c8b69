//! A partitioner that routes each record by the value of a JSON field (or its key),
//! through a value→partition map: `field=region`, `map=eu=0,us=1,apac=2`.

use meridian_plugin::{partitioner, Error, Params, Partitioner, Record};
use serde_json::Value;
use std::collections::HashMap;

pub struct RegionRouter {
    /// Dotted JSON path, or `None` to route by the record key.
    field: Option<String>,
    map: HashMap<String, u32>,
    default: Option<u32>,
}

impl RegionRouter {
    fn route_value(&self, value: Option<String>) -> Result<u32, Error> {
        let mapped = value.as_deref().and_then(|v| self.map.get(v).copied());
        match (mapped, self.default) {
            (Some(p), _) | (None, Some(p)) => Ok(p),
            (None, None) => Err(match value {
                Some(v) => format!("no partition mapped for `{v}` and no `default`"),
                None => "routing field missing and no `default`".to_string(),
            }
            .into()),
        }
    }
}

#[partitioner]
impl Partitioner for RegionRouter {
    fn new(params: &Params) -> Result<Self, Error> {
        let field = match params.require("field")? {
            "@key" => None,
            path => Some(path.to_string()),
        };
        let mut map = HashMap::new();
        for entry in params
            .require("map")?
            .split(',')
            .filter(|e| !e.trim().is_empty())
        {
            let (value, partition) = entry
                .rsplit_once('=')
                .ok_or_else(|| format!("map entry `{entry}` is not VALUE=PARTITION"))?;
            let partition: u32 = partition
                .trim()
                .parse()
                .map_err(|e| format!("map entry `{entry}`: {e}"))?;
            map.insert(value.trim().to_string(), partition);
        }
        Ok(RegionRouter {
            field,
            map,
            default: params
                .get("default")
                .map(|d| {
                    d.parse()
                        .map_err(|e| format!("parameter `default`=`{d}`: {e}"))
                })
                .transpose()?,
        })
    }

    fn partition(&mut self, record: &Record<'_>, _n_partitions: u32) -> Result<u32, Error> {
        let value = match &self.field {
            None => record.key.map(|k| String::from_utf8_lossy(k).into_owned()),
            Some(path) => {
                let json: Value = match record.value.map(serde_json::from_slice) {
                    Some(Ok(json)) => json,
                    Some(Err(e)) if self.default.is_none() => {
                        return Err(format!("value is not JSON: {e}").into())
                    }
                    _ => Value::Null,
                };
                json_path::get(&json, path).and_then(json_path::scalar_text)
            }
        };
        self.route_value(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_plugin::testing::run_partitioner;

    #[test]
    fn routes_by_field_with_default() {
        let values = [
            r#"{"geo":{"region":"eu"}}"#,
            r#"{"geo":{"region":"us"}}"#,
            r#"{"geo":{"region":"mars"}}"#,
            r#"{"other":1}"#,
            "not json",
        ];
        let records: Vec<_> = values
            .iter()
            .map(|v| Record::with_value(v.as_bytes()))
            .collect();
        let params = [
            ("field", "geo.region"),
            ("map", "eu=0, us=2"),
            ("default", "1"),
        ];
        let out = run_partitioner::<RegionRouter>(&params, &records, 3).unwrap();
        assert_eq!(out, vec![Ok(0), Ok(2), Ok(1), Ok(1), Ok(1)]);
    }

    #[test]
    fn unmapped_without_default_is_a_record_error() {
        let records = [
            Record::with_value(br#"{"r":"x"}"#),
            Record::with_value(b"{"),
        ];
        let out = run_partitioner::<RegionRouter>(&[("field", "r"), ("map", "y=0")], &records, 2)
            .unwrap();
        assert_eq!(
            out[0],
            Err("no partition mapped for `x` and no `default`".to_string())
        );
        assert!(out[1]
            .as_ref()
            .unwrap_err()
            .starts_with("value is not JSON"));
    }

    #[test]
    fn routes_by_key_and_checks_params() {
        let records = [Record {
            key: Some(b"apac"),
            ..Record::default()
        }];
        let out =
            run_partitioner::<RegionRouter>(&[("field", "@key"), ("map", "apac=3")], &records, 4)
                .unwrap();
        assert_eq!(out, vec![Ok(3)]);
        for params in [
            vec![("map", "a=1")],
            vec![("field", "f")],
            vec![("field", "f"), ("map", "a")],
            vec![("field", "f"), ("map", "a=x")],
            vec![("field", "f"), ("map", "a=1"), ("default", "-2")],
        ] {
            assert!(
                run_partitioner::<RegionRouter>(&params, &[], 4).is_err(),
                "{params:?}"
            );
        }
    }
}
