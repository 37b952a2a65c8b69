//! Redacts personal data from record values: email addresses, payment card numbers
//! (13–19 digits, spaces or dashes allowed between them, Luhn-valid), and the values at
//! configured JSON paths.

use meridian_plugin::{transform, Error, OutputRecord, Params, Record, Transform};
use serde_json::Value;

pub struct PiiRedactor {
    paths: Vec<String>,
    emails: bool,
    cards: bool,
}

const EMAIL_MARK: &str = "[EMAIL]";
const CARD_MARK: &str = "[CARD]";
const PATH_MARK: &str = "[REDACTED]";

fn is_local(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn is_domain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')
}

/// Replaces `local@domain.tld` runs with [`EMAIL_MARK`].
pub fn redact_emails(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'@' {
            i += 1;
            continue;
        }
        let mut start = i;
        while start > copied && is_local(bytes[start - 1]) {
            start -= 1;
        }
        let mut end = i + 1;
        while end < bytes.len() && is_domain(bytes[end]) {
            end += 1;
        }
        // A domain never ends with a dot: "mail me at a@b.com." keeps its full stop.
        while end > i + 1 && bytes[end - 1] == b'.' {
            end -= 1;
        }
        let domain = &text[i + 1..end];
        let valid = start < i
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.starts_with('-');
        if valid {
            out.push_str(&text[copied..start]);
            out.push_str(EMAIL_MARK);
            copied = end;
            i = end;
        } else {
            i += 1;
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// Luhn checksum over ASCII digits.
pub fn luhn_valid(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(d - b'0');
            if i % 2 == 1 {
                let d2 = d * 2;
                if d2 > 9 {
                    d2 - 9
                } else {
                    d2
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Replaces Luhn-valid card numbers with [`CARD_MARK`].
pub fn redact_cards(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() || (i > 0 && bytes[i - 1].is_ascii_digit()) {
            i += 1;
            continue;
        }
        // Gather digits allowing single spaces or dashes between them.
        let mut digits = Vec::with_capacity(19);
        let mut j = i;
        let mut end = i;
        while j < bytes.len() && digits.len() <= 19 {
            if bytes[j].is_ascii_digit() {
                digits.push(bytes[j]);
                j += 1;
                end = j;
            } else if matches!(bytes[j], b' ' | b'-')
                && j + 1 < bytes.len()
                && bytes[j + 1].is_ascii_digit()
            {
                j += 1;
            } else {
                break;
            }
        }
        if (13..=19).contains(&digits.len()) && luhn_valid(&digits) {
            out.push_str(&text[copied..i]);
            out.push_str(CARD_MARK);
            copied = end;
            i = end;
        } else {
            i = end.max(i + 1);
        }
    }
    out.push_str(&text[copied..]);
    out
}

impl PiiRedactor {
    /// Redacts one value; `Err` when paths are configured and the value is not JSON.
    pub fn redact(&self, value: &[u8]) -> Result<Vec<u8>, Error> {
        let mut text = if self.paths.is_empty() {
            String::from_utf8_lossy(value).into_owned()
        } else {
            let mut json: Value =
                serde_json::from_slice(value).map_err(|e| format!("value is not JSON: {e}"))?;
            for path in &self.paths {
                if let Some(v) = json_path::get_mut(&mut json, path) {
                    *v = Value::String(PATH_MARK.to_string());
                }
            }
            json.to_string()
        };
        if self.emails {
            text = redact_emails(&text);
        }
        if self.cards {
            text = redact_cards(&text);
        }
        Ok(text.into_bytes())
    }
}

#[transform]
impl Transform for PiiRedactor {
    fn new(params: &Params) -> Result<Self, Error> {
        Ok(PiiRedactor {
            paths: params
                .get("paths")
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect(),
            emails: params.parse_or("emails", true)?,
            cards: params.parse_or("cards", true)?,
        })
    }

    fn transform(&mut self, record: &Record<'_>) -> Result<Vec<OutputRecord>, Error> {
        let mut out = OutputRecord::from_record(record);
        if let Some(value) = record.value {
            out.value = Some(self.redact(value)?);
        }
        Ok(vec![out])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_plugin::testing::run_transform;

    #[test]
    fn emails() {
        assert_eq!(
            redact_emails("mail ann.lee+x@mail.example.com, or bob@b.io."),
            "mail [EMAIL], or [EMAIL]."
        );
        for keep in ["a @ b.com", "@b.com", "a@b", "a@.com", "no at sign"] {
            assert_eq!(redact_emails(keep), keep);
        }
    }

    #[test]
    fn cards_with_luhn() {
        assert!(luhn_valid(b"4111111111111111"));
        assert!(!luhn_valid(b"4111111111111112"));
        assert_eq!(
            redact_cards("paid 4111 1111 1111 1111 and 5500-0000-0000-0004 ok"),
            "paid [CARD] and [CARD] ok"
        );
        // Wrong checksum, too short, and part of a longer digit run stay.
        for keep in [
            "4111111111111112",
            "order 123456789012",
            "id 41111111111111110000000",
        ] {
            assert_eq!(redact_cards(keep), keep);
        }
    }

    #[test]
    fn configured_paths_and_record_shape() {
        let value =
            br#"{"user":{"name":"Ann","email":"ann@x.org"},"note":"card 4111111111111111"}"#;
        let mut record = Record::with_value(value);
        record.key = Some(b"k");
        record.timestamp = 42;
        let out = run_transform::<PiiRedactor>(&[("paths", "user.name, missing.path")], &[record])
            .unwrap();
        let out = out[0].as_ref().unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(out[0].timestamp, 42);
        let json: Value = serde_json::from_slice(out[0].value.as_ref().unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"user":{"name":"[REDACTED]","email":"[EMAIL]"},"note":"card [CARD]"})
        );
    }

    #[test]
    fn switches_and_errors() {
        let params = [("emails", "false"), ("cards", "false")];
        let out = run_transform::<PiiRedactor>(&params, &[Record::with_value(b"a@b.com")]).unwrap();
        assert_eq!(
            out[0].as_ref().unwrap()[0].value.as_deref(),
            Some(&b"a@b.com"[..])
        );
        let out =
            run_transform::<PiiRedactor>(&[("paths", "a")], &[Record::with_value(b"x")]).unwrap();
        assert!(out[0]
            .as_ref()
            .unwrap_err()
            .starts_with("value is not JSON"));
        assert!(run_transform::<PiiRedactor>(&[("cards", "maybe")], &[]).is_err());
    }
}
