//! `baremetal serve` end to end: the binary on a loopback ephemeral port, driven by a plain
//! HTTP/1.1 client written here (so the tests see the bytes on the wire, can drop a connection
//! mid-stream and send SIGTERM).
//!
//! The model is a synthesised one with the Llama 2 vocabulary (random weights: its text is
//! gibberish, but greedy decoding is deterministic), with `../shared/models/tokenizer.bin`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::fixtures::fixture;
use engine::text::tokenizer::Tokenizer;
use serde_json::{json, Value};

/// A running `baremetal serve`; killed when dropped.
struct Server {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

struct Setup {
    model: PathBuf,
    /// `None`: the model is a GGUF file and serves with its own tokenizer.
    tokenizer: Option<PathBuf>,
}

/// The model and tokenizer, or `None` (skip) when the fixture is missing outside CI.
fn setup(tag: &str, seq_len: usize) -> Option<Setup> {
    let tokenizer = fixture("models/tokenizer.bin")?;
    let dir = common::temp_dir(&format!("serve-{tag}"));
    Some(Setup {
        model: common::tiny_32k(&dir, seq_len),
        tokenizer: Some(tokenizer),
    })
}

/// Starts the server with `extra` flags and waits for its "listening on" line.
fn start(s: &Setup, extra: &[&str]) -> Server {
    let mut args = vec![
        "serve".to_string(),
        "--model".into(),
        s.model.display().to_string(),
        "--port".into(),
        "0".into(),
        "--generic".into(),
        "--threads".into(),
        "1".into(),
    ];
    if let Some(t) = &s.tokenizer {
        args.extend(["--tokenizer".to_string(), t.display().to_string()]);
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_baremetal"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn baremetal serve");
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = log.clone();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(at) = line.find("listening on http://") {
                let addr = line[at + "listening on http://".len()..]
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .to_string();
                if let Some(tx) = tx.take() {
                    let _ = tx.send(addr);
                }
            }
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(a) => a,
        Err(_) => {
            let _ = child.kill();
            panic!("the server did not start: {}", log.lock().unwrap());
        }
    };
    Server { child, addr, log }
}

/// A complete HTTP response.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s
}

fn send(s: &mut TcpStream, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
}

/// Reads the status line and headers.
fn read_head(r: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("bad status line {line:?}"))
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    (status, headers)
}

fn is_chunked(headers: &[(String, String)]) -> bool {
    headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    })
}

/// One chunk of a chunked body (`None` at the end).
fn read_chunk(r: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let size = usize::from_str_radix(line.trim(), 16).ok()?;
    let mut data = vec![0; size + 2];
    r.read_exact(&mut data).ok()?;
    data.truncate(size);
    (size > 0).then_some(data)
}

fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut s = connect(addr);
    send(&mut s, method, path, headers, body);
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r);
    let mut body = Vec::new();
    if is_chunked(&headers) {
        while let Some(c) = read_chunk(&mut r) {
            body.extend(c);
        }
    } else {
        r.read_to_end(&mut body).unwrap();
    }
    Reply {
        status,
        headers,
        body: String::from_utf8(body).unwrap(),
    }
}

fn post(addr: &str, path: &str, body: &Value) -> Reply {
    request(addr, "POST", path, &[], body.to_string().as_bytes())
}

/// A streaming response read event by event.
struct Events {
    r: BufReader<TcpStream>,
    buf: String,
    status: u16,
    headers: Vec<(String, String)>,
}

impl Events {
    fn open(addr: &str, path: &str, body: &Value) -> Self {
        let mut s = connect(addr);
        send(&mut s, "POST", path, &[], body.to_string().as_bytes());
        let mut r = BufReader::new(s);
        let (status, headers) = read_head(&mut r);
        Self {
            r,
            buf: String::new(),
            status,
            headers,
        }
    }

    /// The next event's `data:` payload.
    fn next(&mut self) -> Option<String> {
        loop {
            if let Some(at) = self.buf.find("\n\n") {
                let event: String = self.buf.drain(..at + 2).collect();
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if data.is_empty() {
                    continue;
                }
                return Some(data.join("\n"));
            }
            let chunk = read_chunk(&mut self.r)?;
            self.buf.push_str(&String::from_utf8(chunk).unwrap());
        }
    }

    /// Every remaining event.
    fn rest(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.next()).collect()
    }
}

/// A whole stream: the JSON chunks before `[DONE]` (asserted to be the last event).
fn stream(addr: &str, path: &str, body: &Value) -> Vec<Value> {
    let mut ev = Events::open(addr, path, body);
    assert_eq!(ev.status, 200);
    let ct = ev
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.clone());
    assert_eq!(ct.as_deref(), Some("text/event-stream"));
    let all = ev.rest();
    assert_eq!(all.last().map(String::as_str), Some("[DONE]"), "{all:?}");
    all[..all.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect()
}

