//! GGUF writer/reader round trip: every metadata value type, arrays of each
//! (nested too), tensors of several types with alignment padding after every
//! tensor including the last; and the reader's refusals of broken files.

use laquant::gguf::{GgmlType, GgufFile, GgufWriter, Metadata, TensorSpec, Value, ValueType};

fn all_values() -> Metadata {
    vec![
        ("general.architecture".into(), Value::str("llama")),
        ("t.u8".into(), Value::U8(250)),
        ("t.i8".into(), Value::I8(-120)),
        ("t.u16".into(), Value::U16(65000)),
        ("t.i16".into(), Value::I16(-32000)),
        ("t.u32".into(), Value::U32(4_000_000_000)),
        ("t.i32".into(), Value::I32(-2_000_000_000)),
        ("t.f32".into(), Value::F32(-1.5e-7)),
        ("t.bool".into(), Value::Bool(true)),
        ("t.string".into(), Value::str("héllo ✓ 世界")),
        ("t.u64".into(), Value::U64(u64::MAX - 3)),
        ("t.i64".into(), Value::I64(i64::MIN + 5)),
        ("t.f64".into(), Value::F64(std::f64::consts::PI)),
        ("t.arr.str".into(), Value::strings(["a", "", "ü"])),
        ("t.arr.i32".into(), Value::i32s(&[1, -2, 3])),
        ("t.arr.f32".into(), Value::f32s(&[0.5, -0.25])),
        (
            "t.arr.bool".into(),
            Value::Array(ValueType::Bool, vec![Value::Bool(false), Value::Bool(true)]),
        ),
        (
            "t.arr.u8".into(),
            Value::Array(ValueType::U8, vec![Value::U8(1), Value::U8(2)]),
        ),
        ("t.arr.empty".into(), Value::Array(ValueType::U64, vec![])),
        (
            "t.arr.nested".into(),
            Value::Array(
                ValueType::Array,
                vec![Value::i32s(&[7, 8]), Value::Array(ValueType::I32, vec![])],
            ),
        ),
    ]
}

fn tensors() -> Vec<(TensorSpec, Vec<u8>)> {
    let mk = |name: &str, dims: Vec<u64>, ty: GgmlType| {
        let spec = TensorSpec {
            name: name.into(),
            dims,
            ty,
        };
        let n = spec.n_bytes().unwrap() as usize;
        let data: Vec<u8> = (0..n).map(|i| (i * 31 % 251) as u8).collect();
        (spec, data)
    };
    vec![
        mk("a.weight", vec![3], GgmlType::F32),
        mk("b.weight", vec![64, 3], GgmlType::Q8_0),
        mk("c.weight", vec![5, 1, 1], GgmlType::F16),
        mk("d.weight", vec![256, 2], GgmlType::Q4K),
        mk("e.weight", vec![7], GgmlType::BF16),
    ]
}

fn write(meta: &Metadata) -> Vec<u8> {
    let ts = tensors();
    let mut w =
        GgufWriter::new(Vec::new(), meta, ts.iter().map(|t| t.0.clone()).collect()).unwrap();
    for (s, d) in &ts {
        w.write_tensor(&s.name, d).unwrap();
    }
    w.finish().unwrap()
}

#[test]
fn every_value_type_round_trips() {
    let meta = all_values();
    let bytes = write(&meta);
    assert_eq!(bytes.len() % 32, 0, "file ends padded to the alignment");
    let f = GgufFile::from_bytes(bytes).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.metadata, meta);
    assert_eq!(f.alignment, 32);
    for (t, (spec, data)) in f.tensors.iter().zip(tensors()) {
        assert_eq!(t.name, spec.name);
        assert_eq!(t.dims, spec.dims);
        assert_eq!(t.ty, spec.ty);
        assert_eq!(t.offset % 32, 0);
        assert_eq!(f.tensor_data(t), &data[..]);
    }
}

