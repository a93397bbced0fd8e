//! Tokenizer tests: run.c-exact encoding on the real 32000-token vocabulary, round trips,
//! malformed files, hand-checked merges on synthetic vocabularies, and the UTF-8 stream.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use engine::fixtures::fixture;
use engine::text::tokenizer::{Tokenizer, TokenizerError, Utf8Stream, BOS, EOS, REPLACEMENT_PIECE};

const VOCAB: usize = 32000;

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
}

fn real_tokenizer() -> Option<(Tokenizer, PathBuf)> {
    let path = fixture("models/tokenizer.bin")?;
    let tok = Tokenizer::from_file(&path, VOCAB).expect("the fixture tokenizer loads");
    Some((tok, path))
}

fn cases() -> Option<Vec<Case>> {
    let path = fixture("reference/tokenizer_encode_cases.json")?;
    let text = std::fs::read_to_string(&path).expect("read cases");
    Some(serde_json::from_str(&text).expect("parse cases"))
}

// ---------------------------------------------------------------------------------------
// A straight port of run.c's quadratic `encode`, used only as an oracle.

fn naive_encode(tok: &Tokenizer, text: &str, bos: bool, eos: bool) -> Vec<u32> {
    let mut tokens = Vec::new();
    if bos {
        tokens.push(BOS);
    }
    if !text.is_empty() {
        tokens.push(tok.token_id(b" ").unwrap_or(3 + 32));
    }
    for ch in text.chars() {
        let mut buf = [0u8; 4];
        let s = ch.encode_utf8(&mut buf).as_bytes();
        match tok.token_id(s) {
            Some(id) => tokens.push(id),
            None => tokens.extend(s.iter().map(|&b| b as u32 + 3)),
        }
    }
    loop {
        let mut best_score = -1e10f32;
        let mut best: Option<(usize, u32)> = None;
        for i in 0..tokens.len().saturating_sub(1) {
            let mut joined = tok.piece(tokens[i]).to_vec();
            joined.extend_from_slice(tok.piece(tokens[i + 1]));
            if let Some(id) = tok.token_id(&joined) {
                let score = tok.score(id).unwrap();
                if score > best_score {
                    best_score = score;
                    best = Some((i, id));
                }
            }
        }
        let Some((i, id)) = best else { break };
        tokens[i] = id;
        tokens.remove(i + 1);
    }
    if eos {
        tokens.push(EOS);
    }
    tokens
}

/// A deterministic generator so the random-input tests need no RNG crate.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn random_text(rng: &mut Lcg, alphabet: &[&str], len: usize) -> String {
    (0..len)
        .map(|_| alphabet[rng.below(alphabet.len())])
        .collect()
}

// ---------------------------------------------------------------------------------------
// The real vocabulary.

#[test]
fn reference_cases_encode_exactly() {
    let (Some((tok, _)), Some(cases)) = (real_tokenizer(), cases()) else {
        return;
    };
    assert_eq!(tok.vocab_size(), VOCAB);
    assert!(!cases.is_empty());
    for case in &cases {
        assert_eq!(
            tok.encode(&case.text, true, false),
            case.ids,
            "{:?}",
            case.text
        );
        let mut with_eos = case.ids.clone();
        with_eos.push(EOS);
        assert_eq!(tok.encode(&case.text, true, true), with_eos);
        assert_eq!(tok.encode(&case.text, false, false), case.ids[1..].to_vec());
    }
}

#[test]
fn reference_cases_round_trip() {
    let (Some((tok, _)), Some(cases)) = (real_tokenizer(), cases()) else {
        return;
    };
    for case in &cases {
        let ids = tok.encode(&case.text, true, false);
        assert_eq!(tok.decode(&ids), case.text.as_bytes(), "{:?}", case.text);
        assert_eq!(
            tok.decode(&case.ids),
            case.text.as_bytes(),
            "{:?}",
            case.text
        );
        let with_eos = tok.encode(&case.text, true, true);
        assert_eq!(tok.decode(&with_eos), case.text.as_bytes());
    }
}

