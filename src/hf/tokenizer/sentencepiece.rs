//! A minimal, bounds-checked protobuf reader for SentencePiece's `tokenizer.model`.
//!
//! Only what `convert_hf_to_gguf.py`'s `_create_vocab_sentencepiece` asks the
//! `SentencePieceProcessor` for: each piece's text, score and type, from
//! `ModelProto.pieces` (field 1, repeated `SentencePiece { piece = 1; score = 2;
//! type = 3 }` in sentencepiece's `sentencepiece_model.proto`). Every other field
//! is skipped by wire type. Every length is checked against the bytes left
//! before use, so a truncated or hostile file gives an error, never a panic, and
//! nothing is allocated beyond what the file's own bytes can fill.

/// `SentencePiece.Type` (values as in sentencepiece_model.proto).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    /// An ordinary piece.
    Normal = 1,
    /// The unknown-token piece.
    Unknown = 2,
    /// A control symbol (`<s>`, `</s>`).
    Control = 3,
    /// A user-defined symbol, matched before segmentation.
    UserDefined = 4,
    /// A piece the model never produces.
    Unused = 5,
    /// A byte-fallback piece (`<0x41>`).
    Byte = 6,
}

impl PieceType {
    /// Unknown enum values fall back to the field default, NORMAL, as proto2 parsers do.
    fn from_wire(v: u64) -> PieceType {
        match v {
            2 => PieceType::Unknown,
            3 => PieceType::Control,
            4 => PieceType::UserDefined,
            5 => PieceType::Unused,
            6 => PieceType::Byte,
            _ => PieceType::Normal,
        }
    }
}

/// One vocabulary entry of a `ModelProto`.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// Its text.
    pub piece: String,
    /// Its score (log probability for Unigram, merge rank for BPE).
    pub score: f32,
    /// Its type.
    pub kind: PieceType,
}

/// Largest `tokenizer.model` accepted (real ones are a few MB).
pub const MAX_MODEL_BYTES: usize = 256 << 20;

/// Parses the pieces of a serialized `ModelProto`. The error says what is
/// wrong and at which byte offset.
pub fn parse_pieces(buf: &[u8]) -> Result<Vec<Piece>, String> {
    if buf.len() > MAX_MODEL_BYTES {
        return Err(format!(
            "{} bytes is larger than the {MAX_MODEL_BYTES}-byte limit",
            buf.len()
        ));
    }
    let mut r = Reader { buf, pos: 0 };
    let mut pieces = Vec::new();
    while !r.done() {
        let (field, wire) = r.key()?;
        if field == 1 && wire == WIRE_LEN {
            let start = r.pos;
            let body = r.bytes()?;
            pieces.push(
                parse_piece(body)
                    .map_err(|e| format!("piece {} at byte {start}: {e}", pieces.len()))?,
            );
        } else {
            r.skip(wire)?;
        }
    }
    if pieces.is_empty() {
        return Err("no pieces (ModelProto field 1): not a SentencePiece model".into());
    }
    Ok(pieces)
}

/// What `XLMRobertaModel.set_vocab` reads of a `ModelProto` besides its
/// pieces: `trainer_spec.model_type` (field 2.3, UNIGRAM = 1 by default) and
/// `normalizer_spec` (field 3: `precompiled_charsmap` = 2, `add_dummy_prefix`
/// = 3 and `remove_extra_whitespaces` = 4, both true by default). A message
/// given twice is merged, field by field, as protobuf's parsers do.
#[derive(Debug, Clone, PartialEq)]
pub struct Specs {
    /// `trainer_spec.model_type`.
    pub model_type: u64,
    /// `normalizer_spec.precompiled_charsmap`.
    pub precompiled_charsmap: Vec<u8>,
    /// `normalizer_spec.add_dummy_prefix`.
    pub add_dummy_prefix: bool,
    /// `normalizer_spec.remove_extra_whitespaces`.
    pub remove_extra_whitespaces: bool,
}

/// SentencePiece's `TrainerSpec.ModelType.UNIGRAM`.
pub const UNIGRAM: u64 = 1;

