//! Calibration text, one document per language: the embedded default (the
//! Universal Declaration of Human Rights in 29 languages, `fixtures/corpus/`,
//! see its SOURCES.md and licence) or a user folder of `<lang>.txt` files named
//! by ISO 639-1 code. Every problem with a folder is a [`CalibError::Corpus`]
//! naming the file.
//!
//! The embedded documents are split once, at a line break after
//! [`CALIB_SHARE`] of each text: calibration reads the first part
//! ([`Corpus::embedded_calibration`]), and `laquant eval` without `--eval`
//! scores the held-out rest ([`Corpus::embedded_holdout`]), so the default
//! evaluation never sees text the importance statistics were taken on.

use super::CalibError;
use std::path::Path;

/// One language's calibration text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    /// ISO 639-1 code.
    pub lang: String,
    /// The text.
    pub text: String,
    /// Where it came from (`embedded:<lang>.txt` or the file path).
    pub source: String,
}

/// Documents sorted by language code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corpus {
    /// One document per language.
    pub docs: Vec<Document>,
}

macro_rules! embedded {
    ($($lang:literal),* $(,)?) => {
        &[$(($lang, include_str!(concat!("../../fixtures/corpus/", $lang, ".txt")))),*]
    };
}

/// The embedded default corpus, `(lang, text)`.
pub const EMBEDDED: &[(&str, &str)] = embedded!(
    "ar", "bn", "ca", "cs", "da", "de", "el", "en", "es", "fa", "fr", "he", "hi", "id", "it", "ja",
    "ko", "nl", "pl", "pt", "ro", "ru", "sv", "ta", "th", "tr", "uk", "vi", "zh",
);

/// Share of every embedded document (by bytes, cut at the next line break)
/// that calibration reads; the rest is held out for evaluation.
pub const CALIB_SHARE: f64 = 0.8;

/// The largest `<lang>.txt` read (calibration uses at most a few MB of each).
pub const MAX_TEXT_BYTES: u64 = 1 << 30;

/// Splits `text` at the first line break at or after `CALIB_SHARE` of its
/// bytes: `(calibration part, held-out part)`. The line break stays with the
/// first part; a text without a later line break is not split.
pub fn split_holdout(text: &str) -> (&str, &str) {
    let mut at = (text.len() as f64 * CALIB_SHARE) as usize;
    while at < text.len() && !text.is_char_boundary(at) {
        at += 1;
    }
    match text[at..].find('\n') {
        Some(i) => text.split_at(at + i + 1),
        None => (text, ""),
    }
}

/// The 183 ISO 639-1 codes.
const ISO_639_1: &str = "aa ab ae af ak am an ar as av ay az ba be bg bi bm bn bo br bs ca ce ch co cr cs cu cv cy \
da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig ii ik \
io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt \
my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so \
sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu";

/// Whether `code` is an ISO 639-1 language code (two lowercase letters from the standard's list).
pub fn is_language_code(code: &str) -> bool {
    code.len() == 2 && ISO_639_1.split_ascii_whitespace().any(|c| c == code)
}

impl Corpus {
    /// The corpus compiled into the binary.
    pub fn embedded() -> Corpus {
        let docs = EMBEDDED
            .iter()
            .map(|(lang, text)| Document {
                lang: lang.to_string(),
                text: text.to_string(),
                source: format!("embedded:{lang}.txt"),
            })
            .collect();
        Corpus { docs }
    }

    /// The calibration part of every embedded document (see [`split_holdout`]).
    pub fn embedded_calibration() -> Corpus {
        Self::embedded_part(true)
    }

    /// The held-out part of every embedded document, never used by calibration.
    pub fn embedded_holdout() -> Corpus {
        Self::embedded_part(false)
    }

    fn embedded_part(calibration: bool) -> Corpus {
        let docs = EMBEDDED
            .iter()
            .map(|(lang, text)| {
                let (c, h) = split_holdout(text);
                let (part, which) = if calibration {
                    (c, "calibration part")
                } else {
                    (h, "held-out part")
                };
                Document {
                    lang: lang.to_string(),
                    text: part.to_string(),
                    source: format!("embedded:{lang}.txt ({which})"),
                }
            })
            .collect();
        Corpus { docs }
    }

