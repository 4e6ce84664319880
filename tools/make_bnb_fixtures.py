#!/usr/bin/env python3
"""bitsandbytes 4-bit parity fixtures: `bnb-fp4`, `bnb-nf4`, `bnb-fp4-dq`, `bnb-nf4-dq`.

Each folder is a Falcon Mamba checkpoint in the layout transformers' `save_pretrained` writes for a
`BitsAndBytesConfig(load_in_4bit=True, ...)` model (see DESIGN.md §8), plus the usual
`reference.safetensors` / `reference.json` (same format as `tools/make_fixtures.py`, so the parity
tests pick them up) and `dequantized.safetensors` (every quantized weight, dequantized by
bitsandbytes, f32 [out, in]) for an element-for-element dequantisation test.

Procedure, per variant (quant_type fp4|nf4, double quantisation off|on):

1. a small random FalconMamba (seeded, perturbed like make_fixtures.py) in float32;
2. every mixer Linear weight (in_proj, x_proj, dt_proj, out_proj; not the biases) goes through
   `bitsandbytes.functional.quantize_4bit(w, blocksize=64, quant_type=..., compress_statistics=dq,
   quant_storage=torch.uint8)` on the CPU; `<linear>.weight` = the packed u8 tensor and
   `<linear>.weight.<key>` = `quant_state.as_dict(packed=True)[key]` (what bitsandbytes'
   `Linear4bit._save_to_state_dict` writes); everything else stays float32;
3. config.json = the float32 config plus `quantization_config` = `BitsAndBytesConfig(...).to_dict()`;
4. the folder is re-read: each weight is rebuilt with `QuantState.from_dict` and
   `dequantize_4bit` (as bitsandbytes loads it), put into a float32 FalconMambaForCausalLM, and the
   references are computed from that model exactly as make_fixtures.py does;
5. checks: bitsandbytes' dequantisation equals, bit for bit, the plain formula (numpy)
   w[i] = quant_map[code(i)] * absmax[i // 64] (absmax with double quant =
   nested_quant_map[q[j]] * nested_absmax[j // 256] + nested_offset, all f32, no FMA);
   and, when `accelerate` is importable, transformers' own path
   (`from_pretrained(f32 dir, quantization_config=..., device_map="cpu").save_pretrained`) writes
   the very same tensors (names, dtypes, shapes, bytes) and the same quantization_config, and
   transformers + bitsandbytes load this folder to the same dequantized weights.

Usage (venv with torch, transformers, safetensors, numpy, bitsandbytes; accelerate optional):

    python tools/make_bnb_fixtures.py [OUT_ROOT]        # default tests/fixtures
    options: --only NAME [NAME ...]   --threads N (default 1)
"""

from __future__ import annotations

import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # bitsandbytes wraps some fallbacks in torch.compile

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from math import prod  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import BitsAndBytesConfig, FalconMambaConfig, FalconMambaForCausalLM  # noqa: E402

import bitsandbytes  # noqa: E402
import bitsandbytes.functional as bnbF  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
LINEARS = ("in_proj", "x_proj", "dt_proj", "out_proj")
BLOCKSIZE = 64

# The tiny fixture's config, except: expand 1 (intermediate_size 64) and vocab 128, so that every
# folder (weights + f32 dequantized copy + references) stays under 300 KB; in_proj, x_proj and
# out_proj have input dim 64 (one absmax block per row), dt_proj's input dim is time_step_rank = 4
# (each 64-block spans 16 rows).
BNB_CONFIG = dict(hidden_size=64, num_hidden_layers=2, state_size=16, expand=1, conv_kernel=4, vocab_size=128,
                  initializer_range=0.3)
VARIANTS = [  # name, quant_type, double quant, prompt seed
    ("bnb-fp4", "fp4", False, 11),
    ("bnb-nf4", "nf4", False, 12),
    ("bnb-fp4-dq", "fp4", True, 13),
    ("bnb-nf4-dq", "nf4", True, 14),
]
MODEL_SEED = 5678
MIN_DISTINCT = 8


def versions() -> dict:
    v = mf.versions()
    v["bitsandbytes"] = bitsandbytes.__version__
    return v


# --------------------------------------------------------------------------------------------
# transformers < 5 compatibility for make_fixtures' cache helpers (4.x FalconMamba has its own
# FalconMambaCache and needs explicit cache positions; 5.x uses DynamicCache)