#[test]
fn streaming_decode_of_reference_cases_gives_the_text() {
    let (Some((tok, _)), Some(cases)) = (real_tokenizer(), cases()) else {
        return;
    };
    for case in &cases {
        let mut stream = Utf8Stream::new();
        let mut out = String::new();
        let mut prev = BOS;
        for &id in &case.ids[1..] {
            stream.push(tok.decode_piece(prev, id), &mut out);
            prev = id;
        }
        stream.finish(&mut out);
        let printable: String = case
            .text
            .chars()
            .filter(|c| !c.is_control() || matches!(c, '\n' | '\t' | '\r'))
            .collect();
        assert_eq!(out, printable);
    }
}

#[test]
fn empty_text() {
    let Some((tok, _)) = real_tokenizer() else {
        return;
    };
    assert_eq!(tok.encode("", true, false), vec![BOS]);
    assert_eq!(tok.encode("", false, false), Vec::<u32>::new());
    assert_eq!(tok.encode("", true, true), vec![BOS, EOS]);
    assert_eq!(tok.decode(&[BOS, EOS]), b"");
}

#[test]
fn heap_encoder_matches_run_c_port_on_random_text() {
    let Some((tok, _)) = real_tokenizer() else {
        return;
    };
    let alphabet = [
        "a",
        "e",
        "t",
        "o",
        "n",
        "s",
        "h",
        "r",
        " ",
        " ",
        "  ",
        ".",
        ",",
        "!",
        "\n",
        "\t",
        "é",
        "ü",
        "世",
        "界",
        "の",
        "🦀",
        "1",
        "9",
        "<",
        ">",
        "0x",
        "Once upon a time",
        " the",
        "ing",
        "\u{0}",
        "\u{7}",
        "ß",
        "Ω",
    ];
    let mut rng = Lcg(12345);
    for round in 0..60 {
        let len = 1 + rng.below(if round % 10 == 0 { 400 } else { 60 });
        let text = random_text(&mut rng, &alphabet, len);
        let bos = round % 2 == 0;
        assert_eq!(
            tok.encode(&text, bos, false),
            naive_encode(&tok, &text, bos, false),
            "{text:?}"
        );
    }
}

#[test]
fn long_prompt_encodes_fast_and_correctly() {
    let Some((tok, _)) = real_tokenizer() else {
        return;
    };
    let unit = "Lily and Ben went to the park. They saw a big red ball! naïve café 日本語 🦀\n";
    let mut text = String::new();
    while text.len() < 100_000 {
        text.push_str(unit);
    }
    let start = Instant::now();
    let ids = tok.encode(&text, true, false);
    let elapsed = start.elapsed();
    // Generous: the heap encoder takes milliseconds; run.c's quadratic scan would take
    // minutes on this input.
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    assert_eq!(tok.decode(&ids), text.as_bytes());
    // The quadratic oracle is too slow for 100 KB; spot-check the start against it instead
    // (this also relies on no merge crossing the first '\n', which the oracle would show).
    let one = naive_encode(&tok, unit, false, false);
    let three = naive_encode(&tok, &unit.repeat(3), false, false);
    assert_eq!(tok.encode(&unit.repeat(3), false, false), three);
    assert_eq!(&ids[1..1 + one.len()], &one[..]);
}

#[test]
fn utf8_text_survives_byte_tokens_through_the_stream() {
    let Some((tok, _)) = real_tokenizer() else {
        return;
    };
    let text = "héllo 🦀 世界";
    let ids = tok.encode(text, true, false);
    // The crab is not in the vocabulary: it arrives as four <0xXX> byte tokens.
    let crab_bytes: Vec<u32> = "🦀".bytes().map(|b| b as u32 + 3).collect();
    assert!(
        ids.windows(4).any(|w| w == crab_bytes.as_slice()),
        "{ids:?}"
    );
    let mut stream = Utf8Stream::new();
    let mut out = String::new();
    let mut prev = ids[0];
    for &id in &ids[1..] {
        stream.push(tok.decode_piece(prev, id), &mut out);
        prev = id;
    }
    stream.finish(&mut out);
    assert_eq!(out, text);
}

