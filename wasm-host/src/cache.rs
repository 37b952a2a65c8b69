//! Compiled-artifact cache: `<dir>/<module sha256>.cwasm`, so a broker restart or a
//! second attachment of the same module does not recompile it.
//!
//! File layout: 32-byte sha256 of the artifact, then the artifact (`Module::serialize`).
//! The checksum catches a torn or corrupted file; wasmtime itself refuses an artifact
//! made by another wasmtime version or engine configuration. Either way the module is
//! recompiled and the file rewritten.

use std::path::Path;

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};

/// The module's artifact from the cache, if it holds a sound one.
pub(crate) fn load(engine: &Engine, dir: &Path, sha256: &str) -> Option<Module> {
    let bytes = std::fs::read(dir.join(format!("{sha256}.cwasm"))).ok()?;
    deserialize(engine, &bytes)
}

/// Stores a freshly compiled module's artifact. The cache is an optimisation: a
/// failed write does not fail the load.
pub(crate) fn store(dir: &Path, sha256: &str, module: &Module) {
    let Ok(artifact) = module.serialize() else {
        return;
    };
    let mut file = Vec::with_capacity(32 + artifact.len());
    file.extend_from_slice(&Sha256::digest(&artifact));
    file.extend_from_slice(&artifact);
    let tmp = dir.join(format!("{sha256}.cwasm.tmp"));
    if std::fs::write(&tmp, &file).is_ok() {
        let _ = std::fs::rename(&tmp, dir.join(format!("{sha256}.cwasm")));
    }
}

fn deserialize(engine: &Engine, file: &[u8]) -> Option<Module> {
    if file.len() < 32 {
        return None;
    }
    let (checksum, artifact) = file.split_at(32);
    if Sha256::digest(artifact).as_slice() != checksum {
        return None;
    }
    // SAFETY: `Module::deserialize` trusts its input to be machine code wasmtime produced.
    // This artifact was written by `store` above, in this process's own cache
    // directory (under the broker's data dir, which nothing else writes), and its sha256
    // matched just now, so it is exactly the bytes `Module::serialize` gave us. wasmtime
    // additionally checks its version and engine settings and errors on a mismatch.
    #[allow(unsafe_code)]
    let module = unsafe { Module::deserialize(engine, artifact) };
    module.ok()
}
