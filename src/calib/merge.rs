//! Per-language importance statistics made elsewhere (`llama-imatrix` on any
//! backend, GPUs included, or `laquant calibrate` on one language at a time),
//! merged into the language-balanced importance that laquant's own calibration
//! computes.
//!
//! A GGUF imatrix file holds, per weight and per matrix (expert) `m`, the sum of
//! squares of each input column over the tokens seen (`<weight>.in_sum2`,
//! `S_l[m][j]`) and the token count (`<weight>.counts`, `N_l[m]`). One file per
//! language `l` therefore gives `S_l/N_l` exactly, and the merge is the balance
//! of [`super::Importance::balanced`]: `I[m][j] = Σ_l w_l S_l[m][j] / N_l[m]`,
//! the weights `w_l` uniform unless `--lang-weights` says otherwise. A matrix a
//! language never reached (an expert no token of it was routed to, `N_l[m] = 0`)
//! is balanced over the languages that did reach it, their weights rescaled to
//! sum to 1. The result is written as our calibration writes it
//! ([`super::Importance::to_imatrix`]): `counts` the tokens of every language,
//! `in_sum2 = I · counts`, so `llama-quantize --imatrix` and `laquant convert
//! --imatrix` read `I`.
//!
//! Legacy `.dat` files are refused: they keep a mean times the number of chunks,
//! not the token count, so their languages cannot be weighed against GGUF ones.

use super::imatrix::{Imatrix, ImatrixEntry};
use super::{corpus, normalized_weights, CalibError};
use std::path::{Path, PathBuf};

/// One language's imatrix file.
#[derive(Clone, Debug, PartialEq)]
pub struct LangFile {
    /// The language.
    pub lang: String,
    /// Its imatrix file.
    pub path: PathBuf,
}

fn err(what: impl std::fmt::Display) -> CalibError {
    CalibError::Imatrix(what.to_string())
}

/// `--merge`: `en=imatrix-en.gguf,zh=imatrix-zh.gguf` (ISO 639-1 codes, each
/// once), or a folder of `<lang>.gguf` files. Sorted by language.
pub fn parse_merge_arg(s: &str) -> Result<Vec<LangFile>, CalibError> {
    let p = Path::new(s);
    let mut out = if !s.contains('=') && p.is_dir() {
        from_dir(p)?
    } else {
        let mut v = Vec::new();
        for part in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
            let (lang, path) = part.split_once('=').ok_or_else(|| {
                err(format!(
                    "--merge: `{part}` is not LANG=FILE (e.g. en=imatrix-en.gguf,zh=imatrix-zh.gguf) \
                     and not a folder of <lang>.gguf files"
                ))
            })?;
            v.push(LangFile {
                lang: lang.trim().to_string(),
                path: PathBuf::from(path.trim()),
            });
        }
        v
    };
    if out.is_empty() {
        return Err(err(
            "--merge: no files; give LANG=FILE pairs or a folder of <lang>.gguf files",
        ));
    }
    for f in &out {
        if !corpus::is_language_code(&f.lang) {
            return Err(err(format!(
                "--merge: `{}` ({}) is not an ISO 639-1 language code",
                f.lang,
                f.path.display()
            )));
        }
    }
    out.sort_by(|a, b| a.lang.cmp(&b.lang));
    if let Some(w) = out.windows(2).find(|w| w[0].lang == w[1].lang) {
        return Err(err(format!(
            "--merge: {} is given twice ({} and {})",
            w[0].lang,
            w[0].path.display(),
            w[1].path.display()
        )));
    }
    Ok(out)
}

