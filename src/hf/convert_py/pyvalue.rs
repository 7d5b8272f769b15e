//! Values as Python holds them after `yaml.safe_load` or `json.load` in
//! convert_hf_to_gguf.py: truthiness, type names, dict-key equality (1 == 1.0 ==
//! True) and `json.loads`'s non-finite literals.

/// A value as Python holds it after `yaml.safe_load` or `json.load`.
#[derive(Debug, Clone, PartialEq)]
pub enum PyValue {
    /// `None` (YAML `null`/`~`, JSON `null`).
    None,
    /// A `bool`.
    Bool(bool),
    /// An `int` that fits i128.
    Int(i128),
    /// An integer beyond i128, kept as written.
    BigInt(String),
    /// A `float`.
    Float(f64),
    /// A `str`.
    Str(String),
    /// A YAML 1.1 timestamp (`datetime.date`/`datetime.datetime`), as written.
    Date(String),
    /// A `list`.
    List(Vec<PyValue>),
    /// Keys in insertion order, unique under Python equality.
    Dict(Vec<(PyValue, PyValue)>),
    /// A value convert can only carry, never write: `bytes` (`!!binary`),
    /// `set` (`!!set`), `tuple` (items of `!!omap`/`!!pairs`); its type name
    /// and whether it is truthy.
    Opaque(&'static str, bool),
}

impl PyValue {
    /// Python's `bool(value)`.
    pub fn truthy(&self) -> bool {
        match self {
            PyValue::None => false,
            PyValue::Bool(b) => *b,
            PyValue::Int(i) => *i != 0,
            PyValue::BigInt(_) | PyValue::Date(_) => true,
            PyValue::Opaque(_, truthy) => *truthy,
            PyValue::Float(f) => *f != 0.0,
            PyValue::Str(s) => !s.is_empty(),
            PyValue::List(l) => !l.is_empty(),
            PyValue::Dict(d) => !d.is_empty(),
        }
    }

    /// Python's `type(value).__name__`.
    pub fn type_name(&self) -> &'static str {
        match self {
            PyValue::None => "NoneType",
            PyValue::Bool(_) => "bool",
            PyValue::Int(_) | PyValue::BigInt(_) => "int",
            PyValue::Float(_) => "float",
            PyValue::Str(_) => "str",
            PyValue::Date(_) => "date",
            PyValue::Opaque(name, _) => name,
            PyValue::List(_) => "list",
            PyValue::Dict(_) => "dict",
        }
    }

    /// `key in dict` and `dict[key]` for a string key; `None` for a non-dict.
    pub fn get(&self, key: &str) -> Option<&PyValue> {
        match self {
            PyValue::Dict(pairs) => pairs
                .iter()
                .find(|(k, _)| matches!(k, PyValue::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    pub(super) fn short(&self) -> String {
        let s = match self {
            PyValue::None => "None".to_string(),
            PyValue::Bool(b) => if *b { "True" } else { "False" }.to_string(),
            PyValue::Int(i) => i.to_string(),
            PyValue::BigInt(s) | PyValue::Date(s) => s.clone(),
            PyValue::Float(f) => format!("{f:?}"),
            PyValue::Str(s) => format!("{s:?}"),
            PyValue::List(l) => format!("[{} items]", l.len()),
            PyValue::Dict(d) => format!("{{{} keys}}", d.len()),
            PyValue::Opaque(name, _) => format!("<{name}>"),
        };
        format!("{s} ({})", self.type_name())
    }

    /// Python `==` for dict keys (1 == 1.0 == True).
    pub(super) fn key_eq(&self, other: &PyValue) -> bool {
        fn num(v: &PyValue) -> Option<f64> {
            match v {
                PyValue::Bool(b) => Some(*b as u8 as f64),
                PyValue::Int(i) => Some(*i as f64),
                PyValue::Float(f) => Some(*f),
                _ => None,
            }
        }
        match (self, other) {
            (PyValue::Int(a), PyValue::Int(b)) => a == b,
            (a, b) if num(a).is_some() && num(b).is_some() => num(a) == num(b),
            (a, b) => a == b,
        }
    }
}

/// `dict[key] = value`: a new key goes last, an existing one keeps its place.
pub(super) fn dict_insert(pairs: &mut Vec<(PyValue, PyValue)>, key: PyValue, value: PyValue) {
    match pairs.iter_mut().find(|(k, _)| k.key_eq(&key)) {
        Some(slot) => slot.1 = value,
        None => pairs.push((key, value)),
    }
}

/// Marks a string that stands for one of the non-finite literals Python's json accepts.
const NON_FINITE: &str = "\u{e000}laquant-non-finite:";

/// `json.loads`: strict JSON plus the `NaN`, `Infinity` and `-Infinity`
/// literals that Python's json reads (and writes) by default.
pub(super) fn py_json(text: &str) -> Result<PyValue, serde_json::Error> {
    match serde_json::from_str(text) {
        Ok(v) => Ok(json_to_py(v)),
        Err(e) => {
            // rewrite the literals outside strings into marked strings and retry
            let mut out = String::with_capacity(text.len() + 64);
            let (mut in_string, mut escaped, mut changed) = (false, false, false);
            let mut rest = text;
            while let Some(c) = rest.chars().next() {
                if in_string {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        in_string = false;
                    }
                } else if c == '"' {
                    in_string = true;
                } else if let Some(lit) = ["NaN", "Infinity", "-Infinity"]
                    .into_iter()
                    .find(|l| rest.starts_with(l))
                {
                    out.push_str(&format!("\"{NON_FINITE}{lit}\""));
                    rest = &rest[lit.len()..];
                    changed = true;
                    continue;
                }
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
            if !changed {
                return Err(e);
            }
            serde_json::from_str(&out).map(json_to_py)
        }
    }
}

fn json_to_py(v: serde_json::Value) -> PyValue {
    use serde_json::Value as J;
    match v {
        J::Null => PyValue::None,
        J::Bool(b) => PyValue::Bool(b),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                PyValue::Int(i as i128)
            } else if let Some(u) = n.as_u64() {
                PyValue::Int(u as i128)
            } else {
                PyValue::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        J::String(s) => match s.strip_prefix(NON_FINITE) {
            Some("NaN") => PyValue::Float(f64::NAN),
            Some("Infinity") => PyValue::Float(f64::INFINITY),
            Some("-Infinity") => PyValue::Float(f64::NEG_INFINITY),
            _ => PyValue::Str(s),
        },
        J::Array(a) => PyValue::List(a.into_iter().map(json_to_py).collect()),
        J::Object(o) => {
            let mut pairs = Vec::new();
            for (k, v) in o {
                dict_insert(&mut pairs, PyValue::Str(k), json_to_py(v));
            }
            PyValue::Dict(pairs)
        }
    }
}