def _install_cache_compat() -> bool:
    if int(transformers.__version__.split(".")[0]) >= 5:
        return False

    @torch.no_grad()
    def greedy_decode(model, ids, n):
        out = model(input_ids=ids, use_cache=True)  # the model makes the cache (prefill positions 0..k-1)
        cache = out.cache_params
        snap = snapshot_cache(cache, model.config.num_hidden_layers)
        L = ids.shape[1]
        logits = [out.logits[:, -1].float()]
        toks = [logits[-1].argmax(-1)]
        for i in range(n - 1):
            out = model(input_ids=toks[-1][:, None], cache_params=cache, use_cache=True,
                        cache_position=torch.tensor([L + i]))
            logits.append(out.logits[:, -1].float())
            toks.append(logits[-1].argmax(-1))
        return torch.stack(toks, 1), torch.stack(logits, 1), snap

    @torch.no_grad()
    def forced_decode(model, ids, forced):
        out = model(input_ids=ids, use_cache=True)
        cache = out.cache_params
        L = ids.shape[1]
        logits = []
        for j in range(forced.shape[1]):
            out = model(input_ids=forced[:, j: j + 1], cache_params=cache, use_cache=True,
                        cache_position=torch.tensor([L + j]))
            logits.append(out.logits[:, -1].float())
        return torch.stack(logits, 1)

    def snapshot_cache(cache, n_layers):
        snap = {}
        for i in range(n_layers):
            snap[f"conv_state.{i}"] = cache.conv_states[i].detach().clone().float()
            snap[f"ssm_state.{i}"] = cache.ssm_states[i].detach().clone().float()
            snap[f"_dtype.conv_state.{i}"] = str(cache.conv_states[i].dtype)
            snap[f"_dtype.ssm_state.{i}"] = str(cache.ssm_states[i].dtype)
        return snap

    mf.greedy_decode = greedy_decode
    mf.forced_decode = forced_decode
    mf.snapshot_cache = snapshot_cache
    return True


# --------------------------------------------------------------------------------------------
# quantisation and the plain-formula check


def bnb_config(quant_type: str, dq: bool) -> BitsAndBytesConfig:
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=dq,
        bnb_4bit_compute_dtype=torch.float32,
        bnb_4bit_quant_storage=torch.uint8,
    )


def linear_names(cfg) -> list[str]:
    return [f"backbone.layers.{i}.mixer.{lin}" for i in range(cfg.num_hidden_layers) for lin in LINEARS]