/// Parses the trainer and normalizer specs of a serialized `ModelProto`.
pub fn parse_specs(buf: &[u8]) -> Result<Specs, String> {
    let mut specs = Specs {
        model_type: UNIGRAM,
        precompiled_charsmap: Vec::new(),
        add_dummy_prefix: true,
        remove_extra_whitespaces: true,
    };
    let mut r = Reader { buf, pos: 0 };
    while !r.done() {
        let (field, wire) = r.key()?;
        match (field, wire) {
            (2, WIRE_LEN) => {
                let mut t = Reader {
                    buf: r.bytes()?,
                    pos: 0,
                };
                while !t.done() {
                    match t.key()? {
                        (3, WIRE_VARINT) => specs.model_type = t.varint()?,
                        (_, w) => t.skip(w)?,
                    }
                }
            }
            (3, WIRE_LEN) => {
                let start = r.pos;
                let mut n = Reader {
                    buf: r.bytes()?,
                    pos: 0,
                };
                let at = |e: String| format!("normalizer_spec at byte {start}: {e}");
                while !n.done() {
                    match n.key().map_err(at)? {
                        (2, WIRE_LEN) => {
                            specs.precompiled_charsmap = n.bytes().map_err(at)?.to_vec()
                        }
                        (3, WIRE_VARINT) => specs.add_dummy_prefix = n.varint().map_err(at)? != 0,
                        (4, WIRE_VARINT) => {
                            specs.remove_extra_whitespaces = n.varint().map_err(at)? != 0
                        }
                        (_, w) => n.skip(w).map_err(at)?,
                    }
                }
            }
            _ => r.skip(wire)?,
        }
    }
    Ok(specs)
}

fn parse_piece(buf: &[u8]) -> Result<Piece, String> {
    let mut r = Reader { buf, pos: 0 };
    let mut piece = None;
    let mut score = 0.0f32;
    let mut kind = PieceType::Normal;
    while !r.done() {
        let (field, wire) = r.key()?;
        match (field, wire) {
            (1, WIRE_LEN) => {
                let b = r.bytes()?;
                piece = Some(
                    String::from_utf8(b.to_vec())
                        .map_err(|_| "piece text is not UTF-8".to_string())?,
                );
            }
            (2, WIRE_FIXED32) => score = f32::from_le_bytes(r.fixed::<4>()?),
            (3, WIRE_VARINT) => kind = PieceType::from_wire(r.varint()?),
            _ => r.skip(wire)?,
        }
    }
    let piece = piece.ok_or("piece without text (field 1)")?;
    Ok(Piece { piece, score, kind })
}

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| format!("varint runs past the end at byte {}", self.pos))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("varint longer than 10 bytes at byte {}", self.pos))
    }

    fn key(&mut self) -> Result<(u64, u8), String> {
        let k = self.varint()?;
        let field = k >> 3;
        if field == 0 {
            return Err(format!("field number 0 at byte {}", self.pos));
        }
        Ok((field, (k & 7) as u8))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.varint()?;
        let left = self.buf.len() - self.pos;
        if len > left as u64 {
            return Err(format!(
                "length {len} at byte {} runs past the end ({left} bytes left)",
                self.pos
            ));
        }
        let s = &self.buf[self.pos..self.pos + len as usize];
        self.pos += len as usize;
        Ok(s)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let s = self
            .buf
            .get(self.pos..self.pos + N)
            .ok_or_else(|| format!("{N}-byte field at byte {} runs past the end", self.pos))?;
        self.pos += N;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    fn skip(&mut self, wire: u8) -> Result<(), String> {
        match wire {
            WIRE_VARINT => self.varint().map(|_| ()),
            WIRE_FIXED64 => self.fixed::<8>().map(|_| ()),
            WIRE_LEN => self.bytes().map(|_| ()),
            WIRE_FIXED32 => self.fixed::<4>().map(|_| ()),
            w => Err(format!("unsupported wire type {w} at byte {}", self.pos)),
        }
    }
}

