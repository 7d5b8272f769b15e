//! Calibrate once: per-language statistics kept on disk, keyed by everything
//! that changes them, so `plan` then `convert`, converts at other sizes and
//! `batch` reuse one calibration.
//!
//! Key (BLAKE3 of):
//! - the model's fingerprint ([`model_fingerprint`]): for every safetensors
//!   shard its name, size and modification time, its whole header (every
//!   tensor's name, dtype, shape and offsets), and three 4 KiB windows of every
//!   tensor's bytes (start, middle, end); plus `config.json`. Not a hash of all
//!   the weights: that reads the whole model (16 GB for an 8B, a minute or
//!   more cold) on every run, reuse included. Size, time and header catch any
//!   rewrite of a file, the windows a model with the same layout but other
//!   weights (a fine-tune copied with its times kept). An edit confined to
//!   bytes outside the windows of a file whose time was restored is not seen:
//!   `--no-cache` then.
//! - the token ids of every chunk of every language (this covers the text,
//!   the tokenizer, `--ctx` and the chunking), the languages' names and the
//!   dataset names recorded in the imatrix;
//! - whether the output head's input is collected, the arithmetic that ran
//!   (`f32` or `bf16`: they give different statistics; the thread count does
//!   not change them, the tests check it), and laquant's version.
//!
//! The language weights are not in the key: the entry holds each language's
//! unweighted sums, and the balance is applied after reading it.
//!
//! Entries live in `$XDG_CACHE_HOME/laquant/calibration` (else
//! `~/.cache/laquant/calibration`), one file per key, written atomically
//! ([`crate::atomic`]); the least recently used are removed past
//! [`MAX_BYTES`] in all. Each file holds its key and a BLAKE3 of its payload:
//! a truncated, corrupted or foreign entry is reported, ignored and replaced.
//! Clearing the cache is removing the folder.

use super::forward::TapSums;
use super::{CalibError, LangChunks, LangStats};
use crate::hf::Checkpoint;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Entries' total size kept (the oldest read are removed past it): 4 GB,
/// about 20 calibrations of an 8B model with its 29 languages.
pub const MAX_BYTES: u64 = 4 << 30;

const MAGIC: &[u8; 8] = b"LQCALIB1";
const WINDOW: usize = 4096;

/// The user's cache folder for calibrations.
pub fn default_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("laquant").join("calibration"))
}

/// The model's fingerprint (see the module doc).
pub fn model_fingerprint(ck: &Checkpoint) -> Result<blake3::Hash, CalibError> {
    let mut h = blake3::Hasher::new();
    let io = |p: &Path, e: std::io::Error| CalibError::Weights(format!("{}: {e}", p.display()));
    for (i, shard) in ck.shards.shards.iter().enumerate() {
        let p = &shard.path;
        let m = std::fs::metadata(p).map_err(|e| io(p, e))?;
        let t = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        h.update(format!("shard\0{}\0{}\0{t}\0", name.unwrap_or_default(), m.len()).as_bytes());
        // A safetensors file's JSON header (a GGUF input's header, for its rebuilt checkpoint).
        h.update(shard.header());
        // Every tensor of this shard, in name order.
        let mut names: Vec<&String> = ck
            .shards
            .tensors
            .iter()
            .filter(|(_, e)| e.shard == i)
            .map(|(n, _)| n)
            .collect();
        names.sort();
        for name in names {
            let e = &ck.shards.tensors[name];
            let raw = ck.shards.raw(e);
            let w = WINDOW.min(raw.len());
            let mid = (raw.len() - w) / 2;
            for start in [0, mid, raw.len() - w] {
                h.update(&raw[start..start + w]);
            }
            ck.shards.release(e);
        }
    }
    let cfg = ck.dir.join("config.json");
    h.update(b"config\0");
    h.update(&std::fs::read(&cfg).map_err(|e| io(&cfg, e))?);
    Ok(h.finalize())
}

/// What identifies one calibration's statistics (see the module doc).
pub struct Key<'a> {
    /// The model's fingerprint.
    pub model: blake3::Hash,
    /// The tokenized text, per language.
    pub chunks: &'a [LangChunks],
    /// Where the text came from.
    pub datasets: &'a [String],
    /// Whether the output matrix's input is collected.
    pub process_output: bool,
    /// The resolved arithmetic (`f32` or `bf16`).
    pub matmul: &'a str,
}

