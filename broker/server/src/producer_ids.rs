//! Producer ids for idempotent producers, never handed out twice: ids come from blocks
//! whose end is made durable (`<data_dir>/producer_id_block`) before the first id of
//! the block is given out, so a restart continues after the last block.
//!
//! In a cluster every broker hands out ids, so an id carries its broker: the broker
//! id sits above bit 40 (a trillion ids per broker), and no two brokers can ever
//! give out the same id without asking each other.

use std::io::Write;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

const BLOCK: i64 = 1_000;
/// Bits of an id below the broker id.
const BROKER_SHIFT: u32 = 40;

pub(crate) struct ProducerIds {
    path: PathBuf,
    /// `broker_id << BROKER_SHIFT`.
    base: i64,
    /// (next id, end of the durable block).
    state: Mutex<(i64, i64)>,
}

impl ProducerIds {
    pub(crate) fn open(data_dir: &Path, broker_id: u32) -> anyhow::Result<ProducerIds> {
        // Leaves the sign bit clear: ids are non-negative, as the wire requires.
        if broker_id >= 1 << (63 - BROKER_SHIFT) {
            anyhow::bail!(
                "broker_id {broker_id} is too large for producer ids (at most {})",
                (1u32 << (63 - BROKER_SHIFT)) - 1
            );
        }
        let path = data_dir.join("producer_id_block");
        let end = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse::<i64>()
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
        };
        Ok(ProducerIds {
            path,
            base: i64::from(broker_id) << BROKER_SHIFT,
            state: Mutex::new((end, end)),
        })
    }

    pub(crate) fn next(&self) -> std::io::Result<i64> {
        let mut state = self.state.lock();
        if state.0 == state.1 {
            let end = state.1 + BLOCK;
            let temp = self.path.with_extension("tmp");
            let mut file = std::fs::File::create(&temp)?;
            file.write_all(end.to_string().as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            state.1 = end;
        }
        let id = state.0;
        state.0 += 1;
        Ok(self.base | id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_never_reused_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let ids = ProducerIds::open(dir.path(), 0).unwrap();
        assert_eq!((ids.next().unwrap(), ids.next().unwrap()), (0, 1));
        drop(ids);
        let ids = ProducerIds::open(dir.path(), 0).unwrap();
        assert_eq!(ids.next().unwrap(), BLOCK);
    }

    #[test]
    fn brokers_never_hand_out_the_same_id() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let one = ProducerIds::open(a.path(), 1).unwrap();
        let two = ProducerIds::open(b.path(), 2).unwrap();
        let from_one: Vec<i64> = (0..5).map(|_| one.next().unwrap()).collect();
        let from_two: Vec<i64> = (0..5).map(|_| two.next().unwrap()).collect();
        assert!(from_one.iter().all(|id| !from_two.contains(id)));
        assert_eq!(from_two[0], 2 << BROKER_SHIFT);
        assert!(from_one.iter().chain(&from_two).all(|id| *id >= 0));
        let largest = (1u32 << (63 - BROKER_SHIFT)) - 1;
        let top = ProducerIds::open(a.path(), largest).unwrap();
        assert!(top.next().unwrap() > 0);
        assert!(ProducerIds::open(a.path(), largest + 1).is_err());
    }
}
