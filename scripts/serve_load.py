#!/usr/bin/env python3
"""Bounded load test for an OpenAI-compatible server: `baremetal serve` or llama.cpp's
`llama-server`, with the same requests and the same JSON report for both.

    python3 scripts/serve_load.py --url http://127.0.0.1:8080 --concurrency 16 --requests 8
    python3 scripts/serve_load.py --url http://127.0.0.1:8080 --concurrency 1,2,4,8 --json out.json

Each of C client threads sends R streamed completion requests one after another (C x R in all,
greedy unless --temperature is given) and checks every answer: HTTP 200, one `id` per stream
and a fresh one per request, a `finish_reason`, `data: [DONE]` last, and as many text chunks as
the usage chunk's `completion_tokens` (nothing lost). Clients cycle through a few prompts; with
--identical (the default for greedy) every answer to the same prompt must be the same text, so
a token that leaked from one stream into another is caught. llama-server is not guaranteed to
be batch invariant, nor to send exactly one chunk per token: pass --no-identical
--no-chunk-count there.

Reports per concurrency level: requests, errors, generated tokens, wall time, aggregate
generated tok/s, request latency p50/p99, time to first token p50/p99 (ms). Exits 1 if any
request failed a check. Bounded: C x R requests, each with a timeout, and an overall deadline;
loopback addresses only.

Standard library only (no pip install), so it runs wherever the servers run.
Comparing servers (the lead runs this on a quiet machine; not in CI):
    baremetal serve --model M.bin --tokenizer tokenizer.bin --parallel 8 --port 8080
    llama-server -m M.gguf -np 8 -c $((8 * 256)) --port 8081      # 256 positions per slot
    python3 scripts/serve_load.py --url http://127.0.0.1:8080 --concurrency 1,2,4,8 --requests 8 \\
        --max-tokens 128 --ignore-eos --json load-baremetal.json
    python3 scripts/serve_load.py --url http://127.0.0.1:8081 --concurrency 1,2,4,8 --requests 8 \\
        --max-tokens 128 --ignore-eos --no-identical --no-chunk-count --json load-llama-server.json
"""

import argparse
import http.client
import ipaddress
import json
import sys
import threading
import time
import urllib.parse

PROMPTS = [
    "Once upon a time, there was a little girl named Lily.",
    "The dog ran to the park",
    "Tom had a big red ball. One day",
    "In a small town",
    "The sun was shining and the birds",
    "Sam and his friend",
    "There was a cat who loved to",
    "Mia wanted to help her mom",
]


def loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def percentile(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def one_request(host, port, headers, body, timeout, count_chunks):
    """Sends one streamed completion; returns a dict of what was seen."""
    t0 = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    out = {"ok": False, "error": None, "text": "", "chunks": 0, "ids": set(), "finish": [],
           "usage": None, "done": False, "ttft": None, "latency": None}
    try:
        conn.request("POST", "/v1/completions", body=json.dumps(body), headers=headers)
        resp = conn.getresponse()
        if resp.status != 200:
            out["error"] = f"HTTP {resp.status}: {resp.read()[:200]!r}"
            return out
        while True:
            line = resp.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                out["done"] = True
                break
            if out["done"]:
                out["error"] = "an event after [DONE]"
                return out
            ev = json.loads(data)
            if "error" in ev:
                out["error"] = f"error event: {ev['error']}"
                return out
            out["ids"].add(ev.get("id"))
            if ev.get("usage"):
                out["usage"] = ev["usage"]
            for ch in ev.get("choices") or []:
                text = ch.get("text") or ""
                if text and out["ttft"] is None:
                    out["ttft"] = time.monotonic() - t0
                out["text"] += text
                if ch.get("finish_reason"):
                    out["finish"].append(ch["finish_reason"])
                else:
                    out["chunks"] += 1
    except Exception as e:  # noqa: BLE001 - any failure is reported per request
        out["error"] = f"{type(e).__name__}: {e}"
        return out
    finally:
        conn.close()
    out["latency"] = time.monotonic() - t0
    problems = []
    if not out["done"]:
        problems.append("no [DONE]")
    if len(out["ids"]) != 1:
        problems.append(f"{len(out['ids'])} ids in one stream")
    if len(out["finish"]) != 1:
        problems.append(f"finish reasons {out['finish']}")
    if out["usage"] is None:
        problems.append("no usage chunk")
    elif count_chunks and out["usage"].get("completion_tokens") != out["chunks"]:
        problems.append(f"{out['chunks']} token chunks but usage says {out['usage'].get('completion_tokens')}")
    out["error"] = "; ".join(problems) or None
    out["ok"] = not problems
    return out


def run_level(args, host, port, concurrency):
    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    results = []
    lock = threading.Lock()
    deadline = time.monotonic() + args.deadline

    def client(c):
        for r in range(args.requests):
            if time.monotonic() > deadline:
                with lock:
                    results.append({"ok": False, "error": "overall deadline passed", "prompt": None})
                continue
            prompt = PROMPTS[(c + r) % len(PROMPTS)]
            body = {"prompt": prompt, "max_tokens": args.max_tokens, "temperature": args.temperature,
                    "stream": True, "stream_options": {"include_usage": True}}
            if args.model:
                body["model"] = args.model
            if args.ignore_eos:
                body["ignore_eos"] = True
            if args.temperature > 0:
                body["seed"] = 1000 * c + r
            res = one_request(host, port, headers, body, args.timeout, args.chunk_count)
            res["prompt"] = prompt
            with lock:
                results.append(res)

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0

    failures = [r["error"] for r in results if not r["ok"]]
    all_ids = [i for r in results if r["ok"] for i in r["ids"]]
    if len(all_ids) != len(set(all_ids)):
        failures.append("two requests shared an id")
    if args.identical:
        by_prompt = {}
        for r in results:
            if r["ok"]:
                by_prompt.setdefault(r["prompt"], set()).add(r["text"])
        for p, texts in by_prompt.items():
            if len(texts) > 1:
                failures.append(f"{len(texts)} different greedy answers to {p!r}")
    tokens = sum(r["usage"]["completion_tokens"] for r in results if r["ok"])
    lat = [r["latency"] * 1e3 for r in results if r["ok"]]
    ttft = [r["ttft"] * 1e3 for r in results if r["ok"] and r["ttft"] is not None]
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "errors": len(failures),
        "error_examples": failures[:5],
        "completion_tokens": tokens,
        "wall_s": round(wall, 3),
        "tokens_per_second": round(tokens / wall, 2) if wall > 0 else None,
        "latency_ms_p50": percentile(lat, 50),
        "latency_ms_p99": percentile(lat, 99),
        "ttft_ms_p50": percentile(ttft, 50),
        "ttft_ms_p99": percentile(ttft, 99),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080", help="server root (loopback only)")
    ap.add_argument("--concurrency", default="16", help="clients at once; a list (1,2,4,8) runs each level")
    ap.add_argument("--requests", type=int, default=8, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--model", default=None, help="model name to send (default: none)")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    ap.add_argument("--deadline", type=float, default=600.0, help="seconds per concurrency level")
    ap.add_argument("--identical", dest="identical", action="store_true", default=None,
                    help="require equal answers to equal prompts (default: when greedy)")
    ap.add_argument("--no-identical", dest="identical", action="store_false")
    ap.add_argument("--ignore-eos", action="store_true",
                    help="ask for exactly --max-tokens tokens (ignore_eos, as llama-server has it)")
    ap.add_argument("--no-chunk-count", dest="chunk_count", action="store_false",
                    help="do not require one text chunk per generated token (servers that merge chunks)")
    ap.add_argument("--json", default=None, help="also write the report to this file")
    args = ap.parse_args()
    if args.identical is None:
        args.identical = args.temperature == 0
    u = urllib.parse.urlparse(args.url)
    host, port = u.hostname or "", u.port or 80
    if not loopback(host):
        sys.exit(f"error: {args.url} is not a loopback address; this load test only targets local servers")
    if args.requests < 1 or args.requests > 1000:
        sys.exit("error: --requests must be between 1 and 1000")
    levels = [int(c) for c in args.concurrency.split(",")]
    if any(c < 1 or c > 256 for c in levels):
        sys.exit("error: --concurrency values must be between 1 and 256")

    report = {"url": args.url, "max_tokens": args.max_tokens, "temperature": args.temperature,
              "requests_per_client": args.requests, "levels": []}
    for c in levels:
        level = run_level(args, host, port, c)
        report["levels"].append(level)
        print(f"concurrency {c:3}: {level['requests']} requests, {level['errors']} errors, "
              f"{level['completion_tokens']} tokens in {level['wall_s']} s = {level['tokens_per_second']} tok/s, "
              f"latency p50 {level['latency_ms_p50'] or 0:.1f} ms p99 {level['latency_ms_p99'] or 0:.1f} ms, "
              f"TTFT p50 {level['ttft_ms_p50'] or 0:.1f} ms p99 {level['ttft_ms_p99'] or 0:.1f} ms", flush=True)
        for e in level["error_examples"]:
            print(f"  error: {e}")
    print(json.dumps(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if any(level["errors"] for level in report["levels"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
