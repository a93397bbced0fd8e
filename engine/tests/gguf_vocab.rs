//! GGUF tokenizers against llama.cpp's own test vectors (`../shared/gguf/vocab`: each
//! `.inp` text with the ids llama.cpp's tokenizer gives it in `.out`), plus the behaviour
//! around them: special tokens, BOS/EOS, end-of-generation ids, decoding, bad metadata.

use std::path::Path;

use engine::fixtures::fixture;
use engine::format::gguf::Gguf;
use engine::text::gguf_tokenizer::{GgufTokenizer, GgufTokenizerError, Kind};
use engine::text::pretokenize::Pre;

/// Texts with llama.cpp's ids for them.
type Cases = Vec<(String, Vec<u32>)>;

fn load(name: &str) -> Option<(GgufTokenizer, Cases)> {
    let path = fixture(&format!("gguf/vocab/ggml-vocab-{name}.gguf"))?;
    let bytes = std::fs::read(&path).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let tok = GgufTokenizer::from_gguf(&g).unwrap();
    Some((tok, cases(&path)))
}

/// The texts and llama.cpp's ids, split as llama.cpp's test-tokenizer-0 splits them.
fn cases(vocab: &Path) -> Cases {
    let inp = std::fs::read_to_string(vocab.with_extension("gguf.inp")).unwrap();
    let out = std::fs::read_to_string(vocab.with_extension("gguf.out")).unwrap();
    let texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    let ids: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    assert!(ids.len() >= 40, "{} cases", ids.len());
    assert!(texts.len() >= ids.len());
    texts[..ids.len()]
        .iter()
        .map(|t| t.to_string())
        .zip(ids)
        .collect()
}