impl Key<'_> {
    /// The entry's name: a hash of everything above.
    pub fn hash(&self) -> blake3::Hash {
        let mut h = blake3::Hasher::new();
        h.update(b"laquant calibration\0");
        h.update(env!("CARGO_PKG_VERSION").as_bytes());
        h.update(self.model.as_bytes());
        h.update(format!("\0{}\0{}\0", self.process_output, self.matmul).as_bytes());
        for d in self.datasets {
            h.update(format!("dataset\0{d}\0").as_bytes());
        }
        for (lang, chunks) in self.chunks {
            h.update(format!("lang\0{lang}\0{}\0", chunks.len()).as_bytes());
            for c in chunks {
                h.update(&(c.len() as u64).to_le_bytes());
                for t in c {
                    h.update(&t.to_le_bytes());
                }
            }
        }
        h.finalize()
    }
}

/// The result of looking a key up.
#[derive(Debug)]
pub enum Lookup {
    /// The statistics, as stored.
    Hit(Vec<LangStats>),
    /// No entry.
    Miss,
    /// An entry that cannot be trusted, and why (it is recomputed).
    Corrupt(CorruptEntry),
}

/// Why a cache entry cannot be trusted.
#[derive(Debug, thiserror::Error)]
pub enum CorruptEntry {
    /// The file cannot be read.
    #[error("cannot read it")]
    Unreadable(#[source] std::io::Error),
    /// The entry is shorter than what it declares.
    #[error("it ends early")]
    EndsEarly,
    /// A count larger than what is left of the entry.
    #[error("a count of {0} exceeds the entry")]
    Count(u64),
    /// Not a laquant calibration entry (wrong magic).
    #[error("not a laquant calibration entry")]
    NotAnEntry,
    /// The entry of another key (a hash collision of the file name, or a renamed file).
    #[error("it holds another key")]
    OtherKey,
    /// The payload's length disagrees with the header's.
    #[error("its payload is {payload} bytes, its header says {header}")]
    Length {
        /// The payload's bytes.
        payload: usize,
        /// What the header says.
        header: u64,
    },
    /// The payload's checksum does not match.
    #[error("its checksum does not match")]
    Checksum,
    /// A language name that is not UTF-8.
    #[error("a bad name")]
    BadName,
    /// A language's activations have another model's shape.
    #[error("{0}: its activations are not the model's shape")]
    Shape(String),
    /// Bytes after the last language.
    #[error("it has bytes past its end")]
    TrailingBytes,
}

/// A cache folder.
#[derive(Clone, Debug, PartialEq)]
pub struct Store {
    /// The folder (created when first written).
    pub dir: PathBuf,
}

impl Store {
    /// The file of `key`.
    pub fn path(&self, key: &blake3::Hash) -> PathBuf {
        self.entry_path(key, "lqcal")
    }

    /// The file of `key` among the entries of one kind (`ext`: `lqcal` for
    /// calibrations, `lqsens` for measured sensitivities).
    pub fn entry_path(&self, key: &blake3::Hash, ext: &str) -> PathBuf {
        self.dir.join(format!("{}.{ext}", &key.to_hex()[..32]))
    }

