//! Where the op answer cache's entries are also kept, outside this process's memory:
//! `cache.dir` (one JSON file per call in one folder) or, without it, the run store of an HTTP
//! host (`store.path` / `store.url`), so answers outlive a restart and are shared by the
//! processes that share the folder or the store. What is kept, and for how long, is the
//! executor's cache's (`exec::cache`); this is only where.

use std::path::PathBuf;

/// A folder of cache files: `<name>.json`, written as `<name>.tmp` and renamed into place so a
/// reader never sees half a file.
pub(crate) struct Folder {
    dir: PathBuf,
}

impl Folder {
    pub(crate) fn new(dir: PathBuf) -> Folder {
        Folder { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }
}

impl crate::exec::cache::CacheFiles for Folder {
    fn load(&self, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.path(name)).ok()
    }

    fn save(&self, name: &str, text: &str) {
        let path = self.path(name);
        let write = || -> std::io::Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let staging = path.with_extension("tmp");
            std::fs::write(&staging, text)?;
            std::fs::rename(&staging, &path)
        };
        if let Err(err) = write() {
            tracing::warn!("cache.dir: cannot write {}: {err}", path.display());
        }
    }

    fn remove(&self, name: &str) {
        let _ = std::fs::remove_file(self.path(name));
    }
}

/// The run store as the op cache's files.
pub(crate) struct Stored(pub(crate) std::sync::Arc<dyn crate::store::Backend>);

impl crate::exec::cache::CacheFiles for Stored {
    fn load(&self, name: &str) -> Option<Vec<u8>> {
        self.0.cache_get(name).unwrap_or_else(|err| {
            tracing::warn!("{err}");
            None
        })
    }

    fn save(&self, name: &str, text: &str) {
        // The entry says when it expires; the store forgets it then.
        let expires = serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| v["expires_ms"].as_i64())
            .unwrap_or(0);
        if let Err(err) = self.0.cache_put(name, text, expires) {
            tracing::warn!("{err}");
        }
    }

    fn remove(&self, name: &str) {
        if let Err(err) = self.0.cache_remove(name) {
            tracing::warn!("{err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::cache::CacheFiles;

    #[test]
    fn a_saved_entry_is_one_json_file_in_the_folder_until_removed() {
        let temp = tempfile::tempdir().expect("temp dir");
        let folder = Folder::new(temp.path().join("cache"));
        assert_eq!(folder.load("ab"), None);
        folder.save("ab", "{\"x\":1}");
        let names: Vec<_> = std::fs::read_dir(temp.path().join("cache"))
            .expect("the folder, made on the first save")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["ab.json"], "no staging file left behind");
        assert_eq!(folder.load("ab").as_deref(), Some(&b"{\"x\":1}"[..]));
        folder.remove("ab");
        assert_eq!(folder.load("ab"), None);
    }
}
