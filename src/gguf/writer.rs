//! Streaming GGUF v3 writer. The header (metadata and every tensor's info and
//! offset) is written first from the plan; tensor bytes then follow one after
//! another in that order, so a model is never held in memory.

use super::{align_up, GgmlType, Metadata, Value, DEFAULT_ALIGNMENT, MAGIC, VERSION};
use std::io::{self, Write};

/// A tensor to be written: GGUF name, dims with `ne[0]` (the row width) first, type.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    /// The GGUF tensor name; unique in the file (llama.cpp refuses repeats).
    pub name: String,
    /// Dimensions, `ne[0]` (the row width) first: the reverse of PyTorch's shape.
    /// The width must be a multiple of the type's block size.
    pub dims: Vec<u64>,
    /// The element type the data is already in.
    pub ty: GgmlType,
}

impl TensorSpec {
    /// The number of elements: the product of the dimensions.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Bytes of the tensor's data, if its row width fits the type's block size.
    pub fn n_bytes(&self) -> Option<u64> {
        let width = *self.dims.first().unwrap_or(&1);
        let rows: u64 = self.dims.iter().skip(1).product();
        self.ty.row_bytes(width).map(|b| b * rows)
    }
}

/// A streaming GGUF v3 writer over any [`Write`]: [`Self::new`] writes the
/// header, then each declared tensor's data is written in order, whole
/// ([`Self::write_tensor`]) or in pieces ([`Self::begin_tensor`],
/// [`Self::write_chunk`], [`Self::end_tensor`]), and [`Self::finish`] checks that
/// all were. Each tensor is padded to the alignment with zeros, the last one
/// included, as ggml's `gguf_write_to_file` does (`scripts/interop-convert.sh`
/// has ggml's own parser read what `laquant convert` writes). Misuse
/// (a tensor out of order, too many or too few bytes) is an
/// [`io::ErrorKind::InvalidInput`] error, never a panic.
pub struct GgufWriter<W: Write> {
    w: W,
    alignment: u64,
    tensors: Vec<TensorSpec>,
    next: usize,
    pos: u64,
    in_tensor: Option<u64>,
}

fn write_str<W: Write>(w: &mut W, s: &str) -> io::Result<u64> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())?;
    Ok(8 + s.len() as u64)
}

/// Writes a value without its type tag; returns the bytes written.
fn write_value<W: Write>(w: &mut W, v: &Value) -> io::Result<u64> {
    Ok(match v {
        Value::U8(x) => {
            w.write_all(&[*x])?;
            1
        }
        Value::I8(x) => {
            w.write_all(&x.to_le_bytes())?;
            1
        }
        Value::U16(x) => {
            w.write_all(&x.to_le_bytes())?;
            2
        }
        Value::I16(x) => {
            w.write_all(&x.to_le_bytes())?;
            2
        }
        Value::U32(x) => {
            w.write_all(&x.to_le_bytes())?;
            4
        }
        Value::I32(x) => {
            w.write_all(&x.to_le_bytes())?;
            4
        }
        Value::F32(x) => {
            w.write_all(&x.to_le_bytes())?;
            4
        }
        Value::Bool(x) => {
            w.write_all(&[*x as u8])?;
            1
        }
        Value::String(s) => write_str(w, s)?,
        Value::U64(x) => {
            w.write_all(&x.to_le_bytes())?;
            8
        }
        Value::I64(x) => {
            w.write_all(&x.to_le_bytes())?;
            8
        }
        Value::F64(x) => {
            w.write_all(&x.to_le_bytes())?;
            8
        }
        Value::Array(t, items) => {
            w.write_all(&(*t as u32).to_le_bytes())?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            let mut n = 12;
            for it in items {
                if it.value_type() != *t {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("array of {t:?} holds a {:?}", it.value_type()),
                    ));
                }
                n += write_value(w, it)?;
            }
            n
        }
    })
}

