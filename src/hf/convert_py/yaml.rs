//! The `README.md` front matter, read as PyYAML's `safe_load` reads it (YAML
//! 1.1 implicit types, anchors and merge keys, a bound on alias expansion).

use super::pystr::py_splitlines;
use super::pyvalue::{dict_insert, PyValue};
use regex::Regex;
use std::sync::LazyLock;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// The YAML text `Metadata.load_model_card` hands to `yaml.safe_load`, or
/// `None` when the card has no front matter. `content` is the file as
/// Python's universal-newline text mode reads it.
fn front_matter_yaml(content: &str) -> Option<String> {
    let lines = py_splitlines(content);
    if lines.first() != Some(&"---") {
        return None;
    }
    let yaml_lines: Vec<&str> = lines[1..]
        .iter()
        .copied()
        .take_while(|l| *l != "---")
        .collect();
    let mut yaml = yaml_lines.join("\n") + "\n";
    // convert's fixes: the Norway problem and tabs
    yaml = yaml.replace("- no\n", "- \"no\"\n");
    yaml = yaml.replace('\t', "  ");
    Some(yaml)
}

/// The front matter of a model card's text as `Metadata.load_model_card`
/// returns it: a `Dict`, or an empty `Dict` when there is none or it is not a
/// mapping. `content` is the raw file text (CR and CRLF are read as LF, as
/// Python's text mode does).
pub fn parse_model_card(content: &str) -> Result<PyValue, String> {
    let content = content.replace("\r\n", "\n").replace('\r', "\n");
    let Some(yaml) = front_matter_yaml(&content) else {
        return Ok(PyValue::Dict(Vec::new()));
    };
    match yaml_load(&yaml)? {
        d @ PyValue::Dict(_) => Ok(d),
        _ => Ok(PyValue::Dict(Vec::new())),
    }
}

static YAML_BOOL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$")
        .unwrap()
});
static YAML_FLOAT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?",
        r"|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?",
        r"|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*",
        r"|[-+]?\.(?:inf|Inf|INF)",
        r"|\.(?:nan|NaN|NAN))$"
    ))
    .unwrap()
});
static YAML_INT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"^(?:[-+]?0b[0-1_]+",
        r"|[-+]?0[0-7_]+",
        r"|[-+]?(?:0|[1-9][0-9_]*)",
        r"|[-+]?0x[0-9a-fA-F_]+",
        r"|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$"
    ))
    .unwrap()
});
static YAML_NULL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(?:~|null|Null|NULL|)$").unwrap());
static YAML_TIMESTAMP: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]",
        r"|[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?",
        r"(?:[Tt]|[ \t]+)[0-9][0-9]?",
        r":[0-9][0-9]:[0-9][0-9](?:\.[0-9]*)?",
        r"(?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$"
    ))
    .unwrap()
});
static YAML_TIMESTAMP_PARTS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"^(?P<year>[0-9][0-9][0-9][0-9])-(?P<month>[0-9][0-9]?)-(?P<day>[0-9][0-9]?)",
        r"(?:(?:[Tt]|[ \t]+)(?P<hour>[0-9][0-9]?):(?P<minute>[0-9][0-9]):(?P<second>[0-9][0-9])",
        r"(?:\.(?P<fraction>[0-9]*))?",
        r"(?:[ \t]*(?P<tz>Z|(?P<tz_sign>[-+])(?P<tz_hour>[0-9][0-9]?)(?::(?P<tz_minute>[0-9][0-9]))?))?)?$"
    ))
    .unwrap()
});

const YAML_TAG: &str = "tag:yaml.org,2002:";

/// PyYAML's implicit resolver for a plain scalar (resolvers picked by the
/// first character, in the order `resolver.py` adds them).
fn resolve_plain(v: &str) -> Result<PyValue, String> {
    let Some(c) = v.chars().next() else {
        return Ok(PyValue::None);
    };
    if "yYnNtTfFoO".contains(c) && YAML_BOOL.is_match(v) {
        return construct_bool(v);
    }
    if "-+0123456789.".contains(c) && YAML_FLOAT.is_match(v) {
        return construct_float(v);
    }
    if "-+0123456789".contains(c) && YAML_INT.is_match(v) {
        return construct_int(v);
    }
    if v == "<<" {
        return Err("merge key `<<` used as a value".into());
    }
    if "~nN".contains(c) && YAML_NULL.is_match(v) {
        return Ok(PyValue::None);
    }
    if c.is_ascii_digit() && YAML_TIMESTAMP.is_match(v) {
        return construct_timestamp(v);
    }
    if v == "=" {
        return Err(
            "could not determine a constructor for the tag 'tag:yaml.org,2002:value'".into(),
        );
    }
    Ok(PyValue::Str(v.to_string()))
}

