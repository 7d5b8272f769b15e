//! Golden vectors: the inputs of ggml's reference outputs in `fixtures/golden`
//! and the reader of those files. Used by `tests/quant_golden.rs`; the files
//! are written by `interop/oracle/oracle.c` (`scripts/gen-golden.sh`), whose
//! input generator this module mirrors value for value. Only exactly rounded
//! IEEE operations (+, -, *, /, integer to float) are used on both sides, so
//! the C and Rust generators build the same floats.
//!
//! File format (little-endian), one file per type, `<TYPE>.bin`:
//! `"LQGOLD1\0"`, u32 ggml type id, u32 record count, then records of
//! u32 case id, u32 flags (bit 0: with importance weights, bit 8: bytes stored, bit 9: ggml
//! aborted on this input, the hashes are of zeros),
//! u32 width, u32 rows, u64 FNV-1a of the input f32s, u64 FNV-1a of the importance
//! weights (0 without), u32 byte count, u64 FNV-1a of the quantized bytes,
//! u64 FNV-1a of ggml's `to_float` output, then the quantized bytes if stored.

/// SplitMix64, as the oracle's `sm_next`.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) from 24 random bits.
    pub fn unif(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * f32::from_bits(0x3380_0000) // 2^-24
    }

    /// Approximately N(0, 1): Irwin-Hall sum of four uniforms.
    pub fn gauss(&mut self) -> f32 {
        let a = self.unif();
        let b = self.unif();
        let c = self.unif();
        let d = self.unif();
        let mut sum = a + b;
        sum += c;
        sum += d;
        (sum - 2.0) * 1.732_050_8
    }
}

/// Number of golden cases (12 random, 16 hostile).
pub const N_CASES: usize = 12 + N_HOSTILE;
const N_HOSTILE: usize = 16;
const WIDTHS: [(usize, usize); 4] = [(256, 2), (512, 1), (4096, 1), (11008, 1)];

/// What a case holds, for messages.
pub fn describe(id: usize) -> String {
    const DIST: [&str; 3] = ["normal", "heavy-tailed", "planted outliers"];
    const HOSTILE: [&str; N_HOSTILE] = [
        "all zeros",
        "constant 0.5",
        "constant -3",
        "one huge value",
        "one value near FLT_MAX",
        "subnormals",
        "below GROUP_MAX_EPS",
        "tiny",
        "alternating signs",
        "rounding ties",
        "all positive",
        "all negative",
        "NaN",
        "+-Inf",
        "one nonzero per block",
        "blocks of very different scale",
    ];
    if id < 12 {
        let (w, r) = WIDTHS[id % 4];
        format!("case {id}: {} {r}x{w}", DIST[id / 4])
    } else {
        format!("case {id}: hostile '{}' 1x256", HOSTILE[id - 12])
    }
}

/// (width, rows) of a case.
pub fn case_shape(id: usize) -> (usize, usize) {
    if id < 12 {
        WIDTHS[id % 4]
    } else {
        (256, 1)
    }
}

fn hostile(p: usize, s: &mut SplitMix, x: &mut [f32]) {
    for (j, o) in x.iter_mut().enumerate() {
        let g = s.gauss();
        *o = match p {
            0 => 0.0,
            1 => 0.5,
            2 => -3.0,
            3 => {
                if j == 37 {
                    1.0e4
                } else {
                    g * 0.01
                }
            }
            4 => {
                if j == 200 {
                    -3.0e38
                } else {
                    g * 0.01
                }
            }
            5 => g * f32::from_bits(0x0001_0000),
            6 => g * f32::from_bits(0x2180_0000), // 2^-60
            7 => g * f32::from_bits(0x2b80_0000), // 2^-40
            8 => (if j & 1 == 1 { -1.0 } else { 1.0 }) * (1.0 + (j % 7) as f32 * 0.25),
            9 => ((j % 32) as i32 - 16) as f32 * 0.5,
            10 => s.unif() * 0.1 + 0.05,
            11 => -(s.unif() * 0.1) - 0.05,
            12 => {
                if j == 5 || j == 100 {
                    f32::from_bits(0x7fc0_0000)
                } else {
                    g * 0.02
                }
            }
            13 => match j {
                70 => f32::INFINITY,
                180 => f32::NEG_INFINITY,
                _ => g * 0.02,
            },
            14 => {
                if j % 32 == 3 {
                    g
                } else {
                    0.0
                }
            }
            _ => {
                let e = (j / 32) * 6;
                let mut sc = f32::from_bits(0x3580_0000); // 2^-20
                for _ in 0..e {
                    sc *= 2.0;
                }
                g * sc
            }
        };
    }
}

