//! A partitioner that spreads hot keys over several partitions (salting) while every
//! other key keeps Kafka's default key-hash partition.

use meridian_plugin::{default_partition, partitioner, Error, Params, Partitioner, Record};
use std::collections::HashMap;

pub struct HotKeySalter {
    hot_keys: Vec<Vec<u8>>,
    spread: u32,
    /// Next salt per hot key: round-robin within its spread.
    next_salt: HashMap<Vec<u8>, u32>,
    next_keyless: u32,
}

#[partitioner]
impl Partitioner for HotKeySalter {
    fn new(params: &Params) -> Result<Self, Error> {
        let hot_keys: Vec<Vec<u8>> = params
            .require("hot_keys")?
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| k.as_bytes().to_vec())
            .collect();
        if hot_keys.is_empty() {
            return Err("parameter `hot_keys` lists no key".into());
        }
        let spread = params.parse_or("spread", 0u32)?;
        Ok(HotKeySalter {
            hot_keys,
            spread,
            next_salt: HashMap::new(),
            next_keyless: 0,
        })
    }

    fn partition(&mut self, record: &Record<'_>, n_partitions: u32) -> Result<u32, Error> {
        let Some(key) = record.key else {
            self.next_keyless = self.next_keyless.wrapping_add(1);
            return Ok(self.next_keyless % n_partitions);
        };
        let base = default_partition(key, n_partitions);
        if !self.hot_keys.iter().any(|k| k == key) {
            return Ok(base);
        }
        // spread 0 means every partition.
        let spread = match self.spread {
            0 => n_partitions,
            s => s.min(n_partitions),
        };
        let salt = self.next_salt.entry(key.to_vec()).or_insert(0);
        let partition = (base + *salt % spread) % n_partitions;
        *salt = salt.wrapping_add(1);
        Ok(partition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_plugin::testing::run_partitioner;
    use std::collections::BTreeSet;

    fn keyed(key: &'static str) -> Record<'static> {
        Record {
            key: Some(key.as_bytes()),
            ..Record::default()
        }
    }

    #[test]
    fn cold_keys_keep_the_default_partition() {
        let records: Vec<_> = ["a", "b", "a", "c"].into_iter().map(keyed).collect();
        let out = run_partitioner::<HotKeySalter>(&[("hot_keys", "hot")], &records, 8).unwrap();
        for (r, p) in records.iter().zip(out) {
            assert_eq!(p.unwrap(), default_partition(r.key.unwrap(), 8));
        }
    }

    #[test]
    fn hot_keys_spread_round_robin() {
        let records: Vec<_> = (0..12).map(|_| keyed("hot")).collect();
        let params = [("hot_keys", "other, hot"), ("spread", "3")];
        let out: Vec<u32> = run_partitioner::<HotKeySalter>(&params, &records, 8)
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let base = default_partition(b"hot", 8);
        let expected: BTreeSet<u32> = (0..3).map(|s| (base + s) % 8).collect();
        assert_eq!(out.iter().copied().collect::<BTreeSet<_>>(), expected);
        assert_eq!(out[0], out[3]);
        // Default spread is every partition.
        let out = run_partitioner::<HotKeySalter>(&[("hot_keys", "hot")], &records, 4).unwrap();
        let all: BTreeSet<u32> = out.into_iter().map(Result::unwrap).collect();
        assert_eq!(all, (0..4).collect());
    }

    #[test]
    fn keyless_records_round_robin_and_params_checked() {
        let records = vec![Record::default(); 4];
        let out = run_partitioner::<HotKeySalter>(&[("hot_keys", "x")], &records, 2).unwrap();
        assert_eq!(out, vec![Ok(1), Ok(0), Ok(1), Ok(0)]);
        assert!(run_partitioner::<HotKeySalter>(&[], &records, 2).is_err());
        assert!(run_partitioner::<HotKeySalter>(&[("hot_keys", " , ")], &records, 2).is_err());
        assert!(run_partitioner::<HotKeySalter>(
            &[("hot_keys", "x"), ("spread", "-1")],
            &records,
            2
        )
        .is_err());
    }
}
