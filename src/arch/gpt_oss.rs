//! `GptOssForCausalLM` (`GptOssModel` in `convert_hf_to_gguf.py`, arch
//! `gpt-oss`): Q/K/V/O with biases and no Q/K permutation, per-head attention
//! sinks (`attn_sinks`), a post-attention norm written as
//! `post_attention_norm`, a router with a bias and pre-stacked experts with
//! biases. transformers saves the experts stacked and unquantized:
//! `mlp.experts.gate_up_proj` `[E, hidden, 2 ff]` (gate in the even columns,
//! up in the odd ones), `down_proj` `[E, ff, hidden]`, `*_bias`. The
//! checkpoint reader presents them as the converter writes them
//! ([`present`]): gate and up split and transposed to `[E, ff, hidden]`,
//! down transposed to `[E, hidden, ff]`, the biases split, each gathered as
//! it is read. Real gpt-oss checkpoints ship the experts as MXFP4
//! `*_blocks` `[E, rows, cols / 32, 16]` and `*_scales` `[E, rows, cols / 32]`
//! (uint8, `[out, in]` already, gate and up in alternate rows), which the
//! converter writes as ggml MXFP4 tensors, bytes moved, never requantized, before
//! every other tensor; laquant does the same, reading them a row at a time
//! ([`Shards::mxfp4_rows`]), and reads their values dequantized everywhere else.
//!
//! The forward pass (`calib::forward`) computes its block: attention sinks,
//! the clamped SwiGLU (`Act::SwigluOai`), softmax over the top-k router
//! logits (`Gating::SoftmaxWeight`), the stacked expert biases and the
//! sliding window on alternate layers.

use super::spec::{llama_layout as l, moe_layout as m, *};
use super::Role;
use crate::hf::safetensors::{Shards, View};
use crate::hf::HfError;

const MATMULS: [Matmul; 8] = m::matmuls("mlp.router", "mlp.experts");

/// The family of `GptOssForCausalLM`.
pub static GPT_OSS: ArchSpec = ArchSpec {
    hf_classes: &["GptOssForCausalLM"],
    gguf_arch: "gpt-oss",
    vocab: VocabKind::Gpt2,
    tensors: TensorRules {
        global: l::GLOBAL,
        layer_prefix: l::LAYER_PREFIX,
        layer: &[
            TensorRule::plain("input_layernorm", Role::AttnNorm),
            TensorRule::plain("post_attention_layernorm", Role::AttnPostNorm),
            TensorRule::with_bias("self_attn.q_proj", Role::AttnQ),
            TensorRule::with_bias("self_attn.k_proj", Role::AttnK),
            TensorRule::with_bias("self_attn.v_proj", Role::AttnV),
            TensorRule::with_bias("self_attn.o_proj", Role::AttnOutput),
            TensorRule::plain("self_attn.sinks", Role::AttnSinks),
            TensorRule::with_bias("mlp.router", Role::FfnGateInp),
            TensorRule::with_bias("mlp.experts.gate_proj", Role::FfnGateExps),
            TensorRule::with_bias("mlp.experts.up_proj", Role::FfnUpExps),
            TensorRule::with_bias("mlp.experts.down_proj", Role::FfnDownExps),
        ],
        skipped_suffixes: l::SKIPPED,
        experts: None,
    },
    hparams: HparamSpec {
        attention_bias_default: true,
        extra_u32: &[
            ("sliding_window", "attention.sliding_window"),
            ("intermediate_size", "expert_feed_forward_length"),
        ],
        ..HparamSpec::TEXT_MODEL
    },
    block: BlockSpec {
        // llama.cpp's openai-moe graph norms the FFN's input with
        // `attn_post_norm`, the converter's name for `post_attention_layernorm`.
        ffn_norm: Role::AttnPostNorm,
        attention: Attention {
            sliding: Some(Sliding {
                window: "sliding_window",
                period: 2,
                rope_base: None,
            }),
            sinks: true,
            ..m::block(false, true, NormTopK::Never, false, &MATMULS).attention
        },
        ffn: Ffn::Moe {
            act: Act::SwigluOai,
            norm_top_k: NormTopK::Never,
            shared_expert: false,
            gating: Gating::SoftmaxWeight,
        },
        ..m::block(false, true, NormTopK::Never, false, &MATMULS)
    },
};

