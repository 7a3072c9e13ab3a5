//! Structured output with the real SmolLM2-135M-Instruct model: every JSON schema of the set,
//! greedy and sampled, gives output that parses and validates (checked by the `jsonschema`
//! crate, an implementation independent of llguidance); `json_object`; Lark grammars; and
//! clear errors for invalid schemas and grammars.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::OnceLock;

use flashstream_formats::gguf::GgufModel;
use flashstream_runtime::chat::{ChatTemplate, Message};
use flashstream_runtime::generate::{generate_constrained, GenerateOptions, StopReason};
use flashstream_runtime::model::{Model, ModelOptions};
use flashstream_runtime::sampler::SamplerConfig;
use flashstream_runtime::tokenizer::Tokenizer;
use flashstream_scheduler::ResidentSource;
use flashstream_structured::{Constraint, Grammar, MaskStats, StructuredError, StructuredVocab};
use serde_json::{json, Value};

const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

struct Fixture {
    model: Model,
    tok: Tokenizer,
    vocab: StructuredVocab,
    template: ChatTemplate,
}

/// The model, loaded once for all tests; `None` (skip) when absent, a panic under `CI=true`.
fn fixture() -> Option<&'static Fixture> {
    static F: OnceLock<Option<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::var_os("FLASHSTREAM_MODELS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"));
        let path = dir.join(SMOL);
        if !path.exists() {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{} is missing (run tools/fetch-models.sh)", path.display());
            }
            eprintln!("skipped: {SMOL} is absent from models/ (run tools/fetch-models.sh)");
            return None;
        }
        let gguf = GgufModel::open(&path).unwrap();
        let tok = Tokenizer::from_metadata(&gguf.metadata).unwrap();
        let source = ResidentSource::load(&gguf).unwrap();
        let opts = ModelOptions {
            threads: 2,
            max_batch: 256,
            ..ModelOptions::default()
        };
        let model = Model::new(&gguf, Box::new(source), &opts).unwrap();
        let vocab = StructuredVocab::new(&tok).unwrap();
        let template = ChatTemplate::new(
            gguf.metadata
                .get("tokenizer.chat_template")
                .and_then(|v| v.as_str()),
            "llama",
            "",
            "",
        );
        Some(Fixture {
            model,
            tok,
            vocab,
            template,
        })
    })
    .as_ref()
}

struct Run {
    text: String,
    stop: StopReason,
    tokens: usize,
    stats: MaskStats,
    decode_s: f64,
}

/// Generates an answer to `question` (as a chat turn) under `grammar`.
fn run(f: &Fixture, question: &str, grammar: &Grammar, sampler: SamplerConfig, max: usize) -> Run {
    let rendered = f
        .template
        .render(&[Message::new("user", question)], true)
        .unwrap();
    let prompt = f.tok.encode(&rendered, true, true).unwrap();
    let mut session = f.model.session(prompt.len() + max + 1).unwrap();
    let mut constraint = Constraint::new(&f.vocab, grammar).unwrap();
    let opts = GenerateOptions {
        max_tokens: max,
        sampler,
        ..GenerateOptions::default()
    };
    let mut streamed = String::new();
    let out = generate_constrained(
        &mut session,
        &f.tok,
        &prompt,
        &opts,
        Some(&mut constraint),
        |ev| {
            streamed.push_str(ev.text);
            ControlFlow::Continue(())
        },
    )
    .unwrap();
    assert_eq!(streamed, out.text);
    if out.stop_reason == StopReason::EndOfGeneration {
        assert!(constraint.is_finished(), "{:?}", out.text);
    }
    Run {
        text: out.text,
        stop: out.stop_reason,
        tokens: out.tokens.len(),
        stats: constraint.stats(),
        decode_s: out.stats.decode_s,
    }
}

