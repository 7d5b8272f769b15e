//! Output paths, checked before any work: each must be a new file or (with
//! `--force`) a regular file in an existing, writable folder, and every output
//! must differ from every input and from every other output, compared by device
//! and inode after following symlinks (so `MODEL/config.json`, a symlink into
//! the hub cache's `blobs/`, and `-o x.gguf --report x.gguf` are all caught).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What a path is, in words, for errors.
fn kind(ft: std::fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_dir() {
        "a folder"
    } else if ft.is_fifo() {
        "a FIFO (named pipe)"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() || ft.is_block_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// `path`'s folder (`.` for a bare file name).
fn folder(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Why an output path cannot be used; each names the flag that gave it and the path.
#[derive(Debug, thiserror::Error)]
pub enum OutputPathError {
    /// `-` was given: standard output is not a file laquant writes.
    #[error("{flag} -: writing to standard output is not supported; give a file name")]
    Stdout {
        /// The flag (`-o`, `--report`).
        flag: String,
    },
    /// The file exists and `--force` was not given.
    #[error("{flag} {} exists; pass --force to overwrite it", path.display())]
    Exists {
        /// The flag.
        flag: String,
        /// The path.
        path: PathBuf,
    },
    /// The path is not a regular file (a folder, device, FIFO, symlink...).
    #[error(
        "{flag} {} is {kind}; laquant replaces only regular files, even with --force",
        path.display()
    )]
    NotRegular {
        /// The flag.
        flag: String,
        /// The path.
        path: PathBuf,
        /// What it is instead, in words.
        kind: &'static str,
    },
    /// The path cannot be examined.
    #[error("{flag} {}", path.display())]
    Unreadable {
        /// The flag.
        flag: String,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The path's folder is not a folder.
    #[error("{flag} {}: {} is not a folder", path.display(), folder.display())]
    NotAFolder {
        /// The flag.
        flag: String,
        /// The path.
        path: PathBuf,
        /// Its folder.
        folder: PathBuf,
    },
    /// The path's folder cannot be examined (it does not exist, say).
    #[error("{flag} {}: folder {}", path.display(), folder.display())]
    Folder {
        /// The flag.
        flag: String,
        /// The path.
        path: PathBuf,
        /// Its folder.
        folder: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The path's folder does not take new files.
    #[error("{flag} {}: cannot create a file in {}", path.display(), folder.display())]
    NotWritable {
        /// The flag.
        flag: String,
        /// The path.
        path: PathBuf,
        /// Its folder.
        folder: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The output is one of the inputs.
    #[error(
        "{flag} {} is the input {}; an output never replaces an input",
        path.display(),
        input.display()
    )]
    IsInput {
        /// The flag.
        flag: String,
        /// The path.
        path: PathBuf,
        /// The input it is.
        input: PathBuf,
    },
    /// Two outputs are the same file.
    #[error(
        "{flag} {} and {other_flag} {} name the same file; give each output its own path",
        path.display(),
        other.display()
    )]
    SameFile {
        /// The flag.
        flag: String,
        /// The path.
        path: PathBuf,
        /// The other output's flag.
        other_flag: String,
        /// The other output's path.
        other: PathBuf,
    },
}

/// Checks that `path` (given as `flag`) can be written: absent, or a regular file
/// and `force`; its folder exists and takes new files. Only a regular file is
/// ever replaced: a device, FIFO, folder or symlink (replacing the link, not
/// what it names) is refused even with `--force`.
pub fn check_target(flag: &str, path: &Path, force: bool) -> Result<(), OutputPathError> {
    let flag = flag.to_string();
    if path.as_os_str() == "-" {
        return Err(OutputPathError::Stdout { flag });
    }
    let path_buf = path.to_path_buf();
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => {
            if !force {
                return Err(OutputPathError::Exists {
                    flag,
                    path: path_buf,
                });
            }
        }
        Ok(m) => {
            return Err(OutputPathError::NotRegular {
                flag,
                path: path_buf,
                kind: kind(m.file_type()),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(OutputPathError::Unreadable {
                flag,
                path: path_buf,
                source,
            })
        }
    }
    let dir = folder(path);
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(OutputPathError::NotAFolder {
                flag,
                path: path_buf,
                folder: dir.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(OutputPathError::Folder {
                flag,
                path: path_buf,
                folder: dir.to_path_buf(),
                source,
            })
        }
    }
    // The one way to know that the folder takes new files is to make one: the
    // output's own temporary file, removed at once (and, were this run killed
    // now, by the next run or the signal handler, as any other).
    crate::atomic::AtomicFile::create(path, force)
        .map(drop)
        .map_err(|source| OutputPathError::NotWritable {
            flag,
            path: path_buf,
            folder: dir.to_path_buf(),
            source,
        })
}

/// A file's identity: device and inode after following symlinks; for a path that
/// does not exist yet, its (resolved) folder's and its name.
#[derive(PartialEq, Eq, Debug)]
enum Identity {
    File(u64, u64),
    New(u64, u64, std::ffi::OsString),
}

fn identity(path: &Path) -> Option<Identity> {
    if let Ok(m) = std::fs::metadata(path) {
        return Some(Identity::File(m.dev(), m.ino()));
    }
    let d = std::fs::metadata(folder(path)).ok()?;
    Some(Identity::New(
        d.dev(),
        d.ino(),
        path.file_name()?.to_owned(),
    ))
}

/// The files of a model folder (or any input folder), symlinks included: what
/// no output may replace.
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.push(dir.to_path_buf());
    v
}

