#!/usr/bin/env python3
"""Drives the serve example with the official `openai` client and prints what it saw as JSON.

tests/suite/server.rs starts the server and runs this; the assertions live there. Needs
`pip install openai prometheus-client` (CI installs them).

    python3 tests/server/openai_client.py --base-url http://127.0.0.1:PORT/v1 --model NAME \
        --prompt TEXT --chat TEXT --max-tokens 12 [--turns 10]
"""

import argparse
import json
import time

import urllib.error
import urllib.request

import openai
from prometheus_client.parser import text_string_to_metric_families


def stream_text(chunks, chat):
    """Concatenated text of a stream, and its finish reasons."""
    text, finishes = "", []
    for chunk in chunks:
        for choice in chunk.choices:
            piece = choice.delta.content if chat else choice.text
            text += piece or ""
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    return text, finishes


def bad_requests(base, model):
    """Status and body of each malformed request."""
    client = openai.OpenAI(base_url=base, api_key="none", max_retries=0)
    out = {}

    def through_client(name, **kwargs):
        try:
            client.chat.completions.create(model=model, max_tokens=2, **kwargs)
            out[name] = {"status": 200, "body": None}
        except openai.APIStatusError as e:
            out[name] = {"status": e.status_code, "body": e.response.json()}

    through_client("temperature -1", messages=[{"role": "user", "content": "hi"}], temperature=-1)
    through_client("unknown role", messages=[{"role": "wizard", "content": "hi"}])
    through_client("n 2", messages=[{"role": "user", "content": "hi"}], n=2)
    through_client("logprobs", messages=[{"role": "user", "content": "hi"}], logprobs=True)

    def raw(name, content):
        if isinstance(content, str):
            content = content.encode()
        request = urllib.request.Request(
            f"{base}/chat/completions",
            data=content,
            headers={"content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                out[name] = {"status": r.status, "body": json.loads(r.read())}
        except urllib.error.HTTPError as e:
            out[name] = {"status": e.code, "body": json.loads(e.read())}

    raw("missing messages", json.dumps({"model": model, "max_tokens": 2}))
    raw("invalid JSON", b'{"model": "x", "messages": [')
    raw("10 MB body", json.dumps({
        "model": model,
        "messages": [{"role": "user", "content": "a" * (10 << 20)}],
    }))
    return out


def chat_turns(client, model, turns, max_tokens):
    """A conversation of `turns` user turns, streamed; per turn the token counts and the time to
    the first text."""
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    out = []
    for turn in range(1, turns + 1):
        messages.append({"role": "user", "content": f"Turn {turn}: tell me one more thing about the sea."})
        start = time.perf_counter()
        first = None
        reply = ""
        usage = None
        for chunk in client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        ):
            for choice in chunk.choices:
                if choice.delta.content:
                    if first is None:
                        first = time.perf_counter() - start
                    reply += choice.delta.content
            if chunk.usage:
                usage = chunk.usage
        messages.append({"role": "assistant", "content": reply})
        out.append({
            "turn": turn,
            "ttft_s": first,
            "prompt_tokens": usage.prompt_tokens,
            "cached_tokens": usage.prompt_tokens_details.cached_tokens,
            "completion_tokens": usage.completion_tokens,
        })
    return out


def metrics(base):
    """`/metrics` parsed as Prometheus text: {sample name: value}."""
    root = base.rsplit("/v1", 1)[0]
    with urllib.request.urlopen(f"{root}/metrics", timeout=60) as r:
        text = r.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = s.name + ("" if not s.labels else json.dumps(s.labels, sort_keys=True))
            samples[key] = s.value
    return samples


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--prompt", required=True)
    p.add_argument("--chat", required=True)
    p.add_argument("--max-tokens", type=int, default=12)
    p.add_argument("--turns", type=int, default=10)
    a = p.parse_args()

    client = openai.OpenAI(base_url=a.base_url, api_key="none", max_retries=0)
    models = [m.id for m in client.models.list().data]
    common = dict(model=a.model, max_tokens=a.max_tokens, temperature=0)
    completion = client.completions.create(prompt=a.prompt, **common)
    completion_stream = stream_text(client.completions.create(prompt=a.prompt, stream=True, **common), False)
    messages = [{"role": "user", "content": a.chat}]
    chat = client.chat.completions.create(messages=messages, **common)
    chat_stream = stream_text(client.chat.completions.create(messages=messages, stream=True, **common), True)
    # A stop string cuts the text before it.
    stop = completion.choices[0].text[3:7]
    stopped = client.completions.create(prompt=a.prompt, stop=[stop], **common) if stop.strip() else None

    print(json.dumps({
        "models": models,
        "completion": completion.choices[0].text,
        "completion_finish": completion.choices[0].finish_reason,
        "completion_usage": completion.usage.model_dump(),
        "completion_stream": completion_stream[0],
        "completion_stream_finish": completion_stream[1],
        "chat": chat.choices[0].message.content,
        "chat_stream": chat_stream[0],
        "stop": stop,
        "stopped": None if stopped is None else stopped.choices[0].text,
        "stopped_finish": None if stopped is None else stopped.choices[0].finish_reason,
        "bad_requests": bad_requests(a.base_url, a.model),
        "turns": chat_turns(client, a.model, a.turns, a.max_tokens),
        "metrics": metrics(a.base_url),
    }))


if __name__ == "__main__":
    main()
