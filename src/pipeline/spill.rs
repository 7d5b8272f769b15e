//! Packed tensors kept from planning to writing, so la-mix and `--target-bpw`
//! quantize every tensor once. Scoring a tensor packs it in its la-mix base
//! type (Q8_0 or Q4_K after the width fallback) to measure the error; when the
//! plan keeps that type, the writer copies those bytes instead of quantizing the
//! tensor again. The bytes go to an unnamed temporary file beside the output
//! (removed by the OS when closed, even after a crash), so memory stays bounded
//! by one chunk however large the model; the page cache, not this process,
//! holds them in between.

use crate::gguf::GgmlType;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Where one tensor's packed rows are in the file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Kept {
    pub ty: GgmlType,
    offset: u64,
    len: u64,
}

/// The temporary file and the tensors it holds (by GGUF name).
#[derive(Debug)]
pub(crate) struct Spill {
    file: File,
    end: u64,
    kept: HashMap<String, Kept>,
    /// The tensor being appended: name, type, first byte.
    open: Option<(String, GgmlType, u64)>,
    /// Set by the first write error; nothing more is kept after it.
    failed: bool,
}

impl Spill {
    /// An unnamed temporary file in `dir`.
    pub fn new_in(dir: &Path) -> std::io::Result<Spill> {
        Ok(Spill {
            file: tempfile::tempfile_in(dir)?,
            end: 0,
            kept: HashMap::new(),
            open: None,
            failed: false,
        })
    }

    /// Starts keeping the rows of tensor `name`, packed as `ty`.
    pub fn begin(&mut self, name: &str, ty: GgmlType) {
        self.open = (!self.failed).then(|| (name.to_string(), ty, self.end));
    }

    /// Appends packed rows to the open tensor. A write error (a full disk) only
    /// means this and later tensors are quantized again when written.
    pub fn append(&mut self, bytes: &[u8]) {
        if self.open.is_none() {
            return;
        }
        match self.file.write_all(bytes) {
            Ok(()) => self.end += bytes.len() as u64,
            Err(_) => {
                self.failed = true;
                self.open = None;
            }
        }
    }

    /// Drops the open tensor (its bytes stay in the file, unused).
    pub fn discard(&mut self) {
        self.open = None;
    }

    /// Closes the open tensor; kept only if it has bytes.
    pub fn finish(&mut self) {
        if let Some((name, ty, offset)) = self.open.take() {
            let len = self.end - offset;
            if len > 0 {
                self.kept.insert(name, Kept { ty, offset, len });
            }
        }
    }

    /// Whether anything is being appended (the current tensor was not discarded).
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    pub fn get(&self, name: &str) -> Option<Kept> {
        self.kept.get(name).copied()
    }

    /// Reads `out.len()` bytes of a kept tensor from byte `from` on.
    pub fn read(&self, k: &Kept, from: u64, out: &mut [u8]) -> std::io::Result<()> {
        if from + out.len() as u64 > k.len {
            return Err(std::io::Error::other(format!(
                "kept tensor bytes {from}..{} asked, it has {}",
                from + out.len() as u64,
                k.len
            )));
        }
        let mut f = &self.file;
        f.seek(SeekFrom::Start(k.offset + from))?;
        f.read_exact(out)
    }
}

/// The measured sensitivity reads the quantized values of a tensor from here.
impl crate::policy::sensitivity::Packed for Spill {
    fn read(&self, name: &str, ty: GgmlType, from: u64, out: &mut [u8]) -> bool {
        self.get(name)
            .filter(|k| k.ty == ty)
            .is_some_and(|k| Spill::read(self, &k, from, out).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_appends_and_reads_back_ranges() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spill::new_in(d.path()).unwrap();
        s.begin("a", GgmlType::Q8_0);
        s.append(&[1, 2, 3]);
        s.append(&[4, 5]);
        s.finish();
        s.begin("b", GgmlType::Q4K);
        s.append(&[9, 9]);
        s.discard();
        s.finish();
        s.begin("c", GgmlType::Q4K);
        s.finish();
        s.begin("d", GgmlType::Q4K);
        s.append(&[7, 8]);
        s.finish();
        assert!(s.get("b").is_none() && s.get("c").is_none());
        let a = s.get("a").unwrap();
        assert_eq!(a.ty, GgmlType::Q8_0);
        let mut out = [0u8; 3];
        s.read(&a, 2, &mut out).unwrap();
        assert_eq!(out, [3, 4, 5]);
        let mut two = [0u8; 2];
        s.read(&s.get("d").unwrap(), 0, &mut two).unwrap();
        assert_eq!(two, [7, 8]);
        assert!(s.read(&a, 4, &mut two).is_err());
        // Nothing of the file is visible in the folder.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