/// Serializes pieces as a `ModelProto` (field 1 only); used by tests and fixtures.
pub fn encode_pieces(pieces: &[Piece]) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    let mut out = Vec::new();
    for p in pieces {
        let mut body = Vec::new();
        body.push(0x0a);
        varint(&mut body, p.piece.len() as u64);
        body.extend_from_slice(p.piece.as_bytes());
        body.push(0x15);
        body.extend_from_slice(&p.score.to_le_bytes());
        if p.kind != PieceType::Normal {
            body.push(0x18);
            varint(&mut body, p.kind as u64);
        }
        out.push(0x0a);
        varint(&mut out, body.len() as u64);
        out.extend_from_slice(&body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Piece> {
        vec![
            Piece {
                piece: "<unk>".into(),
                score: 0.0,
                kind: PieceType::Unknown,
            },
            Piece {
                piece: "<s>".into(),
                score: 0.0,
                kind: PieceType::Control,
            },
            Piece {
                piece: "<0x0A>".into(),
                score: 0.0,
                kind: PieceType::Byte,
            },
            Piece {
                piece: "▁the".into(),
                score: -1.5,
                kind: PieceType::Normal,
            },
            Piece {
                piece: "ü".into(),
                score: -7.25,
                kind: PieceType::UserDefined,
            },
        ]
    }

    #[test]
    fn round_trip_and_skips_other_fields() {
        let mut buf = encode_pieces(&sample());
        // TrainerSpec (field 2, bytes), a varint field 9 and a fixed64 field 10 are skipped.
        buf.extend_from_slice(&[0x12, 0x03, 0x08, 0x01, 0x10]);
        buf.extend_from_slice(&[0x48, 0x96, 0x01]);
        buf.extend_from_slice(&[0x51, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(parse_pieces(&buf).unwrap(), sample());
    }

    #[test]
    fn truncation_and_garbage_are_errors() {
        let buf = encode_pieces(&sample());
        for cut in 1..buf.len() {
            // Every strict prefix either parses fewer pieces or fails; none panics.
            if let Ok(p) = parse_pieces(&buf[..cut]) {
                assert!(p.len() < sample().len());
            }
        }
        assert!(parse_pieces(&[]).unwrap_err().contains("no pieces"));
        assert!(parse_pieces(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f])
            .unwrap_err()
            .contains("runs past the end"));
        assert!(parse_pieces(&[0x0b]).unwrap_err().contains("wire type 3"));
        assert!(parse_pieces(&[0xff; 11]).unwrap_err().contains("varint"));
        assert!(parse_pieces(&[0x0a, 0x02, 0x15, 0x00])
            .unwrap_err()
            .contains("piece 0"));
        assert!(parse_pieces(&[0x0a, 0x03, 0x0a, 0x01, 0xff])
            .unwrap_err()
            .contains("UTF-8"));
    }

    /// The specs' defaults, each field set, a message given twice merged, and
    /// a truncated spec an error, never a panic.
    #[test]
    fn specs_are_read_with_protobufs_defaults() {
        let base = encode_pieces(&sample());
        let d = parse_specs(&base).unwrap();
        assert_eq!(
            (d.model_type, d.add_dummy_prefix, d.remove_extra_whitespaces),
            (UNIGRAM, true, true)
        );
        assert!(d.precompiled_charsmap.is_empty());
        let mut buf = base.clone();
        // trainer_spec { model_type: BPE (2) }
        buf.extend_from_slice(&[0x12, 0x02, 0x18, 0x02]);
        // normalizer_spec { name: "n", precompiled_charsmap: [7, 8], add_dummy_prefix: false }
        buf.extend_from_slice(&[0x1a, 0x09, 0x0a, 0x01, b'n', 0x12, 0x02, 7, 8, 0x18, 0x00]);
        // normalizer_spec { remove_extra_whitespaces: false }, merged into the first
        buf.extend_from_slice(&[0x1a, 0x02, 0x20, 0x00]);
        let s = parse_specs(&buf).unwrap();
        assert_eq!(s.model_type, 2);
        assert_eq!(s.precompiled_charsmap, [7, 8]);
        assert!(!s.add_dummy_prefix && !s.remove_extra_whitespaces);
        for cut in base.len()..buf.len() {
            let _ = parse_specs(&buf[..cut]);
        }
        let e = parse_specs(&[0x1a, 0x03, 0x12, 0x05, 0x00]).unwrap_err();
        assert!(
            e.contains("normalizer_spec") && e.contains("past the end"),
            "{e}"
        );
    }
}