def quantized_state_dict(model, quant_type: str, dq: bool) -> tuple[dict, dict]:
    """(state dict as transformers saves it for a bnb 4-bit model, {linear: QuantState})."""
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight")  # save_pretrained drops the tied copy
    states = {}
    for name in linear_names(model.config):
        w = sd.pop(name + ".weight")
        assert w.dtype == torch.float32 and w.shape[1] > 0
        packed, qs = bnbF.quantize_4bit(w, blocksize=BLOCKSIZE, quant_type=quant_type, compress_statistics=dq,
                                        quant_storage=torch.uint8)
        assert packed.dtype == torch.uint8 and tuple(packed.shape) == ((w.numel() + 1) // 2, 1), packed.shape
        sd[name + ".weight"] = packed.contiguous()
        for k, v in qs.as_dict(packed=True).items():
            sd[f"{name}.weight.{k}"] = v.detach().contiguous()
        states[name] = qs
    return sd, states


def bnb_group(f, name: str) -> dict:
    """The tensors of one quantized weight as bitsandbytes' loader sees them (prefix stripped)."""
    pre = name + ".weight."
    return {k[len(pre):]: f.get_tensor(k) for k in f.keys() if k.startswith(pre)}


def formula_dequant(packed: np.ndarray, group: dict) -> tuple[np.ndarray, dict]:
    """The plain formula in numpy, float32 throughout (no fused multiply-add)."""
    (qs_key,) = [k for k in group if k.startswith("quant_state.bitsandbytes__")]
    js = json.loads(bytes(group[qs_key].numpy().tobytes()).decode("utf-8"))
    shape = js["shape"]
    n = prod(shape)
    p = packed.reshape(-1)
    codes = np.empty(p.size * 2, np.uint8)
    codes[0::2] = p >> 4   # element 2k: high nibble
    codes[1::2] = p & 0xF  # element 2k+1: low nibble
    codes = codes[:n]
    qmap = group["quant_map"].numpy().astype(np.float32)
    if "nested_absmax" in group:
        q = group["absmax"].numpy()
        assert q.dtype == np.uint8
        nqm = group["nested_quant_map"].numpy().astype(np.float32)
        nab = group["nested_absmax"].numpy().astype(np.float32)
        j = np.arange(q.size)
        off = np.float32(js["nested_offset"])
        assert float(off) == js["nested_offset"], "nested_offset is not an exact f32 value"
        absmax = (nqm[q] * nab[j // js["nested_blocksize"]]).astype(np.float32) + off
        assert absmax.dtype == np.float32
    else:
        absmax = group["absmax"].numpy().astype(np.float32)
    i = np.arange(n)
    w = (qmap[codes] * absmax[i // js["blocksize"]]).astype(np.float32)
    return w.reshape(shape), js


def bits_equal(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> bool:
    a = a.numpy() if isinstance(a, torch.Tensor) else a
    b = b.numpy() if isinstance(b, torch.Tensor) else b
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


# --------------------------------------------------------------------------------------------
# one fixture


def load_dequantized_model(path: str) -> tuple[FalconMambaForCausalLM, dict, dict]:
    """Re-read the folder: f32 tensors as they are, each bnb weight via QuantState.from_dict +
    dequantize_4bit; a float32 FalconMambaForCausalLM holding them."""
    cfg_dict = json.load(open(os.path.join(path, "config.json")))
    cfg_dict.pop("quantization_config")
    cfg = FalconMambaConfig(**{k: v for k, v in cfg_dict.items() if k not in ("architectures", "transformers_version")})
    sd, deq, js = {}, {}, {}
    with safe_open(os.path.join(path, "model.safetensors"), "pt") as f:
        names = linear_names(cfg)
        for name in names:
            group = bnb_group(f, name)
            qs = bnbF.QuantState.from_dict(dict(group), device=torch.device("cpu"))
            packed = f.get_tensor(name + ".weight")
            w = bnbF.dequantize_4bit(packed, qs)
            assert w.dtype == torch.float32 and list(w.shape) == list(qs.shape)
            deq[name + ".weight"] = w.contiguous()
            wf, js[name] = formula_dequant(packed.numpy(), group)
            assert bits_equal(w, wf), f"{path}: plain formula != bitsandbytes dequantize_4bit for {name}"
            sd[name + ".weight"] = w
        for k in f.keys():
            if not any(k.startswith(n + ".weight") for n in names):
                sd[k] = f.get_tensor(k)
    model = FalconMambaForCausalLM(cfg).eval()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"lm_head.weight"}, missing
    if cfg.tie_word_embeddings:
        model.tie_weights()
        assert model.lm_head.weight.data_ptr() == model.backbone.embeddings.weight.data_ptr()
    for k, v in sd.items():
        assert torch.equal(model.state_dict()[k], v), k
    return model, deq, js


def transformers_crosscheck(f32_dir: str, path: str, quant_type: str, dq: bool, ref_model, prompts) -> dict:
    """transformers' own quantise-and-save path, and its load of this folder (needs accelerate)."""
    try:
        import accelerate  # noqa: F401
    except ImportError:
        return {"skipped": "accelerate not importable"}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        m = FalconMambaForCausalLM.from_pretrained(f32_dir, quantization_config=bnb_config(quant_type, dq),
                                                   device_map="cpu", dtype=torch.float32)
        m.save_pretrained(tmp)
        with safe_open(os.path.join(tmp, "model.safetensors"), "pt") as a, \
                safe_open(os.path.join(path, "model.safetensors"), "pt") as b:
            assert sorted(a.keys()) == sorted(b.keys()), (sorted(set(a.keys()) ^ set(b.keys())))
            for k in a.keys():
                assert bits_equal(a.get_tensor(k), b.get_tensor(k)), f"transformers' save differs at {k}"
        qa = json.load(open(os.path.join(tmp, "config.json")))["quantization_config"]
        qb = json.load(open(os.path.join(path, "config.json")))["quantization_config"]
        assert qa == qb, (qa, qb)
        out["transformers_save_identical"] = True
        del m
    # transformers + bitsandbytes loading this very folder
    # dtype=float32: without it transformers' bnb quantizer loads the unquantized tensors in float16
    m = FalconMambaForCausalLM.from_pretrained(path, device_map="cpu", dtype=torch.float32).eval()
    for name in linear_names(m.config):
        mod = m.get_submodule(name)
        assert type(mod).__name__ == "Linear4bit", (name, type(mod))
        w = bnbF.dequantize_4bit(mod.weight.data, mod.weight.quant_state)
        assert bits_equal(w, ref_model.get_submodule(name).weight.data), name
    out["transformers_load_dequant_identical"] = True
    # bitsandbytes' AVX512-bf16 CPU repacking asserts out_features % block_n == 0 (x_proj's 36 rows fail):
    # use its generic dequantise + matmul path instead
    for name in linear_names(m.config):
        m.get_submodule(name).support_avx512bf16_for_cpu = False
    with torch.no_grad():
        for key, (ids, _) in prompts.items():
            try:
                a = m(input_ids=ids, use_cache=False).logits.float()
            except Exception as e:  # bitsandbytes' CPU Linear4bit forward has shape limits (information only)
                out[f"{key}.transformers_bnb_forward"] = f"failed: {type(e).__name__}: {e}"
                continue
            b = ref_model(input_ids=ids, use_cache=False).logits.float()
            out[f"{key}.transformers_bnb_forward_vs_reference_logits_maxabs"] = float((a - b).abs().max())
    return out


def make_variant(name: str, quant_type: str, dq: bool, prompt_seed: int, out_root: str) -> dict:
    t0 = time.time()
    path = os.path.join(out_root, name)
    if os.path.exists(path):
        shutil.rmtree(path)
    os.makedirs(path)
    spec = mf.Spec(name, dict(BNB_CONFIG), seed=MODEL_SEED, prompt_seed=prompt_seed, prompt_len=12, batch=1,
                   n_new=16, n_forced=8, internals=True)
    model = mf.build_model(spec)

    with tempfile.TemporaryDirectory() as f32_dir:
        model.save_pretrained(f32_dir)  # config.json, generation_config.json as transformers writes them
        cfg = json.load(open(os.path.join(f32_dir, "config.json")))
        cfg["quantization_config"] = bnb_config(quant_type, dq).to_dict()
        json.dump(cfg, open(os.path.join(path, "config.json"), "w"), indent=2, sort_keys=True)
        open(os.path.join(path, "config.json"), "a").write("\n")
        shutil.copy(os.path.join(f32_dir, "generation_config.json"), path)

        sd, states = quantized_state_dict(model, quant_type, dq)
        save_file(sd, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})

        ref_model, deq, js = load_dequantized_model(path)
        for lin, qs in states.items():  # the reloaded weights are exactly the in-memory dequantisation
            w = bnbF.dequantize_4bit(sd[lin + ".weight"], qs)
            assert bits_equal(w, deq[lin + ".weight"]), lin
        save_file(deq, os.path.join(path, "dequantized.safetensors"), metadata={"fixture": name})

        cfg_obj = ref_model.config
        # like make_fixtures (greedy margin >= MIN_GREEDY_MARGIN), but also prefer a prompt whose greedy
        # continuation has >= MIN_DISTINCT distinct tokens (a 4-bit tiny model falls into short cycles)
        first_ok = None
        for attempt in range(21):
            prompts = mf.make_prompts(spec, cfg_obj.vocab_size, attempt)
            margins, distinct = [], []
            with torch.no_grad():
                for ids, _ in prompts.values():
                    toks, dec_logits, _ = mf.greedy_decode(ref_model, ids, spec.n_new)
                    margins.append(mf.top2_margin(dec_logits))
                    distinct += [len(set(r)) for r in toks.tolist()]
            if min(margins) >= mf.MIN_GREEDY_MARGIN:
                if first_ok is None:
                    first_ok = attempt
                if min(distinct) >= MIN_DISTINCT:
                    break
        else:
            attempt = first_ok if first_ok is not None else 0
            prompts = mf.make_prompts(spec, cfg_obj.vocab_size, attempt)

        tensors: dict = {}
        checks: dict = {}
        meta: dict = {
            "fixture": name,
            "versions": versions(),
            "torch_threads": torch.get_num_threads(),
            "model_seed": spec.seed,
            "perturbed": spec.perturb,
            "prompt_generator_seed": spec.prompt_seed * 1000 + attempt,
            "prompt_low_id": 12 if cfg_obj.vocab_size > 64 else 1,
            "prompt_len": spec.prompt_len,
            "batch_prefixes": list(prompts.keys()),
            "n_new": spec.n_new,
            "n_forced": spec.n_forced,
            "save_dtype": "float32",
            "weight_format": f"bitsandbytes 4-bit {quant_type}" + (" double-quant" if dq else ""),
            "weight_files": ["model.safetensors"],
            "logits_positions": "all",
            "decode_tolerance": spec.decode_tol,
        }
        mf.compute_refs(ref_model, spec, prompts, checks, tensors, meta)
        xcheck = transformers_crosscheck(f32_dir, path, quant_type, dq, ref_model, prompts)

    # how far the quantisation moved the logits (information only)
    f32_model = model.eval()
    with torch.no_grad():
        ids = prompts["b1"][0]
        checks["b1.quantized_vs_f32_model_logits_maxabs"] = float(
            (f32_model(input_ids=ids, use_cache=False).logits.float() - tensors["b1.logits"]).abs().max())
    checks["plain_formula_equals_bnb_dequantize_4bit"] = True
    checks.update(xcheck)

    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(path, "reference.safetensors"),
              metadata={"fixture": name})
    meta["checks"] = checks
    meta["tensors"] = {k: {"shape": s, "dtype": d} for k, s, d in mf.shapes_table(tensors)}
    meta["ids"] = {k: v.tolist() for k, v in tensors.items() if v.dtype == torch.int64}
    meta["quant_states"] = {k: v for k, v in js.items()}
    json.dump(meta, open(os.path.join(path, "reference.json"), "w"), indent=1)
    write_readme(path, spec, quant_type, dq, tensors, meta, checks, js)
    for f in os.listdir(path):
        os.chmod(os.path.join(path, f), 0o644)
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    assert size < 300_000, (name, size)
    print(f"[{name}] {time.time() - t0:.1f}s, {size} bytes, prompt attempt {attempt}, checks {json.dumps(checks)}",
          flush=True)
    return {"name": name, "bytes": size}


# --------------------------------------------------------------------------------------------
# README


def write_readme(path, spec, quant_type, dq, tensors, meta, checks, js):
    cfg = json.load(open(os.path.join(path, "config.json")))
    rows = []
    with safe_open(os.path.join(path, "model.safetensors"), "pt") as f:
        for k in sorted(f.keys()):
            t = f.get_slice(k)
            rows.append((k, t.get_shape(), t.get_dtype()))
    with safe_open(os.path.join(path, "dequantized.safetensors"), "pt") as f:
        deq_rows = [(k, f.get_slice(k).get_shape(), f.get_slice(k).get_dtype()) for k in sorted(f.keys())]
    example = "backbone.layers.0.mixer.in_proj"
    lines = [
        f"# Falcon Mamba bitsandbytes 4-bit fixture `{spec.name}`",
        "",
        f"Made by `tools/make_bnb_fixtures.py`: quant_type **{quant_type}**, double quantisation **{'on' if dq else 'off'}**, "
        "blocksize 64, storage uint8, in the layout transformers' `save_pretrained` writes for a "
        "`BitsAndBytesConfig(load_in_4bit=True, ...)` model (bitsandbytes `Linear4bit._save_to_state_dict`: "
        "`<linear>.weight` = packed codes, `<linear>.weight.<key>` = `QuantState.as_dict(packed=True)`).",
        "",
        f"- versions: {json.dumps(versions())}",
        f"- torch threads: {torch.get_num_threads()}",
        f"- model: `torch.manual_seed({spec.seed})` then `FalconMambaForCausalLM(FalconMambaConfig(**{json.dumps(spec.config)}))`, "
        f"then make_fixtures.py's seeded perturbation (`torch.Generator().manual_seed({spec.seed + 1})`: norms, D, A_log, conv bias).",
        "- quantized: the weights of `in_proj`, `x_proj`, `dt_proj`, `out_proj` in every layer, with "
        f"`bitsandbytes.functional.quantize_4bit(w_f32, blocksize=64, quant_type=\"{quant_type}\", compress_statistics={dq}, "
        "quant_storage=torch.uint8)` on the CPU. Everything else (embeddings = tied lm_head, norms, A_log, D, conv1d, "
        "dt_proj.bias) is float32 as saved.",
        f"- derived config: intermediate_size={cfg['intermediate_size']}, time_step_rank={cfg['time_step_rank']}, "
        f"vocab_size={cfg['vocab_size']}, tie_word_embeddings="
        + (str(cfg["tie_word_embeddings"]) if "tie_word_embeddings" in cfg else
           "absent from config.json (transformers 4.x writes only non-default values; the default is true: lm_head = embeddings)")
        + ". in_proj/x_proj/out_proj have input "
        "dim 64 (each absmax block is one row); dt_proj is [64, 4], so each 64-block spans 16 rows.",
        f"- prompts: `torch.Generator().manual_seed({meta['prompt_generator_seed']})`, ids in [{meta['prompt_low_id']}, vocab), "
        f"L={spec.prompt_len}, batch 1 only, greedy new tokens {spec.n_new}, forced steps {spec.n_forced}.",
        "",
        "Dequantisation (checked bit for bit against bitsandbytes' `dequantize_4bit` on every weight, numpy, float32, "
        "no fused multiply-add):",
        "",
        "- codes: byte k of `<linear>.weight` holds element 2k of the row-major [out, in] matrix in its HIGH nibble and "
        "element 2k+1 in its LOW nibble;",
        "- `w[i] = quant_map[code(i)] * absmax[i // blocksize]`;",
    ]
    if dq:
        lines.append("- with double quantisation `absmax` is u8: `absmax_f32[j] = nested_quant_map[absmax[j]] * "
                     "nested_absmax[j // nested_blocksize] + nested_offset` (product rounded to f32, then an f32 add; "
                     "`nested_offset` is a JSON number that is an exact f32 value). Here every weight has at most 64 "
                     "absmax entries (< nested_blocksize 256), so `nested_absmax` has ONE entry and the only nested block "
                     "is partial.")
    lines += [
        "",
        "References are computed from the weights AS RELOADED from this folder: each quantized weight rebuilt with "
        "`QuantState.from_dict` + `dequantize_4bit` into a float32 `FalconMambaForCausalLM` (pure-PyTorch path, "
        "model.eval(), torch.no_grad()); the same float32 weights are in `dequantized.safetensors`.",
        "",
        "## config.json `quantization_config`",
        "",
        "```json",
        json.dumps(cfg["quantization_config"], indent=2, sort_keys=True),
        "```",
        "",
        f"## model.safetensors (metadata {{\"format\": \"pt\"}})",
        "",
        f"quant_state JSON of `{example}.weight` (bytes of `{example}.weight.quant_state.bitsandbytes__{quant_type}`):",
        "",
        "```json",
        json.dumps(js[example]),
        "```",
        "",
        "| name | shape | dtype |",
        "| --- | --- | --- |",
    ]
    lines += [f"| `{k}` | {list(s)} | {d} |" for k, s, d in rows]
    lines += [
        "",
        "## dequantized.safetensors",
        "",
        "`<linear>.weight`: float32 [out, in] (PyTorch layout) = `bitsandbytes.functional.dequantize_4bit` of the stored weight.",
        "",
        "| name | shape | dtype |",
        "| --- | --- | --- |",
    ]
    lines += [f"| `{k}` | {list(s)} | {d} |" for k, s, d in deq_rows]
    lines += [
        "",
        "## reference.safetensors",
        "",
        "Same format as the other parity fixtures (`tools/make_fixtures.py`); batch 1 only (prefix `b1.`). "
        "Every float tensor is float32, every id tensor int64."
        + (f" (transformers {transformers.__version__}: the step decodes use FalconMambaCache with cache_position "
           "L+i instead of a DynamicCache; same semantics.)" if int(transformers.__version__.split(".")[0]) < 5 else ""),
        "",
    ]
    lines += [f"- `{k}`: {d}" for k, d in mf.DESCRIPTIONS if not k.endswith("bf16_native")]
    lines += ["", "| name | shape | dtype |", "| --- | --- | --- |"]
    lines += [f"| `{k}` | {s} | {d} |" for k, s, d in mf.shapes_table(tensors)]
    lines += [
        "",
        "## Checks done when generating (also in reference.json)",
        "",
        "`quantized_vs_f32_model_logits_maxabs` is how far 4-bit quantisation moved the logits from the unquantized "
        "model (information only). `transformers_save_identical`: transformers' own quantise-and-save path wrote "
        "exactly these tensors and this quantization_config. `transformers_bnb_forward_*`: transformers + bitsandbytes "
        "running this folder (Linear4bit on CPU, `support_avx512bf16_for_cpu` off) vs the references (information only).",
        "",
        "```json",
        json.dumps(checks, indent=2),
        "```",
        "",
    ]
    open(os.path.join(path, "README.md"), "w").write("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", default=os.path.join(ROOT, "tests", "fixtures"))
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    compat = _install_cache_compat()
    if compat:
        print(f"transformers {transformers.__version__}: using FalconMambaCache decode helpers", flush=True)
    os.makedirs(args.out, exist_ok=True)
    for name, qt, dq, ps in VARIANTS:
        if args.only and name not in args.only:
            continue
        make_variant(name, qt, dq, ps, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
