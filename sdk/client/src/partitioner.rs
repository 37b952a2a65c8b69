//! Key partitioning, identical to Kafka's Java `DefaultPartitioner` /
//! `BuiltInPartitioner`, so the same key lands in the same partition whichever client
//! wrote it.

/// Kafka's variant of MurmurHash2 (seed `0x9747b28c`), as in
/// `org.apache.kafka.common.utils.Utils.murmur2`.
///
/// ```
/// assert_eq!(meridian_client::murmur2(b"foobar"), -790332482);
/// ```
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    let mut h: u32 = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        // Java's switch falls through from 3 to 1.
        if tail.len() == 3 {
            h ^= u32::from(tail[2]) << 16;
        }
        if tail.len() >= 2 {
            h ^= u32::from(tail[1]) << 8;
        }
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of a keyed record: `(murmur2(key) & 0x7fffffff) % n_partitions`.
///
/// ```
/// let p = meridian_client::partition_for_key(b"customer-42", 12);
/// assert!(p < 12);
/// ```
///
/// # Panics
/// When `n_partitions` is zero (a topic always has at least one partition).
pub fn partition_for_key(key: &[u8], n_partitions: u32) -> u32 {
    assert!(n_partitions > 0, "a topic has at least one partition");
    ((murmur2(key) & 0x7fff_ffff) as u32) % n_partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka_test_vectors() {
        // From Kafka's UtilsTest.testMurmur2.
        let cases: [(&str, i32); 6] = [
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            ("abc", 479470107),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input.as_bytes()), expected, "{input}");
        }
    }

    #[test]
    fn keys_map_like_kafka() {
        // toPositive(murmur2(key)) % n, from the vectors above.
        assert_eq!(partition_for_key(b"foobar", 1), 0);
        assert_eq!(
            partition_for_key(b"foobar", 7),
            ((-790332482i32 & 0x7fff_ffff) as u32) % 7
        );
        assert_eq!(partition_for_key(b"21", 3), (1173551340u32) % 3);
        assert_eq!(partition_for_key(b"abc", 10), 479470107 % 10);
        // Every length of tail (0..=3 bytes) stays in range and is stable.
        for len in 0..16 {
            let key: Vec<u8> = (0..len).map(|i: u8| i.wrapping_mul(31)).collect();
            let p = partition_for_key(&key, 5);
            assert!(p < 5);
            assert_eq!(p, partition_for_key(&key, 5));
        }
    }
}