    /// The bytes of the entry at `path` (`Ok(None)`: there is none).
    pub fn read_entry(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
        match std::fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Marks the entry at `path` most recently used: kept longest by the size bound.
    pub fn touch(path: &Path) {
        if let Ok(f) = std::fs::File::options().append(true).open(path) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    /// Writes `bytes` as the entry at `path`, atomically, creating the folder.
    pub fn write_entry(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let mut f = crate::atomic::AtomicFile::create(path, true)?;
        f.file().write_all(bytes)?;
        f.commit()
    }

    /// Reads `key`'s entry, whose activations must have the shape of `fresh`
    /// (an empty accumulator of the model); every check failing is [`Lookup::Corrupt`].
    pub fn get(&self, key: &blake3::Hash, fresh: &TapSums) -> Lookup {
        let p = self.path(key);
        let bytes = match Self::read_entry(&p) {
            Ok(Some(b)) => b,
            Ok(None) => return Lookup::Miss,
            Err(e) => return Lookup::Corrupt(CorruptEntry::Unreadable(e)),
        };
        match decode(&bytes, key, fresh) {
            Ok(stats) => {
                Self::touch(&p);
                Lookup::Hit(stats)
            }
            Err(why) => Lookup::Corrupt(why),
        }
    }

    /// Stores `stats` under `key` (atomically), then trims the folder to [`MAX_BYTES`].
    pub fn put(&self, key: &blake3::Hash, stats: &[LangStats]) -> std::io::Result<PathBuf> {
        let p = self.path(key);
        self.write_entry(&p, &encode(stats, key))?;
        self.trim(MAX_BYTES, &p);
        Ok(p)
    }

    /// Removes the least recently used entries until at most `max` bytes stay
    /// (never `keep`, the entry just written).
    pub fn trim(&self, max: u64, keep: &Path) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut entries: Vec<(std::time::SystemTime, u64, PathBuf)> = rd
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "lqcal"))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        entries.sort();
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        for (_, len, p) in entries {
            if total <= max {
                break;
            }
            if p != keep && std::fs::remove_file(&p).is_ok() {
                total -= len;
            }
        }
    }
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// `MAGIC`, key, payload length, BLAKE3 of the payload, payload.
fn encode(stats: &[LangStats], key: &blake3::Hash) -> Vec<u8> {
    let mut p = Vec::new();
    put_u64(&mut p, stats.len() as u64);
    for s in stats {
        put_str(&mut p, &s.lang);
        put_u64(&mut p, s.chunks as u64);
        put_u64(&mut p, s.token_counts.len() as u64);
        for (&t, &n) in &s.token_counts {
            p.extend_from_slice(&t.to_le_bytes());
            put_u64(&mut p, n);
        }
        put_u64(&mut p, s.taps.tokens);
        p.push(s.taps.with_output as u8);
        put_u64(&mut p, s.taps.n_layers as u64);
        put_u64(&mut p, s.taps.sums.len() as u64);
        for v in &s.taps.sums {
            put_u64(&mut p, v.len() as u64);
            for x in v {
                p.extend_from_slice(&x.to_le_bytes());
            }
        }
    }
    let mut out = Vec::with_capacity(p.len() + 80);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(key.as_bytes());
    put_u64(&mut out, p.len() as u64);
    out.extend_from_slice(blake3::hash(&p).as_bytes());
    out.extend_from_slice(&p);
    out
}

/// Reads what [`encode`] wrote, checking everything.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CorruptEntry> {
        if n > self.b.len() {
            return Err(CorruptEntry::EndsEarly);
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(a)
    }
    fn u64(&mut self) -> Result<u64, CorruptEntry> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    /// A count of items of at least `item` bytes each, bounded by what is left.
    fn count(&mut self, item: usize) -> Result<usize, CorruptEntry> {
        let n = self.u64()?;
        if n > (self.b.len() / item.max(1)) as u64 {
            return Err(CorruptEntry::Count(n));
        }
        Ok(n as usize)
    }
}

fn decode(
    bytes: &[u8],
    key: &blake3::Hash,
    fresh: &TapSums,
) -> Result<Vec<LangStats>, CorruptEntry> {
    let mut r = Reader { b: bytes };
    if r.take(8)? != MAGIC {
        return Err(CorruptEntry::NotAnEntry);
    }
    if r.take(32)? != key.as_bytes() {
        return Err(CorruptEntry::OtherKey);
    }
    let len = r.u64()?;
    let sum = r.take(32)?;
    if len != r.b.len() as u64 {
        return Err(CorruptEntry::Length {
            payload: r.b.len(),
            header: len,
        });
    }
    if blake3::hash(r.b).as_bytes() != sum {
        return Err(CorruptEntry::Checksum);
    }
    let mut out = Vec::new();
    for _ in 0..r.count(8)? {
        let n = r.count(1)?;
        let lang = String::from_utf8(r.take(n)?.to_vec()).map_err(|_| CorruptEntry::BadName)?;
        let chunks = r.u64()? as usize;
        let mut token_counts = BTreeMap::new();
        for _ in 0..r.count(12)? {
            let t = u32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes"));
            token_counts.insert(t, r.u64()?);
        }
        let tokens = r.u64()?;
        let with_output = r.take(1)?[0] != 0;
        let n_layers = r.u64()? as usize;
        let mut sums = Vec::new();
        for _ in 0..r.count(8)? {
            let n = r.count(8)?;
            let v = r.take(n * 8)?;
            sums.push(
                v.chunks_exact(8)
                    .map(|x| f64::from_le_bytes(x.try_into().expect("8 bytes")))
                    .collect(),
            );
        }
        let shape = |s: &Vec<Vec<f64>>| s.iter().map(Vec::len).collect::<Vec<_>>();
        if n_layers != fresh.n_layers
            || with_output != fresh.with_output
            || shape(&sums) != shape(&fresh.sums)
        {
            return Err(CorruptEntry::Shape(lang));
        }
        out.push(LangStats {
            lang,
            chunks,
            token_counts,
            taps: TapSums {
                sums,
                tokens,
                with_output,
                n_layers,
                block: fresh.block,
                n_expert: fresh.n_expert,
                routes: None,
            },
        });
    }
    if !r.b.is_empty() {
        return Err(CorruptEntry::TrailingBytes);
    }
    Ok(out)
}

