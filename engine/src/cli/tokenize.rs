//! `baremetal tokenize`: text → token ids with a model's tokenizer (llama.cpp's
//! `llama-tokenize`): a GGUF model's or vocab-only file's own vocabulary, or llama2.c's
//! `tokenizer.bin`.

use std::path::PathBuf;

use clap::Args;
use engine::text::tokenizer::Tokenizer;
use engine::text::ModelTokenizer;

/// Arguments of `tokenize`.
#[derive(Args)]
pub struct TokenizeArgs {
    /// A GGUF file (a model, or a vocab-only file such as ggml-vocab-llama-bpe.gguf), or a
    /// llama2.c checkpoint (then --tokenizer names its tokenizer.bin).
    #[arg(long)]
    model: Option<PathBuf>,
    /// llama2.c's tokenizer.bin (or a GGUF whose vocabulary to use).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Leave out the BOS the vocabulary would add (llama-tokenize --no-bos).
    #[arg(long)]
    no_bos: bool,
    /// Text spelling a special token (`<|eot_id|>`, `<s>`) becomes that token.
    #[arg(long)]
    parse_special: bool,
    /// Print a JSON object with the ids and each token's text.
    #[arg(long)]
    json: bool,
    /// Read the text from this file instead of the argument.
    #[arg(long, conflicts_with = "text")]
    file: Option<PathBuf>,
    /// The text.
    text: Option<String>,
}

/// Runs `tokenize`.
pub fn run(a: TokenizeArgs) -> anyhow::Result<()> {
    let text = match (&a.text, &a.file) {
        (Some(t), None) => t.clone(),
        (None, Some(f)) => {
            super::existing(f, "text file")?;
            let bytes = std::fs::read(f)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", f.display()))?;
            String::from_utf8(bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not UTF-8 text (invalid byte at offset {})",
                    f.display(),
                    e.utf8_error().valid_up_to()
                )
            })?
        }
        _ => anyhow::bail!("give the text as an argument or with --file F"),
    };
    let tok = load(&a)?;
    let ids = match (&tok, a.no_bos) {
        (ModelTokenizer::Gguf(t), no_bos) => t.encode(&text, !no_bos, a.parse_special),
        (t, false) => t.encode(&text, a.parse_special),
        (t, true) => t.encode_plain(&text, a.parse_special),
    };
    if a.json {
        let pieces: Vec<String> = ids
            .iter()
            .map(|&id| String::from_utf8_lossy(&tok.piece(id)).into_owned())
            .collect();
        println!(
            "{}",
            serde_json::json!({ "ids": ids, "pieces": pieces, "count": ids.len() })
        );
    } else {
        let line: Vec<String> = ids.iter().map(u32::to_string).collect();
        println!("{}", line.join(" "));
    }
    Ok(())
}

fn load(a: &TokenizeArgs) -> anyhow::Result<ModelTokenizer> {
    let gguf = |path: &PathBuf| -> anyhow::Result<Option<ModelTokenizer>> {
        super::existing(path, "file")?;
        let file = std::fs::File::open(path)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
        // SAFETY: read-only map of a file we do not modify.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| anyhow::anyhow!("cannot map {}: {e}", path.display()))?;
        if !map.starts_with(b"GGUF") {
            return Ok(None);
        }
        ModelTokenizer::gguf(&map)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    };
    if let Some(t) = &a.tokenizer {
        if let Some(tok) = gguf(t)? {
            return Ok(tok);
        }
    }
    match (&a.model, &a.tokenizer) {
        (Some(m), None) => gguf(m)?.ok_or_else(|| {
            anyhow::anyhow!(
                "{} is not a GGUF file: for a llama2.c checkpoint give its --tokenizer tokenizer.bin",
                m.display()
            )
        }),
        (Some(m), Some(t)) => {
            super::existing(m, "checkpoint")?;
            let model = engine::Model::open(m, engine::Realign::Never)?;
            super::tokenizer_for(&model, Some(t))?.ok_or_else(|| anyhow::anyhow!("no tokenizer"))
        }
        (None, Some(t)) => Ok(ModelTokenizer::Llama2c(Tokenizer::from_file_all(t)?)),
        (None, None) => anyhow::bail!("give --model M (a GGUF file) or --tokenizer tokenizer.bin"),
    }
}