#[test]
fn smaller_vocab_reads_a_prefix_and_larger_vocab_is_an_error() {
    let Some((_, path)) = real_tokenizer() else {
        return;
    };
    let small = Tokenizer::from_file(&path, 512).expect("a prefix of the file is fine");
    assert_eq!(small.vocab_size(), 512);
    assert!(small.unread_bytes() > 0);
    let all = Tokenizer::from_file_all(&path).expect("whole file");
    assert_eq!(all.vocab_size(), VOCAB);
    assert_eq!(all.unread_bytes(), 0);

    let err = Tokenizer::from_file(&path, VOCAB + 1).unwrap_err();
    assert!(matches!(
        err,
        TokenizerError::TooFewTokens {
            found: 32000,
            needed: 32001,
            ..
        }
    ));
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(
        msg.contains("has 32000 tokens but the model needs 32001"),
        "{msg}"
    );
}

/// A temporary copy that is removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, bytes: &[u8]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "baremetal-tokenizer-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write temp file");
        TempFile(path)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[test]
fn truncated_files_are_errors_naming_the_file() {
    let Some((_, path)) = real_tokenizer() else {
        return;
    };
    let full = std::fs::read(&path).unwrap();
    // Offset of entry 1000 (an entry boundary) for a clean "too few tokens" cut.
    let mut boundary = 4;
    for _ in 0..1000 {
        let len = i32::from_le_bytes(full[boundary + 4..boundary + 8].try_into().unwrap());
        boundary += 8 + len as usize;
    }
    let cuts = [
        0,
        2,
        4,
        6,
        10,
        13,
        boundary,
        boundary + 3,
        full.len() / 2,
        full.len() - 1,
    ];
    for cut in cuts {
        let tmp = TempFile::new(&format!("tokenizer-cut-{cut}.bin"), &full[..cut]);
        let name = tmp.path().display().to_string();
        let err = Tokenizer::from_file(tmp.path(), VOCAB).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&name), "cut {cut}: {msg}");
        if cut == boundary {
            assert!(
                matches!(
                    err,
                    TokenizerError::TooFewTokens {
                        found: 1000,
                        needed: VOCAB,
                        ..
                    }
                ),
                "{err:?}"
            );
            assert!(
                msg.contains("has 1000 tokens but the model needs 32000"),
                "{msg}"
            );
        }
        if cut == 4 {
            assert!(matches!(
                err,
                TokenizerError::VocabTooSmall { .. } | TokenizerError::TooFewTokens { .. }
            ));
        }
        // Without a vocabulary size, a cut inside an entry is still an error.
        if cut != boundary && cut != 4 {
            let msg = Tokenizer::from_file_all(tmp.path())
                .unwrap_err()
                .to_string();
            assert!(msg.contains(&name), "cut {cut}: {msg}");
            assert!(
                msg.contains("byte"),
                "cut {cut}: the offset is named: {msg}"
            );
        }
    }
    // Mid-entry messages give the byte offset where data is missing.
    let tmp = TempFile::new("tokenizer-cut-mid.bin", &full[..10]);
    let err = Tokenizer::from_file(tmp.path(), VOCAB).unwrap_err();
    assert!(
        matches!(err, TokenizerError::Truncated { offset: 8, .. }),
        "{err:?}"
    );
}

#[test]
fn missing_file_is_an_error_naming_it() {
    let path = std::env::temp_dir().join("baremetal-no-such-tokenizer-8c1f.bin");
    let msg = Tokenizer::from_file(&path, VOCAB).unwrap_err().to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
}

