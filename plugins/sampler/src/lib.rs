//! A filter that keeps a deterministic sample: one record in `every`, chosen by key
//! hash (all records of a key are kept or dropped together) or, for keyless records,
//! by offset. `every=1` keeps everything (the pass-through used to measure plugin cost).

use meridian_plugin::{filter, murmur2, Error, Filter, Params, Record};

pub struct Sampler {
    every: u64,
}

#[filter]
impl Filter for Sampler {
    fn new(params: &Params) -> Result<Self, Error> {
        let every: u64 = params.parse_or("every", 1)?;
        if every == 0 {
            return Err("parameter `every` must be at least 1".into());
        }
        Ok(Sampler { every })
    }

    fn filter(&mut self, record: &Record<'_>) -> Result<bool, Error> {
        let n = match record.key {
            Some(key) => u64::from((murmur2(key) & 0x7fff_ffff) as u32),
            None => record.offset as u64,
        };
        Ok(n % self.every == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_plugin::testing::run_filter;

    fn at(offset: i64) -> Record<'static> {
        Record {
            offset,
            ..Record::default()
        }
    }

    #[test]
    fn keeps_one_in_every() {
        let records: Vec<_> = (0..20).map(at).collect();
        let out = run_filter::<Sampler>(&[("every", "10")], &records).unwrap();
        let kept: Vec<i64> = records
            .iter()
            .zip(out)
            .filter(|(_, k)| *k == Ok(true))
            .map(|(r, _)| r.offset)
            .collect();
        assert_eq!(kept, [0, 10]);
        let out = run_filter::<Sampler>(&[], &records).unwrap();
        assert!(out.iter().all(|k| *k == Ok(true)));
    }

    #[test]
    fn keys_are_kept_or_dropped_together() {
        let key = Record {
            key: Some(b"user-7"),
            ..Record::default()
        };
        let out = run_filter::<Sampler>(&[("every", "3")], &[key.clone(), key]).unwrap();
        assert_eq!(out[0], out[1]);
        assert!(run_filter::<Sampler>(&[("every", "0")], &[]).is_err());
    }
}