/// The `<lang>.gguf` files of a folder (other files are ignored).
fn from_dir(dir: &Path) -> Result<Vec<LangFile>, CalibError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| err(format!("{}: cannot read the folder: {e}", dir.display())))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| err(format!("{}: cannot list the folder: {e}", dir.display())))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some(stem) = name.strip_suffix(".gguf") else {
            continue;
        };
        if !corpus::is_language_code(stem) {
            return Err(err(format!(
                "{}: `{stem}` is not an ISO 639-1 language code; name each file <lang>.gguf, e.g. en.gguf, zh.gguf",
                entry.path().display()
            )));
        }
        out.push(LangFile {
            lang: stem.to_string(),
            path: entry.path(),
        });
    }
    if out.is_empty() {
        return Err(err(format!(
            "{}: no <lang>.gguf files (one llama-imatrix GGUF per language, named by ISO 639-1 code)",
            dir.display()
        )));
    }
    Ok(out)
}

/// What one language contributed.
#[derive(Clone, Debug, PartialEq)]
pub struct MergedLang {
    /// The language.
    pub lang: String,
    /// Its imatrix file.
    pub file: String,
    /// `w_l`, summing to 1 over the languages.
    pub weight: f64,
    /// Tokens: the largest count of any matrix in its file (every token reaches
    /// a dense weight; an expert sees a share of them).
    pub tokens: u64,
    /// Its file's chunk count.
    pub chunks: u32,
    /// Its file's tokens per chunk.
    pub chunk_size: u32,
}

/// The merged statistics and where they came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Merged {
    /// The balanced statistics.
    pub imatrix: Imatrix,
    /// Each language's part in them.
    pub langs: Vec<MergedLang>,
}

/// Reads every file and merges them ([`merge`]).
pub fn merge_files(files: &[LangFile], weights: &[(String, f64)]) -> Result<Merged, CalibError> {
    let mut read = Vec::with_capacity(files.len());
    for f in files {
        read.push((f.lang.clone(), f.path.clone(), Imatrix::read(&f.path)?));
    }
    merge(&read, weights)
}

/// Balances per-language imatrices `(lang, file, statistics)` with the relative
/// `weights` (`--lang-weights`; unnamed languages weigh 1). Every file must hold
/// the same weights with the same widths and matrix counts (else they are not
/// of one model), and be a GGUF imatrix with finite, non-negative values.
pub fn merge(
    inputs: &[(String, PathBuf, Imatrix)],
    weights: &[(String, f64)],
) -> Result<Merged, CalibError> {
    let Some((_, first_path, first)) = inputs.first() else {
        return Err(err("--merge: no files"));
    };
    let langs: Vec<&str> = inputs.iter().map(|(l, _, _)| l.as_str()).collect();
    let w = normalized_weights(&langs, weights)?;
    for (_, path, m) in inputs {
        if m.legacy {
            return Err(err(format!(
                "{}: a legacy .dat imatrix holds means times chunks, not the token counts the \
                 balance needs; make it with llama-imatrix's default GGUF output (-o FILE.gguf)",
                path.display()
            )));
        }
        check_same_tensors(first_path, first, path, m)?;
    }
    let mut out = Imatrix {
        chunk_size: first.chunk_size,
        chunk_count: inputs.iter().map(|(_, _, m)| m.chunk_count).sum(),
        ..Default::default()
    };
    for (lang, _, m) in inputs {
        for d in &m.datasets {
            out.datasets.push(format!("{lang}:{d}"));
        }
    }
    if out.datasets.is_empty() {
        out.datasets
            .push(format!("laquant-merge:{}", langs.join(",")));
    }
    for (name, e0) in &first.entries {
        let n_mat = e0.counts.len();
        let ne0 = e0.sums.len() / n_mat;
        let mut sums = vec![0f32; e0.sums.len()];
        let mut counts = vec![0f32; n_mat];
        let mut acc = vec![0f64; ne0];
        for mat in 0..n_mat {
            // The languages that reached this matrix, and their share of the weight.
            let reached: f64 = inputs
                .iter()
                .zip(&w)
                .filter(|((_, _, m), _)| m.entries[name].counts[mat] > 0.0)
                .map(|(_, &wl)| wl)
                .sum();
            let total: f64 = inputs
                .iter()
                .map(|(_, _, m)| m.entries[name].counts[mat] as f64)
                .sum();
            acc.iter_mut().for_each(|a| *a = 0.0);
            if reached > 0.0 {
                for ((_, _, m), &wl) in inputs.iter().zip(&w) {
                    let e = &m.entries[name];
                    let n = e.counts[mat] as f64;
                    if n > 0.0 {
                        let s = &e.sums[mat * ne0..(mat + 1) * ne0];
                        for (a, &x) in acc.iter_mut().zip(s) {
                            *a += (wl / reached) * (x as f64 / n);
                        }
                    }
                }
            }
            counts[mat] = total as f32;
            for (o, a) in sums[mat * ne0..(mat + 1) * ne0].iter_mut().zip(&acc) {
                *o = (a * total) as f32;
            }
        }
        out.entries
            .insert(name.clone(), ImatrixEntry { sums, counts });
    }
    let langs = inputs
        .iter()
        .zip(&w)
        .map(|((lang, path, m), &weight)| MergedLang {
            lang: lang.clone(),
            file: path.display().to_string(),
            weight,
            tokens: m
                .entries
                .values()
                .flat_map(|e| e.counts.iter())
                .fold(0f32, |a, &c| a.max(c)) as u64,
            chunks: m.chunk_count,
            chunk_size: m.chunk_size,
        })
        .collect();
    Ok(Merged {
        imatrix: out,
        langs,
    })
}