// ---------------------------------------------------------------------------------------
// Synthetic vocabularies: ids 0..=258 are <unk>, BOS, EOS and the 256 byte tokens; the
// pieces under test start at 259.

fn tokenizer_bytes(extra: &[(&str, f32)]) -> Vec<u8> {
    let mut pieces: Vec<(Vec<u8>, f32)> = vec![
        (b"<unk>".to_vec(), 0.0),
        (b"\n<s>\n".to_vec(), 0.0),
        (b"\n</s>\n".to_vec(), 0.0),
    ];
    pieces.extend((0..=255u8).map(|b| (format!("<0x{b:02X}>").into_bytes(), 0.0)));
    pieces.extend(extra.iter().map(|(p, s)| (p.as_bytes().to_vec(), *s)));
    let mut bytes = Vec::new();
    let max = pieces.iter().map(|p| p.0.len()).max().unwrap() as i32;
    bytes.extend_from_slice(&max.to_le_bytes());
    for (piece, score) in pieces {
        bytes.extend_from_slice(&score.to_le_bytes());
        bytes.extend_from_slice(&(piece.len() as i32).to_le_bytes());
        bytes.extend_from_slice(&piece);
    }
    bytes
}

fn synthetic(extra: &[(&str, f32)]) -> Tokenizer {
    Tokenizer::from_bytes(&tokenizer_bytes(extra), None, "synthetic").expect("valid synthetic")
}

/// id of the `i`-th extra piece.
const fn x(i: u32) -> u32 {
    259 + i
}

#[test]
fn highest_score_merges_first_not_leftmost() {
    let tok = synthetic(&[
        (" ", -100.0), // 259
        ("a", -100.0), // 260
        ("b", -100.0), // 261
        ("c", -100.0), // 262
        ("ab", 5.0),   // 263
        ("bc", 10.0),  // 264
        (" a", 1.0),   // 265
        ("abc", 3.0),  // 266
    ]);
    // [" ", a, b, c]: bc (10) beats ab (5) and " a" (1) → [" ", a, bc]; then abc (3) beats
    // " a" (1) → [" ", abc]; " abc" is not a piece.
    assert_eq!(tok.encode("abc", false, false), vec![x(0), x(7)]);
    assert_eq!(tok.encode("abc", true, true), vec![BOS, x(0), x(7), EOS]);
    // [" ", a, b]: ab (5) → [" ", ab]; " ab" is not a piece.
    assert_eq!(tok.encode("ab", false, false), vec![x(0), x(4)]);
    // [" ", a]: " a" (1).
    assert_eq!(tok.encode("a", false, false), vec![x(6)]);
    // [" ", c, a, b]: ab (5); "ca" and "cab" are not pieces → [" ", c, ab].
    assert_eq!(tok.encode("cab", false, false), vec![x(0), x(3), x(4)]);
}

#[test]
fn equal_scores_merge_leftmost_first() {
    let tok = synthetic(&[
        (" ", -100.0), // 259
        ("a", -100.0), // 260
        ("aa", 1.0),   // 261
        (" a", 0.5),   // 262
        ("x", 0.0),    // 263
        ("y", 0.0),    // 264
        ("z", 0.0),    // 265
        ("xy", -0.0),  // 266
        ("yz", 0.0),   // 267
        ("q", 0.0),    // 268
        ("qq", 2.0),   // 269
        ("qqqq", 2.0), // 270
    ]);
    // [" ", a, a, a]: both (a, a) pairs score 1; the left one merges → [" ", aa, a];
    // " aa" and "aaa" are not pieces. Merging the right one first would end at [" a", aa].
    assert_eq!(tok.encode("aaa", false, false), vec![x(0), x(2), x(1)]);
    // -0.0 and 0.0 compare equal in C, so the left pair wins the tie.
    assert_eq!(tok.encode("xyz", false, false), vec![x(0), x(7), x(6)]);
    // [" ", q, q, q, q, q]: qq at 1-2 → [" ", qq, q, q, q]; then (q, q) at 3-4 (score 2)
    // and nothing else scoring 2 → [" ", qq, qq, q]; then qqqq (2) → [" ", qqqq, q].
    assert_eq!(tok.encode("qqqqq", false, false), vec![x(0), x(11), x(9)]);
}

