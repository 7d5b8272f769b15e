//! `laquant eval` on embedding models end to end (fixtures/bert: mean
//! pooling, WordPiece; fixtures/xlmr: CLS pooling, SentencePiece; random
//! weights): Q8_0, Q4_K_M and Q2_K files against the HF weights on the
//! embedded held-out text (parallel: translation hits given) and on the
//! shared evaluation corpus (not parallel: agreement only). Q8_0 keeps the
//! embeddings (cosine near 1, every nearest neighbour the reference's); the
//! k-quants drift more as they have fewer bits (ordering, not numbers). The
//! JSON's shape, the tables, the chart, and the refusal of a model without
//! pooling (no output left behind).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

mod common;

const TYPES: [&str; 3] = ["q8_0", "q4_k_m", "q2_k"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn laquant(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_laquant"))
        .args(args)
        .output()
        .expect("run laquant")
}

/// The fixture's conversions to [`TYPES`] (no calibration), made once per fixture.
fn files(name: &'static str) -> &'static (tempfile::TempDir, Vec<String>) {
    static BERT: OnceLock<(tempfile::TempDir, Vec<String>)> = OnceLock::new();
    static XLMR: OnceLock<(tempfile::TempDir, Vec<String>)> = OnceLock::new();
    let cell = if name == "bert" { &BERT } else { &XLMR };
    cell.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let model = fixture(name);
        let out = TYPES
            .iter()
            .map(|ty| {
                let p = d.path().join(format!("{name}-{ty}.gguf"));
                let p = p.to_str().unwrap().to_string();
                let o = laquant(&[
                    "-q",
                    "convert",
                    model.to_str().unwrap(),
                    "--outtype",
                    ty,
                    "--calib",
                    "none",
                    "-o",
                    &p,
                ]);
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                p
            })
            .collect();
        (d, out)
    })
}

