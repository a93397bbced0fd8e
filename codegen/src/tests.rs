//! Structural tests of the emitted source. Numerical correctness is tested where the code
//! is compiled: `generated`'s tests run every kernel against an f64 reference.

use model_config::{preset, ModelConfig, WeightFormat};
use proc_macro2::{Delimiter, TokenStream, TokenTree};
use quote::ToTokens;

use crate::generate;

const SIMD_MODULES: [&str; 3] = ["avx2", "avx512", "neon"];

/// `text` without whitespace, so checks do not depend on where prettyplease breaks lines.
fn flat(text: &str) -> String {
    text.split_whitespace().collect()
}

/// Asserts that `text` contains `needle`, ignoring whitespace.
#[track_caller]
fn assert_has(text: &str, needle: &str) {
    assert!(
        flat(text).contains(&flat(needle)),
        "generated code lacks `{needle}`"
    );
}

/// A config whose dimensions leave a remainder modulo 16, 8 and 4 (54 and 103 columns).
fn odd() -> ModelConfig {
    let cfg = ModelConfig {
        name: "odd".into(),
        dim: 54,
        hidden_dim: 103,
        n_layers: 1,
        n_heads: 9,
        n_kv_heads: 3,
        vocab_size: 97,
        seq_len: 8,
        shared_classifier: false,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        rope_freq_scale: 1.0,
        rope_freq_factors: None,
        weight_format: WeightFormat::F32,
    };
    cfg.validate().unwrap();
    cfg
}

fn configs() -> Vec<ModelConfig> {
    let mut all: Vec<ModelConfig> = model_config::PRESETS
        .iter()
        .map(|(name, _)| preset(name).unwrap())
        .collect();
    all.push(odd());
    all
}