fn metric(addr: &str, name: &str) -> f64 {
    let r = request(addr, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200);
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {name} in {}", r.body))
        .parse()
        .unwrap()
}

fn completion_text(r: &Value) -> &str {
    r["choices"][0]["text"].as_str().unwrap()
}

fn greedy(prompt: &str, max_tokens: usize) -> Value {
    json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
}

fn ok(r: Reply) -> Value {
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn stream_text(chunks: &[Value], chat: bool) -> String {
    chunks
        .iter()
        .filter_map(|c| {
            let choice = c["choices"].get(0)?;
            if chat {
                choice["delta"]["content"].as_str().map(str::to_string)
            } else {
                choice["text"].as_str().map(str::to_string)
            }
        })
        .collect()
}

fn finish_reasons(chunks: &[Value]) -> Vec<String> {
    chunks
        .iter()
        .filter_map(|c| {
            c["choices"].get(0)?["finish_reason"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

#[test]
fn completions_chat_models_health_and_metrics() {
    let Some(s) = setup("basic", 128) else { return };
    let srv = start(&s, &["--parallel", "2", "--alias", "tiny"]);
    let a = &srv.addr;
    let tok = Tokenizer::from_file(s.tokenizer.as_ref().unwrap(), 32000).unwrap();

    let h = request(a, "GET", "/health", &[], b"");
    assert_eq!((h.status, h.json()), (200, json!({"status": "ok"})));
    let m = ok(request(a, "GET", "/v1/models", &[], b""));
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"][0]["id"], "tiny");
    assert_eq!(m["data"][0]["object"], "model");

    // Completions: the OpenAI shape, usage counted with the reference tokenizer.
    let prompt = "Once upon a time, there was a";
    let r = ok(post(
        a,
        "/v1/completions",
        &json!({"model": "tiny", "prompt": prompt, "max_tokens": 12, "temperature": 0}),
    ));
    assert_eq!(r["object"], "text_completion");
    assert!(r["id"].as_str().unwrap().starts_with("cmpl-"));
    assert!(r["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(r["model"], "tiny");
    let choice = &r["choices"][0];
    assert_eq!(choice["index"], 0);
    assert!(choice["logprobs"].is_null());
    let used = &r["usage"];
    let prompt_tokens = tok.encode(prompt, true, false).len();
    assert_eq!(used["prompt_tokens"], prompt_tokens);
    let n = used["completion_tokens"].as_u64().unwrap();
    assert_eq!(
        used["total_tokens"].as_u64().unwrap(),
        prompt_tokens as u64 + n
    );
    match choice["finish_reason"].as_str().unwrap() {
        "length" => assert_eq!(n, 12),
        "stop" => assert!(n < 12),
        other => panic!("finish_reason {other}"),
    }
    assert!(!completion_text(&r).is_empty());
    // Greedy is deterministic; the default max_tokens is OpenAI's 16.
    let again = ok(post(a, "/v1/completions", &greedy(prompt, 12)));
    assert_eq!(completion_text(&again), completion_text(&r));
    let d = ok(post(
        a,
        "/v1/completions",
        &json!({"prompt": prompt, "temperature": 0}),
    ));
    assert!(d["usage"]["completion_tokens"].as_u64().unwrap() <= 16);
    assert!(
        completion_text(&d).starts_with(completion_text(&r))
            || d["choices"][0]["finish_reason"] == "stop"
    );

    // Token-id prompts give the same as the text they encode.
    let ids = tok.encode(prompt, true, false);
    let by_ids = ok(post(
        a,
        "/v1/completions",
        &json!({"prompt": ids, "max_tokens": 12, "temperature": 0}),
    ));
    assert_eq!(completion_text(&by_ids), completion_text(&r));

    // Chat: the chat.completion shape; the ChatML prompt is counted in usage.
    let c = ok(post(
        a,
        "/v1/chat/completions",
        &json!({"model": "tiny", "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello!"}], "max_tokens": 5, "temperature": 0}),
    ));
    assert_eq!(c["object"], "chat.completion");
    assert!(c["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let msg = &c["choices"][0]["message"];
    assert_eq!(msg["role"], "assistant");
    assert!(msg["content"].is_string());
    let rendered = "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(
        c["usage"]["prompt_tokens"],
        tok.encode(rendered, true, false).len()
    );

    // Seeded sampling repeats; different seeds (almost surely) differ over 20 tokens.
    let sampled = |seed: u64| {
        let r = ok(post(
            a,
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": 20, "temperature": 1.0, "seed": seed}),
        ));
        completion_text(&r).to_string()
    };
    assert_eq!(sampled(7), sampled(7));
    assert_ne!(sampled(7), sampled(8));

    // ignore_eos: exactly max_tokens tokens, whatever the model generates.
    for p in ["A", "The end.", "Once upon a time"] {
        let r = ok(post(
            a,
            "/v1/completions",
            &json!({"prompt": p, "max_tokens": 40, "temperature": 1.0, "seed": 5, "ignore_eos": true}),
        ));
        assert_eq!(r["usage"]["completion_tokens"], 40, "{r}");
        assert_eq!(r["choices"][0]["finish_reason"], "length");
    }

    // Metrics count what happened.
    let text = request(a, "GET", "/metrics", &[], b"").body;
    for want in [
        "baremetal_requests_total{endpoint=\"completions\",code=\"200\"}",
        "baremetal_requests_total{endpoint=\"chat_completions\",code=\"200\"} 1",
        "baremetal_slots 2",
        "baremetal_queue_depth 0",
        "baremetal_step_seconds_bucket{le=\"+Inf\"}",
        "# TYPE baremetal_step_seconds histogram",
    ] {
        assert!(text.contains(want), "{want} missing from\n{text}");
    }
    assert!(metric(a, "baremetal_prompt_tokens_total") >= (prompt_tokens * 3) as f64);
    assert!(metric(a, "baremetal_completion_tokens_total") >= n as f64);
}

#[test]
fn streams_match_the_whole_answers() {
    let Some(s) = setup("stream", 128) else {
        return;
    };
    let srv = start(&s, &["--parallel", "2"]);
    let a = &srv.addr;
    let prompt = "The little dog";
    let whole = ok(post(a, "/v1/completions", &greedy(prompt, 20)));
    let mut body = greedy(prompt, 20);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let chunks = stream(a, "/v1/completions", &body);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], whole["usage"]);
    let id = chunks[0]["id"].clone();
    for c in &chunks {
        assert_eq!(c["object"], "text_completion");
        assert_eq!(c["id"], id);
    }
    assert_eq!(stream_text(&chunks, false), completion_text(&whole));
    // One chunk per generated token, then the finish chunk: finish_reason only on that one.
    let tokens = whole["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    let with_choice: Vec<&Value> = chunks
        .iter()
        .filter(|c| c["choices"].get(0).is_some())
        .collect();
    assert_eq!(with_choice.len(), tokens + 1);
    assert_eq!(
        finish_reasons(&chunks),
        vec![whole["choices"][0]["finish_reason"]
            .as_str()
            .unwrap()
            .to_string()]
    );
    assert!(with_choice.last().unwrap()["choices"][0]["finish_reason"].is_string());

    // Without include_usage there is no usage chunk.
    body["stream_options"] = json!(null);
    let chunks = stream(a, "/v1/completions", &body);
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));

    // Chat: the first delta carries the role, the last is empty with the finish reason.
    let chat = json!({"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 15, "temperature": 0});
    let whole = ok(post(a, "/v1/chat/completions", &chat));
    let mut body = chat.clone();
    body["stream"] = json!(true);
    let chunks = stream(a, "/v1/chat/completions", &body);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
    }
    let end = chunks.last().unwrap();
    assert_eq!(end["choices"][0]["delta"], json!({}));
    assert_eq!(
        end["choices"][0]["finish_reason"],
        whole["choices"][0]["finish_reason"]
    );
    assert_eq!(
        stream_text(&chunks, true),
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );
}

#[test]
fn stop_strings_cut_the_text_before_them() {
    let Some(s) = setup("stop", 128) else { return };
    let srv = start(&s, &[]);
    let a = &srv.addr;
    let prompt = "It was a sunny day";
    let full = ok(post(a, "/v1/completions", &greedy(prompt, 24)));
    let text = completion_text(&full).to_string();
    assert!(
        text.chars().count() >= 12,
        "too short to pick a stop string: {text:?}"
    );
    // A stop string from the middle of the greedy text: the answer is the text before its
    // first occurrence.
    let chars: Vec<char> = text.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let want = &text[..text.find(&stop).unwrap()];
    let mut body = greedy(prompt, 24);
    body["stop"] = json!(["NEVER-THERE", stop]);
    let r = ok(post(a, "/v1/completions", &body));
    assert_eq!(completion_text(&r), want);
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    assert!(
        r["usage"]["completion_tokens"].as_u64().unwrap()
            < full["usage"]["completion_tokens"].as_u64().unwrap()
    );
    body["stream"] = json!(true);
    let chunks = stream(a, "/v1/completions", &body);
    assert_eq!(stream_text(&chunks, false), want);
    assert_eq!(finish_reasons(&chunks), vec!["stop".to_string()]);
    // A stop string as a plain string works too.
    body["stream"] = json!(false);
    body["stop"] = json!(stop);
    assert_eq!(
        completion_text(&ok(post(a, "/v1/completions", &body))),
        want
    );
}

#[test]
fn logprobs_are_log_softmax_values() {
    let Some(s) = setup("logprobs", 128) else {
        return;
    };
    let srv = start(&s, &[]);
    let a = &srv.addr;
    let r = ok(post(
        a,
        "/v1/completions",
        &json!({"prompt": "A cat", "max_tokens": 6, "temperature": 0, "logprobs": 3}),
    ));
    let lp = &r["choices"][0]["logprobs"];
    let n = r["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    assert_eq!(lp["tokens"].as_array().unwrap().len(), n);
    let tokens: String = lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens, completion_text(&r));
    for i in 0..n {
        let chosen = lp["token_logprobs"][i].as_f64().unwrap();
        let top = lp["top_logprobs"][i].as_object().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy picks the most likely token: its log-probability is the largest alternative's.
        let best = top
            .values()
            .map(|v| v.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert!(
            chosen <= 0.0 && (chosen - best).abs() < 1e-6,
            "{chosen} vs {best}"
        );
        // Probabilities of the alternatives add to at most 1.
        assert!(top.values().map(|v| v.as_f64().unwrap().exp()).sum::<f64>() <= 1.0 + 1e-6);
    }
    let c = ok(post(
        a,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0, "logprobs": true, "top_logprobs": 2}),
    ));
    let content = c["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len() as u64,
        c["usage"]["completion_tokens"].as_u64().unwrap()
    );
    for e in content {
        assert_eq!(e["top_logprobs"].as_array().unwrap().len(), 2);
        assert_eq!(e["top_logprobs"][0]["logprob"], e["logprob"]);
        let bytes: Vec<u8> = e["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            e["token"].as_str().unwrap()
        );
    }
}

/// Every bad request gets a 400 (or 404/405/413) with an OpenAI error object naming the
/// field, and the server goes on answering.
#[test]
fn bad_requests_get_openai_errors_and_the_server_goes_on() {
    let Some(s) = setup("errors", 64) else { return };
    let srv = start(
        &s,
        &[
            "--ctx-per-slot",
            "24",
            "--max-body",
            "4096",
            "--alias",
            "tiny",
        ],
    );
    let a = &srv.addr;
    let long = "Once upon a time there was a little girl named Lily who loved to play outside in the sun with her friends.";
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "/v1/completions",
            json!({"prompt": "x", "model": "gpt-4"}),
            "model",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "max_tokens": 0}),
            "max_tokens",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "max_tokens": -1}),
            "max_tokens",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "max_tokens": "ten"}),
            "max_tokens",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "temperature": "warm"}),
            "temperature",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "top_p": 2}),
            "top_p",
        ),
        ("/v1/completions", json!({"prompt": "x", "n": 2}), "n"),
        (
            "/v1/completions",
            json!({"prompt": "x", "stream": 1}),
            "stream",
        ),
        ("/v1/completions", json!({"prompt": "x", "stop": 5}), "stop"),
        ("/v1/completions", json!({"prompt": 17}), "prompt"),
        ("/v1/completions", json!({"prompt": [1, 99999]}), "prompt"),
        ("/v1/completions", json!({"max_tokens": 3}), "prompt"),
        ("/v1/completions", json!({"prompt": long}), "prompt"),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": long}]}),
            "messages",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": "hi"}),
            "messages",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "n": 3}),
            "n",
        ),
    ];
    for (path, body, field) in &cases {
        let r = post(a, path, body);
        assert_eq!(r.status, 400, "{path} {body}: {}", r.body);
        let e = &r.json()["error"];
        assert_eq!(e["param"], json!(field), "{body}: {e}");
        assert_eq!(e["type"], "invalid_request_error");
        assert!(e["message"].as_str().unwrap().len() > 10);
    }
    let too_long = post(a, "/v1/completions", &json!({"prompt": long}));
    assert_eq!(too_long.json()["error"]["code"], "context_length_exceeded");
    assert!(too_long.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("24"));

    // Malformed JSON, a body that is not an object, a body over the limit.
    for body in [&b"{\"prompt\": \"x\""[..], b"not json", b"[1, 2]", b""] {
        let r = request(a, "POST", "/v1/completions", &[], body);
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(body));
        assert!(r.json()["error"]["message"].is_string());
    }
    let big = json!({"prompt": "a".repeat(5000)}).to_string();
    let r = request(a, "POST", "/v1/completions", &[], big.as_bytes());
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("too large"));
    // Unknown routes and methods.
    let r = request(a, "GET", "/v1/nothing", &[], b"");
    assert_eq!(r.status, 404);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/v1/nothing"));
    let r = request(a, "GET", "/v1/completions", &[], b"");
    assert_eq!(r.status, 405);
    // Still serving.
    let r = ok(post(a, "/v1/completions", &greedy("Hi", 3)));
    assert!(r["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    assert!(
        metric(
            a,
            "baremetal_requests_total{endpoint=\"completions\",code=\"400\"}"
        ) >= cases.len() as f64 - 4.0
    );
    // The longest prompt that fits: 24 tokens leave room for exactly one generated token.
    let ids: Vec<u32> = (0..24).map(|i| 100 + i).collect();
    let r = ok(post(
        a,
        "/v1/completions",
        &json!({"prompt": ids, "max_tokens": 50, "temperature": 0}),
    ));
    let n = r["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(n <= 1, "{r}");
    if n == 1 {
        assert_eq!(r["choices"][0]["finish_reason"], "length");
    }
}

#[test]
fn api_key_guards_everything_but_health() {
    let Some(s) = setup("auth", 64) else { return };
    let srv = start(&s, &["--api-key", "sesame"]);
    let a = &srv.addr;
    assert_eq!(request(a, "GET", "/health", &[], b"").status, 200);
    let body = greedy("Hi", 2).to_string();
    for (path, method, payload) in [
        ("/v1/models", "GET", ""),
        ("/metrics", "GET", ""),
        ("/v1/completions", "POST", body.as_str()),
        ("/v1/chat/completions", "POST", "{}"),
    ] {
        let none = request(a, method, path, &[], payload.as_bytes());
        assert_eq!(none.status, 401, "{path}");
        assert_eq!(none.json()["error"]["code"], "invalid_api_key");
        assert_eq!(none.header("www-authenticate"), Some("Bearer"));
        let wrong = request(
            a,
            method,
            path,
            &[("Authorization", "Bearer open")],
            payload.as_bytes(),
        );
        assert_eq!(wrong.status, 401, "{path}");
        let basic = request(
            a,
            method,
            path,
            &[("Authorization", "Basic sesame")],
            payload.as_bytes(),
        );
        assert_eq!(basic.status, 401, "{path}");
    }
    let right = [("Authorization", "Bearer sesame")];
    assert_eq!(request(a, "GET", "/v1/models", &right, b"").status, 200);
    let r = request(a, "POST", "/v1/completions", &right, body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
}

/// One slot and a queue of one: a third request is refused at once with 503 while the first
/// runs and the second waits; both of those complete.
#[test]
fn a_full_queue_answers_503_at_once() {
    let Some(s) = setup("queue", 256) else { return };
    let srv = start(
        &s,
        &[
            "--parallel",
            "1",
            "--queue",
            "1",
            "--debug-step-delay-ms",
            "20",
        ],
    );
    let a = srv.addr.clone();
    let body = json!({"prompt": "Once", "max_tokens": 100, "temperature": 0, "stream": true, "ignore_eos": true});
    let mut first = Events::open(&a, "/v1/completions", &body);
    assert!(first.next().is_some(), "the first request streams");
    let a2 = a.clone();
    let b2 = body.clone();
    let second = std::thread::spawn(move || stream(&a2, "/v1/completions", &b2));
    // Wait until the second one is queued.
    let t = Instant::now();
    while metric(&a, "baremetal_queue_depth") < 1.0 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the second request never queued"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let t = Instant::now();
    let third = post(&a, "/v1/completions", &greedy("Once", 2));
    assert_eq!(third.status, 503, "{}", third.body);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "503 took {:?}",
        t.elapsed()
    );
    assert_eq!(third.json()["error"]["code"], "server_busy");
    assert_eq!(third.header("retry-after"), Some("1"));
    let rest = first.rest();
    assert_eq!(rest.last().map(String::as_str), Some("[DONE]"));
    let second = second.join().unwrap();
    assert_eq!(finish_reasons(&second).len(), 1);
    // With both done, requests are admitted again.
    assert_eq!(post(&a, "/v1/completions", &greedy("Once", 2)).status, 200);
    assert!(
        metric(
            &a,
            "baremetal_requests_total{endpoint=\"completions\",code=\"503\"}"
        ) >= 1.0
    );
}

/// A client that goes away mid-stream (or before a non-streamed answer) frees its slot within
/// a step or two: the next request gets the one slot.
#[test]
fn a_disconnected_client_frees_its_slot() {
    let Some(s) = setup("disconnect", 256) else {
        return;
    };
    let srv = start(
        &s,
        &[
            "--parallel",
            "1",
            "--queue",
            "0",
            "--debug-step-delay-ms",
            "25",
        ],
    );
    let a = srv.addr.clone();
    let long = json!({"prompt": "Once", "max_tokens": 250, "temperature": 0, "stream": true, "ignore_eos": true});
    for streamed in [true, false] {
        let mut body = long.clone();
        body["stream"] = json!(streamed);
        // Admitted (its permit taken) once the engine has counted its prompt.
        let admitted = metric(&a, "baremetal_prompt_tokens_total");
        let mut s = connect(&a);
        send(
            &mut s,
            "POST",
            "/v1/completions",
            &[],
            body.to_string().as_bytes(),
        );
        let t = Instant::now();
        while metric(&a, "baremetal_prompt_tokens_total") == admitted {
            assert!(t.elapsed() < Duration::from_secs(30));
            std::thread::sleep(Duration::from_millis(5));
        }
        // The slot is busy: a second request is refused.
        assert_eq!(post(&a, "/v1/completions", &greedy("x", 1)).status, 503);
        let before = metric(&a, "baremetal_completion_tokens_total");
        drop(s);
        let t = Instant::now();
        while metric(&a, "baremetal_active_slots") > 0.0 {
            // 250 tokens at 25 ms would take over 6 s.
            assert!(
                t.elapsed() < Duration::from_secs(3),
                "the slot was not freed (streamed: {streamed})"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let after = metric(&a, "baremetal_completion_tokens_total");
        assert!(after - before < 50.0, "{before} -> {after}");
        let r = post(&a, "/v1/completions", &greedy("x", 1));
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

/// Greedy output is the same whether a request runs alone or among others in the same
/// batches, including a long prompt prefilled in chunks while the others decode.
#[test]
fn greedy_output_is_the_same_alone_and_among_others() {
    let Some(s) = setup("batch", 256) else { return };
    let srv = start(
        &s,
        &[
            "--parallel",
            "4",
            "--batch",
            "8",
            "--debug-step-delay-ms",
            "2",
        ],
    );
    let a = srv.addr.clone();
    let prompts = [
        "Once upon a time".to_string(),
        "The cat sat on the mat and looked at the dog".to_string(),
        "Tom and Lily went to the park. They saw a big red ball and wanted to play with it, but a boy had it.".to_string(),
        "Hi".to_string(),
        "A bird".to_string(),
    ];
    let body = |p: &str, i: usize| json!({"prompt": p, "max_tokens": 30 + 5 * i, "temperature": 0});
    let alone: Vec<String> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| completion_text(&ok(post(&a, "/v1/completions", &body(p, i)))).to_string())
        .collect();
    let distinct: std::collections::HashSet<&String> = alone.iter().collect();
    assert_eq!(
        distinct.len(),
        prompts.len(),
        "prompts should give different texts: {alone:?}"
    );
    let steps0 = metric(&a, "baremetal_step_seconds_count");
    let rows0 = metric(&a, "baremetal_engine_rows_total");
    // Five at once on four slots (one waits), half of them streamed.
    let handles: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (a, mut b) = (a.clone(), body(p, i));
            std::thread::spawn(move || {
                if i % 2 == 0 {
                    b["stream"] = json!(true);
                    stream_text(&stream(&a, "/v1/completions", &b), false)
                } else {
                    completion_text(&ok(post(&a, "/v1/completions", &b))).to_string()
                }
            })
        })
        .collect();
    let together: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(together, alone);
    // They did share passes: fewer steps than rows.
    let steps = metric(&a, "baremetal_step_seconds_count") - steps0;
    let rows = metric(&a, "baremetal_engine_rows_total") - rows0;
    assert!(
        rows > 1.5 * steps,
        "{rows} rows in {steps} steps: the requests were not batched"
    );
}

/// A panic in the engine fails the requests in flight with a proper error, the engine restarts,
/// and the server goes on.
#[test]
fn an_engine_panic_fails_its_requests_and_the_server_goes_on() {
    let Some(s) = setup("panic", 128) else { return };
    let srv = start(&s, &["--parallel", "2", "--debug-panic-token", "31999"]);
    let a = &srv.addr;
    let before = ok(post(a, "/v1/completions", &greedy("Hello there", 10)));
    let r = post(
        a,
        "/v1/completions",
        &json!({"prompt": [1, 31999], "max_tokens": 3}),
    );
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(r.json()["error"]["type"], "server_error");
    let streamed = json!({"prompt": [1, 31999], "max_tokens": 3, "stream": true});
    let chunks = {
        let mut ev = Events::open(a, "/v1/completions", &streamed);
        assert_eq!(ev.status, 200);
        ev.rest()
    };
    assert_eq!(chunks.last().map(String::as_str), Some("[DONE]"));
    let err: Value = serde_json::from_str(&chunks[chunks.len() - 2]).unwrap();
    assert_eq!(err["error"]["type"], "server_error", "{chunks:?}");
    let after = ok(post(a, "/v1/completions", &greedy("Hello there", 10)));
    assert_eq!(completion_text(&after), completion_text(&before));
    assert_eq!(metric(a, "baremetal_engine_restarts_total"), 2.0);
    assert!(srv.log().contains("panicked"));
}

fn sigterm(child: &Child) {
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(
            t.elapsed() < within,
            "the server did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM: no new connections; a request in flight finishes with its final chunk and
/// `[DONE]` (within the grace period) and the process exits 0.
#[cfg(unix)]
#[test]
fn sigterm_finishes_in_flight_requests_and_exits_0() {
    let Some(s) = setup("sigterm", 256) else {
        return;
    };
    let mut srv = start(
        &s,
        &["--debug-step-delay-ms", "10", "--shutdown-timeout", "30"],
    );
    let a = srv.addr.clone();
    let body = json!({"prompt": "Once", "max_tokens": 60, "temperature": 0, "stream": true, "ignore_eos": true});
    let mut ev = Events::open(&a, "/v1/completions", &body);
    assert!(ev.next().is_some());
    sigterm(&srv.child);
    let rest = ev.rest();
    assert_eq!(rest.last().map(String::as_str), Some("[DONE]"), "{rest:?}");
    let last: Value = serde_json::from_str(&rest[rest.len() - 2]).unwrap();
    assert!(last["choices"][0]["finish_reason"].is_string(), "{last}");
    let st = wait_exit(&mut srv.child, Duration::from_secs(20));
    assert_eq!(st.code(), Some(0), "{}", srv.log());
    assert!(TcpStream::connect(&a).is_err());
    assert!(srv.log().contains("shutting down"));
}

/// SIGTERM with no grace: the request in flight ends at once with an error event and `[DONE]`,
/// and the process exits 0.
#[cfg(unix)]
#[test]
fn sigterm_without_grace_cancels_with_a_final_event() {
    let Some(s) = setup("sigterm0", 256) else {
        return;
    };
    let mut srv = start(
        &s,
        &["--debug-step-delay-ms", "20", "--shutdown-timeout", "0"],
    );
    let a = srv.addr.clone();
    let body = json!({"prompt": "Once", "max_tokens": 200, "temperature": 0, "stream": true, "ignore_eos": true});
    let mut ev = Events::open(&a, "/v1/completions", &body);
    assert!(ev.next().is_some());
    let t = Instant::now();
    sigterm(&srv.child);
    let rest = ev.rest();
    assert_eq!(rest.last().map(String::as_str), Some("[DONE]"), "{rest:?}");
    let err: Value = serde_json::from_str(&rest[rest.len() - 2]).unwrap();
    assert_eq!(err["error"]["code"], json!(null));
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shutting down"),
        "{err}"
    );
    // 200 tokens at 20 ms would take 4 s.
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let st = wait_exit(&mut srv.child, Duration::from_secs(20));
    assert_eq!(st.code(), Some(0), "{}", srv.log());
}

#[test]
fn bad_flags_are_one_clear_error() {
    let Some(s) = setup("flags", 64) else { return };
    // Each must fail at start-up; a server that starts instead is killed after 30 s.
    let run = |extra: &[&str]| {
        let mut args = vec!["serve", "--model", s.model.to_str().unwrap(), "--generic"];
        args.extend(extra);
        if !extra.contains(&"--port") {
            args.extend(["--port", "0"]);
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_baremetal"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = wait_exit(&mut child, Duration::from_secs(30));
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status, err)
    };
    let tok = s.tokenizer.as_ref().unwrap().to_str().unwrap();
    for (extra, want) in [
        (vec![], "--tokenizer"),
        (
            vec!["--tokenizer", tok, "--ctx-per-slot", "65"],
            "--ctx-per-slot",
        ),
        (
            vec!["--tokenizer", tok, "--chat-template", "nope"],
            "chatml",
        ),
        (vec!["--tokenizer", tok, "--host", "not-an-ip"], "host"),
    ] {
        let (status, err) = run(&extra);
        assert_eq!(status.code(), Some(1), "{extra:?}: {err}");
        assert!(err.contains(want), "{extra:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // A port in use.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let (status, err) = run(&["--tokenizer", tok, "--port", &port]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("cannot listen"), "{err}");
}

/// `--chat-template FILE` renders the conversation with that Jinja file; a template that
/// refuses a conversation (`raise_exception`) is a 400 naming `messages`.
#[test]
fn chat_template_from_a_file() {
    let Some(s) = setup("template", 128) else {
        return;
    };
    let dir = common::temp_dir("serve-template-file");
    let file = dir.join("t.jinja");
    std::fs::write(
        &file,
        "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system role here') }}{% endif %}\
         [{{ m.role }}] {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}",
    )
    .unwrap();
    let srv = start(&s, &["--chat-template", file.to_str().unwrap()]);
    let a = &srv.addr;
    let tok = Tokenizer::from_file(s.tokenizer.as_ref().unwrap(), 32000).unwrap();
    let body = json!({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
        {"role": "user", "content": "Tell"}], "max_tokens": 3, "temperature": 0});
    let r = ok(post(a, "/v1/chat/completions", &body));
    let rendered = "[user] Hi\n[assistant] Yo\n[user] Tell\n[assistant]";
    assert_eq!(
        r["usage"]["prompt_tokens"],
        tok.encode(rendered, true, false).len()
    );
    // The same text as a plain completion gives the same greedy answer.
    let c = ok(post(a, "/v1/completions", &greedy(rendered, 3)));
    assert_eq!(
        r["choices"][0]["message"]["content"],
        c["choices"][0]["text"]
    );
    let refused = post(
        a,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "system", "content": "x"}]}),
    );
    assert_eq!(refused.status, 400, "{}", refused.body);
    let e = &refused.json()["error"];
    assert_eq!(e["param"], "messages");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("no system role here"),
        "{e}"
    );
    let models = ok(request(a, "GET", "/v1/models", &[], b""));
    assert_eq!(
        models["data"][0]["meta"]["chat_template"],
        file.to_str().unwrap()
    );
}

