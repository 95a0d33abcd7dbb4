//! Devices partitioned across databases: a stable hash of the device id
//! into [`BUCKETS`] fixed buckets, and each bucket to one database.
//!
//! The bucket of a device never changes (it depends only on its id), so a
//! database added later takes whole buckets from the others: moving a
//! bucket copies its devices' rows, it does not rehash every device
//! (docs/scale.md says how a move would run; it is not built). Today the
//! buckets are split into contiguous ranges, one per `--db` URL in the order
//! given: bucket `b` of `n` databases lives on database `b * n / BUCKETS`.

/// Buckets device ids hash into. Fixed for the life of a deployment.
pub const BUCKETS: u32 = 1024;

/// The bucket of `device`: 64-bit FNV-1a of its UTF-8 bytes, modulo
/// [`BUCKETS`]. Stable across builds, platforms and releases.
pub fn bucket_of(device: &str) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in device.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(BUCKETS)) as u32
}

/// The database (index into the `--db` list, `0..databases`) that holds
/// `bucket`, when the buckets are split into equal contiguous ranges.
pub fn database_of_bucket(bucket: u32, databases: usize) -> usize {
    let n = databases.max(1) as u64;
    ((u64::from(bucket % BUCKETS) * n) / u64::from(BUCKETS)) as usize
}

/// The database that holds `device`'s rows, of `databases`.
pub fn database_of(device: &str, databases: usize) -> usize {
    if databases <= 1 {
        return 0;
    }
    database_of_bucket(bucket_of(device), databases)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_spread() {
        // Pinned values: a change of the hash would move every device.
        assert_eq!(bucket_of(""), (0xcbf2_9ce4_8422_2325u64 % 1024) as u32);
        assert_eq!(bucket_of("tv-000001"), bucket_of("tv-000001"));
        let mut per_db = [0usize; 3];
        let mut seen = std::collections::HashSet::new();
        for k in 0..3000 {
            let d = format!("tv-{k:06}");
            seen.insert(bucket_of(&d));
            per_db[database_of(&d, 3)] += 1;
        }
        assert!(seen.len() > 900, "{} buckets used", seen.len());
        for n in per_db {
            assert!((800..1200).contains(&n), "{per_db:?}");
        }
        // Ranges: every bucket on exactly one database, in order.
        assert_eq!(database_of_bucket(0, 2), 0);
        assert_eq!(database_of_bucket(511, 2), 0);
        assert_eq!(database_of_bucket(512, 2), 1);
        assert_eq!(database_of_bucket(1023, 2), 1);
        assert_eq!(database_of("anything", 1), 0);
    }
}
