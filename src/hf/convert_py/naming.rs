//! gguf-py's model-id heuristics (`gguf/metadata.py`'s
//! `get_model_id_components`, `id_to_title`; `gguf/utility.py`'s `size_label`).

use super::pystr::{py_isalpha, py_isdecimal, py_islower, py_isspace, py_strip, py_title};
use regex::Regex;
use std::sync::LazyLock;

/// What `Metadata.get_model_id_components` finds in a model id such as
/// `meta-llama/Meta-Llama-3-8B-Instruct`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdComponents {
    /// The part after `org/`, unchanged.
    pub full_name: Option<String>,
    /// The part before `/`.
    pub org: Option<String>,
    /// The name without its size, fine-tune and version parts.
    pub basename: Option<String>,
    /// The fine-tune part (`Instruct`, `Chat`, ...).
    pub finetune: Option<String>,
    /// The version part (`v0.1`).
    pub version: Option<String>,
    /// The size part (`8B`, `8x7B`).
    pub size_label: Option<String>,
}

static VERSION_PART: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)^(?:(v|iter)?\d+([.]\d+)*)$").unwrap());
static TYPE_PART: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)^(?:i?q\d(_\w)*|b?fp?(16|32))$").unwrap());
static SIZE_PART: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^(?:(([A]|\d+[x])?\d+([._]\d+)?[KMBT][\d]?|small|mini|medium|large|x?xl))$")
        .unwrap()
});
static FINETUNE_PART: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)^(?:chat|instruct|vision|lora)$").unwrap());
static TITLE_KEEP: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(v\d+(?:\.\d+)*|\d.*)$").unwrap());
pub(super) static HF_URL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^https?://huggingface.co/([^/]+/[^/]+)$").unwrap());

const VERSION: u8 = 1;
const TYPE: u8 = 2;
const SIZE: u8 = 4;
const FINETUNE: u8 = 8;
const BASENAME: u8 = 16;

/// `Metadata.get_model_id_components(model_id, total_params)`.
pub fn model_id_components(model_id: &str, total_params: u64) -> IdComponents {
    if model_id.contains(' ') {
        return IdComponents {
            full_name: Some(model_id.to_string()),
            ..Default::default()
        };
    }
    let (mut org, full) = match model_id.split_once('/') {
        Some((o, n)) => (Some(o), n),
        None => (None, model_id),
    };
    if org.is_some_and(|o| o.starts_with('.')) {
        org = None;
    }

    let mut parts: Vec<String> = full
        .split('-')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    let mut types = vec![0u8; parts.len()];

    for i in 0..parts.len() {
        let part = parts[i].clone();
        if VERSION_PART.is_match(&part) {
            types[i] |= VERSION;
        } else if TYPE_PART.is_match(&part) {
            types[i] |= TYPE;
            parts[i] = part.to_uppercase();
        } else if i > 0 && SIZE_PART.is_match(&part) {
            let (normalised, ty) = size_part(&part, total_params);
            types[i] |= ty;
            parts[i] = normalised;
        } else if i > 0 && FINETUNE_PART.is_match(&part) {
            types[i] |= FINETUNE;
        }
    }

    // word-based size labels give way to number-based ones
    let numeric_size = parts
        .iter()
        .zip(&types)
        .any(|(n, t)| t & SIZE != 0 && n.chars().any(py_isdecimal));
    if numeric_size {
        for (n, t) in parts.iter().zip(types.iter_mut()) {
            if *t & SIZE != 0 && n.chars().all(py_isalpha) {
                *t &= !SIZE;
            }
        }
    }

    mark_basename(&parts, &mut types);

    let join = |want: u8, without: u8| -> Option<String> {
        let mut picked: Vec<&str> = Vec::new();
        for (p, t) in parts.iter().zip(&types) {
            if t & want != 0 && t & without == 0 {
                picked.push(p);
            }
        }
        Some(picked.join("-")).filter(|s| !s.is_empty())
    };
    let mut basename = join(BASENAME, 0);
    let mut sizes: Vec<&str> = Vec::new();
    for (p, t) in parts.iter().zip(&types) {
        if t & SIZE != 0 && !sizes.contains(&p.as_str()) {
            sizes.push(p);
        }
    }
    let size_label = Some(sizes.join("-")).filter(|s| !s.is_empty());
    let finetune = join(FINETUNE, 0);
    let version = join(VERSION, BASENAME);
    if size_label.is_none() && finetune.is_none() && version.is_none() {
        basename = None;
    }
    IdComponents {
        full_name: Some(full.to_string()),
        org: org.map(str::to_string),
        basename,
        finetune,
        version,
        size_label,
    }
}