/// The functions of submodule `module` of the generated file.
fn functions(file: &syn::File, module: &str) -> Vec<syn::ItemFn> {
    let items = file
        .items
        .iter()
        .find_map(|item| match item {
            syn::Item::Mod(m) if m.ident == module => m.content.as_ref().map(|(_, items)| items),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no module {module}"));
    items
        .iter()
        .filter_map(|item| match item {
            syn::Item::Fn(f) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

/// Every loop in `tokens`: the keyword and, for `for`, the header up to its body, without
/// whitespace (`for t in 0..tiles` becomes `fortin0..tiles`).
fn loops(tokens: TokenStream, found: &mut Vec<String>) {
    let mut iter = tokens.into_iter().peekable();
    while let Some(tree) = iter.next() {
        match tree {
            TokenTree::Ident(id) if id == "for" => {
                let mut header = String::from("for");
                while let Some(next) = iter.peek() {
                    if matches!(next, TokenTree::Group(g) if g.delimiter() == Delimiter::Brace) {
                        break;
                    }
                    header.push(' ');
                    header.push_str(&iter.next().unwrap().to_string());
                }
                found.push(header.split_whitespace().collect());
            }
            TokenTree::Ident(id) if id == "while" || id == "loop" => found.push(id.to_string()),
            TokenTree::Group(g) => loops(g.stream(), found),
            _ => {}
        }
    }
}

/// How many non-zero float literals `tokens` holds.
fn nonzero_float_literals(tokens: TokenStream) -> usize {
    tokens
        .into_iter()
        .map(|tree| match tree {
            TokenTree::Literal(lit) => usize::from(
                syn::parse_str::<syn::LitFloat>(&lit.to_string())
                    .is_ok_and(|f| f.base10_parse::<f64>().unwrap() != 0.0),
            ),
            TokenTree::Group(g) => nonzero_float_literals(g.stream()),
            _ => 0,
        })
        .sum()
}

#[test]
fn simd_kernels_loop_only_over_rows_tokens_and_literal_chunks() {
    for cfg in configs() {
        let file = syn::parse_file(&generate(&cfg)).unwrap();
        for module in SIMD_MODULES {
            let (mut bodies, mut batched) = (0, 0);
            for f in functions(&file, module) {
                let name = f.sig.ident.to_string();
                let mut found = Vec::new();
                loops(f.block.to_token_stream(), &mut found);
                if name.starts_with("gemv_x") {
                    bodies += 1;
                    // Exactly the tile loop and the leftover-row loop, both bounded by rows.
                    assert_eq!(
                        found,
                        ["fortin0..tiles", "forrintiles*8..rows"],
                        "{}::{module}::{name}",
                        cfg.name
                    );
                } else if name.starts_with("gemm_x") {
                    batched += 1;
                    // Row tiles, token tiles and the leftovers of each: rows and tokens only.
                    assert!(
                        found.iter().all(|l| l.ends_with("row_tiles")
                            || l.ends_with("token_tiles")
                            || l.ends_with("..tokens")
                            || l.ends_with("..rows")),
                        "{}::{module}::{name} loops: {found:?}",
                        cfg.name
                    );
                } else if name.starts_with("tile") {
                    // At most one loop, over chunks, with a literal trip count.
                    assert!(
                        found.len() <= 1,
                        "{}::{module}::{name}: {found:?}",
                        cfg.name
                    );
                    for l in &found {
                        let range = l
                            .strip_prefix("forkin")
                            .unwrap_or_else(|| panic!("{}::{module}::{name} loops: {l}", cfg.name));
                        let (a, b) = range.split_once("..").unwrap();
                        assert!(
                            a.parse::<usize>().is_ok() && b.parse::<usize>().is_ok(),
                            "{}::{module}::{name}: {l}",
                            cfg.name
                        );
                    }
                } else {
                    assert!(
                        found.is_empty(),
                        "{}::{module}::{name} loops: {found:?}",
                        cfg.name
                    );
                }
            }
            let distinct_cols = crate::shapes::distinct_cols(&crate::shapes::shapes(&cfg)).len();
            assert_eq!(bodies, distinct_cols, "{}::{module}", cfg.name);
            assert_eq!(batched, distinct_cols, "{}::{module}", cfg.name);
        }
    }
}

#[test]
fn every_load_uses_a_literal_offset() {
    let text = generate(&preset("stories110m").unwrap());
    // Last full chunks of a 768-wide row for each lane width.
    assert_has(&text, "_mm512_loadu_ps(xp.add(752))");
    assert_has(&text, "_mm256_loadu_ps(xp.add(760))");
    assert_has(&text, "vld1q_f32(xp.add(764))");
    assert_has(&text, "vld1q_f32(w3.add(2044))");
    // Nothing reads past the row: 768 and 2048 are multiples of 16, so no tail code.
    assert!(!text.contains("tail_mask"));
    let file = syn::parse_file(&text).unwrap();
    for module in SIMD_MODULES {
        let gemv = functions(&file, module)
            .into_iter()
            .find(|f| f.sig.ident == "gemv_x2048")
            .expect("the 2048-column GEMV body");
        assert!(!flat(&gemv.block.to_token_stream().to_string()).contains("xp.add(2048)"));
    }
}

#[test]
fn remainders_are_literal_masks_and_partial_loads() {
    let text = generate(&odd());
    // 54 = 3·16 + 6 and 103 = 6·16 + 7 columns.
    assert_has(&text, "let tail_mask: __mmask16 = 0b0000_0000_0011_1111;");
    assert_has(&text, "let tail_mask: __mmask16 = 0b0000_0000_0111_1111;");
    assert_has(&text, "_mm512_maskz_loadu_ps(tail_mask, xp.add(48))");
    // 54 = 6·8 + 6 and 103 = 12·8 + 7.
    assert_has(
        &text,
        "let tail_mask = _mm256_setr_epi32(-1, -1, -1, -1, -1, -1, 0, 0);",
    );
    assert_has(
        &text,
        "let tail_mask = _mm256_setr_epi32(-1, -1, -1, -1, -1, -1, -1, 0);",
    );
    // 54 = 13·4 + 2 and 103 = 25·4 + 3.
    assert_has(&text, "vcombine_f32(vld1_f32(xp.add(52)), vdup_n_f32(0.0))");
    assert_has(
        &text,
        "vld1q_lane_f32(xp.add(102), vcombine_f32(vld1_f32(xp.add(100)), vdup_n_f32(0.0)), 2,)",
    );
    // RMSNorm over 54 values stores exactly the last 6 (AVX-512) / 2 (NEON).
    assert_has(&text, "_mm512_mask_storeu_ps(op.add(48), tail_mask");
    assert_has(&text, "vst1_f32(op.add(52), vget_low_f32(");
}

#[test]
fn shapes_are_deduplicated() {
    let cfg = preset("stories110m").unwrap();
    let text = generate(&cfg);
    assert_has(&text, "pub const GEMV_SHAPES: &[(usize, usize)] = &[(768, 768), (768, 2048), (2048, 768), (32000, 768),];");
    let file = syn::parse_file(&text).unwrap();
    for module in SIMD_MODULES.into_iter().chain(["portable"]) {
        let names: Vec<String> = functions(&file, module)
            .iter()
            .map(|f| f.sig.ident.to_string())
            .collect();
        for shape in ["768x768", "768x2048", "2048x768", "32000x768"] {
            let n = names
                .iter()
                .filter(|n| **n == format!("gemv_{shape}"))
                .count();
            assert_eq!(n, 1, "{module}: gemv_{shape}");
        }
        if module != "portable" {
            // 768x768, 2048x768 and 32000x768 share one 768-column body.
            let mut bodies: Vec<&String> =
                names.iter().filter(|n| n.starts_with("gemv_x")).collect();
            bodies.sort();
            assert_eq!(bodies, ["gemv_x2048", "gemv_x768"], "{module}");
        }
    }
    assert_eq!(text.matches("impl Gemv<768, 768> for Kernels").count(), 1);
    // wq/wo and wk/wv coincide when there are as many kv heads as heads.
    assert_has(&text, "768×768 (wq, wk, wv, wo)");
}

#[test]
fn module_has_the_promised_interface() {
    for cfg in configs() {
        let text = generate(&cfg);
        let file = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", cfg.name));
        let top: Vec<String> = file
            .items
            .iter()
            .filter_map(|item| match item {
                syn::Item::Const(c) => Some(c.ident.to_string()),
                syn::Item::Mod(m) => Some(m.ident.to_string()),
                syn::Item::Struct(s) => Some(s.ident.to_string()),
                syn::Item::Trait(t) => Some(t.ident.to_string()),
                _ => None,
            })
            .collect();
        for name in [
            "MODEL_NAME",
            "DIM",
            "HIDDEN_DIM",
            "N_LAYERS",
            "N_HEADS",
            "N_KV_HEADS",
            "VOCAB_SIZE",
            "SEQ_LEN",
            "HEAD_DIM",
            "KV_DIM",
            "SHARED_CLASSIFIER",
            "ROPE_THETA",
            "NORM_EPS",
            "CONFIG_TOML",
            "GEMV_SHAPES",
            "portable",
            "avx2",
            "avx512",
            "neon",
            "Kernels",
            "Gemv",
            "RmsNorm",
        ] {
            assert!(
                top.iter().any(|t| t == name),
                "{}: {name} missing",
                cfg.name
            );
        }
        assert!(text.starts_with(&format!(
            "// @generated by the `codegen` crate from model config `{}`",
            cfg.name
        )));
        assert_has(&text, "#[target_feature(enable = \"avx512f\")]");
        assert_has(&text, "#[target_feature(enable = \"avx2,fma\")]");
        assert_has(&text, "#[target_feature(enable = \"neon\")]");
        // The TOML in the module reads back as the same config.
        let toml = text
            .split("pub const CONFIG_TOML: &str = r#\"")
            .nth(1)
            .and_then(|rest| rest.split("\"#;").next())
            .unwrap();
        assert_eq!(ModelConfig::from_toml_str(toml).unwrap(), cfg);
        // Weights are never emitted: besides 0.0 (padding) only ROPE_THETA, NORM_EPS,
        // ROPE_FREQ_SCALE and each ISA's RMSNorm 1, n and eps appear, whatever the model's size.
        let floats = nonzero_float_literals(file.to_token_stream());
        assert_eq!(floats, 3 + 4 * 3, "{}: float literals", cfg.name);
    }
}

#[test]
fn generation_is_deterministic() {
    let cfg = preset("stories15m").unwrap();
    assert_eq!(generate(&cfg), generate(&cfg));
}

/// Not a check: prints the sizes quoted in reports (`cargo test -p codegen -- --nocapture sizes`).
#[test]
fn sizes() {
    for cfg in configs() {
        let text = generate(&cfg);
        println!(
            "{}: {} lines, {} bytes",
            cfg.name,
            text.lines().count(),
            text.len()
        );
    }
}