/// `laquant eval --json -` of the fixture's files with `extra` flags.
fn eval_json(name: &'static str, extra: &[&str]) -> serde_json::Value {
    let (_, f) = files(name);
    let model = fixture(name);
    let mut args = vec!["-q", "eval", model.to_str().unwrap()];
    args.extend(f.iter().map(String::as_str));
    args.extend(["--json", "-", "--threads", "2"]);
    args.extend(extra);
    let o = laquant(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("eval JSON")
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Every figure in range; Q8_0's cosine above 0.999; mean cosine falls from
/// Q8_0 to Q4_K_M to Q2_K, as does the worst language's; Q8_0's agreement is
/// at least either k-quant's, and Q2_K moves some neighbour.
fn check_ordering(name: &str, j: &serde_json::Value, parallel: bool) {
    assert_eq!(j["kind"], "embedding");
    assert_eq!(j["parallel"], parallel);
    assert_eq!(j["pivot"], "en");
    let files = j["files"].as_array().unwrap();
    assert_eq!(files.len(), 3);
    for file in files {
        for (lang, l) in file["languages"].as_object().unwrap() {
            let (m, p1, min) = (f(&l["cos_mean"]), f(&l["cos_p1"]), f(&l["cos_min"]));
            assert!(
                min <= p1 && p1 <= m + 1e-12 && m <= 1.0 + 1e-9 && min > -1.0,
                "{name} {lang}: {min} {p1} {m}"
            );
            if lang == "en" {
                assert!(
                    l["retrieval"].is_null(),
                    "{name}: the pivot has no retrieval"
                );
                continue;
            }
            let r = &l["retrieval"];
            assert!(r["queries"].as_u64().unwrap() > 0, "{name} {lang}");
            assert!((0.0..=1.0).contains(&f(&r["agreement"])));
            assert_eq!(r["translation_hit"].is_null(), !parallel, "{name} {lang}");
        }
    }
    let (q8, q4, q2) = (&files[0], &files[1], &files[2]);
    let cos = |x: &serde_json::Value| f(&x["cos_mean"]);
    let agree = |x: &serde_json::Value| f(&x["agreement_mean"]);
    eprintln!(
        "{name}: mean cosine {:.6} {:.6} {:.6}, agreement {:.4} {:.4} {:.4}",
        cos(q8),
        cos(q4),
        cos(q2),
        agree(q8),
        agree(q4),
        agree(q2)
    );
    assert!(cos(q8) > 0.999, "{name}: Q8_0 mean cosine {}", cos(q8));
    assert!(
        f(&q8["cos_p1_min"]) > 0.995,
        "{name}: Q8_0 {}",
        q8["cos_p1_min"]
    );
    assert!(
        cos(q8) > cos(q4) && cos(q4) > cos(q2),
        "{name}: cosine order"
    );
    assert!(f(&q8["worst_cos"]) > f(&q4["worst_cos"]) && f(&q4["worst_cos"]) > f(&q2["worst_cos"]));
    // Agreement counts near ties of a random model's neighbours: Q8_0 keeps
    // at least as many as either k-quant, which may swap places.
    assert!(
        agree(q8) >= agree(q4) && agree(q8) >= agree(q2),
        "{name}: agreement order"
    );
    assert!(agree(q2) < 1.0, "{name}: Q2_K moves no nearest neighbour");
    if parallel {
        // The file's hits are the reference's where every neighbour agrees.
        let hits = |x: &serde_json::Value| f(&x["translation_hit_mean"]);
        assert!((0.0..=1.0).contains(&hits(q2)));
        let r = f(&q8["translation_hit_ref_mean"]);
        assert_eq!(
            r,
            f(&q2["translation_hit_ref_mean"]),
            "the reference's hits are the reference's"
        );
    }
}

#[test]
fn bert_embedded_text_orders_the_types() {
    let j = eval_json("bert", &[]);
    assert_eq!(j["pooling"], "mean");
    assert_eq!(j["reference"].as_array().unwrap().len(), 29);
    check_ordering("bert", &j, true);
}

/// Eight short, distinct sentences in three languages: random weights give
/// well-separated embeddings here, and no file changes a nearest neighbour
/// of bert's (on the UDHR's long, similar paragraphs the random model's
/// neighbours are near ties, which Q8_0 already moves now and then).
#[test]
fn well_conditioned_sentences_keep_every_neighbour() {
    let d = tempfile::tempdir().unwrap();
    let text = [
        ("en", "The cat sleeps.\nRain falls on the city at night.\nNumbers: 1 2 3 4 5.\nA red apple.\nMountains and rivers.\nPlease close the door quickly!\nMusic, dance, song.\nWhere is the train station?\n"),
        ("de", "Die Katze schläft.\nNachts fällt Regen auf die Stadt.\nZahlen: 1 2 3 4 5.\nEin roter Apfel.\nBerge und Flüsse.\nBitte schließe schnell die Tür!\nMusik, Tanz, Gesang.\nWo ist der Bahnhof?\n"),
        ("ru", "Кошка спит.\nНочью на город падает дождь.\nЧисла: 1 2 3 4 5.\nКрасное яблоко.\nГоры и реки.\nПожалуйста, быстро закрой дверь!\nМузыка, танец, песня.\nГде вокзал?\n"),
    ];
    for (l, t) in text {
        std::fs::write(d.path().join(format!("{l}.txt")), t).unwrap();
    }
    let j = eval_json("bert", &["--eval", d.path().to_str().unwrap()]);
    assert_eq!(j["parallel"], false);
    for file in j["files"].as_array().unwrap() {
        assert_eq!(f(&file["agreement_mean"]), 1.0, "{}", file["file"]);
        for (lang, l) in file["languages"].as_object().unwrap() {
            assert_eq!(l["windows"], 8, "{lang}");
        }
    }
    let cos: Vec<f64> = (0..3).map(|i| f(&j["files"][i]["cos_mean"])).collect();
    assert!(
        cos[0] > 0.999 && cos[0] > cos[1] && cos[1] > cos[2],
        "{cos:?}"
    );
}

#[test]
fn xlmr_embedded_text_orders_the_types() {
    let j = eval_json("xlmr", &[]);
    assert_eq!(j["pooling"], "cls");
    check_ordering("xlmr", &j, true);
}

/// The shared corpus (not parallel; three languages, 40 lines each, at most 64 tokens).
#[test]
fn shared_corpus_gives_agreement_only() {
    let Some(corpus) = common::shared_data("corpus/eval") else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    for l in ["en", "ru", "zh"] {
        std::fs::copy(
            corpus.join(format!("{l}.txt")),
            d.path().join(format!("{l}.txt")),
        )
        .unwrap();
    }
    let dir = d.path().to_str().unwrap();
    for name in ["bert", "xlmr"] {
        let j = eval_json(name, &["--eval", dir, "--ctx", "64", "--chunks", "40"]);
        let r = j["reference"].as_array().unwrap();
        assert_eq!(r.len(), 3);
        for x in r {
            assert_eq!(x["windows"], 40);
            assert!(
                x["truncated"].as_u64().unwrap() > 0,
                "{name}: no window reached 64 tokens"
            );
        }
        assert_eq!(j["ctx"], 64);
        check_ordering(name, &j, false);
    }
}

/// Markdown and the chart; a model that does not pool is refused and leaves nothing.
#[test]
fn tables_chart_and_refusals() {
    let (d, f) = files("bert");
    let model = fixture("bert");
    let svg = d.path().join("drift.svg");
    let o = laquant(&[
        "eval",
        model.to_str().unwrap(),
        &f[0],
        &f[2],
        "--md",
        "--chunks",
        "4",
        "--chart",
        svg.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = String::from_utf8(o.stdout).unwrap();
    assert!(md.contains("| file | size MB | bpw | mean cos |"), "{md}");
    assert!(md.contains("| cos bert-q8_0 | agree bert-q8_0 |"), "{md}");
    assert!(md.contains("parallel text"), "{md}");
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.contains("1 - mean cosine") && chart.contains("bert-q2_k ("));
    // xlmr-rerank as converted pools nothing (every token's row).
    let rerank = fixture("xlmr-rerank");
    let gguf = d.path().join("rerank-q8_0.gguf");
    let o = laquant(&[
        "-q",
        "convert",
        rerank.to_str().unwrap(),
        "--outtype",
        "q8_0",
        "--calib",
        "none",
        "-o",
        gguf.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let json = d.path().join("rerank.json");
    let o = laquant(&[
        "eval",
        rerank.to_str().unwrap(),
        gguf.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("pooling is `none`") && e.contains("xlmr-rerank"),
        "{e}"
    );
    assert!(!json.exists(), "a refused run left its JSON");
    // A file of another model is named.
    let o = laquant(&["eval", fixture("xlmr").to_str().unwrap(), &f[0]]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("bert-q8_0.gguf"));
    // --ctx beyond the positions.
    let o = laquant(&["eval", model.to_str().unwrap(), &f[0], "--ctx", "4096"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--ctx"));
}