/// The test set: (question, schema). Nested objects, arrays, enums, numbers with bounds,
/// required and optional properties, `additionalProperties: false`, patterns, lengths,
/// `const`, `anyOf`, `$ref`, tuples.
fn schemas() -> Vec<(&'static str, Value)> {
    vec![
        (
            "Give a person's name, age and email as JSON.",
            json!({
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 30},
                    "age": {"type": "integer", "minimum": 0, "maximum": 120},
                    "email": {"type": "string", "maxLength": 40}
                },
                "required": ["name", "age"],
                "additionalProperties": false
            }),
        ),
        (
            "Describe a user account as JSON.",
            json!({
                "type": "object",
                "properties": {
                    "user": {
                        "type": "object",
                        "properties": {
                            "id": {"type": "integer"},
                            "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3}
                        },
                        "required": ["id", "tags"],
                        "additionalProperties": false
                    },
                    "active": {"type": "boolean"}
                },
                "required": ["user", "active"],
                "additionalProperties": false
            }),
        ),
        (
            "Pick a t-shirt color and size.",
            json!({
                "type": "object",
                "properties": {
                    "color": {"enum": ["red", "green", "blue"]},
                    "size": {"type": "string", "enum": ["S", "M", "L", "XL"]}
                },
                "required": ["color", "size"],
                "additionalProperties": false
            }),
        ),
        (
            "Report today's weather in Paris as JSON.",
            json!({
                "type": "object",
                "properties": {
                    "temperature": {"type": "number", "minimum": -50, "maximum": 60},
                    "humidity": {"type": "integer", "minimum": 0, "maximum": 100},
                    "wind_kmh": {"type": "number", "exclusiveMinimum": 0}
                },
                "required": ["temperature", "humidity", "wind_kmh"],
                "additionalProperties": false
            }),
        ),
        (
            "List two big cities with their population.",
            json!({
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string", "maxLength": 20},
                        "population": {"type": "integer", "minimum": 0}
                    },
                    "required": ["city", "population"],
                    "additionalProperties": false
                },
                "minItems": 1,
                "maxItems": 3
            }),
        ),
        (
            "Describe a movie as JSON.",
            json!({
                "type": "object",
                "properties": {
                    "title": {"type": "string", "maxLength": 40},
                    "year": {"type": "integer", "minimum": 1888, "maximum": 2030},
                    "rating": {"type": "number", "minimum": 0, "maximum": 10}
                },
                "required": ["title"],
                "additionalProperties": false
            }),
        ),
        (
            "Give a date and a product code.",
            json!({
                "type": "object",
                "properties": {
                    "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
                    "code": {"type": "string", "pattern": "^[A-Z]{3}[0-9]{2}$"}
                },
                "required": ["date", "code"],
                "additionalProperties": false
            }),
        ),
        (
            "Answer with a status record.",
            json!({
                "type": "object",
                "properties": {
                    "version": {"const": 2},
                    "ok": {"type": "boolean"},
                    "error": {"type": "null"}
                },
                "required": ["version", "ok", "error"],
                "additionalProperties": false
            }),
        ),
        (
            "What is the answer to everything?",
            json!({
                "type": "object",
                "properties": {
                    "value": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 10}]}
                },
                "required": ["value"],
                "additionalProperties": false
            }),
        ),
        (
            "Give a line segment from (0,0) to (3,4).",
            json!({
                "$defs": {
                    "point": {
                        "type": "object",
                        "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
                        "required": ["x", "y"],
                        "additionalProperties": false
                    }
                },
                "type": "object",
                "properties": {"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}},
                "required": ["start", "end"],
                "additionalProperties": false
            }),
        ),
        (
            "Give one word of three to eight letters.",
            json!({
                "type": "object",
                "properties": {"word": {"type": "string", "pattern": "^[a-z]+$", "minLength": 3, "maxLength": 8}},
                "required": ["word"]
            }),
        ),
        (
            "Give a name and an age as a pair.",
            json!({
                "type": "array",
                "prefixItems": [{"type": "string", "maxLength": 20}, {"type": "integer", "minimum": 0}],
                "items": false,
                "minItems": 2
            }),
        ),
    ]
}