#[test]
fn custom_alignment_is_honoured() {
    let mut meta = all_values();
    meta.push(("general.alignment".into(), Value::U32(64)));
    let bytes = write(&meta);
    assert_eq!(bytes.len() % 64, 0);
    let f = GgufFile::from_bytes(bytes).unwrap();
    assert_eq!(f.alignment, 64);
    assert!(f.tensors.iter().all(|t| t.offset % 64 == 0));
    assert_eq!(f.data_offset % 64, 0);
}

#[test]
fn writer_refuses_wrong_order_or_size() {
    let ts = tensors();
    let mut w = GgufWriter::new(
        Vec::new(),
        &all_values(),
        ts.iter().map(|t| t.0.clone()).collect(),
    )
    .unwrap();
    assert!(w.write_tensor("b.weight", &ts[1].1).is_err());
    let mut w = GgufWriter::new(
        Vec::new(),
        &all_values(),
        ts.iter().map(|t| t.0.clone()).collect(),
    )
    .unwrap();
    assert!(w.write_tensor("a.weight", &ts[0].1[..4]).is_err());
    let w = GgufWriter::new(
        Vec::new(),
        &all_values(),
        ts.iter().map(|t| t.0.clone()).collect(),
    )
    .unwrap();
    assert!(
        w.finish().is_err(),
        "finishing before every tensor is written fails"
    );
}

#[test]
fn writer_misuse_is_an_error_not_a_panic() {
    let ts = tensors();
    let specs = || ts.iter().map(|t| t.0.clone()).collect();
    let mut w = GgufWriter::new(Vec::new(), &all_values(), specs()).unwrap();
    assert!(w.write_chunk(&[0]).is_err(), "a chunk before begin_tensor");
    assert!(w.end_tensor().is_err(), "end_tensor before begin_tensor");
    w.begin_tensor("a.weight").unwrap();
    assert!(w.begin_tensor("a.weight").is_err(), "begun twice");
    w.write_chunk(&ts[0].1).unwrap();
    w.end_tensor().unwrap();
    for (s, d) in &ts[1..] {
        w.write_tensor(&s.name, d).unwrap();
    }
    // Every tensor written: more of anything is refused (it once indexed past the end).
    assert!(w.next_tensor().is_none());
    assert!(w.begin_tensor("a.weight").is_err());
    assert!(w.write_chunk(&[0]).is_err());
    assert!(w.end_tensor().is_err());
    let bytes = w.finish().unwrap();
    assert_eq!(bytes, write(&all_values()), "refused calls wrote nothing");
}

#[test]
fn reader_rejects_truncation_at_every_offset() {
    let bytes = write(&all_values());
    // Any strict prefix is an error (never a panic), except padding-only cuts after the last tensor's data.
    let last_end = {
        let f = GgufFile::from_bytes(bytes.clone()).unwrap();
        let t = f.tensors.iter().max_by_key(|t| t.offset).unwrap();
        (f.data_offset + t.offset + t.n_bytes) as usize
    };
    for cut in (0..last_end).step_by(7) {
        assert!(
            GgufFile::from_bytes(bytes[..cut].to_vec()).is_err(),
            "prefix of {cut} bytes accepted"
        );
    }
}

#[test]
fn reader_rejects_hostile_headers() {
    let good = write(&all_values());
    // Bad magic.
    let mut b = good.clone();
    b[0] = b'X';
    assert!(GgufFile::from_bytes(b)
        .unwrap_err()
        .to_string()
        .contains("not a GGUF"));
    // Unsupported version.
    let mut b = good.clone();
    b[4..8].copy_from_slice(&9u32.to_le_bytes());
    assert!(GgufFile::from_bytes(b)
        .unwrap_err()
        .to_string()
        .contains("version 9"));
    // Absurd tensor count.
    let mut b = good.clone();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(GgufFile::from_bytes(b).is_err());
    // Absurd metadata count.
    let mut b = good;
    b[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(GgufFile::from_bytes(b).is_err());
}