/// A GGUF model serves with its own tokenizer (no --tokenizer): stories260K's greedy answer
/// from BOS is llama.cpp's token for token (`gguf/reference/*.greedy256.json`, decoded with
/// the model's vocabulary), and a chat request without a template of the model's uses chatml.
#[test]
fn a_gguf_model_serves_with_its_own_tokenizer() {
    use engine::text::tokenizer::Utf8Stream;
    use engine::text::ModelTokenizer;
    let (Some(model), Some(reference)) = (
        fixture("gguf/models/stories260K-f32.gguf"),
        fixture("gguf/reference/stories260K-f32.greedy256.json"),
    ) else {
        return;
    };
    let want: Value = common::read_json(&reference);
    let ids: Vec<u32> = want["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let tok = ModelTokenizer::gguf(&std::fs::read(&model).unwrap()).unwrap();
    let n = 64;
    let (mut text, mut utf8, mut prev) = (String::new(), Utf8Stream::default(), 1);
    for &id in &ids[..n] {
        utf8.push(tok.decode_piece(prev, id), &mut text);
        prev = id;
    }
    let s = Setup {
        model,
        tokenizer: None,
    };
    let srv = start(&s, &["--parallel", "2"]);
    let a = &srv.addr;
    let body = json!({"prompt": [1], "max_tokens": n, "temperature": 0});
    let r = ok(post(a, "/v1/completions", &body));
    assert_eq!(completion_text(&r), text);
    assert_eq!(r["usage"]["completion_tokens"], n);
    // A text prompt gets the BOS the vocabulary adds.
    let r = ok(post(a, "/v1/completions", &greedy("Once upon a time", 4)));
    assert_eq!(
        r["usage"]["prompt_tokens"],
        tok.encode("Once upon a time", false).len()
    );
    assert_eq!(tok.encode("Once upon a time", false)[0], 1);
    let body =
        json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0});
    let chat = ok(post(a, "/v1/chat/completions", &body));
    let rendered = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(
        chat["usage"]["prompt_tokens"],
        tok.encode(rendered, true).len()
    );
    assert!(srv.log().contains("chat template chatml"), "{}", srv.log());
}

