//! Atomic output files: data goes to a temporary file beside the target
//! (`.NAME.laquant-PID.tmp`), which is renamed over the target only when
//! complete and synced. Temporary files left by killed runs (their PID no
//! longer alive) are removed by the next run; live ones are left alone.
//! A binary that calls [`remove_temps_on_signal`] also removes them itself
//! when interrupted (Ctrl-C, SIGTERM, SIGHUP); only SIGKILL leaves one behind,
//! for the next run to clean.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Temporary files being written by this process, for the signal handler.
static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn pending() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes the temporary file of every [`AtomicFile`] not yet committed or dropped.
pub fn remove_pending() {
    remove_pending_where(|_| true);
}

fn remove_pending_where(f: impl Fn(&Path) -> bool) {
    pending().retain(|p| {
        if f(p) {
            let _ = std::fs::remove_file(p);
        }
        !f(p)
    });
}

/// Exit status after an interruption (128 + SIGINT, as shells report Ctrl-C).
pub const INTERRUPTED: i32 = 130;

/// What the signal handler of a command that writes one output says happened.
pub const NO_OUTPUT_WRITTEN: &str = "no output written";

/// Installs a handler for SIGINT, SIGTERM and SIGHUP that removes every pending
/// temporary file and exits with [`INTERRUPTED`], saying "no output written".
/// For binaries; call once.
pub fn remove_temps_on_signal() -> Result<(), SignalHandlerError> {
    remove_temps_on_signal_saying(NO_OUTPUT_WRITTEN)
}

/// As [`remove_temps_on_signal`], printing `laquant: interrupted; {outcome}`:
/// what the interrupted command leaves behind (a batch keeps its finished outputs).
pub fn remove_temps_on_signal_saying(outcome: &'static str) -> Result<(), SignalHandlerError> {
    ctrlc::set_handler(move || {
        // The lock is held until the process ends, so no temporary file can be
        // created or renamed between this cleanup and the exit.
        let mut p = pending();
        for f in p.drain(..) {
            let _ = std::fs::remove_file(f);
        }
        eprintln!("laquant: interrupted; {outcome}");
        std::process::exit(INTERRUPTED);
    })
    .map_err(SignalHandlerError)
}

/// The signal handler could not be installed (one is already, say).
#[derive(Debug, thiserror::Error)]
#[error("cannot install the signal handler")]
pub struct SignalHandlerError(#[source] pub ctrlc::Error);

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

/// Whether `target` may be replaced: absent, or a regular file and `force`.
fn replaceable(target: &Path, force: bool, exists: &str) -> io::Result<()> {
    match std::fs::symlink_metadata(target) {
        Ok(m) if !m.is_file() => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is not a regular file; laquant replaces only regular files, even with --force",
                target.display()
            ),
        )),
        Ok(_) if !force => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} {exists}; pass --force to overwrite it",
                target.display()
            ),
        )),
        _ => Ok(()),
    }
}

impl AtomicFile {
    /// Creates the temporary file. Fails if `target` exists and `force` is false.
    /// Only a regular file is ever replaced (never a device, FIFO, folder or symlink).
    pub fn create(target: &Path, force: bool) -> io::Result<AtomicFile> {
        replaceable(target, force, "exists")?;
        clean_stale(target);
        let dir = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = dir.join(format!("{}{}.tmp", tmp_prefix(target), std::process::id()));
        // Created under the lock: an interruption sees either no file or a listed one.
        let mut p = pending();
        let file = File::create(&tmp)?;
        p.push(tmp.clone());
        drop(p);
        Ok(AtomicFile {
            tmp,
            target: target.to_path_buf(),
            file: Some(file),
            force,
        })
    }

    /// The temporary file, to write the output into.
    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("file is present until commit")
    }

    /// Where the temporary file is (beside the target, hidden).
    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// Syncs and renames the temporary file onto the target.
    pub fn commit(mut self) -> io::Result<()> {
        let f = self.file.take().expect("file is present until commit");
        f.sync_all()?;
        drop(f);
        replaceable(&self.target, self.force, "appeared while converting")?;
        // Under the lock, so an interruption sees either the temporary file or the target.
        let mut p = pending();
        std::fs::rename(&self.tmp, &self.target)?;
        p.retain(|x| x != &self.tmp);
        drop(p);
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            self.file.take();
            let mut p = pending();
            let _ = std::fs::remove_file(&self.tmp);
            p.retain(|x| x != &self.tmp);
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
    fn pending_temp_files_are_removed_and_committed_ones_kept() {
        let d = tempfile::tempdir().unwrap();
        let (t1, t2) = (d.path().join("a.gguf"), d.path().join("b.gguf"));
        let mut a = AtomicFile::create(&t1, false).unwrap();
        a.file().write_all(b"done").unwrap();
        let mut b = AtomicFile::create(&t2, false).unwrap();
        b.file().write_all(b"half").unwrap();
        let b_tmp = b.tmp_path().to_path_buf();
        assert!(pending().contains(&b_tmp));
        a.commit().unwrap();
        // What the signal handler does before it exits (here only for this test's
        // files: other tests of this process convert concurrently).
        remove_pending_where(|p| p.starts_with(d.path()));
        assert!(!b_tmp.exists());
        assert_eq!(std::fs::read(&t1).unwrap(), b"done");
        assert!(!t2.exists());
        drop(b);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        assert!(!pending().iter().any(|p| p.starts_with(d.path())));
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