/// The bad-tensor error of `name` in `shards`.
fn bad(shards: &Shards, name: &str, what: String) -> HfError {
    let path = shards
        .entry(name)
        .map(|e| shards.shard_path(e).to_path_buf())
        .unwrap_or_default();
    HfError::File {
        path,
        what: format!("tensor {name}: {what}"),
    }
}

/// Presents a gpt-oss checkpoint's tensors as `GptOssModel.modify_tensors`
/// leaves them: `self_attn.sinks` as `self_attn.sinks.weight`, the stacked
/// experts split, transposed and renamed (`mlp.experts.{gate,up,down}_proj.{weight,bias}`),
/// each a [`View`] of the stored bytes. MXFP4 experts (`*_blocks`, `*_scales`,
/// as openai ships gpt-oss) are presented as `GptOssModel.repack_mxfp4` writes
/// them ([`Shards::present_mxfp4`]): down as is, gate_up's even rows as gate and
/// odd rows as up, first in the order; their values read dequantized.
pub fn present(shards: &mut Shards) -> Result<(), HfError> {
    let mut mxfp4 = Vec::new();
    for name in shards.order.clone() {
        let shape = shards
            .entry(&name)
            .map(|e| e.shape.clone())
            .unwrap_or_default();
        let Some((stem, last)) = name.rsplit_once('.') else {
            continue;
        };
        let parts = match (last, &shape[..]) {
            ("sinks", _) => vec![(format!("{name}.weight"), shape.clone(), None)],
            ("down_proj_bias", _) => vec![(format!("{stem}.down_proj.bias"), shape.clone(), None)],
            ("down_proj", &[e, f, h]) => vec![(
                format!("{stem}.down_proj.weight"),
                vec![e, h, f],
                Some(View {
                    strides: vec![f * h, 1, h],
                    offset: 0,
                }),
            )],
            ("gate_up_proj", &[e, h, f2]) if f2 % 2 == 0 => ["gate", "up"]
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let view = View {
                        strides: vec![h * f2, 2, f2],
                        offset: i,
                    };
                    (
                        format!("{stem}.{p}_proj.weight"),
                        vec![e, f2 / 2, h],
                        Some(view),
                    )
                })
                .collect(),
            ("gate_up_proj_bias", &[e, f2]) if f2 % 2 == 0 => ["gate", "up"]
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let view = View {
                        strides: vec![f2, 2],
                        offset: i,
                    };
                    (format!("{stem}.{p}_proj.bias"), vec![e, f2 / 2], Some(view))
                })
                .collect(),
            ("down_proj" | "gate_up_proj" | "gate_up_proj_bias", _) => {
                let want = match last {
                    "down_proj" => "[experts, ff, hidden]",
                    "gate_up_proj" => "[experts, hidden, 2 ff]",
                    _ => "[experts, 2 ff]",
                };
                return Err(bad(
                    shards,
                    &name,
                    format!("shape {shape:?}, a gpt-oss checkpoint stores it {want}"),
                ));
            }
            ("down_proj_scales" | "gate_up_proj_scales", _) => {
                let proj = last.trim_end_matches("_scales");
                let parts: Vec<(String, usize, usize)> = match proj {
                    "down_proj" => vec![(format!("{stem}.down_proj.weight"), 1, 0)],
                    _ => vec![
                        (format!("{stem}.gate_proj.weight"), 2, 0),
                        (format!("{stem}.up_proj.weight"), 2, 1),
                    ],
                };
                shards.present_mxfp4(&format!("{stem}.{proj}_blocks"), &name, &parts)?;
                mxfp4.extend(parts.into_iter().map(|p| p.0));
                continue;
            }
            ("down_proj_blocks" | "gate_up_proj_blocks", _) => {
                // Presented with its scales, which must be there.
                let scales = format!("{stem}.{}_scales", last.trim_end_matches("_blocks"));
                if shards.entry(&scales).is_none() {
                    return Err(bad(
                        shards,
                        &name,
                        format!("MXFP4 blocks without their scales ({scales} is missing)"),
                    ));
                }
                continue;
            }
            (l, _) if l.ends_with("_blocks") || l.ends_with("_scales") => {
                return Err(bad(
                    shards,
                    &name,
                    "a gpt-oss checkpoint stores MXFP4 blocks and scales only for \
                     mlp.experts.gate_up_proj and mlp.experts.down_proj"
                        .into(),
                ));
            }
            _ => continue,
        };
        shards.present_as(&name, parts)?;
    }
    // convert_hf_to_gguf.py writes the MXFP4 experts first (`generate_extra_tensors`),
    // in the order of their scales.
    let rest = std::mem::take(&mut shards.order);
    shards.order = mxfp4.clone();
    shards
        .order
        .extend(rest.into_iter().filter(|n| !mxfp4.contains(n)));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hf::safetensors::dtype_size;

    const L: &str = "model.layers.0.";

    /// An in-memory safetensors image of `tensors` (`name`, dtype F32, I32 or
    /// U8, shape), element `i` of each holding `i` (F32), `37 i + 11` (U8,
    /// wrapping) or zero bytes.
    fn image(tensors: &[(&str, &str, Vec<usize>)]) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (name, dtype, shape) in tensors {
            let n: usize = shape.iter().product();
            let start = data.len();
            for i in 0..n {
                match *dtype {
                    "F32" => data.extend_from_slice(&(i as f32).to_le_bytes()),
                    "U8" => data.push((i * 37 + 11) as u8),
                    _ => data.extend_from_slice(&[0; 4]),
                }
            }
            header.insert(
                format!("{L}{name}"),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
            );
        }
        let header = serde_json::to_vec(&header).unwrap();
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&header);
        out.extend_from_slice(&data);
        out
    }

    fn read(shards: &Shards, name: &str) -> (Vec<usize>, Vec<f32>) {
        let e = shards.entry(&format!("{L}{name}")).expect(name);
        let mut v = vec![0f32; e.shape.iter().product()];
        shards.read_f32_into(&format!("{L}{name}"), &mut v).unwrap();
        (e.shape.clone(), v)
    }

    #[test]
    fn stacked_experts_are_presented_as_the_converter_writes_them() {
        let (e, h, f) = (2, 3, 5);
        let mut s = Shards::from_bytes(&image(&[
            ("mlp.experts.gate_up_proj", "F32", vec![e, h, 2 * f]),
            ("mlp.experts.gate_up_proj_bias", "F32", vec![e, 2 * f]),
            ("mlp.experts.down_proj", "F32", vec![e, f, h]),
            ("mlp.experts.down_proj_bias", "F32", vec![e, h]),
            ("self_attn.sinks", "F32", vec![4]),
        ]))
        .unwrap();
        present(&mut s).unwrap();
        // gate_up_proj.transpose(-1, -2)[:, ::2, :] and [:, 1::2, :].
        for (p, half) in [("gate", 0), ("up", 1)] {
            let (shape, v) = read(&s, &format!("mlp.experts.{p}_proj.weight"));
            assert_eq!(shape, [e, f, h]);
            for (x, j, i) in
                (0..e).flat_map(|x| (0..f).flat_map(move |j| (0..h).map(move |i| (x, j, i))))
            {
                let stored = (x * h + i) * 2 * f + 2 * j + half;
                assert_eq!(v[(x * f + j) * h + i], stored as f32, "{p} [{x},{j},{i}]");
            }
            let (shape, b) = read(&s, &format!("mlp.experts.{p}_proj.bias"));
            assert_eq!(shape, [e, f]);
            let want: Vec<f32> = (0..e * f).map(|k| (2 * k + half) as f32).collect();
            assert_eq!(b, want);
        }
        // down_proj.transpose(-1, -2).
        let (shape, v) = read(&s, "mlp.experts.down_proj.weight");
        assert_eq!(shape, [e, h, f]);
        for (x, i, j) in
            (0..e).flat_map(|x| (0..h).flat_map(move |i| (0..f).map(move |j| (x, i, j))))
        {
            assert_eq!(v[(x * h + i) * f + j], ((x * f + j) * h + i) as f32);
        }
        assert_eq!(read(&s, "mlp.experts.down_proj.bias").0, [e, h]);
        assert_eq!(read(&s, "self_attn.sinks.weight").1, [0.0, 1.0, 2.0, 3.0]);
        // A part read from element `first` on gathers what the whole read does.
        let name = format!("{L}mlp.experts.up_proj.weight");
        let entry = s.entry(&name).unwrap();
        let view = entry.view.as_ref().unwrap();
        let whole = s.bytes(&name, entry).unwrap();
        let size = dtype_size(entry.dtype);
        let part = view.gather(s.raw(entry), size, &entry.shape, 7, 9);
        assert_eq!(part, whole[7 * size..16 * size]);
        // The order keeps each part where its stored tensor was.
        let names: Vec<&str> = s.order.iter().map(|n| &n[L.len()..]).collect();
        assert_eq!(
            names,
            [
                "mlp.experts.down_proj.weight",
                "mlp.experts.down_proj.bias",
                "mlp.experts.gate_proj.weight",
                "mlp.experts.up_proj.weight",
                "mlp.experts.gate_proj.bias",
                "mlp.experts.up_proj.bias",
                "self_attn.sinks.weight",
            ]
        );
    }

    /// E2M1 values by code, as the OCP MX spec (and transformers) define them.
    const FP4: [f64; 16] = [
        0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
    ];

    #[test]
    fn mxfp4_experts_are_presented_as_the_converter_repacks_them() {
        let (e, ff, nb) = (2, 3, 2);
        let cols = nb * 32;
        let mut s = Shards::from_bytes(&image(&[
            (
                "mlp.experts.gate_up_proj_blocks",
                "U8",
                vec![e, 2 * ff, nb, 16],
            ),
            ("mlp.experts.gate_up_proj_scales", "U8", vec![e, 2 * ff, nb]),
            ("mlp.experts.down_proj_blocks", "U8", vec![e, cols, 1, 16]),
            ("mlp.experts.down_proj_scales", "U8", vec![e, cols, 1]),
            ("self_attn.sinks", "F32", vec![4]),
        ]))
        .unwrap();
        present(&mut s).unwrap();
        // The checkpoint's definition: stored row `sr`, element `k` is code
        // (byte k/2, low nibble for even k) times 2^(scale - 127).
        let stored = |sr: usize, k: usize, nb: usize| {
            let byte = ((sr * nb + k / 32) * 16 + (k % 32) / 2) * 37 + 11;
            let code = ((byte as u8) >> (4 * (k % 2))) & 0x0f;
            let scale = ((sr * nb + k / 32) * 37 + 11) as u8;
            (FP4[code as usize] * 2f64.powi(scale as i32 - 127)) as f32
        };
        for (p, step, offset, rows, nb) in [
            ("gate", 2, 0, ff, nb),
            ("up", 2, 1, ff, nb),
            ("down", 1, 0, cols, 1),
        ] {
            let (shape, v) = read(&s, &format!("mlp.experts.{p}_proj.weight"));
            assert_eq!(shape, [e, rows, nb * 32]);
            for (r, row) in v.chunks_exact(nb * 32).enumerate() {
                for (k, &x) in row.iter().enumerate() {
                    let want = stored(r * step + offset, k, nb);
                    assert!(
                        x == want || (x.is_nan() && want.is_nan()),
                        "{p} row {r} [{k}]: {x} vs {want}"
                    );
                }
            }
            // ggml's blocks: the stored scale byte, then element j low, j + 16 high.
            let name = format!("{L}mlp.experts.{p}_proj.weight");
            let q = s.mxfp4_rows(&name, s.entry(&name).unwrap(), 1, 2).unwrap();
            assert_eq!(q.len(), 2 * nb * 17);
            let sr = step + offset;
            assert_eq!(q[0], ((sr * nb) * 37 + 11) as u8);
        }
        // The MXFP4 tensors first, in the order of their scales; the rest as before.
        let names: Vec<&str> = s.order.iter().map(|n| &n[L.len()..]).collect();
        assert_eq!(
            names,
            [
                "mlp.experts.down_proj.weight",
                "mlp.experts.gate_proj.weight",
                "mlp.experts.up_proj.weight",
                "self_attn.sinks.weight",
            ]
        );
    }

    /// A scale byte 255 (E8M0's NaN, which llama.cpp refuses) is an error
    /// naming the tensor and its row wherever the blocks are read: as values
    /// (the forward pass), by rows, or as ggml blocks (the converter's copy).
    #[test]
    fn mxfp4_nan_scale_is_an_error_naming_the_tensor() {
        // The image's U8 element 228 is 228 · 37 + 11 = 255 (mod 256): row 228's scale.
        let mut s = Shards::from_bytes(&image(&[
            ("mlp.experts.down_proj_blocks", "U8", vec![1, 229, 1, 16]),
            ("mlp.experts.down_proj_scales", "U8", vec![1, 229, 1]),
        ]))
        .unwrap();
        present(&mut s).unwrap();
        let name = format!("{L}mlp.experts.down_proj.weight");
        let e = s.entry(&name).unwrap();
        assert!(s.mxfp4_rows(&name, e, 0, 228).is_ok());
        let mut v = vec![0f32; 229 * 32];
        for err in [
            s.mxfp4_rows(&name, e, 220, 9).map(|_| ()),
            s.mxfp4_f32_rows(&name, e, 228, &mut v[..32]),
            s.read_f32_into(&name, &mut v),
        ] {
            let msg = err.unwrap_err().to_string();
            assert!(
                msg.contains(&name) && msg.contains("row 228") && msg.contains("scale byte 255"),
                "{msg}"
            );
        }
    }

    fn refusal(tensors: &[(&str, &str, Vec<usize>)]) -> String {
        let mut s = Shards::from_bytes(&image(tensors)).unwrap();
        present(&mut s).unwrap_err().to_string()
    }

    #[test]
    fn malformed_stacked_experts_are_refused_by_name() {
        for (name, shape, want) in [
            ("gate_up_proj", vec![2, 3, 5], "[experts, hidden, 2 ff]"),
            ("gate_up_proj", vec![6, 10], "[experts, hidden, 2 ff]"),
            ("gate_up_proj_bias", vec![2, 3], "[experts, 2 ff]"),
            ("down_proj", vec![2, 15], "[experts, ff, hidden]"),
        ] {
            let msg = refusal(&[(&format!("mlp.experts.{name}"), "F32", shape.clone())]);
            assert!(
                msg.contains(&format!("{L}mlp.experts.{name}")) && msg.contains(want),
                "{name} {shape:?}: {msg}"
            );
        }
        let msg = refusal(&[("mlp.experts.gate_up_proj", "I32", vec![2, 3, 4])]);
        assert!(
            msg.contains("mlp.experts.gate_up_proj") && msg.contains("I32"),
            "{msg}"
        );
        let msg = refusal(&[("mlp.experts.gate_up_proj_blocks", "U8", vec![2, 4])]);
        assert!(
            msg.contains("gate_up_proj_blocks") && msg.contains("gate_up_proj_scales is missing"),
            "{msg}"
        );
        let b = ("mlp.experts.down_proj_blocks", "U8", vec![2, 4, 1, 16]);
        for (scales, want) in [
            (
                ("mlp.experts.down_proj_scales", "U8", vec![2, 4]),
                "are [2, 4, 1]",
            ),
            (
                ("mlp.experts.down_proj_scales", "I32", vec![2, 4, 1]),
                "dtype I32",
            ),
        ] {
            let msg = refusal(&[b.clone(), scales]);
            assert!(
                msg.contains("down_proj_scales") && msg.contains(want),
                "{msg}"
            );
        }
        let msg = refusal(&[
            ("mlp.experts.gate_up_proj_blocks", "U8", vec![2, 3, 1, 16]),
            ("mlp.experts.gate_up_proj_scales", "U8", vec![2, 3, 1]),
        ]);
        assert!(
            msg.contains("gate_up_proj_blocks") && msg.contains("not 2 interleaved"),
            "{msg}"
        );
        let msg = refusal(&[("mlp.router_blocks", "U8", vec![2, 4])]);
        assert!(
            msg.contains("mlp.router_blocks") && msg.contains("only for"),
            "{msg}"
        );
    }
}