/// A GGUF model's own chat template renders the conversation, with the BOS the tokenizer adds
/// (not a second one from the template), and end-of-turn text it writes (`<|end|>`) ends the
/// answer. synth-llama3's template is Phi-3's over the Llama 2 vocabulary.
#[test]
fn a_gguf_models_own_chat_template_renders_the_conversation() {
    use engine::text::ModelTokenizer;
    let Some(model) = fixture("gguf/models/synth-llama3-q8_0.gguf") else {
        return;
    };
    let tok = ModelTokenizer::gguf(&std::fs::read(&model).unwrap()).unwrap();
    let s = Setup {
        model,
        tokenizer: None,
    };
    let srv = start(&s, &[]);
    let a = &srv.addr;
    let body = json!({"messages": [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"}], "max_tokens": 6, "temperature": 0});
    let chat = ok(post(a, "/v1/chat/completions", &body));
    let rendered = "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n";
    let ids = tok.encode(rendered, true);
    assert_eq!(ids.iter().filter(|&&t| t == 1).count(), 1, "{ids:?}");
    assert_eq!(chat["usage"]["prompt_tokens"], ids.len());
    // The same text as a plain completion: the chat answer is its greedy text, cut at the
    // template's end-of-turn text if the model writes it.
    let c = ok(post(a, "/v1/completions", &greedy(rendered, 6)));
    let full = completion_text(&c);
    let answer = chat["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(answer, full.split("<|end|>").next().unwrap());
    assert!(
        srv.log().contains("chat template the model's own"),
        "{}",
        srv.log()
    );
}