#[test]
fn byte_fallback_for_characters_not_in_the_vocab() {
    let tok = synthetic(&[(" ", -1.0), ("a", -1.0), (" a", 0.5)]);
    // é is C3 A9 → ids 3 + 0xC3 = 198 and 3 + 0xA9 = 172; " a" merges first.
    assert_eq!(tok.encode("aé", false, false), vec![x(2), 198, 172]);
    // A 4-byte character gives four byte tokens; control characters too.
    assert_eq!(
        tok.encode("🦀\u{7}", true, false),
        vec![BOS, x(0), 3 + 0xF0, 3 + 0x9F, 3 + 0xA6, 3 + 0x80, 3 + 7]
    );
    assert_eq!(
        tok.decode(&tok.encode("aé🦀\u{7}", true, false)),
        "aé🦀\u{7}".as_bytes()
    );
}

#[test]
fn dummy_prefix_falls_back_to_a_byte_without_a_space_piece() {
    let tok = synthetic(&[("a", -1.0)]);
    assert_eq!(tok.encode("a", true, false), vec![BOS, 3 + 0x20, x(0)]);
}

#[test]
fn merges_at_or_below_the_run_c_floor_never_happen() {
    let tok = synthetic(&[
        (" ", 0.0),
        ("z", 0.0),
        ("zz", -1e10),
        ("w", 0.0),
        ("ww", -1e9),
    ]);
    assert_eq!(tok.encode("zz", false, false), vec![x(0), x(1), x(1)]);
    assert_eq!(tok.encode("ww", false, false), vec![x(0), x(4)]);
}

#[test]
fn heap_encoder_matches_run_c_port_with_many_ties() {
    // Every string over {a, b} up to length 4 (and with a leading space up to length 3),
    // with scores from a small set so that equal scores are everywhere.
    let mut pieces: Vec<String> = vec![" ".into()];
    for len in 1..=4 {
        for bits in 0..(1u32 << len) {
            let s: String = (0..len)
                .map(|i| if bits >> i & 1 == 1 { 'b' } else { 'a' })
                .collect();
            if len <= 3 {
                pieces.push(format!(" {s}"));
            }
            pieces.push(s);
        }
    }
    let mut rng = Lcg(99);
    for vocab_round in 0..8 {
        let extra: Vec<(&str, f32)> = pieces
            .iter()
            .map(|p| (p.as_str(), [-1.0f32, 0.0, 1.0][rng.below(3)]))
            .collect();
        let tok = synthetic(&extra);
        for _ in 0..40 {
            let len = 1 + rng.below(30);
            let text = random_text(&mut rng, &["a", "b", "a", "b", " ", "c"], len);
            assert_eq!(
                tok.encode(&text, vocab_round % 2 == 0, false),
                naive_encode(&tok, &text, vocab_round % 2 == 0, false),
                "{text:?}"
            );
        }
    }
}

