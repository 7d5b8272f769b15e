//! Python's `str` methods as gguf-py's naming heuristics use them: `isspace`,
//! `isdecimal`, `isalpha`, `islower`, `title`, `strip` and `splitlines`, with
//! Python's Unicode rules.

use regex::Regex;
use std::sync::LazyLock;

static DECIMAL: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^\d$").unwrap());
static ALPHA: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^\p{L}$").unwrap());
static TITLECASE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^\p{Lt}$").unwrap());

/// `str.isspace` for one character (Unicode White_Space plus U+001C..U+001F).
pub(super) fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `str.isdecimal` for one character (general category Nd).
pub(super) fn py_isdecimal(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    let mut b = [0u8; 4];
    DECIMAL.is_match(c.encode_utf8(&mut b))
}

/// `str.isalpha` for one character (general categories L*).
pub(super) fn py_isalpha(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphabetic();
    }
    let mut b = [0u8; 4];
    ALPHA.is_match(c.encode_utf8(&mut b))
}

fn py_istitle_char(c: char) -> bool {
    if c.is_ascii() {
        return false;
    }
    let mut b = [0u8; 4];
    TITLECASE.is_match(c.encode_utf8(&mut b))
}

fn py_iscased(c: char) -> bool {
    c.is_lowercase() || c.is_uppercase() || py_istitle_char(c)
}

/// `str.islower`: at least one cased character and none upper- or titlecase.
pub(super) fn py_islower(s: &str) -> bool {
    let mut cased = false;
    for c in s.chars() {
        if c.is_uppercase() || py_istitle_char(c) {
            return false;
        }
        if c.is_lowercase() {
            cased = true;
        }
    }
    cased
}

/// The titlecase mapping of one character (Python's `str.title` per letter).
fn py_titlecase(c: char, out: &mut String) {
    match c {
        'Ǆ' | 'ǅ' | 'ǆ' => out.push('ǅ'),
        'Ǉ' | 'ǈ' | 'ǉ' => out.push('ǈ'),
        'Ǌ' | 'ǋ' | 'ǌ' => out.push('ǋ'),
        'Ǳ' | 'ǲ' | 'ǳ' => out.push('ǲ'),
        _ => {
            let mut up = c.to_uppercase();
            if let Some(first) = up.next() {
                out.push(first);
            }
            for rest in up {
                out.extend(rest.to_lowercase());
            }
        }
    }
}

/// `str.title`.
pub(super) fn py_title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut previous_is_cased = false;
    for c in s.chars() {
        if previous_is_cased {
            out.extend(c.to_lowercase());
        } else {
            py_titlecase(c, &mut out);
        }
        previous_is_cased = py_iscased(c);
    }
    out
}

pub(super) fn py_strip(s: &str) -> &str {
    s.trim_matches(py_isspace)
}

/// The lines of `text` as Python's `str.splitlines` gives them.
pub(super) fn py_splitlines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut it = text.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        let is_break = matches!(
            c,
            '\n' | '\r'
                | '\u{0b}'
                | '\u{0c}'
                | '\u{1c}'
                | '\u{1d}'
                | '\u{1e}'
                | '\u{85}'
                | '\u{2028}'
                | '\u{2029}'
        );
        if is_break {
            lines.push(&text[start..i]);
            let mut end = i + c.len_utf8();
            if c == '\r' {
                if let Some(&(_, '\n')) = it.peek() {
                    it.next();
                    end += 1;
                }
            }
            start = end;
        }
    }
    if start < text.len() {
        lines.push(&text[start..]);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitlines_matches_python() {
        assert_eq!(
            py_splitlines("a\nb\r\nc\rd\u{2028}e\n"),
            ["a", "b", "c", "d", "e"]
        );
        assert_eq!(py_splitlines("a\n\n"), ["a", ""]);
        assert!(py_splitlines("").is_empty());
    }

    #[test]
    fn title_case_like_python() {
        assert_eq!(py_title("llama3b"), "Llama3B");
        assert_eq!(py_title("o'neil"), "O'Neil");
        assert_eq!(py_title("straße"), "Straße");
    }
}
