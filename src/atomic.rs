//! Atomic output files: data goes to a temporary file beside the target
//! (`.NAME.laquant-PID.tmp`), which is renamed over the target only when
//! complete and synced. Temporary files left by killed runs (their PID no
//! longer alive) are removed by the next run; live ones are left alone.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// A file being written; removed on drop unless [`AtomicFile::commit`] ran.
pub struct AtomicFile {
    tmp: PathBuf,
    target: PathBuf,
    file: Option<File>,
    force: bool,
}

fn tmp_prefix(target: &Path) -> String {
    format!(
        ".{}.laquant-",
        target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    )
}

fn pid_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true // cannot tell: keep the file
    }
}

/// Removes temporary files of dead runs for this target.
pub fn clean_stale(target: &Path) {
    let dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let prefix = tmp_prefix(target);
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(".tmp"))
        {
            if let Ok(pid) = rest.parse::<u32>() {
                if pid != std::process::id() && !pid_alive(pid) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

impl AtomicFile {
    /// Creates the temporary file. Fails if `target` exists and `force` is false.
    pub fn create(target: &Path, force: bool) -> io::Result<AtomicFile> {
        if !force && target.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists; pass --force to overwrite it", target.display()),
            ));
        }
        clean_stale(target);
        let dir = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = dir.join(format!("{}{}.tmp", tmp_prefix(target), std::process::id()));
        let file = File::create(&tmp)?;
        Ok(AtomicFile {
            tmp,
            target: target.to_path_buf(),
            file: Some(file),
            force,
        })
    }

    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("file is present until commit")
    }

    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// Syncs and renames the temporary file onto the target.
    pub fn commit(mut self) -> io::Result<()> {
        let f = self.file.take().expect("file is present until commit");
        f.sync_all()?;
        drop(f);
        if !self.force && self.target.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} appeared while converting; pass --force to overwrite it",
                    self.target.display()
                ),
            ));
        }
        std::fs::rename(&self.tmp, &self.target)?;
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            self.file.take();
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn commit_and_drop() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("out.gguf");
        let mut a = AtomicFile::create(&t, false).unwrap();
        a.file().write_all(b"abc").unwrap();
        assert!(!t.exists());
        a.commit().unwrap();
        assert_eq!(std::fs::read(&t).unwrap(), b"abc");
        assert!(AtomicFile::create(&t, false).is_err());
        {
            let mut a = AtomicFile::create(&t, true).unwrap();
            a.file().write_all(b"partial").unwrap();
        }
        assert_eq!(std::fs::read(&t).unwrap(), b"abc");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn stale_temp_files_of_dead_runs_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("m.gguf");
        // PID 4000000 exceeds Linux's pid_max, so it is never alive.
        let stale = d.path().join(".m.gguf.laquant-4000000.tmp");
        std::fs::write(&stale, b"x").unwrap();
        let other = d.path().join(".other.gguf.laquant-4000000.tmp");
        std::fs::write(&other, b"x").unwrap();
        clean_stale(&t);
        assert!(!stale.exists() || !cfg!(target_os = "linux"));
        assert!(other.exists());
    }
}