/// A size part of a model id (`7B`, `8x7b`, `7b1`, `128k`) as gguf-py rewrites
/// it, and its kind: a size, or a finetune when the number is far from the
/// parameter count (likely a context length).
fn size_part(part: &str, total_params: u64) -> (String, u8) {
    let mut ty = 0u8;
    let mut p: Vec<char> = part.replace('_', ".").chars().collect();
    let n = p.len();
    // bloom-7b1 notation: 7b1 -> 7.1b
    if py_isdecimal(p[n - 1]) {
        let (last, before) = (p[n - 1], p[n - 2]);
        p.truncate(n - 2);
        p.extend(['.', last, before]);
    }
    let n = p.len();
    if n > 1 && py_isdecimal(p[n - 2]) && "kmbt".contains(p[n - 1]) {
        p[n - 1] = p[n - 1].to_ascii_uppercase();
    }
    if total_params != 0 {
        let number: String = p[..n - 1].iter().collect();
        if let Ok(x) = number.parse::<f64>() {
            let scale = match " KMBT".find(p[n - 1]) {
                Some(0) => 1.0,
                Some(1) => 1e3,
                Some(2) => 1e6,
                Some(3) => 1e9,
                Some(4) => 1e12,
                _ => 0.001,
            };
            let label_params = x * scale;
            let limit = (7 * total_params as u128 / 8) as f64;
            if (label_params - total_params as f64).abs() > limit {
                // likely a context length
                ty |= FINETUNE;
                let lower: String = p[n - 1].to_lowercase().collect();
                p.truncate(n - 1);
                p.extend(lower.chars());
            }
        }
    }
    if ty == 0 {
        ty |= SIZE;
    }
    (p.into_iter().collect(), ty)
}

/// Marks the leading run of plain words and versions as the basename (parts
/// after it that have no kind become the finetune), then drops the basename
/// mark from trailing parts that also have another kind.
fn mark_basename(parts: &[String], types: &mut [u8]) {
    let mut at_start = true;
    for (part, t) in parts.iter().zip(types.iter_mut()) {
        let first_alpha = part.chars().next().is_some_and(py_isalpha);
        if at_start && ((*t == 0 && first_alpha) || *t & VERSION != 0) {
            *t |= BASENAME;
        } else {
            at_start = false;
            if *t == 0 {
                *t |= FINETUNE;
            }
        }
    }
    for t in types.iter_mut().rev() {
        if *t & BASENAME != 0 && t.count_ones() > 1 {
            *t &= !BASENAME;
        } else {
            break;
        }
    }
}

/// `Metadata.id_to_title`: dashes to spaces, all-lowercase words title-cased
/// unless they look like a version or start with a digit.
pub fn id_to_title(s: &str) -> String {
    let replaced = py_strip(s).replace('-', " ");
    replaced
        .split(py_isspace)
        .filter(|w| !w.is_empty())
        .map(|w| {
            if py_islower(w) && !TITLE_KEEP.is_match(w) {
                py_title(w)
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `model_weight_count_rounded_notation` (gguf-py utility.py): 25172352 -> "25M".
pub fn weight_count_notation(count: u64, min_digits: usize) -> String {
    let (scale, suffix) = if count > 1_000_000_000_000 {
        (1e-12, "T")
    } else if count > 1_000_000_000 {
        (1e-9, "B")
    } else if count > 1_000_000 {
        (1e-6, "M")
    } else {
        (1e-3, "K")
    };
    let scaled = count as f64 * scale;
    let rounded = format!("{}", scaled.round_ties_even() as u128);
    let digits = rounded.trim_start_matches('0').chars().count();
    let fix = min_digits.saturating_sub(digits);
    format!("{scaled:.fix$}{suffix}")
}

/// `gguf.size_label` (utility.py): "8B", "1.1B", or "8x7.2B" for experts.
pub fn size_label(total: u64, shared: u64, expert: u64, expert_count: u64) -> String {
    if expert_count > 0 {
        let pretty = weight_count_notation(shared + expert, 2);
        format!("{expert_count}x{pretty}")
    } else {
        weight_count_notation(total, 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_to_title_like_gguf_py() {
        assert_eq!(
            id_to_title("meta-llama-3-8b-instruct"),
            "Meta Llama 3 8b Instruct"
        );
        assert_eq!(id_to_title("qwen2.5-v0.1"), "Qwen2.5 v0.1");
    }
}