/// Whether cached statistics fit the run they would stand for: the same
/// languages with the same chunk and token counts.
pub fn matches(stats: &[LangStats], chunks: &[LangChunks]) -> bool {
    stats.len() == chunks.len()
        && stats.iter().zip(chunks).all(|(s, (lang, ch))| {
            s.lang == *lang
                && s.chunks == ch.len()
                && s.taps.tokens == ch.iter().map(|c| c.len() as u64).sum::<u64>()
        })
}

/// What the cache did for one calibration.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum Outcome {
    /// Statistics read from this entry; no forward pass ran.
    Reused {
        /// The entry.
        file: PathBuf,
    },
    /// Calibrated and stored here.
    Stored {
        /// The entry.
        file: PathBuf,
    },
    /// Calibrated; the entry could not be written (the reason).
    NotStored {
        /// The entry.
        file: PathBuf,
        /// Why it could not be written.
        error: String,
    },
    /// Calibrated without the cache (`--no-cache`, or no cache folder).
    Off,
}

impl Outcome {
    /// One line for the user.
    pub fn describe(&self) -> String {
        self.describe_as("calibration", "calibrates")
    }

    /// One line for the user about `what` (`calibration`, `sensitivity`), whose
    /// recomputation `--no-cache` `redoes`.
    pub fn describe_as(&self, what: &str, redoes: &str) -> String {
        match self {
            Outcome::Reused { file } => format!(
                "{what}: reused from the cache ({}); --no-cache {redoes} again",
                file.display()
            ),
            Outcome::Stored { file } => format!("{what}: cached in {}", file.display()),
            Outcome::NotStored { file, error } => format!(
                "warning: {what}: cannot cache it in {}: {error}",
                file.display()
            ),
            Outcome::Off => format!("{what}: cache off"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> Vec<LangStats> {
        let mut tc = BTreeMap::new();
        tc.insert(3u32, 7u64);
        tc.insert(u32::MAX, 1);
        vec![LangStats {
            lang: "zh".into(),
            chunks: 2,
            token_counts: tc,
            taps: TapSums {
                sums: vec![vec![1.5, f64::MIN_POSITIVE], vec![], vec![3.0], vec![1e300]],
                tokens: 96,
                with_output: false,
                n_layers: 1,
                block: &crate::arch::llama::LLAMA.block,
                n_expert: 0,
                routes: None,
            },
        }]
    }

    fn fresh() -> TapSums {
        let mut t = stats().remove(0).taps;
        t.sums.iter_mut().for_each(|v| v.fill(0.0));
        t
    }

    #[test]
    fn entries_round_trip_and_every_damage_is_caught() {
        let key = blake3::hash(b"k");
        let bytes = encode(&stats(), &key);
        assert_eq!(decode(&bytes, &key, &fresh()).unwrap(), stats());
        assert!(decode(&bytes, &blake3::hash(b"other"), &fresh())
            .unwrap_err()
            .to_string()
            .contains("another key"));
        for cut in [0, 7, 40, 80, bytes.len() - 1] {
            assert!(
                decode(&bytes[..cut], &key, &fresh()).is_err(),
                "cut at {cut}"
            );
        }
        // Any flipped bit anywhere.
        for i in (0..bytes.len()).step_by(7) {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(decode(&b, &key, &fresh()).is_err(), "byte {i}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer, &key, &fresh()).is_err());
        // Another model's shape.
        let mut wider = fresh();
        wider.sums[0].push(0.0);
        assert!(decode(&bytes, &key, &wider)
            .unwrap_err()
            .to_string()
            .contains("shape"));
    }

    #[test]
    fn the_store_misses_hits_flags_corruption_and_trims() {
        let d = tempfile::tempdir().unwrap();
        let s = Store {
            dir: d.path().join("c"),
        };
        let (k1, k2) = (blake3::hash(b"1"), blake3::hash(b"2"));
        assert!(matches!(s.get(&k1, &fresh()), Lookup::Miss));
        let p1 = s.put(&k1, &stats()).unwrap();
        assert!(matches!(s.get(&k1, &fresh()), Lookup::Hit(x) if x == stats()));
        assert!(matches!(s.get(&k2, &fresh()), Lookup::Miss));
        let full = std::fs::read(&p1).unwrap();
        std::fs::write(&p1, &full[..full.len() / 2]).unwrap();
        assert!(matches!(s.get(&k1, &fresh()), Lookup::Corrupt(_)));
        s.put(&k1, &stats()).unwrap();
        assert!(matches!(s.get(&k1, &fresh()), Lookup::Hit(_)));
        // Past the bound the older entry goes, the new one stays.
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        std::fs::File::options()
            .append(true)
            .open(&p1)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let p2 = s.put(&k2, &stats()).unwrap();
        s.trim(full.len() as u64, &p2);
        assert!(!p1.exists() && p2.exists());
    }
}