impl<W: Write> GgufWriter<W> {
    /// Writes the header: metadata in the given order and the infos of `tensors`,
    /// whose data must then be written in the same order with [`Self::write_tensor`].
    pub fn new(mut w: W, metadata: &Metadata, tensors: Vec<TensorSpec>) -> io::Result<Self> {
        let alignment = metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .unwrap_or(DEFAULT_ALIGNMENT);
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "general.alignment must be a power of two",
            ));
        }
        let mut pos = 0u64;
        w.write_all(MAGIC)?;
        w.write_all(&VERSION.to_le_bytes())?;
        w.write_all(&(tensors.len() as u64).to_le_bytes())?;
        w.write_all(&(metadata.len() as u64).to_le_bytes())?;
        pos += 24;
        for (k, v) in metadata {
            pos += write_str(&mut w, k)?;
            w.write_all(&(v.value_type() as u32).to_le_bytes())?;
            pos += 4;
            pos += write_value(&mut w, v)?;
        }
        let mut offset = 0u64;
        for t in &tensors {
            let bytes = t.n_bytes().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "tensor {}: width {} does not fit type {}",
                        t.name, t.dims[0], t.ty
                    ),
                )
            })?;
            pos += write_str(&mut w, &t.name)?;
            w.write_all(&(t.dims.len() as u32).to_le_bytes())?;
            for d in &t.dims {
                w.write_all(&d.to_le_bytes())?;
            }
            w.write_all(&t.ty.id().to_le_bytes())?;
            w.write_all(&offset.to_le_bytes())?;
            pos += 4 + 8 * t.dims.len() as u64 + 4 + 8;
            offset = align_up(offset + bytes, alignment);
        }
        let mut me = GgufWriter {
            w,
            alignment,
            tensors,
            next: 0,
            pos,
            in_tensor: None,
        };
        me.pad()?;
        Ok(me)
    }

    fn pad(&mut self) -> io::Result<()> {
        let target = align_up(self.pos, self.alignment);
        let zeros = [0u8; 64];
        while self.pos < target {
            let n = ((target - self.pos) as usize).min(zeros.len());
            self.w.write_all(&zeros[..n])?;
            self.pos += n as u64;
        }
        Ok(())
    }

    /// The spec of the tensor whose data comes next, if any.
    pub fn next_tensor(&self) -> Option<&TensorSpec> {
        self.tensors.get(self.next)
    }

    /// Writes the data of the next tensor, which must be `name` and exactly its size.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        self.begin_tensor(name)?;
        self.write_chunk(data)?;
        self.end_tensor()
    }

    /// Starts streaming the next tensor's data, which must be `name`.
    pub fn begin_tensor(&mut self, name: &str) -> io::Result<()> {
        let spec = self.tensors.get(self.next).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("tensor {name}: all tensors already written"),
            )
        })?;
        if spec.name != name {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("tensor {name} written where {} was declared", spec.name),
            ));
        }
        if self.in_tensor.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("tensor {name} begun twice"),
            ));
        }
        self.in_tensor = Some(0);
        Ok(())
    }

    /// Appends bytes to the tensor begun with [`Self::begin_tensor`].
    pub fn write_chunk(&mut self, data: &[u8]) -> io::Result<()> {
        // Checked first: a tensor is begun only while one is left to write.
        let done = self.in_tensor.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "write_chunk outside a tensor")
        })?;
        let spec = &self.tensors[self.next];
        let want = spec.n_bytes().unwrap_or(0);
        if done + data.len() as u64 > want {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "tensor {}: more than the declared {want} bytes written",
                    spec.name
                ),
            ));
        }
        self.w.write_all(data)?;
        self.pos += data.len() as u64;
        self.in_tensor = Some(done + data.len() as u64);
        Ok(())
    }

    /// Ends the current tensor: checks its size and pads to the alignment.
    pub fn end_tensor(&mut self) -> io::Result<()> {
        let done = self.in_tensor.take().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "end_tensor outside a tensor")
        })?;
        let spec = &self.tensors[self.next];
        let want = spec.n_bytes().unwrap_or(0);
        if done != want {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "tensor {}: {done} bytes written, {want} declared",
                    spec.name
                ),
            ));
        }
        self.pad()?;
        self.next += 1;
        Ok(())
    }

    /// Checks every declared tensor was written and returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        if self.next != self.tensors.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} of {} tensors written", self.next, self.tensors.len()),
            ));
        }
        self.w.flush()?;
        Ok(self.w)
    }
}