fn construct_bool(v: &str) -> Result<PyValue, String> {
    match v.to_lowercase().as_str() {
        "yes" | "true" | "on" => Ok(PyValue::Bool(true)),
        "no" | "false" | "off" => Ok(PyValue::Bool(false)),
        _ => Err(format!("{v:?} is not a YAML 1.1 boolean")),
    }
}

/// `SafeConstructor.construct_yaml_int`.
fn construct_int(v: &str) -> Result<PyValue, String> {
    let bad = || format!("invalid int {v:?}");
    let s = v.replace('_', "");
    let (neg, body) = match s.chars().next() {
        Some('-') => (true, &s[1..]),
        Some('+') => (false, &s[1..]),
        Some(_) => (false, &s[..]),
        None => return Err(bad()),
    };
    let parsed: Option<i128> = if body == "0" {
        Some(0)
    } else if let Some(b) = body.strip_prefix("0b") {
        parse_radix(b, 2).ok_or_else(bad)?
    } else if let Some(h) = body.strip_prefix("0x") {
        parse_radix(h, 16).ok_or_else(bad)?
    } else if body.starts_with('0') {
        parse_radix(body, 8).ok_or_else(bad)?
    } else if body.contains(':') {
        let mut value: Option<i128> = Some(0);
        let mut base: i128 = 1;
        for part in body.split(':').rev() {
            let d = parse_radix(part, 10).ok_or_else(bad)?;
            value = match (value, d) {
                (Some(acc), Some(d)) => d.checked_mul(base).and_then(|x| acc.checked_add(x)),
                _ => None,
            };
            base = base.saturating_mul(60);
        }
        value
    } else {
        parse_radix(body, 10).ok_or_else(bad)?
    };
    Ok(match parsed {
        Some(x) => PyValue::Int(if neg { -x } else { x }),
        None => PyValue::BigInt(v.to_string()),
    })
}

/// Digits in `radix`: `None` if not a number, `Some(None)` if beyond i128.
fn parse_radix(digits: &str, radix: u32) -> Option<Option<i128>> {
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    Some(i128::from_str_radix(digits, radix).ok())
}

/// `SafeConstructor.construct_yaml_float`.
fn construct_float(v: &str) -> Result<PyValue, String> {
    let s = v.replace('_', "").to_lowercase();
    let (sign, body) = match s.chars().next() {
        Some('-') => (-1.0, &s[1..]),
        Some('+') => (1.0, &s[1..]),
        Some(_) => (1.0, &s[..]),
        None => return Err(format!("invalid float {v:?}")),
    };
    let x = if body == ".inf" {
        f64::INFINITY
    } else if body == ".nan" {
        return Ok(PyValue::Float(f64::NAN));
    } else if body.contains(':') {
        let mut value = 0.0;
        let mut base = 1.0;
        for part in body.split(':').rev() {
            let d: f64 = part.parse().map_err(|_| format!("invalid float {v:?}"))?;
            value += d * base;
            base *= 60.0;
        }
        value
    } else {
        body.parse::<f64>()
            .map_err(|_| format!("invalid float {v:?}"))?
    };
    Ok(PyValue::Float(sign * x))
}

/// `SafeConstructor.construct_yaml_timestamp`, with `datetime`'s range checks.
fn construct_timestamp(v: &str) -> Result<PyValue, String> {
    let caps = YAML_TIMESTAMP_PARTS
        .captures(v)
        .ok_or_else(|| format!("invalid timestamp {v:?}"))?;
    let num = |name: &str| {
        caps.name(name)
            .map(|m| m.as_str().parse::<u32>().unwrap_or(0))
    };
    let (year, month, day) = (
        num("year").unwrap_or(0),
        num("month").unwrap_or(0),
        num("day").unwrap_or(0),
    );
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => 0,
    };
    let bad = || Err(format!("timestamp {v:?} is out of range"));
    if year < 1 || !(1..=12).contains(&month) || day < 1 || day > days {
        return bad();
    }
    if let Some(hour) = num("hour") {
        let (minute, second) = (num("minute").unwrap_or(0), num("second").unwrap_or(0));
        if hour > 23 || minute > 59 || second > 59 {
            return bad();
        }
        if caps.name("tz_sign").is_some() {
            let tz = num("tz_hour").unwrap_or(0) * 60 + num("tz_minute").unwrap_or(0);
            if tz >= 24 * 60 {
                return bad();
            }
        }
    }
    Ok(PyValue::Date(v.to_string()))
}

