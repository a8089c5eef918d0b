//! Compiled components cached on disk, keyed by the SHA-256 of the component
//! bytes and the engine's compatibility hash, so a restart or a reload of an
//! unchanged policy skips compilation (the slow step: ~100 ms per policy).

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use wasmtime::Engine;
use wasmtime::component::Component;

/// A directory of `<sha256>-<engine>.cwasm` files. The directory must be
/// writable only by the gateway: its files are loaded as native code.
pub struct ComponentCache {
    dir: Option<PathBuf>,
}

impl ComponentCache {
    /// A cache in `dir`, or none (always compile) when `None`.
    pub fn new(dir: Option<PathBuf>) -> ComponentCache {
        ComponentCache { dir }
    }

    /// The default directory: `$XDG_CACHE_HOME/portcullis` or `~/.cache/portcullis`.
    pub fn default_dir() -> Option<PathBuf> {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|d| d.join("portcullis").join("components"))
    }

    /// Load `bytes` as a component, from the cache when it has them compiled.
    pub fn load(&self, engine: &Engine, bytes: &[u8]) -> anyhow::Result<(Component, String)> {
        let digest = hex::encode(Sha256::digest(bytes));
        let Some(dir) = &self.dir else {
            return Ok((Component::new(engine, bytes).map_err(anyhow::Error::from)?, digest));
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let path = dir.join(format!("{digest}-{:016x}.cwasm", h.finish()));
        if path.exists() {
            // SAFETY: files in the cache directory were written by
            // `Component::serialize` of this engine configuration (the name
            // carries its hash); the directory belongs to the gateway.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(c) => return Ok((c, digest)),
                Err(e) => tracing::warn!(path = %path.display(), "compiled component cache entry unusable, recompiling: {e:#}"),
            }
        }
        let component = Component::new(engine, bytes).map_err(anyhow::Error::from)?;
        if let Err(e) = self.store(&path, &component) {
            tracing::warn!(dir = %dir.display(), "cannot write the component cache: {e:#}");
        }
        Ok((component, digest))
    }

    fn store(&self, path: &PathBuf, component: &Component) -> anyhow::Result<()> {
        let dir = path.parent().expect("cache files live in a directory");
        std::fs::create_dir_all(dir)?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, component.serialize().map_err(anyhow::Error::from)?)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}