fn check_vectors(name: &str) {
    let Some((tok, cases)) = load(name) else {
        return;
    };
    let mut failed = Vec::new();
    for (text, want) in &cases {
        let got = tok.encode(text, false, false);
        if &got != want {
            failed.push(format!("{text:?}\n   want {want:?}\n   got  {got:?}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{name}: {} of {} cases differ from llama.cpp:\n{}",
        failed.len(),
        cases.len(),
        failed.join("\n")
    );
}

#[test]
fn llama_spm_matches_llama_cpp_on_every_vector() {
    check_vectors("llama-spm");
}

#[test]
fn llama_bpe_matches_llama_cpp_on_every_vector() {
    check_vectors("llama-bpe");
}

#[test]
fn gpt2_matches_llama_cpp_on_every_vector() {
    check_vectors("gpt-2");
}

#[test]
fn pieces_give_back_the_text() {
    // Byte-level BPE loses nothing; SentencePiece adds one leading space (▁) per text.
    for name in ["llama-spm", "llama-bpe", "gpt-2"] {
        let Some((tok, cases)) = load(name) else {
            return;
        };
        for (text, _) in &cases {
            let ids = tok.encode(text, false, false);
            let joined: Vec<u8> = ids
                .iter()
                .flat_map(|&id| tok.piece(id, true).to_vec())
                .collect();
            let want = match tok.kind() {
                Kind::Spm if !text.is_empty() => format!(" {text}"),
                _ => text.clone(),
            };
            assert_eq!(
                String::from_utf8_lossy(&joined),
                want,
                "{name}: pieces of {text:?}"
            );
            // detokenize drops the space SentencePiece added.
            if tok.kind() == Kind::Spm {
                assert_eq!(
                    String::from_utf8_lossy(&tok.decode(&ids, false, true)),
                    *text
                );
            }
        }
    }
}

#[test]
fn kinds_and_defaults_are_llama_cpps() {
    let Some((spm, _)) = load("llama-spm") else {
        return;
    };
    assert_eq!(spm.kind(), Kind::Spm);
    // SentencePiece: BOS 1 added, EOS 2 ends generation.
    assert_eq!(spm.encode("Hello", true, false), [1, 15043]);
    assert!(spm.is_eog(2) && !spm.is_eog(1));
    // BOS as text is text unless special tokens are parsed.
    assert_eq!(spm.encode("<s>", false, true), [1]);
    assert_ne!(spm.encode("<s>", false, false), [1]);

    let Some((l3, _)) = load("llama-bpe") else {
        return;
    };
    assert_eq!(l3.kind(), Kind::Bpe(Pre::Llama3));
    // Llama 3: <|begin_of_text|> = 128000 added; <|end_of_text|> = 128001 (EOS) and
    // <|eot_id|> = 128009 end a generation (this is the 3.0 vocabulary: no <|eom_id|>).
    let ids = l3.encode("<|start_header_id|>user<|end_header_id|>", true, true);
    assert_eq!(ids[0], 128000);
    assert_eq!(ids[1], 128006);
    assert_eq!(*ids.last().unwrap(), 128007);
    for eog in [128001, 128009] {
        assert!(l3.is_eog(eog), "{eog}");
    }
    assert!(!l3.is_eog(128000) && !l3.is_eog(128008));
    assert_eq!(l3.eog_ids().count(), 2);
    let plain = l3.encode("<|eot_id|>", false, false);
    assert!(plain.len() > 1 && !plain.contains(&128009));
    // Control tokens print nothing in generated text but their text when asked.
    assert_eq!(l3.piece(128009, false), b"");
    assert_eq!(l3.piece(128009, true), b"<|eot_id|>");

    let Some((gpt2, _)) = load("gpt-2") else {
        return;
    };
    assert_eq!(gpt2.kind(), Kind::Bpe(Pre::Gpt2));
    // GPT-2 adds no BOS; <|endoftext|> (50256) ends generation.
    assert_eq!(
        gpt2.encode("Hello", true, false),
        gpt2.encode("Hello", false, false)
    );
    assert!(gpt2.is_eog(50256));
}

#[test]
fn streaming_pieces_join_split_characters() {
    let Some((l3, _)) = load("llama-bpe") else {
        return;
    };
    // An emoji whose bytes are spread over several tokens prints whole once they are joined.
    let text = "a 🦙 b";
    let ids = l3.encode(text, false, false);
    let mut stream = engine::text::tokenizer::Utf8Stream::new();
    let mut out = String::new();
    for &id in &ids {
        stream.push(l3.piece(id, false), &mut out);
    }
    stream.finish(&mut out);
    assert_eq!(out, text);
}

/// A minimal GGUF with only tokenizer keys.
fn vocab_gguf(kv: &[(&str, Val)]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&(kv.len() as u64).to_le_bytes());
    let s = |s: &str, b: &mut Vec<u8>| {
        b.extend_from_slice(&(s.len() as u64).to_le_bytes());
        b.extend_from_slice(s.as_bytes());
    };
    for (k, v) in kv {
        s(k, &mut b);
        match v {
            Val::Str(x) => {
                b.extend_from_slice(&8u32.to_le_bytes());
                s(x, &mut b);
            }
            Val::Strs(xs) => {
                b.extend_from_slice(&9u32.to_le_bytes());
                b.extend_from_slice(&8u32.to_le_bytes());
                b.extend_from_slice(&(xs.len() as u64).to_le_bytes());
                for x in xs {
                    s(x, &mut b);
                }
            }
            Val::F32s(xs) => {
                b.extend_from_slice(&9u32.to_le_bytes());
                b.extend_from_slice(&6u32.to_le_bytes());
                b.extend_from_slice(&(xs.len() as u64).to_le_bytes());
                for x in xs {
                    b.extend_from_slice(&x.to_le_bytes());
                }
            }
            Val::U32(x) => {
                b.extend_from_slice(&4u32.to_le_bytes());
                b.extend_from_slice(&x.to_le_bytes());
            }
        }
    }
    b
}

enum Val {
    Str(&'static str),
    Strs(Vec<&'static str>),
    F32s(Vec<f32>),
    U32(u32),
}

fn build(kv: &[(&str, Val)]) -> Result<GgufTokenizer, GgufTokenizerError> {
    let bytes = vocab_gguf(kv);
    let g = Gguf::parse(&bytes).unwrap();
    GgufTokenizer::from_gguf(&g)
}

#[test]
fn bad_tokenizer_metadata_gets_one_clear_error() {
    use Val::*;
    let tokens = || Strs(vec!["<unk>", "<s>", "</s>", "a", "b", "ab"]);
    let err = |kv: &[(&str, Val)]| build(kv).unwrap_err().to_string();

    let e = err(&[("tokenizer.ggml.tokens", tokens())]);
    assert!(e.contains("tokenizer.ggml.model"), "{e}");
    let e = err(&[
        ("tokenizer.ggml.model", Str("bert")),
        ("tokenizer.ggml.tokens", tokens()),
    ]);
    assert!(e.contains("`bert`"), "{e}");
    let e = err(&[
        ("tokenizer.ggml.model", Str("gpt2")),
        ("tokenizer.ggml.pre", Str("qwen2")),
        ("tokenizer.ggml.tokens", tokens()),
    ]);
    assert!(e.contains("`qwen2`") && e.contains("llama-bpe"), "{e}");
    let e = err(&[
        ("tokenizer.ggml.model", Str("gpt2")),
        ("tokenizer.ggml.tokens", tokens()),
    ]);
    assert!(e.contains("tokenizer.ggml.merges"), "{e}");
    let e = err(&[
        ("tokenizer.ggml.model", Str("llama")),
        ("tokenizer.ggml.tokens", tokens()),
        ("tokenizer.ggml.scores", F32s(vec![0.0; 3])),
    ]);
    assert!(e.contains("3 entries for 6 tokens"), "{e}");
    let e = err(&[
        ("tokenizer.ggml.model", Str("llama")),
        ("tokenizer.ggml.tokens", U32(3)),
    ]);
    assert!(e.contains("tokenizer.ggml.tokens"), "{e}");
    let e = err(&[
        ("tokenizer.ggml.model", Str("llama")),
        ("tokenizer.ggml.tokens", Strs(vec![])),
    ]);
    assert!(e.contains("empty"), "{e}");

    // A BOS id past the vocabulary is ignored (llama.cpp keeps the default).
    let tok = build(&[
        ("tokenizer.ggml.model", Str("llama")),
        ("tokenizer.ggml.tokens", tokens()),
        (
            "tokenizer.ggml.scores",
            F32s(vec![0.0, 0.0, 0.0, -1.0, -1.0, -0.5]),
        ),
        ("tokenizer.ggml.bos_token_id", U32(99)),
    ])
    .unwrap();
    assert_eq!(tok.bos(), Some(1));
    // No ▁ token and no byte tokens: each of the prefix ▁'s three UTF-8 bytes falls back to
    // <unk>, then "ab" merges.
    assert_eq!(tok.encode("ab", true, false), [1, 0, 0, 0, 5]);
}

/// More of llama.cpp's vectors, from its own `models/` folder when `BAREMETAL_LLAMA_CPP_VOCABS`
/// names it (scripts/peer/build-llama-cpp.sh unpacks one): every vocab file with `.inp`/`.out`
/// whose tokenizer we run (phi-3's SentencePiece; mpt's GPT-2 split; starcoder's, refact's and
/// command-r's SmolLM split) must match on every case; the others must be refused by name.
#[test]
fn llama_cpp_models_folder_vectors_when_present() {
    let Some(dir) = std::env::var_os("BAREMETAL_LLAMA_CPP_VOCABS") else {
        eprintln!("SKIPPED: set BAREMETAL_LLAMA_CPP_VOCABS to llama.cpp's models/ folder");
        return;
    };
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".gguf") || !path.with_extension("gguf.out").is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let g = Gguf::parse(&bytes).unwrap();
        let tok = match GgufTokenizer::from_gguf(&g) {
            Ok(t) => t,
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains('`'), "{name}: unclear refusal {msg}");
                eprintln!("{name}: refused: {msg}");
                continue;
            }
        };
        for (text, want) in cases(&path) {
            assert_eq!(tok.encode(&text, false, false), want, "{name}: {text:?}");
        }
        checked.push(name);
    }
    eprintln!("checked every vector of {checked:?}");
    assert!(checked.len() >= 5, "{checked:?}");
}