fn check_schema_set(sampler: impl Fn(usize) -> SamplerConfig, label: &str) {
    let Some(f) = fixture() else { return };
    let mut total = MaskStats::default();
    let (mut tokens, mut decode_s) = (0, 0.0);
    for (i, (question, schema)) in schemas().iter().enumerate() {
        let validator = jsonschema::validator_for(schema).unwrap();
        let r = run(f, question, &Grammar::json_schema(schema), sampler(i), 256);
        assert_eq!(
            r.stop,
            StopReason::EndOfGeneration,
            "{label} schema {i}: did not finish in 256 tokens: {:?}",
            r.text
        );
        let v: Value = serde_json::from_str(&r.text)
            .unwrap_or_else(|e| panic!("{label} schema {i}: {e}: {:?}", r.text));
        let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "{label} schema {i}: {v} does not fit: {errors:?}"
        );
        eprintln!("{label} schema {i}: {} tokens: {}", r.tokens, r.text);
        total.masks += r.stats.masks;
        total.mask_s += r.stats.mask_s;
        total.max_mask_s = total.max_mask_s.max(r.stats.max_mask_s);
        total.commits += r.stats.commits;
        total.commit_s += r.stats.commit_s;
        tokens += r.tokens.saturating_sub(1);
        decode_s += r.decode_s;
    }
    // Figures only (no timing threshold): the grammar's share of a decode step.
    eprintln!(
        "{label}: mask {:.3} ms/token (max {:.3} ms), commit {:.3} ms/token, decode step {:.3} ms/token (mask included)",
        total.mask_ms_per_token(),
        total.max_mask_s * 1e3,
        total.commit_ms_per_token(),
        decode_s * 1e3 / tokens.max(1) as f64
    );
}

#[test]
fn json_schemas_greedy() {
    check_schema_set(|_| SamplerConfig::greedy(), "greedy");
}

/// Sampling at temperature 1 with the default truncation (top-k, top-p, min-p as llama.cpp's
/// defaults): with none at all, a 135M model wanders into numbers of hundreds of digits, which
/// the grammar allows.
#[test]
fn json_schemas_sampled() {
    check_schema_set(
        |i| SamplerConfig {
            temperature: 1.0,
            seed: 1000 + i as u64,
            ..SamplerConfig::default()
        },
        "sampled",
    );
}

#[test]
fn json_object_gives_an_object() {
    let Some(f) = fixture() else { return };
    for (seed, sampler) in [
        (0, SamplerConfig::greedy()),
        (
            1,
            SamplerConfig {
                temperature: 0.9,
                seed: 7,
                ..SamplerConfig::default()
            },
        ),
    ] {
        let r = run(
            f,
            "Describe your favourite book in JSON with a few short fields.",
            &Grammar::json_object(),
            sampler,
            256,
        );
        assert_eq!(r.stop, StopReason::EndOfGeneration, "{seed}: {:?}", r.text);
        let v: Value =
            serde_json::from_str(&r.text).unwrap_or_else(|e| panic!("{e}: {:?}", r.text));
        assert!(v.is_object(), "{v}");
    }
    let rf = json!({"type": "json_schema", "json_schema": {"name": "n", "strict": true,
        "schema": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}});
    let g = Grammar::from_response_format(&rf).unwrap().unwrap();
    let r = run(f, "Give a number.", &g, SamplerConfig::greedy(), 40);
    let v: Value = serde_json::from_str(&r.text).unwrap();
    assert!(v["n"].is_i64(), "{v}");
}

#[test]
fn lark_grammars() {
    let Some(f) = fixture() else { return };
    let g = Grammar::lark(
        r#"
start: "The answer is " answer "."
answer: "yes" | "no" | NUMBER
NUMBER: /[1-9][0-9]{0,2}/
"#,
    );
    for sampler in [
        SamplerConfig::greedy(),
        SamplerConfig {
            temperature: 1.0,
            seed: 3,
            ..SamplerConfig::default()
        },
    ] {
        let r = run(f, "Is the sky blue?", &g, sampler, 20);
        assert_eq!(r.stop, StopReason::EndOfGeneration, "{:?}", r.text);
        let answer = r
            .text
            .strip_prefix("The answer is ")
            .and_then(|t| t.strip_suffix('.'))
            .unwrap_or_else(|| panic!("{:?}", r.text));
        assert!(
            answer == "yes"
                || answer == "no"
                || (answer.len() <= 3
                    && !answer.starts_with('0')
                    && answer.bytes().all(|b| b.is_ascii_digit())),
            "{:?}",
            r.text
        );
    }
    // A grammar embedding a JSON schema, ending on the model's own end-of-turn token.
    let g = Grammar::lark(
        r#"
start: "Result: " obj <|im_end|>
obj: %json {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["n"], "additionalProperties": false}
"#,
    );
    let r = run(f, "Give a digit.", &g, SamplerConfig::greedy(), 30);
    assert_eq!(r.stop, StopReason::EndOfGeneration, "{:?}", r.text);
    let obj = r.text.strip_prefix("Result: ").unwrap();
    let v: Value = serde_json::from_str(obj).unwrap_or_else(|e| panic!("{e}: {:?}", r.text));
    assert!((0..=9).contains(&v["n"].as_i64().unwrap()), "{v}");
}