#[test]
fn decode_piece_rules() {
    let tok = synthetic(&[(" ", 0.0), ("a", 0.0), (" a", 0.0), ("<0x4", 0.0)]);
    let (space, a, space_a, partial) = (x(0), x(1), x(2), x(3));
    assert_eq!(tok.decode_piece(BOS, space_a), b"a");
    assert_eq!(tok.decode_piece(a, space_a), b" a");
    assert_eq!(tok.decode_piece(BOS, space), b"");
    assert_eq!(tok.decode_piece(BOS, a), b"a");
    // <0x41> is 'A'; <0x20> is a space byte, not stripped after BOS (the strip looks at the
    // piece text, as run.c does).
    assert_eq!(tok.decode_piece(a, 3 + 0x41), b"A");
    assert_eq!(tok.decode_piece(BOS, 3 + 0x20), b" ");
    assert_eq!(tok.decode_piece(a, 3 + 0xFF), &[0xFF]);
    assert_eq!(tok.decode_piece(a, partial), b"<0x4");
    // Out of range: a documented replacement, not a panic.
    assert_eq!(tok.decode_piece(a, 1_000_000), REPLACEMENT_PIECE);
    assert_eq!(tok.piece(u32::MAX), REPLACEMENT_PIECE);
    assert_eq!(tok.decode(&[BOS, space, a, EOS]), b"a");
    assert_eq!(tok.decode(&[space, a]), b" a");
    assert_eq!(tok.decode(&[BOS, space_a, BOS, space_a]), b"aa");
    assert_eq!(tok.decode(&[a, 99_999, a]), "a\u{FFFD}a".as_bytes());
}

// ---------------------------------------------------------------------------------------
// Malformed content in memory.

fn expect_err(bytes: &[u8], vocab: Option<usize>) -> TokenizerError {
    match Tokenizer::from_bytes(bytes, vocab, "bad.bin") {
        Ok(_) => panic!("malformed tokenizer accepted"),
        Err(e) => {
            assert!(e.to_string().contains("bad.bin"), "{e}");
            e
        }
    }
}

/// Offset of the length field of entry `index` in `tokenizer_bytes`.
fn length_offset(bytes: &[u8], index: usize) -> usize {
    let mut pos = 4;
    for _ in 0..index {
        let len = i32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap());
        pos += 8 + len as usize;
    }
    pos + 4
}

#[test]
fn malformed_content_is_a_typed_error_with_offset() {
    let good = tokenizer_bytes(&[(" ", 0.0), ("a", 0.0)]);
    let n = 261;
    assert!(Tokenizer::from_bytes(&good, Some(n), "good.bin").is_ok());

    let off = length_offset(&good, 100);
    let mut bad = good.clone();
    bad[off..off + 4].copy_from_slice(&(-1i32).to_le_bytes());
    let err = expect_err(&bad, Some(n));
    assert!(
        matches!(err, TokenizerError::BadLength { index: 100, length: -1, offset, .. } if offset == off)
    );
    assert!(err.to_string().contains(&format!("byte {off}")), "{err}");

    bad[off..off + 4].copy_from_slice(&((1i32 << 16) + 1).to_le_bytes());
    assert!(matches!(
        expect_err(&bad, None),
        TokenizerError::BadLength { .. }
    ));
    bad[off..off + 4].copy_from_slice(&i32::MAX.to_le_bytes());
    assert!(matches!(
        expect_err(&bad, Some(n)),
        TokenizerError::BadLength { .. }
    ));

    for score in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut bad = good.clone();
        let score_off = length_offset(&good, 7) - 4;
        bad[score_off..score_off + 4].copy_from_slice(&score.to_le_bytes());
        let err = expect_err(&bad, Some(n));
        assert!(
            matches!(err, TokenizerError::NonFiniteScore { index: 7, offset, .. } if offset == score_off),
            "{err:?}"
        );
    }

    let mut bad = good.clone();
    bad[..4].copy_from_slice(&(-5i32).to_le_bytes());
    assert!(matches!(
        expect_err(&bad, Some(n)),
        TokenizerError::BadHeader { .. }
    ));

    assert!(matches!(
        expect_err(&[], None),
        TokenizerError::Truncated { .. }
    ));
    assert!(matches!(
        expect_err(&good[..3], Some(n)),
        TokenizerError::Truncated { .. }
    ));
    for cut in [5, 9, 12, good.len() - 1] {
        assert!(matches!(
            expect_err(&good[..cut], Some(n)),
            TokenizerError::Truncated { .. }
        ));
        assert!(matches!(
            expect_err(&good[..cut], None),
            TokenizerError::Truncated { .. }
        ));
    }
    // Fewer than <unk>, BOS, EOS and 256 byte tokens cannot encode anything safely.
    assert!(matches!(
        expect_err(&good, Some(10)),
        TokenizerError::VocabTooSmall { .. }
    ));
    let tiny_off = length_offset(&good, 100) - 4;
    assert!(matches!(
        expect_err(&good[..tiny_off], None),
        TokenizerError::VocabTooSmall { found: 100, .. }
    ));
    // A huge claimed vocabulary is an error, not a huge allocation.
    assert!(matches!(
        expect_err(&good, Some(usize::MAX / 2)),
        TokenizerError::TooFewTokens { found: 261, .. }
    ));
}

