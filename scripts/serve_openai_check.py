#!/usr/bin/env python3
"""Checks `baremetal serve` with the official `openai` Python client.

    python3 scripts/serve_openai_check.py --base-url http://127.0.0.1:8080/v1 [--api-key K]

Covers completions, chat completions, streaming of both (with usage), stop strings, the model
list, and error cases (unknown model, max_tokens 0, n > 1, a prompt longer than the context)
that the client must see as `openai.BadRequestError` with the field named. Greedy answers must
be the same streamed and not streamed. Prints one line per check; exits 1 on the first failure.

Needs `pip install openai` (scripts/ci-serve-checks.sh installs it into a virtualenv).
Loopback servers only: the script refuses any other address.
"""

import argparse
import ipaddress
import sys
import urllib.parse

import openai


def loopback_only(url):
    host = urllib.parse.urlparse(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    sys.exit(f"error: {url} is not a loopback address; this check only talks to local servers")


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}")
        sys.exit(1)
    print(f"ok: {what}")


def expect_400(client, field, call):
    try:
        call()
    except openai.BadRequestError as e:
        body = e.body if isinstance(e.body, dict) else {}
        # openai-python hands over the `error` object (older versions: the whole body).
        err = body.get("error", body)
        check(e.status_code == 400 and err.get("param") == field,
              f"400 naming `{field}`: {err.get('message')}")
        return
    check(False, f"a bad `{field}` raised BadRequestError")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8080/v1")
    ap.add_argument("--api-key", default="none")
    args = ap.parse_args()
    loopback_only(args.base_url)
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=120)

    models = client.models.list().data
    check(len(models) == 1 and models[0].object == "model", f"models.list: {models[0].id}")
    model = models[0].id

    prompt = "Once upon a time, there was a little"
    r = client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0)
    check(r.object == "text_completion" and len(r.choices) == 1, "completions.create shape")
    c = r.choices[0]
    check(c.finish_reason in ("stop", "length"), f"finish_reason {c.finish_reason}")
    u = r.usage
    check(u.completion_tokens >= 1 and u.total_tokens == u.prompt_tokens + u.completion_tokens,
          f"usage {u.prompt_tokens} + {u.completion_tokens} = {u.total_tokens}")
    text = c.text

    parts, finish, usage = [], [], None
    for chunk in client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0,
                                           stream=True, stream_options={"include_usage": True}):
        if chunk.choices:
            parts.append(chunk.choices[0].text)
            if chunk.choices[0].finish_reason:
                finish.append(chunk.choices[0].finish_reason)
        if chunk.usage:
            usage = chunk.usage
    check("".join(parts) == text, "streamed completion == whole completion")
    check(finish == [c.finish_reason], f"one finish_reason in the stream: {finish}")
    check(usage is not None and usage.completion_tokens == u.completion_tokens, "stream usage chunk")

    if len(text) >= 6:
        stop = text[len(text) // 2: len(text) // 2 + 2]
        s = client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0, stop=[stop])
        check(s.choices[0].text == text[: text.index(stop)] and s.choices[0].finish_reason == "stop",
              f"stop {stop!r} cuts the text")

    messages = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Tell me a story."}]
    chat = client.chat.completions.create(model=model, messages=messages, max_tokens=10, temperature=0)
    check(chat.object == "chat.completion" and chat.choices[0].message.role == "assistant",
          "chat.completions.create shape")
    answer = chat.choices[0].message.content
    deltas, roles = [], []
    for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=10,
                                                temperature=0, stream=True):
        if chunk.choices:
            d = chunk.choices[0].delta
            if d.role:
                roles.append(d.role)
            if d.content:
                deltas.append(d.content)
    check(roles == ["assistant"] and "".join(deltas) == answer, "streamed chat == whole chat")

    expect_400(client, "model", lambda: client.completions.create(model="no-such-model", prompt="x", max_tokens=2))
    expect_400(client, "max_tokens", lambda: client.completions.create(model=model, prompt="x", max_tokens=0))
    expect_400(client, "n", lambda: client.chat.completions.create(model=model, messages=messages, n=2))
    expect_400(client, "prompt",
               lambda: client.completions.create(model=model, prompt="a story " * 4000, max_tokens=2))

    # The server is still there.
    r = client.completions.create(model=model, prompt="Hi", max_tokens=2, temperature=0)
    check(r.choices[0].finish_reason in ("stop", "length"), "still serving after the errors")
    print("openai client check: all passed")


if __name__ == "__main__":
    main()
