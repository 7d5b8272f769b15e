//! GGUF v3: metadata values, the streaming writer and the bounds-checked reader.
//!
//! Layout (ggml's `gguf.cpp`): magic `GGUF`, version 3, tensor count, metadata
//! count, the metadata key/value pairs, the tensor infos (name, dims with
//! `ne[0]` first, type, offset relative to the data section), padding to
//! `general.alignment` (32 unless set), then every tensor's bytes, each padded
//! to the alignment, the last one included.

pub mod reader;
pub mod types;
pub mod writer;

pub use reader::{GgufError, GgufFile, TensorInfo};
pub use types::{FileType, GgmlType};
pub use writer::{GgufWriter, TensorSpec};

use std::fmt;

/// The four bytes every GGUF file starts with (`GGUF_MAGIC`).
pub const MAGIC: &[u8; 4] = b"GGUF";
/// The GGUF version [`GgufWriter`] writes (`GGUF_VERSION`). [`GgufFile`] reads
/// versions 2 and 3, both little-endian with 64-bit counts, as ggml does
/// (version 1, with 32-bit counts, is refused by both).
pub const VERSION: u32 = 3;
/// The alignment of the data section and of every tensor in it, in bytes, when
/// the file has no `general.alignment` (`GGUF_DEFAULT_ALIGNMENT`).
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// On-disk id of a metadata value type (`enum gguf_type`); the discriminant is
/// the id written before each value (and before an array's elements).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ValueType {
    /// `GGUF_TYPE_UINT8`.
    U8 = 0,
    /// `GGUF_TYPE_INT8`.
    I8 = 1,
    /// `GGUF_TYPE_UINT16`.
    U16 = 2,
    /// `GGUF_TYPE_INT16`.
    I16 = 3,
    /// `GGUF_TYPE_UINT32`.
    U32 = 4,
    /// `GGUF_TYPE_INT32`.
    I32 = 5,
    /// `GGUF_TYPE_FLOAT32`.
    F32 = 6,
    /// `GGUF_TYPE_BOOL`: one byte, 0 or 1 (any other byte is refused when read).
    Bool = 7,
    /// `GGUF_TYPE_STRING`: a u64 byte length, then UTF-8 bytes, no terminator.
    String = 8,
    /// `GGUF_TYPE_ARRAY`: an element type id, a u64 count, then the elements.
    Array = 9,
    /// `GGUF_TYPE_UINT64`.
    U64 = 10,
    /// `GGUF_TYPE_INT64`.
    I64 = 11,
    /// `GGUF_TYPE_FLOAT64`.
    F64 = 12,
}

impl ValueType {
    /// The type with this on-disk id, or `None` for an id ggml does not define.
    pub fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Size on disk of one value of this type, for fixed-size types.
    pub fn fixed_size(self) -> Option<usize> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }
}

/// A metadata value, one variant per [`ValueType`]. The variant decides the
/// type written to the file, so `general.alignment` must be a [`Value::U32`] and
/// `tokenizer.ggml.tokens` an array of strings, as llama.cpp reads them.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// An unsigned 8-bit integer.
    U8(u8),
    /// A signed 8-bit integer.
    I8(i8),
    /// An unsigned 16-bit integer.
    U16(u16),
    /// A signed 16-bit integer.
    I16(i16),
    /// An unsigned 32-bit integer (counts and lengths in llama.cpp's keys).
    U32(u32),
    /// A signed 32-bit integer (token types, token ids).
    I32(i32),
    /// A 32-bit float (epsilons, RoPE bases, token scores).
    F32(f32),
    /// A boolean.
    Bool(bool),
    /// A UTF-8 string.
    String(String),
    /// Element type and elements; every element has that type (the writer
    /// refuses an array that breaks this).
    Array(ValueType, Vec<Value>),
    /// An unsigned 64-bit integer.
    U64(u64),
    /// A signed 64-bit integer.
    I64(i64),
    /// A 64-bit float.
    F64(f64),
}

impl Value {
    /// The [`ValueType`] this value is written as.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(..) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// A [`Value::String`].
    pub fn str(s: impl Into<String>) -> Value {
        Value::String(s.into())
    }

    /// An array of strings (token texts, merges).
    pub fn strings<I: IntoIterator<Item = S>, S: Into<String>>(items: I) -> Value {
        Value::Array(
            ValueType::String,
            items.into_iter().map(|s| Value::String(s.into())).collect(),
        )
    }

    /// An array of f32 (token scores).
    pub fn f32s(items: &[f32]) -> Value {
        Value::Array(
            ValueType::F32,
            items.iter().map(|&x| Value::F32(x)).collect(),
        )
    }

    /// An array of i32 (token types).
    pub fn i32s(items: &[i32]) -> Value {
        Value::Array(
            ValueType::I32,
            items.iter().map(|&x| Value::I32(x)).collect(),
        )
    }

    /// The text of a [`Value::String`], `None` for any other variant.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// Any integer value widened to u64, if non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// A float widened to f64, or a non-negative integer converted to f64
    /// ([`Self::as_u64`]); `None` for strings, booleans, arrays and negative integers.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The elements of a [`Value::Array`], `None` for any other variant.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(_, v) => Some(v),
            _ => None,
        }
    }

    /// A JSON rendering; arrays longer than `max_items` are cut with a count.
    pub fn to_json(&self, max_items: usize) -> serde_json::Value {
        use serde_json::json;
        match self {
            Value::U8(v) => json!(v),
            Value::I8(v) => json!(v),
            Value::U16(v) => json!(v),
            Value::I16(v) => json!(v),
            Value::U32(v) => json!(v),
            Value::I32(v) => json!(v),
            Value::F32(v) => json!(v),
            Value::Bool(v) => json!(v),
            Value::String(v) => json!(v),
            Value::U64(v) => json!(v),
            Value::I64(v) => json!(v),
            Value::F64(v) => json!(v),
            Value::Array(_, items) => {
                if items.len() > max_items {
                    json!({"len": items.len(), "head": items[..max_items].iter().map(|v| v.to_json(max_items)).collect::<Vec<_>>()})
                } else {
                    serde_json::Value::Array(items.iter().map(|v| v.to_json(max_items)).collect())
                }
            }
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::String(s) => {
                let short: String = s.chars().take(60).collect();
                if short.len() < s.len() {
                    write!(f, "{short:?}...")
                } else {
                    write!(f, "{s:?}")
                }
            }
            Value::Array(t, items) => {
                write!(f, "[{t:?}; {}]", items.len())?;
                if !items.is_empty() {
                    write!(f, " ")?;
                    for (i, v) in items.iter().take(4).enumerate() {
                        if i > 0 {
                            write!(f, ", ")?;
                        }
                        write!(f, "{v}")?;
                    }
                    if items.len() > 4 {
                        write!(f, ", ...")?;
                    }
                }
                Ok(())
            }
            other => write!(f, "{}", other.to_json(0)),
        }
    }
}

/// Metadata key/value pairs in file order. GGUF keys are unique; the reader
/// refuses a repeated key, and the writer writes the pairs in this order.
pub type Metadata = Vec<(String, Value)>;

/// Rounds `x` up to a multiple of `align` (which must not be 0), as GGML_PAD does
/// for tensor offsets and the start of the data section.
pub fn align_up(x: u64, align: u64) -> u64 {
    x.div_ceil(align) * align
}
