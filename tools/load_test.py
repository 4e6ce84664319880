#!/usr/bin/env python3
"""Load test of the serve example: concurrent clients, mixed prompt lengths, streaming on and off.

Every request is greedy, so its text is known: each distinct request is first run alone, one at a
time, and every concurrent answer must equal its sequential one. Reports errors, mismatches,
throughput and the server's resident memory (from /proc, with --pid) after warm-up and at the end;
exits non-zero on any error, mismatch, or memory growth past --max-growth-mib.

    python3 tools/load_test.py --base-url http://127.0.0.1:8000/v1 --model NAME --pid PID \
        [--clients 32] [--requests 200] [--distinct 40]

Needs `pip install openai`.
"""

import argparse
import asyncio
import json
import random
import sys
import time

import openai

WORDS = (
    "state space models read a sequence once and keep a fixed size summary of everything they "
    "have seen so a token costs the same at any context length the falcon flies over the sea "
    "while the river carries stones to the delta and the wind turns the mill"
).split()


def make_requests(rng, distinct, max_prompt_words):
    """Distinct greedy requests: chat or completion, prompt length from 1 word to the maximum."""
    out = []
    for i in range(distinct):
        n = rng.choice([1, 2, 5, 12, 30, 80, max_prompt_words])
        text = " ".join(rng.choice(WORDS) for _ in range(n))
        out.append({
            "id": i,
            "chat": rng.random() < 0.5,
            "text": text,
            "max_tokens": rng.randint(4, 24),
        })
    return out


async def run_one(client, model, req, stream):
    """The text of one request, and the time to its first text."""
    start = time.perf_counter()
    first = None
    common = dict(model=model, max_tokens=req["max_tokens"], temperature=0)
    if req["chat"]:
        messages = [{"role": "user", "content": req["text"]}]
        if not stream:
            r = await client.chat.completions.create(messages=messages, **common)
            return r.choices[0].message.content, time.perf_counter() - start
        text = ""
        async for chunk in await client.chat.completions.create(messages=messages, stream=True, **common):
            for c in chunk.choices:
                if c.delta.content:
                    first = first or time.perf_counter() - start
                    text += c.delta.content
        return text, first
    if not stream:
        r = await client.completions.create(prompt=req["text"], **common)
        return r.choices[0].text, time.perf_counter() - start
    text = ""
    async for chunk in await client.completions.create(prompt=req["text"], stream=True, **common):
        for c in chunk.choices:
            if c.text:
                first = first or time.perf_counter() - start
                text += c.text
    return text, first


def rss_mib(pid):
    if pid is None:
        return None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--pid", type=int)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--distinct", type=int, default=40)
    p.add_argument("--max-prompt-words", type=int, default=300)
    p.add_argument("--max-growth-mib", type=float, default=64)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    rng = random.Random(a.seed)
    distinct = make_requests(rng, a.distinct, a.max_prompt_words)
    client = openai.AsyncOpenAI(base_url=a.base_url, api_key="none", max_retries=0, timeout=600)

    start = time.perf_counter()
    expected = {}
    for req in distinct:
        expected[req["id"]], _ = await run_one(client, a.model, req, stream=False)
    sequential_s = time.perf_counter() - start

    plan = [(rng.choice(distinct), rng.random() < 0.5) for _ in range(a.requests)]
    queue = asyncio.Queue()
    for item in plan:
        queue.put_nowait(item)
    results = {"ok": 0, "errors": [], "mismatches": [], "ttft": []}
    done = 0
    warm_rss = None

    async def worker():
        nonlocal done, warm_rss
        while not queue.empty():
            req, stream = queue.get_nowait()
            try:
                text, ttft = await run_one(client, a.model, req, stream)
                if text != expected[req["id"]]:
                    results["mismatches"].append({"id": req["id"], "stream": stream, "got": text,
                                                  "expected": expected[req["id"]]})
                else:
                    results["ok"] += 1
                if ttft is not None:
                    results["ttft"].append(ttft)
            except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                results["errors"].append(f"{type(e).__name__}: {e}")
            done += 1
            if done == len(plan) // 4:
                warm_rss = rss_mib(a.pid)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(a.clients)))
    concurrent_s = time.perf_counter() - start
    end_rss = rss_mib(a.pid)
    ttft = sorted(results["ttft"])
    report = {
        "requests": len(plan),
        "clients": a.clients,
        "distinct": len(distinct),
        "ok": results["ok"],
        "errors": len(results["errors"]),
        "mismatches": len(results["mismatches"]),
        "sequential_s": round(sequential_s, 2),
        "concurrent_s": round(concurrent_s, 2),
        "requests_per_s": round(len(plan) / concurrent_s, 2),
        "ttft_p50_s": round(ttft[len(ttft) // 2], 4) if ttft else None,
        "ttft_p99_s": round(ttft[int(len(ttft) * 0.99)], 4) if ttft else None,
        "rss_after_warmup_mib": warm_rss,
        "rss_end_mib": end_rss,
    }
    print(json.dumps(report, indent=1))
    for e in results["errors"][:5]:
        print("error:", e, file=sys.stderr)
    for m in results["mismatches"][:5]:
        print("mismatch:", json.dumps(m), file=sys.stderr)
    grew = warm_rss is not None and end_rss is not None and end_rss - warm_rss > a.max_growth_mib
    if grew:
        print(f"resident memory grew {end_rss - warm_rss:.1f} MiB after warm-up", file=sys.stderr)
    if results["errors"] or results["mismatches"] or grew:
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
