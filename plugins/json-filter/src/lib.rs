//! Keeps JSON records whose fields match conditions: `where=status=active`,
//! `where=user.age>=18;country!=US` (all conditions must hold).

use meridian_plugin::{filter, Error, Filter, Params, Record};
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
}

#[derive(Debug, PartialEq)]
struct Condition {
    path: String,
    op: Op,
    literal: String,
    number: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Missing {
    Drop,
    Keep,
    Error,
}

pub struct JsonFilter {
    conditions: Vec<Condition>,
    missing: Missing,
}

fn parse_condition(text: &str) -> Result<Condition, Error> {
    let at = text
        .find(['=', '!', '<', '>'])
        .ok_or_else(|| format!("condition `{text}` has no operator (=, !=, >, <, >=, <=)"))?;
    let rest = &text[at..];
    let (op, len) = if rest.starts_with("!=") {
        (Op::Ne, 2)
    } else if rest.starts_with(">=") {
        (Op::Ge, 2)
    } else if rest.starts_with("<=") {
        (Op::Le, 2)
    } else if rest.starts_with('=') {
        (Op::Eq, 1)
    } else if rest.starts_with('>') {
        (Op::Gt, 1)
    } else if rest.starts_with('<') {
        (Op::Lt, 1)
    } else {
        return Err(format!("condition `{text}`: `!` must be followed by `=`").into());
    };
    let path = text[..at].trim();
    if path.is_empty() {
        return Err(format!("condition `{text}` has no field").into());
    }
    let literal = text[at + len..].trim().to_string();
    Ok(Condition {
        path: path.to_string(),
        op,
        number: literal.parse().ok(),
        literal,
    })
}

impl Condition {
    fn holds(&self, value: &Value) -> bool {
        use std::cmp::Ordering;
        let ordering = match (value.as_f64(), self.number) {
            (Some(v), Some(n)) => v.partial_cmp(&n),
            _ => json_path::scalar_text(value).map(|text| text.as_str().cmp(self.literal.as_str())),
        };
        let Some(ordering) = ordering else {
            // Objects, arrays and NaN compare unequal to everything.
            return self.op == Op::Ne;
        };
        match self.op {
            Op::Eq => ordering == Ordering::Equal,
            Op::Ne => ordering != Ordering::Equal,
            Op::Gt => ordering == Ordering::Greater,
            Op::Lt => ordering == Ordering::Less,
            Op::Ge => ordering != Ordering::Less,
            Op::Le => ordering != Ordering::Greater,
        }
    }
}

#[filter]
impl Filter for JsonFilter {
    fn new(params: &Params) -> Result<Self, Error> {
        let conditions = params
            .require("where")?
            .split(';')
            .filter(|c| !c.trim().is_empty())
            .map(parse_condition)
            .collect::<Result<Vec<_>, _>>()?;
        if conditions.is_empty() {
            return Err("parameter `where` has no condition".into());
        }
        let missing = match params.get("missing").unwrap_or("drop") {
            "drop" => Missing::Drop,
            "keep" => Missing::Keep,
            "error" => Missing::Error,
            other => {
                return Err(
                    format!("parameter `missing`=`{other}`: expected drop, keep or error").into(),
                )
            }
        };
        Ok(JsonFilter {
            conditions,
            missing,
        })
    }

    fn filter(&mut self, record: &Record<'_>) -> Result<bool, Error> {
        let value = record.value.ok_or("record has no value")?;
        let json: Value =
            serde_json::from_slice(value).map_err(|e| format!("value is not JSON: {e}"))?;
        for condition in &self.conditions {
            match json_path::get(&json, &condition.path) {
                Some(field) => {
                    if !condition.holds(field) {
                        return Ok(false);
                    }
                }
                None => match self.missing {
                    Missing::Drop => return Ok(false),
                    Missing::Keep => {}
                    Missing::Error => {
                        return Err(format!("field `{}` is missing", condition.path).into())
                    }
                },
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_plugin::testing::run_filter;

    fn check(params: &[(&str, &str)], values: &[&str]) -> Vec<Result<bool, String>> {
        let records: Vec<Record<'_>> = values
            .iter()
            .map(|v| Record::with_value(v.as_bytes()))
            .collect();
        run_filter::<JsonFilter>(params, &records).unwrap()
    }

    #[test]
    fn equality_and_inequality_on_strings_numbers_and_bools() {
        let values = [
            r#"{"status":"active","n":3,"ok":true}"#,
            r#"{"status":"gone","n":3.0,"ok":false}"#,
        ];
        assert_eq!(
            check(&[("where", "status=active")], &values),
            [Ok(true), Ok(false)]
        );
        assert_eq!(
            check(&[("where", "status!=active")], &values),
            [Ok(false), Ok(true)]
        );
        assert_eq!(check(&[("where", "n=3")], &values), [Ok(true), Ok(true)]);
        assert_eq!(
            check(&[("where", "ok=true")], &values),
            [Ok(true), Ok(false)]
        );
    }

    #[test]
    fn ordering_on_dotted_paths() {
        let values = [
            r#"{"user":{"age":17}}"#,
            r#"{"user":{"age":18}}"#,
            r#"{"user":{"age":30}}"#,
        ];
        let age = |w: &str| check(&[("where", w)], &values);
        assert_eq!(age("user.age>=18"), [Ok(false), Ok(true), Ok(true)]);
        assert_eq!(age("user.age>18"), [Ok(false), Ok(false), Ok(true)]);
        assert_eq!(age("user.age<18"), [Ok(true), Ok(false), Ok(false)]);
        assert_eq!(age("user.age<=18"), [Ok(true), Ok(true), Ok(false)]);
        // Numbers compare as numbers, not text ("9" > "10" as text).
        assert_eq!(check(&[("where", "n>9")], &[r#"{"n":10}"#]), [Ok(true)]);
    }

    #[test]
    fn all_conditions_must_hold() {
        let values = [r#"{"a":1,"b":"x"}"#, r#"{"a":1,"b":"y"}"#];
        assert_eq!(
            check(&[("where", "a=1; b=x")], &values),
            [Ok(true), Ok(false)]
        );
    }

    #[test]
    fn missing_fields_and_bad_json() {
        let values = [r#"{"a":1}"#, "not json"];
        assert_eq!(check(&[("where", "b=1")], &values[..1]), [Ok(false)]);
        assert_eq!(
            check(&[("where", "b=1"), ("missing", "keep")], &values[..1]),
            [Ok(true)]
        );
        assert_eq!(
            check(&[("where", "b=1"), ("missing", "error")], &values[..1]),
            [Err("field `b` is missing".to_string())]
        );
        let out = check(&[("where", "a=1")], &values[1..]);
        assert!(out[0]
            .as_ref()
            .unwrap_err()
            .starts_with("value is not JSON"));
    }

    #[test]
    fn bad_parameters_are_refused() {
        for (params, message) in [
            (vec![], "missing parameter `where`"),
            (vec![("where", "novalue")], "has no operator"),
            (vec![("where", "=3")], "has no field"),
            (vec![("where", "a!3")], "`!` must be followed by `=`"),
            (
                vec![("where", "a=1"), ("missing", "maybe")],
                "expected drop, keep or error",
            ),
        ] {
            let err = run_filter::<JsonFilter>(&params, &[]).unwrap_err();
            assert!(err.contains(message), "{err}");
        }
    }
}
