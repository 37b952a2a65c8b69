//! The SDK's macros and ABI glue, driven natively through `testing`.

use meridian_plugin::testing::{self, encode_batch};
use meridian_plugin::{
    filter, partitioner, transform, Error, Filter, Header, OutputRecord, Params, Record,
};

#[filter]
fn has_prefix(record: &Record<'_>, params: &Params) -> Result<bool, Error> {
    let prefix = params.require("prefix")?;
    let value = record.value_str().ok_or("value is not UTF-8")?;
    Ok(value.starts_with(prefix))
}

#[test]
fn function_filter_with_params_and_record_errors() {
    let records = [
        Record::with_value(b"abc"),
        Record::with_value(b"xyz"),
        Record::with_value(&[0xff, 0xfe]),
    ];
    let out = testing::run_filter::<__MeridianPlugin_has_prefix>(&[("prefix", "ab")], &records);
    assert_eq!(
        out.unwrap(),
        vec![Ok(true), Ok(false), Err("value is not UTF-8".to_string())]
    );
    let out = testing::run_filter::<__MeridianPlugin_has_prefix>(&[], &records[..1]);
    assert_eq!(
        out.unwrap(),
        vec![Err("missing parameter `prefix`".to_string())]
    );
}

struct Counter {
    every: u64,
    seen: u64,
}

#[filter]
impl Filter for Counter {
    fn new(params: &Params) -> Result<Self, Error> {
        Ok(Counter {
            every: params.parse_or("every", 2)?,
            seen: 0,
        })
    }
    fn filter(&mut self, _record: &Record<'_>) -> Result<bool, Error> {
        self.seen += 1;
        Ok(self.seen % self.every == 0)
    }
}

#[test]
fn stateful_filter_and_param_errors_at_init() {
    let records = vec![Record::default(); 6];
    let out = testing::run_filter::<Counter>(&[("every", "3")], &records).unwrap();
    assert_eq!(
        out,
        vec![
            Ok(false),
            Ok(false),
            Ok(true),
            Ok(false),
            Ok(false),
            Ok(true)
        ]
    );
    let err = testing::run_filter::<Counter>(&[("every", "x")], &records).unwrap_err();
    assert!(err.contains("parameter `every`=`x`"), "{err}");
}

#[transform]
fn split_words(record: &Record<'_>, _params: &Params) -> Result<Vec<OutputRecord>, Error> {
    let value = record.value_str().unwrap_or("");
    Ok(value
        .split_whitespace()
        .map(|w| OutputRecord {
            value: Some(w.as_bytes().to_vec()),
            headers: vec![("from".into(), Some(record.offset.to_string().into_bytes()))],
            timestamp: record.timestamp,
            ..OutputRecord::default()
        })
        .collect())
}

#[test]
fn transform_flat_maps() {
    let mut a = Record::with_value(b"hello big world");
    a.offset = 7;
    a.timestamp = 99;
    let out = testing::run_transform::<__MeridianPlugin_split_words>(&[], &[a, Record::default()])
        .unwrap();
    let words: Vec<_> = out[0]
        .as_ref()
        .unwrap()
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap()).unwrap())
        .collect();
    assert_eq!(words, ["hello", "big", "world"]);
    assert_eq!(out[0].as_ref().unwrap()[0].timestamp, 99);
    assert_eq!(
        out[0].as_ref().unwrap()[0].headers,
        vec![("from".to_string(), Some(b"7".to_vec()))]
    );
    assert_eq!(out[1], Ok(Vec::new()));
}

#[partitioner]
fn by_key_len(record: &Record<'_>, n_partitions: u32, _params: &Params) -> Result<u32, Error> {
    let key = record.key.ok_or("record has no key")?;
    Ok(key.len() as u32 % n_partitions)
}

#[test]
fn partitioner_sees_partition_count() {
    let records = [
        Record {
            key: Some(b"abcde"),
            ..Record::default()
        },
        Record::default(),
    ];
    let out = testing::run_partitioner::<__MeridianPlugin_by_key_len>(&[], &records, 3).unwrap();
    assert_eq!(out, vec![Ok(2), Err("record has no key".to_string())]);
}

#[test]
fn batch_layout_round_trips_in_place() {
    let records = [Record {
        key: None,
        value: Some(b"v"),
        headers: vec![
            Header {
                key: "h",
                value: None,
            },
            Header {
                key: "g",
                value: Some(b""),
            },
        ],
        timestamp: -5,
        offset: 1 << 40,
    }];
    let bytes = encode_batch(&records, 4);
    let (n_partitions, decoded) = testing::decode(&bytes).unwrap();
    assert_eq!(n_partitions, 4);
    assert_eq!(decoded, records);
    assert!(testing::decode(&bytes[..bytes.len() - 1]).is_err());
}