/// Every weight of `a` is in `b` with the same width and matrix count, and the other way round.
fn check_same_tensors(pa: &Path, a: &Imatrix, pb: &Path, b: &Imatrix) -> Result<(), CalibError> {
    let shape = |e: &ImatrixEntry| (e.sums.len() / e.counts.len().max(1), e.counts.len());
    let other_model = "(files of different models?)";
    for (name, ea) in &a.entries {
        let Some(eb) = b.entries.get(name) else {
            return Err(err(format!(
                "{}: has no statistics for {name}, which {} has {other_model}",
                pb.display(),
                pa.display()
            )));
        };
        let (sa, sb) = (shape(ea), shape(eb));
        if sa != sb {
            return Err(err(format!(
                "{}: {name} has {} columns x {} matrices, {} has {} x {} {other_model}",
                pb.display(),
                sb.0,
                sb.1,
                pa.display(),
                sa.0,
                sa.1
            )));
        }
    }
    if let Some(name) = b.entries.keys().find(|n| !a.entries.contains_key(*n)) {
        return Err(err(format!(
            "{}: has statistics for {name}, which {} has not {other_model}",
            pb.display(),
            pa.display()
        )));
    }
    Ok(())
}

/// One line per language: weight, tokens, chunks, file.
pub fn summary_text(m: &Merged) -> String {
    let mut s = format!(
        "merged {} languages, {} weights:\n",
        m.langs.len(),
        m.imatrix.entries.len()
    );
    for l in &m.langs {
        s += &format!(
            "  {:<3} weight {:.4}  {:>9} tokens  {:>5} chunks of {}  {}\n",
            l.lang, l.weight, l.tokens, l.chunks, l.chunk_size, l.file
        );
    }
    s
}

/// The merge as JSON (`--report`).
pub fn summary_json(m: &Merged) -> serde_json::Value {
    serde_json::json!({
        "merged": true,
        "weights": m.imatrix.entries.len(),
        "languages": m.langs.iter().map(|l| serde_json::json!({
            "lang": l.lang, "weight": l.weight, "tokens": l.tokens,
            "chunks": l.chunks, "chunk_size": l.chunk_size, "file": l.file,
        })).collect::<Vec<_>>(),
    })
}