    /// Reads every `<lang>.txt` in `dir`. Files not ending in `.txt` (a README,
    /// SOURCES.md, a licence) are ignored; every `.txt` must be named by an ISO
    /// 639-1 code and hold non-empty UTF-8 text.
    pub fn from_dir(dir: &Path) -> Result<Corpus, CalibError> {
        let err = |what: String| CalibError::Corpus(what);
        let entries = std::fs::read_dir(dir)
            .map_err(|e| err(format!("{}: cannot read the folder: {e}", dir.display())))?;
        let mut docs = Vec::new();
        for entry in entries {
            let entry = entry
                .map_err(|e| err(format!("{}: cannot list the folder: {e}", dir.display())))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Some(stem) = name.strip_suffix(".txt") else {
                continue;
            };
            if !is_language_code(stem) {
                return Err(err(format!(
                    "{}: `{stem}` is not an ISO 639-1 language code; name each file <lang>.txt, e.g. en.txt, zh.txt",
                    path.display()
                )));
            }
            let bytes = crate::hf::read_capped(&path, MAX_TEXT_BYTES)
                .map_err(|e| err(format!("{}: cannot read: {e}", path.display())))?;
            let text = String::from_utf8(bytes).map_err(|e| {
                err(format!(
                    "{}: not UTF-8 (invalid byte at offset {})",
                    path.display(),
                    e.utf8_error().valid_up_to()
                ))
            })?;
            if text.trim().is_empty() {
                return Err(err(format!("{}: the file is empty", path.display())));
            }
            docs.push(Document {
                lang: stem.to_string(),
                text,
                source: path.display().to_string(),
            });
        }
        if docs.is_empty() {
            return Err(err(format!(
                "{}: no <lang>.txt files (one UTF-8 file per language, named by ISO 639-1 code)",
                dir.display()
            )));
        }
        docs.sort_by(|a, b| a.lang.cmp(&b.lang));
        Ok(Corpus { docs })
    }

    /// The language codes, in order.
    pub fn languages(&self) -> Vec<&str> {
        self.docs.iter().map(|d| d.lang.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_has_29_nonempty_languages() {
        let c = Corpus::embedded();
        assert_eq!(c.docs.len(), 29);
        for d in &c.docs {
            assert!(is_language_code(&d.lang), "{}", d.lang);
            assert!(d.text.len() > 2000, "{} is short", d.lang);
        }
        let mut sorted = c.languages();
        sorted.sort();
        assert_eq!(sorted, c.languages());
    }

    #[test]
    fn holdout_split_is_disjoint_and_complete() {
        let cal = Corpus::embedded_calibration();
        let hold = Corpus::embedded_holdout();
        for ((full, c), h) in Corpus::embedded()
            .docs
            .iter()
            .zip(&cal.docs)
            .zip(&hold.docs)
        {
            assert_eq!(format!("{}{}", c.text, h.text), full.text, "{}", full.lang);
            let share = c.text.len() as f64 / full.text.len() as f64;
            assert!((0.8..0.95).contains(&share), "{}: {share}", full.lang);
            assert!(
                h.text.len() > 400,
                "{} holds out {} bytes",
                full.lang,
                h.text.len()
            );
            assert!(c.text.ends_with('\n'));
        }
        assert_eq!(split_holdout("abc"), ("abc", ""));
        assert_eq!(split_holdout("ab\ncd\nef"), ("ab\ncd\nef", ""));
        assert_eq!(split_holdout("abcdefgh\nij"), ("abcdefgh\n", "ij"));
        // Multi-byte text is cut on a character boundary.
        let (a, b) = split_holdout("ééééé\né");
        assert_eq!((a, b), ("ééééé\n", "é"));
    }

    #[test]
    fn language_codes() {
        assert!(is_language_code("en"));
        assert!(is_language_code("zh"));
        assert!(!is_language_code("EN"));
        assert!(!is_language_code("eng"));
        assert!(!is_language_code("xx"));
        assert_eq!(ISO_639_1.split_ascii_whitespace().count(), 183);
    }
}