// ---------------------------------------------------------------------------------------
// The streaming UTF-8 printer buffer.

fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() || matches!(c, '\n' | '\t' | '\r'))
        .collect()
}

#[test]
fn stream_one_byte_at_a_time() {
    let text = "héllo 🦀 世界";
    let mut stream = Utf8Stream::new();
    let mut out = String::new();
    for b in text.bytes() {
        stream.push(&[b], &mut out);
    }
    stream.finish(&mut out);
    assert_eq!(out, text);
}

#[test]
fn stream_holds_back_incomplete_characters() {
    let mut stream = Utf8Stream::new();
    let mut out = String::new();
    stream.push(b"ok \xF0\x9F\xA6", &mut out);
    assert_eq!(out, "ok ");
    assert!(!stream.is_empty());
    stream.push(b"\x80!", &mut out);
    assert_eq!(out, "ok 🦀!");
    assert!(stream.is_empty());
    stream.push(b"\xE4\xB8", &mut out);
    stream.finish(&mut out);
    assert_eq!(out, "ok 🦀!\u{FFFD}");
    assert!(stream.is_empty());
}

#[test]
fn stream_drops_control_characters_but_keeps_whitespace() {
    let mut stream = Utf8Stream::new();
    let mut out = String::new();
    stream.push(b"a\x07b\x1b[31mc\n\td\r e\x7f\x00", &mut out);
    stream.push("\u{85}f".as_bytes(), &mut out);
    stream.finish(&mut out);
    assert_eq!(out, "ab[31mc\n\td\r ef");
}

#[test]
fn stream_replaces_invalid_bytes_like_from_utf8_lossy() {
    let mut stream = Utf8Stream::new();
    let mut out = String::new();
    stream.push(
        b"a\xFFb\xC0\xAFc\xE0\x80d\xED\xA0\x80e\xF4\x90\x80\x80f\x80",
        &mut out,
    );
    stream.finish(&mut out);
    let want =
        String::from_utf8_lossy(b"a\xFFb\xC0\xAFc\xE0\x80d\xED\xA0\x80e\xF4\x90\x80\x80f\x80");
    assert_eq!(out, want);

    // Random bytes (biased towards UTF-8 lead and continuation bytes) in random chunks.
    let mut rng = Lcg(7);
    let interesting = [
        0x41, 0x20, 0x0A, 0x07, 0x80, 0x9F, 0xA0, 0xBF, 0xC2, 0xDF, 0xE0, 0xED, 0xEF, 0xF0, 0xF4,
        0xF5, 0xFF, 0xC0, 0xC1,
    ];
    for _ in 0..2000 {
        let len = rng.below(24);
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                if rng.below(2) == 0 {
                    interesting[rng.below(interesting.len())]
                } else {
                    rng.below(256) as u8
                }
            })
            .collect();
        let mut stream = Utf8Stream::new();
        let mut out = String::new();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let take = 1 + rng.below(rest.len());
            stream.push(&rest[..take], &mut out);
            rest = &rest[take..];
        }
        stream.finish(&mut out);
        assert_eq!(
            out,
            printable(&String::from_utf8_lossy(&bytes)),
            "{bytes:x?}"
        );
    }
}