/// The per-language statistics of our own calibration as one imatrix per
/// language (what `laquant calibrate --calib DIR` writes for a DIR holding only
/// that language), for [`merge`] and its tests.
pub fn per_language(imp: &super::Importance) -> Vec<(String, Imatrix)> {
    imp.langs
        .iter()
        .map(|l| {
            let one = super::Importance {
                langs: vec![l.clone()],
                weights: vec![1.0],
                ctx: imp.ctx,
                datasets: vec![format!("laquant:{}", l.lang)],
            };
            (l.lang.clone(), one.to_imatrix())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn entry(sums: Vec<f32>, counts: Vec<f32>) -> ImatrixEntry {
        ImatrixEntry { sums, counts }
    }

    fn file(lang: &str, entries: Vec<(&str, ImatrixEntry)>) -> (String, PathBuf, Imatrix) {
        let mut m = Imatrix {
            datasets: vec![format!("{lang}.txt")],
            chunk_count: 2,
            chunk_size: 512,
            ..Default::default()
        };
        for (n, e) in entries {
            m.entries.insert(n.into(), e);
        }
        // Through the GGUF image, as a file would be read.
        let m = Imatrix::from_bytes(m.to_gguf_bytes().unwrap(), Path::new("x.gguf")).unwrap();
        (lang.into(), PathBuf::from(format!("{lang}.gguf")), m)
    }

    #[test]
    fn balances_languages_not_tokens() {
        // en: 1000 tokens, mean x² 1 on column 0; zh: 10 tokens, mean 3 on column 1.
        let en = file("en", vec![("a", entry(vec![1000.0, 0.0], vec![1000.0]))]);
        let zh = file("zh", vec![("a", entry(vec![0.0, 30.0], vec![10.0]))]);
        let m = merge(&[en.clone(), zh.clone()], &[]).unwrap();
        let e = &m.imatrix.entries["a"];
        assert_eq!(e.counts, vec![1010.0]);
        assert_eq!(e.mean(), vec![0.5, 1.5]);
        assert_eq!(m.langs[0].tokens, 1000);
        assert_eq!(m.imatrix.chunk_count, 4);
        assert_eq!(m.imatrix.datasets, ["en:en.txt", "zh:zh.txt"]);
        let m = merge(&[en, zh], &[("en".into(), 3.0)]).unwrap();
        assert_eq!(m.imatrix.entries["a"].mean(), vec![0.75, 0.75]);
        assert_eq!(m.langs[0].weight, 0.75);
    }

    #[test]
    fn an_expert_a_language_never_reached_is_balanced_over_the_others() {
        // Two experts of 2 columns; zh never reached expert 1.
        let en = file(
            "en",
            vec![("x", entry(vec![4.0, 8.0, 2.0, 6.0], vec![4.0, 2.0]))],
        );
        let zh = file(
            "zh",
            vec![("x", entry(vec![3.0, 3.0, 0.0, 0.0], vec![1.0, 0.0]))],
        );
        let m = merge(&[en, zh], &[]).unwrap();
        let e = &m.imatrix.entries["x"];
        assert_eq!(e.counts, vec![5.0, 2.0]);
        assert_eq!(e.mean(), vec![2.0, 2.5, 1.0, 3.0]);
    }

    #[test]
    fn files_of_different_models_are_refused_naming_file_and_tensor() {
        let en = file("en", vec![("a", entry(vec![1.0, 2.0], vec![1.0]))]);
        let wide = file("zh", vec![("a", entry(vec![1.0, 2.0, 3.0], vec![1.0]))]);
        let e = merge(&[en.clone(), wide], &[]).unwrap_err().to_string();
        assert!(
            e.contains("zh.gguf") && e.contains("a has 3 columns"),
            "{e}"
        );
        let other = file("zh", vec![("b", entry(vec![1.0, 2.0], vec![1.0]))]);
        let e = merge(&[en.clone(), other], &[]).unwrap_err().to_string();
        assert!(e.contains("zh.gguf: has no statistics for a"), "{e}");
        let more = file(
            "zh",
            vec![
                ("a", entry(vec![1.0, 2.0], vec![1.0])),
                ("b", entry(vec![1.0], vec![1.0])),
            ],
        );
        let e = merge(&[en.clone(), more], &[]).unwrap_err().to_string();
        assert!(e.contains("zh.gguf: has statistics for b"), "{e}");
        let experts = file("zh", vec![("a", entry(vec![1.0, 2.0], vec![1.0, 1.0]))]);
        let e = merge(&[en.clone(), experts], &[]).unwrap_err().to_string();
        assert!(e.contains("1 columns x 2 matrices"), "{e}");
        let mut dat = en.clone();
        dat.2 = Imatrix::from_bytes(en.2.to_dat_bytes(), Path::new("en.dat")).unwrap();
        let e = merge(&[dat], &[]).unwrap_err().to_string();
        assert!(e.contains("legacy"), "{e}");
        let e = merge(&[en], &[("fr".into(), 1.0)]).unwrap_err().to_string();
        assert!(e.contains("fr"), "{e}");
    }

    #[test]
    fn merge_argument_forms() {
        let v = parse_merge_arg("zh=b.gguf, en=a.gguf").unwrap();
        assert_eq!(v[0].lang, "en");
        assert_eq!(v[1].path, PathBuf::from("b.gguf"));
        for bad in ["", "en", "xx=a.gguf", "en=a.gguf,en=b.gguf"] {
            assert!(parse_merge_arg(bad).is_err(), "{bad}");
        }
        let d = tempfile::tempdir().unwrap();
        let e = parse_merge_arg(d.path().to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no <lang>.gguf"), "{e}");
        std::fs::write(d.path().join("de.gguf"), b"").unwrap();
        std::fs::write(d.path().join("notes.txt"), b"").unwrap();
        let v = parse_merge_arg(d.path().to_str().unwrap()).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].lang, "de");
        std::fs::write(d.path().join("english.gguf"), b"").unwrap();
        let e = parse_merge_arg(d.path().to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("english.gguf") && e.contains("ISO 639-1"), "{e}");
    }

    /// The merge of our own per-language files is our direct balanced statistic:
    /// the files keep f32 sums, so the two agree to within a few f32 roundings
    /// (4 units in the last place), not bit for bit.
    #[test]
    fn merging_our_per_language_files_gives_the_direct_statistic() {
        use crate::calib::{LangStats, TapSums};
        let mut langs = Vec::new();
        let mut seed = 7u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        for (lang, tokens) in [("ar", 96u64), ("en", 1536), ("zh", 333)] {
            let sums: Vec<Vec<f64>> = (0..4)
                .map(|_| (0..64).map(|_| rnd() * 50.0 * tokens as f64).collect())
                .collect();
            langs.push(LangStats {
                lang: lang.into(),
                chunks: 3,
                token_counts: BTreeMap::new(),
                taps: TapSums {
                    sums,
                    tokens,
                    with_output: false,
                    n_layers: 1,
                    block: &crate::arch::llama::LLAMA.block,
                    n_expert: 0,
                    routes: None,
                },
            });
        }
        for weights in [
            vec![],
            vec![("en".to_string(), 2.0), ("ar".to_string(), 0.5)],
        ] {
            let l: Vec<&str> = langs.iter().map(|l| l.lang.as_str()).collect();
            let imp = super::super::Importance {
                weights: normalized_weights(&l, &weights).unwrap(),
                langs: langs.clone(),
                ctx: 512,
                datasets: vec![],
            };
            let direct = imp.to_imatrix();
            let inputs: Vec<_> = per_language(&imp)
                .into_iter()
                .map(|(lang, m)| {
                    let p = PathBuf::from(format!("{lang}.gguf"));
                    let m = Imatrix::from_bytes(m.to_gguf_bytes().unwrap(), &p).unwrap();
                    (lang, p, m)
                })
                .collect();
            let merged = merge(&inputs, &weights).unwrap().imatrix;
            assert_eq!(
                merged.entries.keys().collect::<Vec<_>>(),
                direct.entries.keys().collect::<Vec<_>>()
            );
            let mut worst = 0u32;
            for (name, d) in &direct.entries {
                let m = &merged.entries[name];
                assert_eq!(m.counts, d.counts, "{name}");
                for (a, b) in m.sums.iter().zip(&d.sums) {
                    worst =
                        worst.max((a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32);
                }
            }
            assert!(worst <= 4, "{worst} ulps");
        }
    }
}
