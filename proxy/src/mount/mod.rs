//! The POSIX front door (`--mount DIR`): a read-only FUSE mount of every
//! data set, served by the same process, caches and chunk layer as the S3
//! front door — no HTTP hop in between. Each data set is a directory named
//! after its bucket; `open`, `read`, `ls` and `find` work as on any
//! read-only file system.

mod fs;
mod inodes;
mod mount_point;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use crate::mesh::Mesh;

pub use fs::MAX_READ;

/// A mounted file system; unmounted when dropped.
pub struct Mounted {
    session: Option<fuser::BackgroundSession>,
    dir: PathBuf,
}

impl Mounted {
    /// Where it is mounted.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Unmounts it and waits for its session threads.
    pub fn unmount(mut self) -> anyhow::Result<()> {
        self.unmount_now()
    }

    fn unmount_now(&mut self) -> anyhow::Result<()> {
        if let Some(session) = self.session.take() {
            session
                .umount_and_join()
                .with_context(|| format!("cannot unmount {}", self.dir.display()))?;
            tracing::info!(dir = %self.dir.display(), "unmounted");
        }
        Ok(())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(err) = self.unmount_now() {
            tracing::error!(error = %format!("{err:#}"), "unmounting");
        }
    }
}

/// Mounts the data sets of `mesh` on `dir` with `threads` session threads,
/// reading on `runtime`. The mount point must be an empty directory; a
/// stale mount a killed proxy left there is cleared first.
pub fn mount(
    dir: &Path,
    threads: usize,
    mesh: Arc<Mesh>,
    runtime: tokio::runtime::Handle,
) -> anyhow::Result<Mounted> {
    let dir = mount_point::prepare(dir)?;
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::NoAtime,
        fuser::MountOption::FSName("ferry".to_owned()),
        fuser::MountOption::Subtype("ferry".to_owned()),
        fuser::MountOption::CUSTOM(format!("max_read={MAX_READ}")),
    ];
    // The app may run as another user than the proxy.
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(threads.max(1));
    config.clone_fd = true;
    let session = fuser::spawn_mount(fs::FerryFs::new(mesh, runtime), &dir, &config)
        .with_context(|| format!("cannot mount on {} (is /dev/fuse there?)", dir.display()))?;
    tracing::info!(dir = %dir.display(), threads, "data sets mounted");
    Ok(Mounted {
        session: Some(session),
        dir,
    })
}