#[test]
fn invalid_schemas_and_grammars_are_named() {
    let Some(f) = fixture() else { return };
    let schema_err = |s: Value| match Constraint::new(&f.vocab, &Grammar::json_schema(&s)) {
        Err(e @ StructuredError::InvalidSchema { .. }) => {
            eprintln!("{e}");
            e.to_string()
        }
        other => panic!("{s}: {other:?}"),
    };
    let e = schema_err(json!({"type": "strnig"}));
    assert!(e.contains("strnig"), "{e}");
    let e = schema_err(
        json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "(ab"}}}),
    );
    assert!(
        e.contains("(ab") || e.contains("pattern") || e.contains("regex"),
        "{e}"
    );
    let e = schema_err(json!({"type": "integer", "minimum": 5, "maximum": 2}));
    assert!(
        e.to_lowercase().contains("unsatisfiable") || e.contains("minimum"),
        "{e}"
    );
    let e = schema_err(json!({"$ref": "#/$defs/missing"}));
    assert!(e.contains("missing"), "{e}");
    let e = schema_err(json!(["not", "a", "schema"]));
    assert!(e.contains("not an array"), "{e}");
    match Constraint::new(&f.vocab, &Grammar::lark("start: greeting\n")) {
        Err(e @ StructuredError::InvalidGrammar { .. }) => {
            eprintln!("{e}");
            assert!(e.to_string().contains("greeting"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    match Constraint::new(&f.vocab, &Grammar::lark("start: (\"a\" \n")) {
        Err(e @ StructuredError::InvalidGrammar { .. }) => eprintln!("{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn mask_commit_and_finish() {
    let Some(f) = fixture() else { return };
    let g = Grammar::json_schema(&json!({"enum": ["yes", "no"]}));
    let mut c = Constraint::new(&f.vocab, &g).unwrap();
    let allowed = c.allowed_tokens().unwrap();
    let quote = f.tok.encode("\"", false, false).unwrap();
    assert_eq!(quote.len(), 1);
    assert!(allowed.is_allowed(quote[0]));
    let brace = f.tok.encode("{", false, false).unwrap()[0];
    assert!(!allowed.is_allowed(brace));
    for &e in f.vocab.eos_tokens() {
        assert!(
            !allowed.is_allowed(e),
            "EOS allowed before the output is complete"
        );
    }
    // Masking turns exactly the disallowed tokens (and the padding past the vocabulary) to -inf.
    let mut logits = vec![0.5f32; f.vocab.n_vocab() + 7];
    allowed.apply(&mut logits);
    let finite: Vec<u32> = (0..logits.len() as u32)
        .filter(|&i| logits[i as usize].is_finite())
        .collect();
    assert_eq!(finite, allowed.to_vec());
    assert_eq!(finite.len(), allowed.count());
    // A token the mask forbids is rejected, naming it.
    let mut bad = Constraint::new(&f.vocab, &g).unwrap();
    match bad.commit(brace) {
        Err(StructuredError::Rejected { token, .. }) => assert_eq!(token, brace),
        other => panic!("{other:?}"),
    }
    // Walk `"yes"` token by token: then only end-of-generation tokens remain.
    for t in f.tok.encode("\"yes\"", false, false).unwrap() {
        assert!(!c.is_finished());
        c.commit(t).unwrap();
        let _ = c.allowed_tokens().unwrap();
    }
    assert!(c.is_accepting());
    let mut logits = vec![0.0f32; f.vocab.n_vocab()];
    if !c.is_finished() {
        c.mask(&mut logits).unwrap();
        let finite: Vec<u32> = (0..logits.len() as u32)
            .filter(|&i| logits[i as usize].is_finite())
            .collect();
        assert!(!finite.is_empty());
        assert!(
            finite.iter().all(|t| f.vocab.eos_tokens().contains(t)),
            "{finite:?}"
        );
        c.commit(finite[0]).unwrap();
    }
    assert!(c.is_finished());
    assert!(c.stats().masks >= 4 && c.stats().commits >= 3);
}

#[test]
fn vocabulary_marks_special_tokens() {
    let Some(f) = fixture() else { return };
    let im_end = f.tok.token_id("<|im_end|>").unwrap();
    assert!(f.vocab.eos_tokens().contains(&im_end));
    assert!(f.vocab.eos_tokens().contains(&f.tok.eos().unwrap()));
    assert_eq!(f.vocab.n_vocab(), f.tok.n_vocab());
    // A special token's text never comes out as text: JSON strings may not contain
    // `<|im_start|>` by its token, only spelled out piece by piece.
    let mut c =
        Constraint::new(&f.vocab, &Grammar::json_schema(&json!({"type": "string"}))).unwrap();
    c.commit(f.tok.encode("\"", false, false).unwrap()[0])
        .unwrap();
    let allowed = c.allowed_tokens().unwrap();
    let im_start = f.tok.token_id("<|im_start|>").unwrap();
    assert!(!allowed.is_allowed(im_start));
    assert!(
        allowed.count() > f.vocab.n_vocab() / 2,
        "{}",
        allowed.count()
    );
}

#[test]
fn constraint_is_send() {
    fn send<T: Send>() {}
    send::<Constraint>();
    send::<StructuredVocab>();
    fn sync<T: Sync>() {}
    sync::<StructuredVocab>();
}

/// A server's per-sequence loop (`SequenceGen::step_constrained`, one logit vector at a time)
/// gives exactly what `generate_constrained` gives, greedy and sampled, and ends where the
/// grammar completes.
#[test]
fn sequence_gen_steps_like_generate_constrained() {
    use flashstream_runtime::model::LogitsWanted;
    use flashstream_runtime::sequence::SequenceGen;
    let Some(f) = fixture() else { return };
    let schemas = schemas();
    for (i, sampler) in [
        SamplerConfig::greedy(),
        SamplerConfig {
            temperature: 0.9,
            seed: 11,
            frequency_penalty: 0.3,
            presence_penalty: 0.2,
            ..SamplerConfig::default()
        },
    ]
    .into_iter()
    .enumerate()
    {
        let (question, schema) = &schemas[i];
        let grammar = Grammar::json_schema(schema);
        let max = 120;
        let whole = run(f, question, &grammar, sampler.clone(), max);
        let rendered = f
            .template
            .render(&[Message::new("user", question)], true)
            .unwrap();
        let prompt = f.tok.encode(&rendered, true, true).unwrap();
        let mut session = f.model.session(prompt.len() + max + 1).unwrap();
        let mut constraint = Constraint::new(&f.vocab, &grammar).unwrap();
        let opts = GenerateOptions {
            max_tokens: max,
            sampler,
            ..GenerateOptions::default()
        };
        let mut gen = SequenceGen::new(&f.tok, &prompt, &opts).unwrap();
        let mut logits = session.eval(&prompt, LogitsWanted::Last).unwrap();
        let mut text = String::new();
        let stop = loop {
            let room = session.pos() < session.n_ctx();
            let step = gen
                .step_constrained(&mut logits, room, &mut constraint)
                .unwrap();
            text.push_str(&step.text);
            if let Some(r) = step.finished {
                break r;
            }
            logits = session.eval(&[step.token], LogitsWanted::Last).unwrap();
        };
        assert_eq!((text.as_str(), stop), (whole.text.as_str(), whole.stop));
        assert_eq!(gen.tokens().len(), whole.tokens);
        assert_eq!(stop, StopReason::EndOfGeneration, "{text}");
        assert!(constraint.is_finished());
        let value: Value = serde_json::from_str(&text).unwrap();
        assert!(jsonschema::is_valid(schema, &value), "{text}");
    }
}
