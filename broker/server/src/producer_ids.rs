//! Producer ids for idempotent producers, never handed out twice: ids come from blocks
//! whose end is made durable (`<data_dir>/producer_id_block`) before the first id of
//! the block is given out, so a restart continues after the last block.

use std::io::Write;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

const BLOCK: i64 = 1_000;

pub(crate) struct ProducerIds {
    path: PathBuf,
    /// (next id, end of the durable block).
    state: Mutex<(i64, i64)>,
}

impl ProducerIds {
    pub(crate) fn open(data_dir: &Path) -> anyhow::Result<ProducerIds> {
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
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_never_reused_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let ids = ProducerIds::open(dir.path()).unwrap();
        assert_eq!((ids.next().unwrap(), ids.next().unwrap()), (0, 1));
        drop(ids);
        let ids = ProducerIds::open(dir.path()).unwrap();
        assert_eq!(ids.next().unwrap(), BLOCK);
    }
}