/// The inputs (rows x width, row-major) and importance weights (width) of case `id`,
/// exactly as the oracle's `make_case` builds them.
pub fn make_case(id: usize) -> (Vec<f32>, Vec<f32>) {
    let (width, rows) = case_shape(id);
    let n = width * rows;
    let mut x = vec![0f32; n];
    let mut s = SplitMix(0x5EED_u64.wrapping_add((id as u64).wrapping_mul(0x100_0000_01B3)));
    if id >= 12 {
        hostile(id - 12, &mut s, &mut x);
    } else {
        let dist = id / 4;
        for o in x.iter_mut() {
            let g = s.gauss();
            *o = match dist {
                0 => g * 0.02,
                1 => {
                    let u = s.unif();
                    g / (u + 0.05) * 0.01
                }
                _ => {
                    let r = s.next_u64();
                    let v = g * 0.02;
                    if r.is_multiple_of(64) {
                        v * 30.0
                    } else {
                        v
                    }
                }
            };
        }
    }
    let mut t =
        SplitMix(0x1A7E11_u64.wrapping_add((id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    let imat = (0..width)
        .map(|_| {
            let u = t.unif();
            let w = t.unif();
            u * u * w * 50.0 + 0.001
        })
        .collect();
    (x, imat)
}

/// 64-bit FNV-1a.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// FNV-1a of f32 values' little-endian bytes.
pub fn fnv1a_f32(x: &[f32]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for v in x {
        for b in v.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

/// One record of a golden file.
#[derive(Debug, Clone)]
pub struct Record {
    pub case: usize,
    pub imatrix: bool,
    pub width: usize,
    pub rows: usize,
    pub input_hash: u64,
    pub imatrix_hash: u64,
    pub n_bytes: usize,
    pub bytes_hash: u64,
    pub deq_hash: u64,
    /// The quantized bytes, for the small cases.
    pub bytes: Option<Vec<u8>>,
    /// ggml aborted (`GGML_ASSERT`) on this input: i-quants without importance weights where
    /// `ggml_quantize_requires_imatrix`, and NaN rows of the i-quants' lattice searches.
    pub aborted: bool,
}

/// A parsed golden file.
#[derive(Debug)]
pub struct GoldenFile {
    pub type_id: u32,
    pub records: Vec<Record>,
}

/// Parses a golden file; errors name what is malformed.
pub fn parse(data: &[u8]) -> Result<GoldenFile, String> {
    struct Cur<'a>(&'a [u8], usize);
    impl Cur<'_> {
        fn take(&mut self, n: usize) -> Result<&[u8], String> {
            let end = self.1.checked_add(n).filter(|&e| e <= self.0.len());
            let end =
                end.ok_or_else(|| format!("truncated at byte {} (wanted {n} more)", self.1))?;
            let s = &self.0[self.1..end];
            self.1 = end;
            Ok(s)
        }
        fn u32(&mut self) -> Result<u32, String> {
            Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
        }
        fn u64(&mut self) -> Result<u64, String> {
            Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
        }
    }
    let mut c = Cur(data, 0);
    if c.take(8)? != b"LQGOLD1\0" {
        return Err("not a laquant golden file (bad magic)".into());
    }
    let type_id = c.u32()?;
    let n = c.u32()? as usize;
    let mut records = Vec::with_capacity(n.min(1 << 16));
    for _ in 0..n {
        let case = c.u32()? as usize;
        let flags = c.u32()?;
        let width = c.u32()? as usize;
        let rows = c.u32()? as usize;
        let input_hash = c.u64()?;
        let imatrix_hash = c.u64()?;
        let n_bytes = c.u32()? as usize;
        let bytes_hash = c.u64()?;
        let deq_hash = c.u64()?;
        let bytes = if flags & 0x100 != 0 {
            Some(c.take(n_bytes)?.to_vec())
        } else {
            None
        };
        records.push(Record {
            case,
            imatrix: flags & 1 != 0,
            width,
            rows,
            input_hash,
            imatrix_hash,
            n_bytes,
            bytes_hash,
            deq_hash,
            bytes,
            aborted: flags & 0x200 != 0,
        });
    }
    if c.1 != data.len() {
        return Err(format!("{} trailing bytes", data.len() - c.1));
    }
    Ok(GoldenFile { type_id, records })
}