/// Resolves one scalar event as PyYAML's SafeLoader constructs it.
fn construct_scalar(v: String, style: TScalarStyle, tag: Option<&Tag>) -> Result<PyValue, String> {
    let full = tag.map(|t| format!("{}{}", t.handle, t.suffix));
    let Some(full) = full else {
        return if style == TScalarStyle::Plain {
            resolve_plain(&v)
        } else {
            Ok(PyValue::Str(v))
        };
    };
    match full.strip_prefix(YAML_TAG) {
        Some("str") => Ok(PyValue::Str(v)),
        Some("null") => Ok(PyValue::None),
        Some("bool") => construct_bool(&v),
        Some("int") => construct_int(&v),
        Some("float") => construct_float(&v),
        Some("timestamp") => construct_timestamp(&v),
        Some("binary") => Ok(PyValue::Opaque(
            "bytes",
            v.chars()
                .any(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/'),
        )),
        // PyYAML resolves a `!`-tagged scalar as if it were plain, whatever its style
        _ if full == "!" => resolve_plain(&v),
        _ => Err(format!(
            "could not determine a constructor for the tag '{full}'"
        )),
    }
}

struct EventLog(Vec<(Event, Marker)>);

impl MarkedEventReceiver for EventLog {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        self.0.push((ev, mark));
    }
}

/// Builds Python values from the parser's events, with anchors and merge keys.
struct Builder {
    events: std::vec::IntoIter<(Event, Marker)>,
    /// Each anchor's value and its weight (see `used`).
    anchors: std::collections::HashMap<usize, (PyValue, usize)>,
    /// The size of everything built so far, aliases counted at their full
    /// size as copies: 32 per node plus the bytes of its text.
    used: usize,
}

/// What the front matter may expand to (`used`): a few hundred kB at most for real
/// cards, whereas a 369-byte "billion laughs" card of nested aliases needs gigabytes.
const MAX_YAML_EXPANSION: usize = 64 << 20;

/// The message of a card whose aliases expand past [`MAX_YAML_EXPANSION`].
pub(super) const YAML_EXPANSION: &str = "YAML aliases expand to more than";

impl Builder {
    fn next(&mut self) -> Result<(Event, Marker), String> {
        self.events
            .next()
            .ok_or_else(|| "unexpected end of YAML events".to_string())
    }

