//! The mount point before mounting: it must exist, be a directory and be
//! empty; a stale FUSE mount left there by a killed process (its stat
//! fails with "transport endpoint is not connected") is cleared first. The
//! directory may itself be a mount point (a Kubernetes volume always is);
//! only a live FUSE file system there, which the new mount would hide, is
//! refused.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Checks `dir` and clears a stale mount on it; its canonical path.
pub fn prepare(dir: &Path) -> anyhow::Result<PathBuf> {
    match std::fs::metadata(dir) {
        Err(err) if err.raw_os_error() == Some(libc_enotconn()) => {
            tracing::warn!(dir = %dir.display(), "a stale mount is left on the mount point (its process died): clearing it");
            rustix::mount::unmount(dir, rustix::mount::UnmountFlags::DETACH)
                .with_context(|| format!("cannot clear the stale mount on {}", dir.display()))?;
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "mount point {} does not exist: create an empty directory there",
                dir.display()
            )
        }
        Err(err) => {
            return Err(err).with_context(|| format!("cannot use mount point {}", dir.display()));
        }
        Ok(_) => {}
    }
    let metadata = std::fs::metadata(dir)
        .with_context(|| format!("cannot use mount point {}", dir.display()))?;
    if !metadata.is_dir() {
        bail!("mount point {} is not a directory", dir.display());
    }
    let canonical = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve mount point {}", dir.display()))?;
    if let Some(filesystem) = mounted_on(&canonical).filter(|t| t.starts_with("fuse")) {
        bail!(
            "mount point {} already has a live {filesystem} file system mounted on it \
             (another ferry-proxy serving it?)",
            dir.display()
        );
    }
    let mut entries = std::fs::read_dir(&canonical)
        .with_context(|| format!("cannot read mount point {}", dir.display()))?;
    if entries.next().is_some() {
        bail!(
            "mount point {} is not empty: mount on an empty directory",
            dir.display()
        );
    }
    Ok(canonical)
}

/// The type of the file system mounted on `dir`, if one is.
fn mounted_on(dir: &Path) -> Option<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let wanted = dir.to_str()?;
    table.lines().rev().find_map(|line| {
        // `id parent major:minor root mount-point options ... - type source ...`
        let mut fields = line.split(' ');
        let mount_point = fields.nth(4)?;
        if unescape(mount_point) != wanted {
            return None;
        }
        let after_separator = line.split(" - ").nth(1)?;
        after_separator.split(' ').next().map(str::to_owned)
    })
}

/// A mount point as mountinfo writes it (octal escapes for space, tab,
/// newline and backslash).
fn unescape(text: &str) -> String {
    text.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// `ENOTCONN`, which a dead FUSE server's mount answers every stat with.
fn libc_enotconn() -> i32 {
    rustix::io::Errno::NOTCONN.raw_os_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_non_empty_mount_points_are_clear_errors() {
        let base = std::env::temp_dir().join(format!("ferry-mount-point-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let err = prepare(&base).expect_err("missing");
        assert!(err.to_string().contains("does not exist"), "{err}");
        std::fs::create_dir_all(&base).expect("dir");
        assert!(prepare(&base).is_ok(), "an empty directory is fine");
        std::fs::write(base.join("x"), "x").expect("file");
        let err = prepare(&base).expect_err("not empty");
        assert!(err.to_string().contains("not empty"), "{err}");
        let err = prepare(&base.join("x")).expect_err("a file");
        assert!(err.to_string().contains("not a directory"), "{err}");
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
    }
}
