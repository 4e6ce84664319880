#!/usr/bin/env python3
"""Oracle fixtures for a Falcon Mamba reimplementation, made with HuggingFace transformers.

Every model is randomly initialised (seeded; no hub access needed), saved with
`save_pretrained`, reloaded with `from_pretrained`, and run on CPU through the pure
PyTorch ("slow") path of `modeling_falcon_mamba.py` (no mamba-ssm / causal-conv1d /
kernels packages installed).  See the README.md written into every fixture folder.

Usage (from a venv with torch, transformers, safetensors, numpy):

    python make_fixtures.py --suite shared  OUT      # tiny, tiny-untied-bias, tiny-bf16, tiny-sharded, small, tiny-expand-quirk
    python make_fixtures.py --suite heldout OUT      # suites from a specs JSON (default ../heldout/fixture_specs.json,
                                                     # kept out of this script); keep them out of the repository
    python make_fixtures.py --suite wide    OUT      # 7B widths, 2 layers, bf16, 2 shards (~1.5 GB; /tmp only)
    python make_fixtures.py --verify OUT             # reload every fixture under OUT and re-check it
    options: --only NAME [NAME ...]   --threads N (default 1)   --specs FILE.json (extra suites)

The script is deterministic for a given torch/transformers version and thread count.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import safetensors
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import DynamicCache, FalconMambaConfig, FalconMambaForCausalLM
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()  # silences the "falling back to reference PyTorch" notes

# The minimum top-1 minus top-2 logit gap accepted on every greedy step; if a prompt gives
# a smaller gap, the next prompt seed is tried (keeps greedy ids robust to 1e-5 noise).
MIN_GREEDY_MARGIN = 1e-3
DECODE_TOL = 1e-4


@dataclass
class Spec:
    name: str
    config: dict
    seed: int                      # torch.manual_seed before model construction (model's own init)
    prompt_seed: int               # torch.Generator seed for prompt ids
    prompt_len: int
    batch: int                     # second batch size (batch 1 is always made too)
    n_new: int                     # greedy new tokens
    n_forced: int = 8              # teacher-forced decode steps
    save_dtype: str = "float32"    # dtype written to disk
    max_shard_size: int | str = "50GB"
    logits_last: int | None = None  # store logits / hidden only for the last N positions
    layer_outputs: bool = True
    internals: bool = False        # layer-0 mixer intermediates (hooks), batch 1
    bf16_native: bool = False      # also store logits computed natively in bf16
    perturb: bool = True
    note: str = ""
    derived_from: str | None = None  # same weights and prompts as this spec
    shards_expected_min: int = 1
    decode_tol: float = DECODE_TOL  # max |step-decode logits - full-forward logits| accepted


TINY = dict(hidden_size=64, num_hidden_layers=2, state_size=16, expand=2, conv_kernel=4, vocab_size=256)
# initializer_range only affects the random init (inference never reads it). With the default 0.1 a tied
# tiny model greedily repeats one token forever, which makes the generation check weak; 0.3 gives varied
# greedy continuations.
TINY_INIT = dict(TINY, initializer_range=0.3)

SUITES: dict[str, list[Spec]] = {
    "shared": [
        Spec("tiny", dict(TINY_INIT), seed=1234, prompt_seed=1, prompt_len=12, batch=2, n_new=16, internals=True),
        Spec(
            "tiny-untied-bias",
            dict(TINY, hidden_size=48, num_hidden_layers=3, tie_word_embeddings=False, use_bias=True, use_conv_bias=True),
            seed=2345, prompt_seed=2, prompt_len=12, batch=2, n_new=16, internals=True,
        ),
        Spec(
            "tiny-bf16", dict(TINY_INIT), seed=1234, prompt_seed=1, prompt_len=12, batch=2, n_new=16,
            save_dtype="bfloat16", internals=True, bf16_native=True, derived_from="tiny",
            note="Same random model and prompts as `tiny`, cast to bfloat16 and saved in bf16. All float32 "
                 "references are computed in float32 from the bf16-ROUNDED weights (reload with dtype=float32). "
                 "`*.logits_bf16_native` are computed by transformers with the model kept in bfloat16 (loose tolerance only).",
        ),
        Spec(
            "tiny-sharded", dict(TINY_INIT), seed=1234, prompt_seed=1, prompt_len=12, batch=2, n_new=16,
            max_shard_size=100_000, shards_expected_min=3, internals=True, derived_from="tiny",
            note="Same random model, prompts and references as `tiny`, saved with max_shard_size=100000 bytes "
                 "so the weights are split over several model-0000N-of-0000M.safetensors files plus "
                 "model.safetensors.index.json.",
        ),
        Spec(
            "small",
            dict(hidden_size=256, num_hidden_layers=4, state_size=16, expand=2, conv_kernel=4, vocab_size=1024),
            seed=3456, prompt_seed=3, prompt_len=64, batch=2, n_new=32,
        ),
        Spec(
            "tiny-expand-quirk",
            dict(hidden_size=32, num_hidden_layers=2, state_size=16, expand=16, intermediate_size=64, conv_kernel=4,
                 vocab_size=256, initializer_range=0.3, tie_word_embeddings=False, bos_token_id=0, eos_token_id=11,
                 pad_token_id=11),
            seed=4567, prompt_seed=4, prompt_len=10, batch=2, n_new=8, n_forced=4,
            note="Mimics the real falcon-mamba-7b config.json quirk: `expand` is 16 but `intermediate_size` is "
                 "2*hidden_size (here 64). transformers keeps the explicit `intermediate_size` (weights are "
                 "shaped by it); a loader that computes expand*hidden_size (=512) is wrong. Also untied lm_head and "
                 "eos/pad id 11 like the real checkpoint.",
        ),
    ],
    "wide": [
        Spec(
            "wide",
            dict(hidden_size=4096, num_hidden_layers=2, state_size=16, expand=2, conv_kernel=4, vocab_size=65024,
                 time_step_rank=256, layer_norm_epsilon=1e-5, mixer_rms_eps=1e-6, tie_word_embeddings=False,
                 bos_token_id=0, eos_token_id=11, pad_token_id=11),
            seed=777, prompt_seed=21, prompt_len=32, batch=1, n_new=8, n_forced=4, save_dtype="bfloat16",
            max_shard_size="1GB", shards_expected_min=2, logits_last=None, layer_outputs=True, bf16_native=True,
            decode_tol=5e-4,
            note="Real falcon-mamba-7b widths (hidden 4096, d_inner 8192, dt_rank 256, vocab 65024, "
                 "layer_norm_epsilon 1e-5, mixer_rms_eps 1e-6, untied lm_head, eos/pad 11) but only 2 layers. "
                 "Saved in bfloat16 in 2 shards; float32 references from the bf16-rounded weights.",
        ),
    ],
}


DEFAULT_SPECS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "heldout", "fixture_specs.json")


def load_specs(path: str) -> dict[str, list[Spec]]:
    """Extra suites from JSON: {"suite": [{Spec fields}, ...], "_comment": ...}."""
    raw = json.load(open(path))
    return {k: [Spec(**d) for d in v] for k, v in raw.items() if not k.startswith("_")}


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }


# --------------------------------------------------------------------------------------------
# model construction


def build_model(spec: Spec) -> FalconMambaForCausalLM:
    torch.manual_seed(spec.seed)
    cfg = FalconMambaConfig(**spec.config)
    model = FalconMambaForCausalLM(cfg).eval()  # weights from the model's own _init_weights
    if spec.perturb:
        perturb(model, spec.seed)
    return model


@torch.no_grad()
def perturb(model: FalconMambaForCausalLM, seed: int) -> None:
    """The model's init leaves every RMSNorm weight at 1, D at 1, biases at 0 and A_log equal across
    channels; a reimplementation that ignored any of them would still pass. Add seeded noise."""
    g = torch.Generator().manual_seed(seed + 1)

    def rn(t: torch.Tensor, scale: float) -> torch.Tensor:
        return torch.randn(t.shape, generator=g, dtype=torch.float32) * scale

    for layer in model.backbone.layers:
        layer.norm.weight.copy_(1.0 + rn(layer.norm.weight, 0.2))
        mx = layer.mixer
        mx.D.copy_(mx.D + rn(mx.D, 0.3))
        mx.A_log.copy_(mx.A_log + rn(mx.A_log, 0.1))
        if mx.conv1d.bias is not None:
            mx.conv1d.bias.copy_(rn(mx.conv1d.bias, 0.1))
        if mx.in_proj.bias is not None:
            mx.in_proj.bias.copy_(rn(mx.in_proj.bias, 0.05))
        if mx.out_proj.bias is not None:
            mx.out_proj.bias.copy_(rn(mx.out_proj.bias, 0.05))
    model.backbone.norm_f.weight.copy_(1.0 + rn(model.backbone.norm_f.weight, 0.2))


# --------------------------------------------------------------------------------------------
# reference computations


@torch.no_grad()
def greedy_decode(model, ids: torch.Tensor, n: int):
    """Prefill `ids` with a fresh cache, then feed the argmax token one at a time.
    Returns (new ids [B,n], step logits [B,n,V] (step i predicts new token i), cache after prompt)."""
    cache = DynamicCache(config=model.config)
    out = model(input_ids=ids, cache_params=cache, use_cache=True)
    cache_after_prompt = snapshot_cache(cache, model.config.num_hidden_layers)
    logits = [out.logits[:, -1].float()]
    toks = [logits[-1].argmax(-1)]
    for _ in range(n - 1):
        out = model(input_ids=toks[-1][:, None], cache_params=cache, use_cache=True)
        logits.append(out.logits[:, -1].float())
        toks.append(logits[-1].argmax(-1))
    return torch.stack(toks, 1), torch.stack(logits, 1), cache_after_prompt


@torch.no_grad()
def forced_decode(model, ids: torch.Tensor, forced: torch.Tensor):
    """Prefill, then feed `forced` [B,F] one token at a time; logits after each fed token [B,F,V]."""
    cache = DynamicCache(config=model.config)
    model(input_ids=ids, cache_params=cache, use_cache=True)
    logits = []
    for j in range(forced.shape[1]):
        out = model(input_ids=forced[:, j : j + 1], cache_params=cache, use_cache=True)
        logits.append(out.logits[:, -1].float())
    return torch.stack(logits, 1)


def snapshot_cache(cache: DynamicCache, n_layers: int) -> dict:
    snap = {}
    for i in range(n_layers):
        layer = cache.layers[i]
        snap[f"conv_state.{i}"] = layer.conv_states[0].detach().clone().float()
        snap[f"ssm_state.{i}"] = layer.recurrent_states[0].detach().clone().float()
        snap[f"_dtype.conv_state.{i}"] = str(layer.conv_states[0].dtype)
        snap[f"_dtype.ssm_state.{i}"] = str(layer.recurrent_states[0].dtype)
    return snap


@torch.no_grad()
def generate_greedy(model, ids: torch.Tensor, n: int) -> torch.Tensor:
    gen_cfg = model.generation_config
    gen_cfg.eos_token_id = None  # never stop early: exactly n new tokens
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=n,
        min_new_tokens=None,
        do_sample=False,
        use_cache=True,
        generation_config=gen_cfg,
    )
    assert out.shape == (ids.shape[0], ids.shape[1] + n), out.shape
    assert torch.equal(out[:, : ids.shape[1]], ids)
    return out[:, ids.shape[1] :]


def top2_margin(logits: torch.Tensor) -> float:
    t = logits.float().topk(2, dim=-1).values
    return float((t[..., 0] - t[..., 1]).min())


def make_prompts(spec: Spec, vocab: int, attempt: int):
    g = torch.Generator().manual_seed(spec.prompt_seed * 1000 + attempt)
    lo = 12 if vocab > 64 else 1  # keep special/pad ids (0..11) out of the prompts
    b1 = torch.randint(lo, vocab, (1, spec.prompt_len), generator=g, dtype=torch.int64)
    bn = torch.randint(lo, vocab, (spec.batch, spec.prompt_len), generator=g, dtype=torch.int64)
    bn[0] = b1[0]  # row 0 of the batch is the batch-1 prompt (batch-consistency check)
    forced1 = torch.randint(lo, vocab, (1, spec.n_forced), generator=g, dtype=torch.int64)
    forcedn = torch.randint(lo, vocab, (spec.batch, spec.n_forced), generator=g, dtype=torch.int64)
    forcedn[0] = forced1[0]
    return {"b1": (b1, forced1), f"b{spec.batch}": (bn, forcedn)}


@torch.no_grad()
def hook_internals(model, ids):
    """Layer-0 mixer intermediates for batch 1 via forward hooks (no cache)."""
    mx = model.backbone.layers[0].mixer
    got = {}

    def keep(out_name=None, in_name=None):
        def hook(mod, inp, out):  # returns None: never alters the forward
            if in_name:
                got[in_name] = inp[0].detach().clone()
            if out_name:
                got[out_name] = out.detach().clone()

        return hook

    hs = [
        model.backbone.layers[0].norm.register_forward_hook(keep("norm_out")),
        mx.in_proj.register_forward_hook(keep("in_proj_out")),
        mx.x_proj.register_forward_hook(keep("x_proj_out", "conv_act_out")),
        mx.out_proj.register_forward_hook(keep("out_proj_out", "gated_y")),
    ]
    model(input_ids=ids, use_cache=False)
    for h in hs:
        h.remove()
    return {k: v.float().contiguous() for k, v in got.items()}


@torch.no_grad()
def compute_refs(model, spec: Spec, prompts: dict, checks: dict, tensors: dict, meta: dict):
    cfg = model.config
    L = spec.prompt_len
    pos = torch.arange(L) if spec.logits_last is None else torch.arange(L - spec.logits_last, L)
    for key, (ids, forced) in prompts.items():
        p = f"{key}."
        tensors[p + "input_ids"] = ids
        out = model(input_ids=ids, use_cache=False, output_hidden_states=True)
        logits = out.logits.float()
        tensors[p + "logits"] = logits[:, pos].contiguous()
        tensors[p + "hidden_final"] = out.hidden_states[-1][:, pos].float().contiguous()
        if key == "b1":
            tensors["positions"] = pos.to(torch.int64)
            if spec.layer_outputs:
                for i in range(cfg.num_hidden_layers):
                    tensors[f"b1.layer_out.{i}"] = out.hidden_states[i][:, pos].float().contiguous()
            if spec.internals:
                for k, v in hook_internals(model, ids).items():
                    tensors[f"b1.layer0.{k}"] = v

        gen = generate_greedy(model, ids, spec.n_new)
        dec_ids, dec_logits, cache = greedy_decode(model, ids, spec.n_new)
        margin = top2_margin(dec_logits)
        assert torch.equal(gen, dec_ids), f"{spec.name}/{key}: generate() ids != step-decode argmax ids"
        tensors[p + "generated_ids"] = gen
        tensors[p + "decode_logits"] = dec_logits.contiguous()
        for k, v in cache.items():
            if k.startswith("_dtype"):
                meta[f"cache_live_dtype.{k[len('_dtype.'):]}"] = v
            else:
                tensors[p + "cache." + k] = v.contiguous()

        # decode (with cache) vs full forward over prompt + generated[:-1] at the same positions
        full = model(input_ids=torch.cat([ids, gen[:, :-1]], 1), use_cache=False).logits.float()
        d_dec = float((full[:, L - 1 :] - dec_logits).abs().max())
        # prefill logits at the stored positions must match the no-cache forward bit for bit? (different path
        # only in the cache bookkeeping) -> record the difference
        d_prefill = float((full[:, pos] - logits[:, pos]).abs().max())
        tensors[p + "forced_ids"] = forced
        f_logits = forced_decode(model, ids, forced)
        tensors[p + "forced_decode_logits"] = f_logits.contiguous()
        full_f = model(input_ids=torch.cat([ids, forced], 1), use_cache=False).logits.float()
        d_forced = float((full_f[:, L:] - f_logits).abs().max())
        checks[key] = {
            "decode_vs_full_forward_maxabs": d_dec,
            "forced_decode_vs_full_forward_maxabs": d_forced,
            "longer_forward_vs_prompt_forward_maxabs": d_prefill,
            "greedy_min_top2_margin": margin,
            "greedy_distinct_tokens_per_row": [len(set(r)) for r in gen.tolist()],
            "logits_absmax": float(logits.abs().max()),
        }
        assert d_dec <= spec.decode_tol, (spec.name, key, d_dec)
        assert d_forced <= spec.decode_tol, (spec.name, key, d_forced)
        if spec.bf16_native:
            tensors[p + "logits_bf16_native"] = None  # filled by caller
    # batch consistency: row 0 of the batch equals the batch-1 prompt
    kb = f"b{spec.batch}"
    if kb != "b1":
        checks["batch_row0_vs_b1_logits_maxabs"] = float((tensors[kb + ".logits"][0] - tensors["b1.logits"][0]).abs().max())
        checks["batch_row0_vs_b1_generated_equal"] = bool(torch.equal(tensors[kb + ".generated_ids"][0], tensors["b1.generated_ids"][0]))


# --------------------------------------------------------------------------------------------
# writing


def shapes_table(tensors: dict) -> list[tuple[str, list[int], str]]:
    rows = []
    for k in sorted(tensors):
        t = tensors[k]
        rows.append((k, list(t.shape), str(t.dtype).replace("torch.", "")))
    return rows


DESCRIPTIONS = [
    ("positions", "int64 positions (0-based) that `*.logits`, `*.hidden_final` and `b1.layer_out.*` cover (all prompt positions unless noted)."),
    ("bN.input_ids", "prompt ids [B, L]; row 0 of the larger batch equals the batch-1 prompt."),
    ("bN.logits", "float32 logits of one full forward pass over the prompt (no cache) at `positions` [B, P, V]."),
    ("bN.logits_bf16_native", "(bf16 fixtures only) same, but computed with the model held in bfloat16 by transformers; compare loosely."),
    ("bN.hidden_final", "float32 hidden state after the final RMSNorm `backbone.norm_f` at `positions` [B, P, H] (input of lm_head)."),
    ("b1.layer_out.i", "residual stream after block i (float32, residual_in_fp32), batch 1 [1, P, H]. HF's output_hidden_states has no embedding entry; entry i is the output of layer i."),
    ("b1.layer0.*", "layer-0 mixer intermediates for batch 1 (no cache): norm_out = RMSNorm(input) [1,L,H]; in_proj_out [1,L,2*D_inner] (x | z halves, in that order); conv_act_out = silu(causal depthwise conv1d(x) + conv bias) [1,L,D_inner]; x_proj_out [1,L,R+2N] (dt_low | B | C, BEFORE the weightless RMS norms); gated_y = (scan(...) + D*x) * silu(z) [1,L,D_inner]; out_proj_out [1,L,H]."),
    ("bN.generated_ids", "int64 [B, n_new]: only the NEW tokens of `model.generate(ids, do_sample=False, max_new_tokens=n_new, use_cache=True, attention_mask=ones)` with EOS stopping disabled (so always n_new tokens)."),
    ("bN.decode_logits", "float32 [B, n_new, V]: explicit step decode with a DynamicCache: entry 0 = last-position logits of the cached prefill over the prompt; entry i>0 = logits after feeding generated token i-1 alone. argmax(entry i) == generated_ids[:, i]. Equals (to <=1e-4, see checks) the no-cache forward over prompt+generated[:-1] at positions L-1 .. L+n_new-2."),
    ("bN.forced_ids", "int64 [B, F] random (seeded) continuation tokens, fed one at a time after a cached prefill."),
    ("bN.forced_decode_logits", "float32 [B, F, V]: logits after feeding forced token j (predicts position L+j+1); equals no-cache forward over prompt+forced at positions L .. L+F-1."),
    ("bN.cache.conv_state.i", "float32 [B, D_inner, conv_kernel] conv cache of layer i right after the prompt prefill: the last conv_kernel columns of the PRE-conv x half of in_proj (left zero-padded if the prompt is shorter)."),
    ("bN.cache.ssm_state.i", "float32 [B, D_inner, state_size] SSM state h of layer i after the prompt prefill."),
]


def write_readme(path: str, spec: Spec, tensors: dict, meta: dict, checks: dict, weight_files: list[str], extra: str = ""):
    cfg = json.load(open(os.path.join(path, "config.json")))
    lines = [
        f"# Falcon Mamba oracle fixture `{spec.name}`",
        "",
        "Made by `tools/make_fixtures.py` (steering repo) with HuggingFace transformers' `FalconMambaForCausalLM`, "
        "random weights, CPU, pure-PyTorch path (no mamba-ssm / causal-conv1d / kernels installed).",
        "",
        f"- versions: {json.dumps(versions())}",
        f"- torch threads: {torch.get_num_threads()}",
        f"- model seed: `torch.manual_seed({spec.seed})` then `FalconMambaForCausalLM(FalconMambaConfig(**{json.dumps(spec.config)}))` (the model's own `_init_weights`).",
    ]
    if spec.perturb:
        lines.append(
            f"- then seeded perturbation (`torch.Generator().manual_seed({spec.seed + 1})`, in this order per layer): "
            "norm.weight = 1 + 0.2*randn; mixer.D += 0.3*randn; mixer.A_log += 0.1*randn; conv1d.bias = 0.1*randn (if any); "
            "in_proj.bias / out_proj.bias = 0.05*randn (if any); finally norm_f.weight = 1 + 0.2*randn. "
            "(The stock init leaves norms at 1, D at 1, biases at 0, which would hide bugs.)"
        )
    lines += [
        f"- prompts: seeded `torch.Generator().manual_seed({meta['prompt_generator_seed']})`, ids drawn uniformly from [{meta['prompt_low_id']}, vocab); "
        f"prompt length L={spec.prompt_len}; batches: {'1 only' if spec.batch == 1 else f'1 and {spec.batch}'}; "
        f"greedy new tokens: {spec.n_new}; forced decode steps: {spec.n_forced}; logits/hidden stored at: {meta['logits_positions']} prompt positions.",
        f"- weights on disk: {spec.save_dtype}; files: {', '.join(weight_files)}",
        f"- derived config values: intermediate_size (D_inner)={cfg['intermediate_size']}, time_step_rank (R)={cfg['time_step_rank']}, "
        f"layer_norm_epsilon={cfg['layer_norm_epsilon']}, mixer_rms_eps={cfg['mixer_rms_eps']}, tie_word_embeddings={cfg['tie_word_embeddings']}.",
    ]
    if spec.note:
        lines += ["", spec.note]
    if extra:
        lines += ["", extra]
    lines += [
        "",
        "References are computed from the weights AS RELOADED from this folder with "
        "`FalconMambaForCausalLM.from_pretrained(dir, dtype=torch.float32)` (model.eval(), torch.no_grad()).",
        "",
        "## reference.safetensors",
        "",
        "Key prefix `b1.` = batch of 1, `bN.` = the larger batch (see `reference.json` for the exact prefixes). "
        "Every float tensor is float32, every id tensor int64.",
        "",
    ]
    lines += [f"- `{k}`: {d}" for k, d in DESCRIPTIONS]
    lines += ["", "| name | shape | dtype |", "| --- | --- | --- |"]
    lines += [f"| `{k}` | {s} | {d} |" for k, s, d in shapes_table(tensors)]
    lines += [
        "",
        "## Checks done when generating (also in reference.json)",
        "",
        "```json",
        json.dumps(checks, indent=2),
        "```",
        "",
        "`reference.json` repeats the ids (prompts, generated, forced) as plain integer lists plus this metadata.",
        "",
    ]
    open(os.path.join(path, "README.md"), "w").write("\n".join(lines))


def make_fixture(spec: Spec, out_root: str) -> dict:
    t0 = time.time()
    path = os.path.join(out_root, spec.name)
    if os.path.exists(path):
        shutil.rmtree(path)
    os.makedirs(path)

    model = build_model(spec)
    if spec.save_dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    model.save_pretrained(path, max_shard_size=spec.max_shard_size)
    weight_files = sorted(f for f in os.listdir(path) if f.startswith("model"))
    n_shards = sum(f.endswith(".safetensors") for f in weight_files)
    assert n_shards >= spec.shards_expected_min, (spec.name, weight_files)
    if n_shards > 1:
        assert "model.safetensors.index.json" in weight_files
    t_save = time.time() - t0

    ref_model = FalconMambaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    # the reloaded model must be exactly the saved one (rounded to the saved dtype)
    sd_saved = {k: v.float() for k, v in model.state_dict().items()}
    for k, v in ref_model.state_dict().items():
        assert torch.equal(v.float(), sd_saved[k]), f"{spec.name}: reload mismatch {k}"
    cfg = ref_model.config

    attempt = 0
    while True:
        prompts = make_prompts(spec, cfg.vocab_size, attempt)
        margins = []
        with torch.no_grad():
            for ids, _ in prompts.values():
                _, dec_logits, _ = greedy_decode(ref_model, ids, spec.n_new)
                margins.append(top2_margin(dec_logits))
        if min(margins) >= MIN_GREEDY_MARGIN or attempt >= 20:
            break
        attempt += 1

    tensors: dict = {}
    checks: dict = {}
    meta: dict = {
        "fixture": spec.name,
        "versions": versions(),
        "torch_threads": torch.get_num_threads(),
        "model_seed": spec.seed,
        "perturbed": spec.perturb,
        "prompt_generator_seed": spec.prompt_seed * 1000 + attempt,
        "prompt_low_id": 12 if cfg.vocab_size > 64 else 1,
        "prompt_len": spec.prompt_len,
        "batch_prefixes": list(prompts.keys()),
        "n_new": spec.n_new,
        "n_forced": spec.n_forced,
        "save_dtype": spec.save_dtype,
        "weight_files": weight_files,
        "logits_positions": "all" if spec.logits_last is None else f"last {spec.logits_last}",
        "decode_tolerance": spec.decode_tol,
    }
    compute_refs(ref_model, spec, prompts, checks, tensors, meta)

    if spec.bf16_native:
        bf = FalconMambaForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
        pos = tensors["positions"]
        with torch.no_grad():
            for key, (ids, _) in prompts.items():
                lb = bf(input_ids=ids, use_cache=False).logits.float()[:, pos].contiguous()
                tensors[f"{key}.logits_bf16_native"] = lb
                checks[f"{key}.bf16_native_vs_f32_logits_maxabs"] = float((lb - tensors[f"{key}.logits"]).abs().max())
        del bf
    tensors = {k: v for k, v in tensors.items() if v is not None}

    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(path, "reference.safetensors"),
              metadata={"fixture": spec.name})  # one key only: safetensors orders metadata keys randomly
    ints = {k: v.tolist() for k, v in tensors.items() if v.dtype == torch.int64}
    meta["checks"] = checks
    meta["tensors"] = {k: {"shape": s, "dtype": d} for k, s, d in shapes_table(tensors)}
    meta["ids"] = ints
    json.dump(meta, open(os.path.join(path, "reference.json"), "w"), indent=1)
    write_readme(path, spec, tensors, meta, checks, weight_files)
    dt = time.time() - t0
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    print(f"[{spec.name}] {dt:.1f}s (save {t_save:.1f}s), {size/1e6:.2f} MB, prompt attempt {attempt}, checks {json.dumps(checks)}", flush=True)
    return {"name": spec.name, "seconds": dt, "bytes": size}


# --------------------------------------------------------------------------------------------
# verification (fresh process): reload fixture, recompute, compare


@torch.no_grad()
def verify(root: str) -> int:
    bad = 0
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        ref_path = os.path.join(path, "reference.safetensors")
        if not os.path.isfile(ref_path):
            continue
        t0 = time.time()
        ref = {}
        with safe_open(ref_path, "pt") as f:
            for k in f.keys():
                ref[k] = f.get_tensor(k)
        model = FalconMambaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        tol = json.load(open(os.path.join(path, "reference.json"))).get("decode_tolerance", DECODE_TOL)
        pos = ref["positions"]
        msgs = []
        for pre in sorted({k.split(".")[0] for k in ref if k.startswith("b")}):
            ids = ref[pre + ".input_ids"]
            logits = model(input_ids=ids, use_cache=False).logits.float()[:, pos]
            eq = torch.equal(logits, ref[pre + ".logits"])
            d = float((logits - ref[pre + ".logits"]).abs().max())
            gen = ref[pre + ".generated_ids"]
            L = ids.shape[1]
            full = model(input_ids=torch.cat([ids, gen[:, :-1]], 1), use_cache=False).logits.float()
            d_dec = float((full[:, L - 1 :] - ref[pre + ".decode_logits"]).abs().max())
            am = torch.equal(ref[pre + ".decode_logits"].argmax(-1), gen)
            new_ids, new_dec, _ = greedy_decode(model, ids, gen.shape[1])
            d_redo = float((new_dec - ref[pre + ".decode_logits"]).abs().max())
            ok = eq and d_dec <= tol and am and d_redo <= tol and torch.equal(new_ids, gen)
            bad += not ok
            msgs.append(
                f"{pre}: logits bit-equal={eq} (maxabs {d:.3g}), stored decode vs full forward maxabs {d_dec:.3g}, "
                f"argmax==generated {am}, re-run step decode vs stored maxabs {d_redo:.3g}"
            )
        print(f"verify {name}: {'OK' if not bad else 'FAIL'} (tol {tol}) ({time.time()-t0:.1f}s) " + "; ".join(msgs), flush=True)
    return bad


def write_index(out_root: str, results: list[dict], suite: str):
    lines = [
        f"# Falcon Mamba oracle fixtures ({suite})",
        "",
        "Generated by `tools/make_fixtures.py --suite " + suite + "` (steering repo). Each folder holds `config.json` and the "
        "weights exactly as `save_pretrained` wrote them, `reference.safetensors` (tensors), `reference.json` "
        "(ids + metadata + checks) and a `README.md` describing every tensor.",
        "",
        f"versions: {json.dumps(versions())}",
        "",
        "| fixture | size (bytes) | generation time (s) |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {r['name']} | {r['bytes']} | {r['seconds']:.1f} |" for r in results]
    open(os.path.join(out_root, "README.md"), "w").write("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="output folder (one sub-folder per fixture)")
    ap.add_argument("--suite", default="shared", help=f"built in: {', '.join(sorted(SUITES))}; or one from --specs")
    ap.add_argument("--specs", default=None, help="JSON file with extra suites (default: ../heldout/fixture_specs.json if present)")
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--verify", action="store_true", help="only re-check existing fixtures under OUT")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.verify:
        return 1 if verify(args.out) else 0
    suites = dict(SUITES)
    specs_path = args.specs or (DEFAULT_SPECS if os.path.isfile(DEFAULT_SPECS) else None)
    if specs_path:
        suites.update(load_specs(specs_path))
    if args.suite not in suites:
        ap.error(f"unknown suite {args.suite!r}; known: {', '.join(sorted(suites))}")
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    results = []
    for spec in suites[args.suite]:
        if args.only and spec.name not in args.only:
            continue
        results.append(make_fixture(spec, args.out))
    if not args.only:
        write_index(args.out, results, args.suite)
    print(f"total {time.time()-t0:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