    fn remember(&mut self, anchor: usize, v: &PyValue, since: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, (v.clone(), self.used - since));
        }
    }

    /// Counts `n` more units of what the document expands to.
    fn grow(&mut self, n: usize, mark: Marker) -> Result<(), String> {
        self.used = self.used.saturating_add(n);
        if self.used > MAX_YAML_EXPANSION {
            return Err(format!(
                "{YAML_EXPANSION} {MAX_YAML_EXPANSION} bytes (line {})",
                mark.line()
            ));
        }
        Ok(())
    }

    /// The tag of a collection: `None` for a plain list or dict, or the
    /// SafeLoader type it makes (`omap`/`pairs` lists, `set` mappings).
    fn collection_tag(
        tag: Option<&Tag>,
        want: &str,
        mark: Marker,
    ) -> Result<Option<&'static str>, String> {
        let Some(t) = tag.map(|t| format!("{}{}", t.handle, t.suffix)) else {
            return Ok(None);
        };
        match (want, t.strip_prefix(YAML_TAG)) {
            _ if t == "!" => Ok(None),
            ("seq", Some("seq")) | ("map", Some("map")) => Ok(None),
            ("seq", Some("omap")) => Ok(Some("omap")),
            ("seq", Some("pairs")) => Ok(Some("pairs")),
            ("map", Some("set")) => Ok(Some("set")),
            _ => Err(format!(
                "could not determine a constructor for the tag '{t}' (line {})",
                mark.line()
            )),
        }
    }

    fn node(&mut self, ev: Event, mark: Marker) -> Result<PyValue, String> {
        let since = self.used;
        match ev {
            Event::Scalar(v, style, anchor, tag) => {
                self.grow(32 + v.len(), mark)?;
                let value = construct_scalar(v, style, tag.as_ref())
                    .map_err(|e| format!("{e} (line {})", mark.line()))?;
                self.remember(anchor, &value, since);
                Ok(value)
            }
            Event::Alias(id) => {
                let w = self.anchors.get(&id).map(|a| a.1);
                let w = w.ok_or_else(|| format!("found undefined alias (line {})", mark.line()))?;
                // Checked before the copy is made.
                self.grow(w, mark)?;
                Ok(self.anchors[&id].0.clone())
            }
            Event::SequenceStart(anchor, tag) => {
                self.grow(32, mark)?;
                let kind = Self::collection_tag(tag.as_ref(), "seq", mark)?;
                let mut items = Vec::new();
                loop {
                    let (ev, mark) = self.next()?;
                    if matches!(ev, Event::SequenceEnd) {
                        break;
                    }
                    items.push(self.node(ev, mark)?);
                }
                if kind.is_some() {
                    // !!omap / !!pairs: a list of (key, value) tuples
                    for it in items.iter_mut() {
                        match it {
                            PyValue::Dict(p) if p.len() == 1 => {
                                *it = PyValue::Opaque("tuple", true)
                            }
                            _ => {
                                return Err(format!(
                                    "expected a single mapping item in an ordered map (line {})",
                                    mark.line()
                                ))
                            }
                        }
                    }
                }
                let value = PyValue::List(items);
                self.remember(anchor, &value, since);
                Ok(value)
            }
            Event::MappingStart(anchor, tag) => {
                self.grow(32, mark)?;
                let kind = Self::collection_tag(tag.as_ref(), "map", mark)?;
                let mut merged: Vec<(PyValue, PyValue)> = Vec::new();
                let mut explicit: Vec<(PyValue, PyValue)> = Vec::new();
                loop {
                    let (ev, kmark) = self.next()?;
                    if matches!(ev, Event::MappingEnd) {
                        break;
                    }
                    let is_merge = match &ev {
                        Event::Scalar(v, TScalarStyle::Plain, _, None) => v == "<<",
                        Event::Scalar(_, _, _, Some(t)) => {
                            t.handle == YAML_TAG && t.suffix == "merge"
                        }
                        _ => false,
                    };
                    if is_merge {
                        let (vev, vmark) = self.next()?;
                        let value = self.node(vev, vmark)?;
                        let bad = || {
                            format!(
                                "expected a mapping or list of mappings for merging (line {})",
                                kmark.line()
                            )
                        };
                        match value {
                            PyValue::Dict(pairs) => merged.extend(pairs),
                            PyValue::List(maps) => {
                                for m in maps.into_iter().rev() {
                                    match m {
                                        PyValue::Dict(pairs) => merged.extend(pairs),
                                        _ => return Err(bad()),
                                    }
                                }
                            }
                            _ => return Err(bad()),
                        }
                        continue;
                    }
                    let key = self.node(ev, kmark)?;
                    if matches!(
                        key,
                        PyValue::List(_) | PyValue::Dict(_) | PyValue::Opaque("set", _)
                    ) {
                        return Err(format!("found unhashable key (line {})", kmark.line()));
                    }
                    let (vev, vmark) = self.next()?;
                    let value = self.node(vev, vmark)?;
                    explicit.push((key, value));
                }
                let mut pairs = Vec::new();
                for (k, v) in merged.into_iter().chain(explicit) {
                    dict_insert(&mut pairs, k, v);
                }
                let value = match kind {
                    Some(_) => PyValue::Opaque("set", !pairs.is_empty()),
                    None => PyValue::Dict(pairs),
                };
                self.remember(anchor, &value, since);
                Ok(value)
            }
            other => Err(format!(
                "unexpected YAML event {other:?} (line {})",
                mark.line()
            )),
        }
    }
}

/// `yaml.safe_load`: the single document of `text` (`None` when empty).
fn yaml_load(text: &str) -> Result<PyValue, String> {
    let mut log = EventLog(Vec::new());
    Parser::new_from_str(text)
        .load(&mut log, true)
        .map_err(|e| e.to_string())?;
    let mut b = Builder {
        events: log.0.into_iter(),
        anchors: Default::default(),
        used: 0,
    };
    let mut result = None;
    while let Some((ev, mark)) = b.events.next() {
        match ev {
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
            Event::DocumentStart => {
                if result.is_some() {
                    return Err(format!(
                        "expected a single document in the stream (line {})",
                        mark.line()
                    ));
                }
                let (ev, mark) = b.next()?;
                result = Some(b.node(ev, mark)?);
            }
            other => {
                if result.is_some() {
                    return Err(format!("expected a single document (line {})", mark.line()));
                }
                result = Some(b.node(other, mark)?);
            }
        }
    }
    Ok(result.unwrap_or(PyValue::None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_11_scalars() {
        assert_eq!(resolve_plain("no").unwrap(), PyValue::Bool(false));
        assert_eq!(resolve_plain("On").unwrap(), PyValue::Bool(true));
        assert_eq!(
            resolve_plain("1.0e3").unwrap(),
            PyValue::Str("1.0e3".into())
        );
        assert_eq!(resolve_plain("1.0e+3").unwrap(), PyValue::Float(1000.0));
        assert_eq!(resolve_plain("0777").unwrap(), PyValue::Int(511));
        assert_eq!(resolve_plain("1:30").unwrap(), PyValue::Int(90));
        assert_eq!(resolve_plain("08").unwrap(), PyValue::Str("08".into()));
        assert!(matches!(
            resolve_plain("2024-02-29").unwrap(),
            PyValue::Date(_)
        ));
        assert!(resolve_plain("2023-02-29").is_err());
        assert_eq!(resolve_plain("~").unwrap(), PyValue::None);
    }
}
