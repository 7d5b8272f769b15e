//! `laquant eval`'s tables and `laquant batch`'s summaries format numbers with
//! one rule (`eval::report::num`): an astronomical perplexity in scientific
//! notation, a normal one with four significant digits, a tiny KLD in
//! scientific notation, in the terminal table and in Markdown alike.

use laquant::batch::quality::{LangQuality, Quality};
use laquant::batch::summary::{EvalInfo, EvalStatus, Row, RowEval, Status, Summary};
use laquant::eval::report::RefLang;
use laquant::eval::{EvalReport, FileReport, LangReport};

const HUGE: f64 = 2.5e27;
const NORMAL: f64 = 12.3456;
const TINY: f64 = 1.234e-5;

fn eval_report() -> EvalReport {
    let lang = LangReport {
        script: "Latin",
        tokens: 100,
        ppl: HUGE,
        ppl_ref: NORMAL,
        kld_mean: TINY,
        kld_p99: TINY,
        kld_max: TINY,
        top1: 0.5,
        routing: None,
    };
    EvalReport {
        model: "m".into(),
        text: "t".into(),
        ctx: 64,
        chunks: None,
        reference: vec![RefLang {
            lang: "en".into(),
            script: "Latin",
            chunks: 1,
            tokens: 100,
            ppl: NORMAL,
        }],
        files: vec![FileReport {
            file: "m-Q2_K.gguf".into(),
            bytes: 1_000_000,
            bpw: 2.5,
            languages: [("en".to_string(), lang)].into_iter().collect(),
            kld_mean: TINY,
            worst_language: "en".into(),
            worst_kld: TINY,
            best_language: "en".into(),
            best_kld: TINY,
            kld_disparity: Some(1.0),
            non_en_over_en: None,
            top1_mean: 0.5,
            routing_same_mean: None,
        }],
        seconds: 1.0,
    }
}

fn summary() -> Summary {
    let lang = LangQuality {
        tokens: 100,
        ppl: HUGE,
        ppl_ref: NORMAL,
        kld_mean: TINY,
        kld_p99: TINY,
        top1: 0.5,
    };
    let quality = Quality {
        kld_mean: TINY,
        worst_language: "en".into(),
        worst_kld: TINY,
        kld_disparity: Some(1.0),
        non_en_over_en: None,
        top1_mean: 0.5,
        languages: [("en".to_string(), lang)].into_iter().collect(),
    };
    Summary {
        manifest: "zoo.toml".into(),
        output: "out".into(),
        shard: None,
        jobs: 1,
        threads: 1,
        wall_seconds: 1.0,
        done: 1,
        skipped: 0,
        failed: 0,
        todo: 0,
        calibrations: vec![],
        eval: Some(EvalInfo {
            text: "t".into(),
            languages: vec![],
            ctx: 64,
            chunks: None,
        }),
        eval_failed: 0,
        eval_models: Default::default(),
        evaluations: vec![],
        rows: vec![Row {
            model: "m".into(),
            source: "dir".into(),
            ty: "Q2_K".into(),
            output: "m/m-Q2_K.gguf".into(),
            status: Status::Done,
            bytes: Some(1_000_000),
            bits_per_weight: Some(2.5),
            seconds: Some(1.0),
            error: None,
            notes: vec![],
            modelfile: None,
            template: None,
            eval: Some(RowEval {
                status: EvalStatus::Done,
                error: None,
                quality: Some(quality),
            }),
        }],
    }
}

#[test]
fn eval_tables_format_huge_normal_and_tiny_numbers() {
    let r = eval_report();
    for out in [r.to_text(), r.to_markdown()] {
        assert!(out.contains("2.500e27"), "{out}");
        assert!(out.contains("12.35"), "{out}");
        assert!(out.contains("1.23e-5"), "{out}");
        assert!(!out.contains("2500000000000000000000000000"), "{out}");
    }
}

#[test]
fn batch_summaries_format_huge_normal_and_tiny_numbers() {
    let s = summary();
    let text = s.to_text();
    assert!(text.contains("1.23e-5 en 1.23e-5"), "{text}");
    let md = s.to_markdown();
    assert!(md.contains("| en | 12.35 | 2.500e27 | 1.23e-5 |"), "{md}");
    assert!(!md.contains("2500000000000000000000000000"), "{md}");
}