/// Refuses an output that is one of `inputs` or another output. `outputs`:
/// (flag, path) pairs.
pub fn check_distinct(
    outputs: &[(&str, &Path)],
    inputs: &[PathBuf],
) -> Result<(), OutputPathError> {
    let ins: Vec<(Identity, &PathBuf)> = inputs
        .iter()
        .filter_map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((Identity::File(m.dev(), m.ino()), p))
        })
        .collect();
    let mut seen: Vec<(Identity, &str, &Path)> = Vec::new();
    for &(flag, out) in outputs {
        let Some(id) = identity(out) else { continue };
        if let Some((_, input)) = ins.iter().find(|(i, _)| *i == id) {
            return Err(OutputPathError::IsInput {
                flag: flag.into(),
                path: out.to_path_buf(),
                input: input.to_path_buf(),
            });
        }
        if let Some((_, other, p)) = seen.iter().find(|(i, _, _)| *i == id) {
            return Err(OutputPathError::SameFile {
                flag: flag.into(),
                path: out.to_path_buf(),
                other_flag: other.to_string(),
                other: p.to_path_buf(),
            });
        }
        seen.push((id, flag, out));
    }
    Ok(())
}

/// Both checks: every output writable ([`check_target`]) and distinct
/// ([`check_distinct`]).
pub fn check(
    outputs: &[(&str, &Path)],
    inputs: &[PathBuf],
    force: bool,
) -> Result<(), OutputPathError> {
    check_distinct(outputs, inputs)?;
    for &(flag, p) in outputs {
        check_target(flag, p, force)?;
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically, replacing only a regular file and only
/// with `force` (for reports, JSON and charts).
pub fn write(path: &Path, bytes: &[u8], force: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = crate::atomic::AtomicFile::create(path, force)?;
    f.file().write_all(bytes)?;
    f.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_devices_existing_files_and_inputs() {
        let d = tempfile::tempdir().unwrap();
        let input = d.path().join("config.json");
        std::fs::write(&input, b"{}").unwrap();
        let link = d.path().join("link.json");
        std::os::unix::fs::symlink(&input, &link).unwrap();
        assert!(check_target("-o", Path::new("/dev/null"), true)
            .unwrap_err()
            .to_string()
            .contains("a device"));
        assert!(check_target("-o", &input, false)
            .unwrap_err()
            .to_string()
            .contains("--force"));
        assert!(check_target("-o", &input, true).is_ok());
        assert!(check_target("-o", &link, true)
            .unwrap_err()
            .to_string()
            .contains("symbolic link"));
        assert!(check_target("-o", &d.path().join("no/x.gguf"), true)
            .unwrap_err()
            .to_string()
            .contains("folder"));
        let inputs = files_in(d.path());
        let e = check_distinct(&[("-o", &link)], &inputs)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is the input"), "{e}");
        let new = d.path().join("x.gguf");
        let e = check_distinct(&[("-o", &new), ("--report", &new)], &inputs)
            .unwrap_err()
            .to_string();
        assert!(e.contains("same file"), "{e}");
        let other = d.path().join("x.json");
        assert!(check_distinct(&[("-o", &new), ("--report", &other)], &inputs).is_ok());
    }
}
