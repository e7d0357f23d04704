//! Directory trees for the POSIX modes: the data set written out as files
//! (on tmpfs, the kernel's ceiling) and empty mount points for Ferry's FUSE
//! mount. Both are cleaned up on drop, so an interrupted run leaves nothing
//! mounted and nothing in memory-backed /dev/shm.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use ferry_config::SyntheticSpec;

/// Where the tmpfs copy goes when the caller does not say: Linux's
/// memory-backed /dev/shm if there is one.
pub fn default_tmpfs_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// The synthetic data set's objects as files under a fresh directory.
pub struct FileTree {
    dir: PathBuf,
}

impl FileTree {
    /// Writes every object of `spec` under a new directory in `parent`
    /// (`<key>` becomes `<dir>/<key>`, class directories included).
    pub fn write(parent: &Path, spec: &SyntheticSpec) -> anyhow::Result<Self> {
        let dir = parent.join(format!("ferry-bench-tree-{}", std::process::id()));
        // A tree left by a killed run of this process id would mix sizes.
        let _ = std::fs::remove_dir_all(&dir);
        let tree = Self { dir };
        std::fs::create_dir_all(&tree.dir)
            .with_context(|| format!("creating {}", tree.dir.display()))?;
        let mut buffer = Vec::new();
        for index in 0..spec.count {
            let path = tree.dir.join(spec.key(index));
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            buffer.resize(spec.object_size(index) as usize, 0);
            spec.fill(index, 0, &mut buffer);
            std::fs::File::create(&path)
                .and_then(|mut file| file.write_all(&buffer))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(tree)
    }

    /// The directory the keys are relative to.
    pub fn root(&self) -> &Path {
        &self.dir
    }
}

impl Drop for FileTree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An empty directory for a FUSE mount, lazily unmounted and removed on drop
/// (after the proxy that mounted it is gone, a detached unmount is what
/// clears a mount whose server died).
pub struct MountPoint {
    dir: PathBuf,
}

impl MountPoint {
    /// A fresh empty directory named after `label`.
    pub fn new(label: &str) -> anyhow::Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("ferry-bench-mnt-{label}-{}", std::process::id()));
        detach(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self { dir })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// `--mount <dir>` for ferry-proxy.
    pub fn flags(&self) -> Vec<String> {
        vec!["--mount".to_owned(), self.dir.display().to_string()]
    }
}

impl Drop for MountPoint {
    fn drop(&mut self) {
        detach(&self.dir);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn detach(dir: &Path) {
    let _ = rustix::mount::unmount(dir, rustix::mount::UnmountFlags::DETACH);
}
