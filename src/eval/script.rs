//! Which writing system each language uses, for grouping languages in tables
//! and charts (quantization error often follows script: tokenizers split
//! non-Latin scripts into more, rarer tokens).

/// `(ISO 639-1 code, script)` for the languages not written in Latin script.
const NON_LATIN: &[(&str, &str)] = &[
    ("ar", "Arabic"),
    ("fa", "Arabic"),
    ("ur", "Arabic"),
    ("ps", "Arabic"),
    ("ug", "Arabic"),
    ("ru", "Cyrillic"),
    ("uk", "Cyrillic"),
    ("bg", "Cyrillic"),
    ("be", "Cyrillic"),
    ("sr", "Cyrillic"),
    ("mk", "Cyrillic"),
    ("kk", "Cyrillic"),
    ("ky", "Cyrillic"),
    ("mn", "Cyrillic"),
    ("tg", "Cyrillic"),
    ("zh", "CJK"),
    ("ja", "CJK"),
    ("ko", "CJK"),
    ("hi", "Devanagari"),
    ("mr", "Devanagari"),
    ("ne", "Devanagari"),
    ("sa", "Devanagari"),
    ("bn", "Bengali"),
    ("as", "Bengali"),
    ("ta", "Tamil"),
    ("te", "Telugu"),
    ("kn", "Kannada"),
    ("ml", "Malayalam"),
    ("gu", "Gujarati"),
    ("pa", "Gurmukhi"),
    ("or", "Odia"),
    ("si", "Sinhala"),
    ("th", "Thai"),
    ("lo", "Lao"),
    ("km", "Khmer"),
    ("my", "Myanmar"),
    ("el", "Greek"),
    ("he", "Hebrew"),
    ("yi", "Hebrew"),
    ("ka", "Georgian"),
    ("hy", "Armenian"),
    ("am", "Ethiopic"),
    ("ti", "Ethiopic"),
    ("bo", "Tibetan"),
    ("dz", "Tibetan"),
    ("dv", "Thaana"),
    ("iu", "Syllabics"),
    ("cr", "Syllabics"),
];

/// The script `lang` is written in; Latin for every code not listed.
pub fn script(lang: &str) -> &'static str {
    NON_LATIN
        .iter()
        .find(|(l, _)| *l == lang)
        .map(|(_, s)| *s)
        .unwrap_or("Latin")
}

/// Scripts in display order: Latin first, then by first appearance in `NON_LATIN`.
pub fn order(s: &str) -> usize {
    if s == "Latin" {
        return 0;
    }
    NON_LATIN
        .iter()
        .position(|(_, x)| *x == s)
        .map(|p| p + 1)
        .unwrap_or(usize::MAX)
}

/// Languages sorted by script (in [`order`]), then by code.
pub fn grouped<'a>(langs: impl IntoIterator<Item = &'a str>) -> Vec<(&'static str, Vec<&'a str>)> {
    let mut v: Vec<&str> = langs.into_iter().collect();
    v.sort_by_key(|l| (order(script(l)), *l));
    let mut out: Vec<(&'static str, Vec<&str>)> = Vec::new();
    for l in v {
        let s = script(l);
        match out.last_mut() {
            Some((last, ls)) if *last == s => ls.push(l),
            _ => out.push((s, vec![l])),
        }
    }
    out
}

/// The languages of [`grouped`]'s groups, in their order (how eval lists them).
pub fn in_order<'a>(groups: &[(&'static str, Vec<&'a str>)]) -> Vec<&'a str> {
    groups
        .iter()
        .flat_map(|(_, ls)| ls.iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_of_the_embedded_languages() {
        assert_eq!(script("en"), "Latin");
        assert_eq!(script("vi"), "Latin");
        assert_eq!(script("ru"), "Cyrillic");
        assert_eq!(script("zh"), "CJK");
        assert_eq!(script("hi"), "Devanagari");
        assert_eq!(script("ar"), "Arabic");
        let g = grouped(["zh", "en", "ru", "de", "ar", "uk", "fa"]);
        assert_eq!(
            g,
            vec![
                ("Latin", vec!["de", "en"]),
                ("Arabic", vec!["ar", "fa"]),
                ("Cyrillic", vec!["ru", "uk"]),
                ("CJK", vec!["zh"]),
            ]
        );
    }
}
