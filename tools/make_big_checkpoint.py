#!/usr/bin/env python3
"""Write a random-weight Falcon Mamba checkpoint of a real shape, as HF lays it out on disk.

Real tensor names, sharded safetensors (~5 GB shards) + model.safetensors.index.json, config.json,
generation_config.json, and the real tokenizer from tests/models/tiny-falcon-vocab. Weights are
numerically sane (small normals, A_log = log(1..N), D = 1, dt bias = inverse softplus of
dt in [1e-3, 1e-1]) so generation produces finite logits. Only numpy is needed.

    python3 make_big_checkpoint.py --shape 7b --dtype bf16 --out /tmp/fm-7b-bf16 [--tokenizer-dir DIR]
"""
import argparse
import json
import math
import os
import shutil
import struct

import numpy as np

SHAPES = {  # hidden, layers, intermediate, tied
    "130m": (768, 24, 1536, True),
    "370m": (1024, 48, 2048, True),
    "1.4b": (2048, 48, 4096, True),
    "7b": (4096, 64, 8192, False),
}
VOCAB, N, K = 65024, 16, 4
SHARD_BYTES = 5 * 1024**3


def tensors(shape):
    h, layers, d, tied = SHAPES[shape]
    r = 256 if shape == "7b" else math.ceil(h / 16)
    yield "backbone.embeddings.weight", (VOCAB, h), "normal"
    for i in range(layers):
        p = f"backbone.layers.{i}."
        yield p + "norm.weight", (h,), "ones"
        yield p + "mixer.in_proj.weight", (2 * d, h), "normal"
        yield p + "mixer.conv1d.weight", (d, 1, K), "normal"
        yield p + "mixer.conv1d.bias", (d,), "normal"
        yield p + "mixer.x_proj.weight", (r + 2 * N, d), "normal"
        yield p + "mixer.dt_proj.weight", (d, r), "normal"
        yield p + "mixer.dt_proj.bias", (d,), "dt_bias"
        yield p + "mixer.A_log", (d, N), "a_log"
        yield p + "mixer.D", (d,), "ones"
        yield p + "mixer.out_proj.weight", (h, d), "normal"
    yield "backbone.norm_f.weight", (h,), "ones"
    if not tied:
        yield "lm_head.weight", (VOCAB, h), "normal"


def values(kind, shape, rng):
    if kind == "ones":
        return np.ones(shape, np.float32)
    if kind == "a_log":
        return np.broadcast_to(np.log(np.arange(1, shape[1] + 1, dtype=np.float32)), shape).copy()
    if kind == "dt_bias":
        dt = np.exp(rng.uniform(math.log(1e-3), math.log(1e-1), shape)).astype(np.float32)
        return dt + np.log(-np.expm1(-dt))
    fan_in = shape[-1] if len(shape) > 1 else 1
    std = 0.02 if fan_in == 1 else min(0.02, 1.0 / math.sqrt(fan_in))
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)


def encode(a, dtype):
    if dtype == "f32":
        return a.astype("<f4").tobytes()
    if dtype == "f16":
        return a.astype("<f2").tobytes()
    u = a.astype("<f4").view("<u4")
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2").tobytes()  # bf16, round to nearest even


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=SHAPES, default="7b")
    ap.add_argument("--dtype", choices=["bf16", "f16", "f32"], default="bf16")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--tokenizer-dir", default=os.path.join(os.path.dirname(__file__), "..", "tests", "models", "tiny-falcon-vocab"))
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    esize = {"bf16": 2, "f16": 2, "f32": 4}[args.dtype]
    st_dtype = {"bf16": "BF16", "f16": "F16", "f32": "F32"}[args.dtype]
    os.makedirs(args.out, exist_ok=True)

    specs = list(tensors(args.shape))
    shards, cur, size = [], [], 0
    for name, shape, kind in specs:
        n = math.prod(shape) * esize
        if cur and size + n > SHARD_BYTES:
            shards.append(cur)
            cur, size = [], 0
        cur.append((name, shape, kind))
        size += n
    shards.append(cur)

    weight_map, total = {}, 0
    for si, shard in enumerate(shards):
        fname = f"model-{si + 1:05d}-of-{len(shards):05d}.safetensors"
        header, off = {}, 0
        for name, shape, _ in shard:
            n = math.prod(shape) * esize
            header[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
            weight_map[name] = fname
        header["__metadata__"] = {"format": "pt"}
        hb = json.dumps(header, separators=(",", ":")).encode()
        hb += b" " * (-len(hb) % 8)
        with open(os.path.join(args.out, fname), "wb") as f:
            f.write(struct.pack("<Q", len(hb)) + hb)
            for name, shape, kind in shard:
                f.write(encode(values(kind, shape, rng), args.dtype))
        total += off
        print(f"{fname}: {off / 1e9:.2f} GB", flush=True)

    with open(os.path.join(args.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    h, layers, d, tied = SHAPES[args.shape]
    # time_step_rank spelled out ("auto" is ceil(hidden / 16)): llama.cpp's converter copies the
    # field into the GGUF as it is and fails on the string.
    config = {
        "architectures": ["FalconMambaForCausalLM"], "model_type": "falcon_mamba",
        "hidden_size": h, "num_hidden_layers": layers, "intermediate_size": d, "expand": 16 if args.shape == "7b" else 2,
        "state_size": N, "conv_kernel": K, "time_step_rank": 256 if args.shape == "7b" else math.ceil(h / 16),
        "vocab_size": VOCAB, "layer_norm_epsilon": 1e-5, "use_bias": False, "use_conv_bias": True,
        "tie_word_embeddings": tied, "residual_in_fp32": True, "bos_token_id": 0, "eos_token_id": 11,
        "pad_token_id": 11, "torch_dtype": {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[args.dtype],
    }
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    with open(os.path.join(args.out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 0, "eos_token_id": 11, "pad_token_id": 11}, f)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        src = os.path.join(args.tokenizer_dir, name)
        if os.path.exists(src):
            shutil.copy(src, args.out)
    print(f"total {total / 1e9:.2f} GB in {len(shards)} shards, {sum(math.prod(s) for _, s, _ in specs) / 1e9:.3f} B params")


if __name__ == "__main__":
    main()
