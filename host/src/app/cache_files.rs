//! `cache.dir`: the op answer cache's entries as files, one JSON file per call in one folder,
//! so answers outlive a restart and are shared by processes that share the folder. What is
//! kept, and for how long, is the executor's cache's (`exec::cache`); this is only the files.

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
