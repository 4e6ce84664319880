#!/usr/bin/env python3
# ruff: noqa: E501
# --------------------------------------------------------------------------------------------
# gguf-py 0.19.0 source, gguf/quants.py, pasted verbatim (the script checks at run time that the
# installed package still has exactly this text):
#
# # round away from zero
# # ref: https://stackoverflow.com/a/59143326/22827863
# def np_roundf(n: np.ndarray) -> np.ndarray:
#     a = abs(n)
#     floored = np.floor(a)
#     b = floored + np.floor(2 * (a - floored))
#     return np.sign(n) * b
#
# class __Quant(ABC):   # (excerpt: how a tensor is cut into blocks)
#     @classmethod
#     def quantize_rows(cls, rows: np.ndarray) -> np.ndarray:
#         rows = rows.astype(np.float32, copy=False)
#         shape = rows.shape
#         n_blocks = rows.size // cls.block_size
#         blocks = rows.reshape((n_blocks, cls.block_size))
#         blocks = cls.quantize_blocks(blocks)
#         assert blocks.dtype == np.uint8
#         assert blocks.shape[-1] == cls.type_size
#         return blocks.reshape(cls.__shape_to_bytes(shape))
#
#     @classmethod
#     def dequantize_rows(cls, rows: np.ndarray) -> np.ndarray:
#         rows = rows.view(np.uint8)
#         shape = rows.shape
#         n_blocks = rows.size // cls.type_size
#         blocks = rows.reshape((n_blocks, cls.type_size))
#         blocks = cls.dequantize_blocks(blocks)
#         assert blocks.dtype == np.float32
#         assert blocks.shape[-1] == cls.block_size
#         return blocks.reshape(cls.__shape_from_bytes(shape))
#
# class Q4_0(__Quant, qtype=GGMLQuantizationType.Q4_0):
#     @classmethod
#     def quantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
#         n_blocks = blocks.shape[0]
#
#         imax = abs(blocks).argmax(axis=-1, keepdims=True)
#         max = np.take_along_axis(blocks, imax, axis=-1)
#
#         d = max / -8
#         with np.errstate(divide="ignore"):
#             id = np.where(d == 0, 0, 1 / d)
#         qs = np.trunc((blocks * id) + np.float32(8.5), dtype=np.float32).astype(np.uint8).clip(0, 15)
#
#         qs = qs.reshape((n_blocks, 2, cls.block_size // 2))
#         qs = qs[..., 0, :] | (qs[..., 1, :] << np.uint8(4))
#
#         d = d.astype(np.float16).view(np.uint8)
#
#         return np.concatenate([d, qs], axis=-1)
#
#     @classmethod
#     def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
#         n_blocks = blocks.shape[0]
#
#         d, qs = np.hsplit(blocks, [2])
#
#         d = d.view(np.float16).astype(np.float32)
#
#         qs = qs.reshape((n_blocks, -1, 1, cls.block_size // 2)) >> np.array([0, 4], dtype=np.uint8).reshape((1, 1, 2, 1))
#         qs = (qs & np.uint8(0x0F)).reshape((n_blocks, -1)).astype(np.int8) - np.int8(8)
#
#         return (d * qs.astype(np.float32))
#
# class Q8_0(__Quant, qtype=GGMLQuantizationType.Q8_0):
#     @classmethod
#     # Implementation of Q8_0 with bit-exact same results as reference implementation in ggml-quants.c
#     def quantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
#
#         d = abs(blocks).max(axis=1, keepdims=True) / 127
#         with np.errstate(divide="ignore"):
#             id = np.where(d == 0, 0, 1 / d)
#         qs = np_roundf(blocks * id)
#
#         # (n_blocks, 2)
#         d = d.astype(np.float16).view(np.uint8)
#         # (n_blocks, block_size)
#         qs = qs.astype(np.int8).view(np.uint8)
#
#         return np.concatenate([d, qs], axis=1)
#
#     @classmethod
#     def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
#         d, x = np.split(blocks, [2], axis=1)
#         d = d.view(np.float16).astype(np.float32)
#         x = x.view(np.int8).astype(np.float32)
#
#         return (x * d)
#
# # GGML_QUANT_SIZES: Q4_0 = (32, 2 + 16), Q8_0 = (32, 2 + 32)  (block_size, type_size)
#
# --------------------------------------------------------------------------------------------
# Dtype facts (checked by this script at run time with numpy 2.x, NEP 50 promotion; `blocks` is f32):
#
#   Q8_0  amax = max|x| over the 32-block                         f32
#         d    = amax / 127                                        f32 (f32 division, correctly rounded)
#         id   = 0 if d == 0 else 1 / d                            f32 (f32 reciprocal of the UNROUNDED f32 d,
#                                                                       NOT of the f16-rounded stored d)
#         q    = np_roundf(x * id)                                 f32 product, then round half AWAY from zero
#                                                                  (= C roundf / Rust f32::round, NOT round_ties_even)
#         stored d = f16(d), round-to-nearest-even (overflow -> +inf; d >= 0 always)
#   Q4_0  m    = the SIGNED element with the largest |x| (argmax: FIRST one on ties)
#         d    = m / -8                                            f32 (sign kept; d is -0.0 for an all-zero block
#                                                                       since +0 / -8 = -0 -> f16 bytes 00 80)
#         id   = 0 if d == 0 else 1 / d                            f32
#         q    = min(15, trunc(x * id + 8.5f32))                   f32 product, f32 add (NOT fused: two roundings),
#                                                                  trunc (value is >= 0 up to rounding), u8, clip 15
#                                                                  i.e. round half UP of x*id, then +8; x = -m gives 16 -> 15
#         nibbles: byte j = q[j] | q[j + 16] << 4 (j in 0..16)
#         stored d = f16(d) (may be negative, -0.0, subnormal, or +/-inf)
#   dequant: f32(f16 d) * f32(q) (Q8_0: q = i8; Q4_0: q = nibble - 8), one f32 multiply (always exact unless
#         d is inf: inf * 0 = NaN).
# --------------------------------------------------------------------------------------------

"""Byte-exact GGUF Q8_0 / Q4_0 oracle: `tests/fixtures/quant/gguf-oracle.safetensors`.

Every `case<N>.input` (f32 [rows, 64 or 96]) is quantized with gguf-py's
`gguf.quants.quantize(x, GGMLQuantizationType.Q8_0 / Q4_0)` (the numpy port that llama.cpp's
convert_hf_to_gguf.py uses, bit-exact with ggml-quants.c's quantize_row_q8_0_ref /
quantize_row_q4_0_ref) and dequantized back with `gguf.quants.dequantize`.

Usage (venv with numpy, safetensors, gguf==0.19.0):

    python tools/make_quant_oracle.py [OUT_DIR]      # default tests/fixtures/quant

The script is deterministic (numpy Generator seeds fixed below).
"""

from __future__ import annotations

import inspect
import json
import os
import platform
import sys
import textwrap
import warnings

import numpy as np
import safetensors
from safetensors.numpy import load_file, save_file

import gguf
from gguf import GGMLQuantizationType as QT
from gguf import quants

try:
    from importlib.metadata import version as _pkg_version
except ImportError:  # pragma: no cover
    _pkg_version = None

Q8, Q4 = QT.Q8_0, QT.Q4_0
ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "gguf": _pkg_version("gguf") if _pkg_version else getattr(gguf, "__version__", "?"),
        "safetensors": safetensors.__version__,
    }


# --------------------------------------------------------------------------------------------
# self-checks: the pasted source above is what is installed, and the dtype facts hold


def pasted_comment() -> str:
    """The leading `#` comment block of this file, with the `# ` prefix removed."""
    out = []
    for ln in open(os.path.abspath(__file__)).read().splitlines()[1:]:
        if not ln.startswith("#"):
            break
        out.append(ln[2:] if ln.startswith("# ") else ln[1:])
    return "\n".join(out)


def check_pasted_source() -> None:
    doc = pasted_comment()
    for fn in (quants.np_roundf, quants.Q4_0.quantize_blocks, quants.Q4_0.dequantize_blocks,
               quants.Q8_0.quantize_blocks, quants.Q8_0.dequantize_blocks):
        src = textwrap.dedent(inspect.getsource(fn))
        body = [ln for ln in src.splitlines() if ln.strip()]
        # compare dedented, blank-line-free text
        pasted = "\n".join(ln for ln in textwrap.dedent(doc).splitlines() if ln.strip())
        norm_body = "\n".join(ln.strip() for ln in body)
        norm_pasted = "\n".join(ln.strip() for ln in pasted.splitlines())
        assert norm_body in norm_pasted, f"installed gguf differs from the pasted source: {fn.__qualname__}"
    assert quants.GGML_QUANT_SIZES[Q4] == (32, 18) and quants.GGML_QUANT_SIZES[Q8] == (32, 34)


def check_dtypes() -> dict:
    b = np.linspace(-3, 2, 64, dtype=np.float32).reshape(2, 32)
    d8 = abs(b).max(axis=1, keepdims=True) / 127
    id8 = np.where(d8 == 0, 0, 1 / d8)
    imax = abs(b).argmax(axis=-1, keepdims=True)
    d4 = np.take_along_axis(b, imax, axis=-1) / -8
    id4 = np.where(d4 == 0, 0, 1 / d4)
    t4 = (b * id4) + np.float32(8.5)
    facts = {
        "q8_0.d": str(d8.dtype), "q8_0.id": str(id8.dtype), "q8_0.x*id": str((b * id8).dtype),
        "q8_0.np_roundf": str(quants.np_roundf(b * id8).dtype),
        "q4_0.d": str(d4.dtype), "q4_0.id": str(id4.dtype), "q4_0.x*id+8.5": str(t4.dtype),
    }
    assert all(v == "float32" for v in facts.values()), facts
    return facts


# --------------------------------------------------------------------------------------------
# reference re-implementations used only to FIND discriminating inputs (never stored): plausible
# WRONG ports. Each returns codes (Q8_0: i8 value; Q4_0: nibble 0..15) per element of [n, 32] blocks.


def _q8_scale(b):
    return np.abs(b).max(axis=1, keepdims=True)


def _q4_max(b):
    return np.take_along_axis(b, np.abs(b).argmax(axis=-1, keepdims=True), axis=-1)


def _away(v):
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def _safe(fn):
    def wrapped(blocks):
        with np.errstate(all="ignore"):
            return fn(blocks.astype(np.float32))
    return wrapped


WRONG_Q8 = {
    # d and x/d in f64
    "f64 division": _safe(lambda b: _away(np.where(_q8_scale(b) == 0, 0, b.astype(np.float64) / (_q8_scale(b).astype(np.float64) / 127)))),
    # f32 d, but x / d instead of x * (1/d)
    "f32 x/d instead of x*(1/d)": _safe(lambda b: _away(np.where(_q8_scale(b) == 0, np.float32(0), b / (_q8_scale(b) / np.float32(127))))),
    # f32 id, product kept in f64
    "f64 product x*id": _safe(lambda b: _away(b.astype(np.float64) * np.where(_q8_scale(b) == 0, 0, np.float32(1) / (_q8_scale(b) / np.float32(127))).astype(np.float64))),
    # right arithmetic, round half to even
    "round half to even": _safe(lambda b: np.rint(b * np.where(_q8_scale(b) == 0, np.float32(0), np.float32(1) / (_q8_scale(b) / np.float32(127))))),
}

WRONG_Q4 = {
    "f64 division": _safe(lambda b: np.clip(np.trunc(np.where(_q4_max(b) == 0, 0, b.astype(np.float64) / (_q4_max(b).astype(np.float64) / -8)) + 8.5), 0, 15)),
    "f32 x/d instead of x*(1/d)": _safe(lambda b: np.clip(np.trunc(np.where(_q4_max(b) == 0, np.float32(0), b / (_q4_max(b) / np.float32(-8))) + np.float32(8.5)), 0, 15)),
    # fused multiply-add x*id + 8.5 with one rounding (emulated: exact f64 product, f64 add, one f32 rounding)
    "fused x*id+8.5": _safe(lambda b: np.clip(np.trunc((b.astype(np.float64) * np.where(_q4_max(b) == 0, np.float32(0), np.float32(1) / (_q4_max(b) / np.float32(-8))).astype(np.float64) + 8.5).astype(np.float32)), 0, 15)),
    # round(x*id) + 8 with round half away from zero (differs from round-half-up on negative ties)
    "round(x*id)+8 (half away from zero)": _safe(lambda b: np.clip(_away(b * np.where(_q4_max(b) == 0, np.float32(0), np.float32(1) / (_q4_max(b) / np.float32(-8)))) + 8, 0, 15)),
}


def gguf_codes(blocks: np.ndarray, qt) -> np.ndarray:
    if qt == Q8:
        return quants.quantize(blocks, Q8).reshape(-1, 34)[:, 2:].view(np.int8).astype(np.float64)
    raw = quants.quantize(blocks, Q4).reshape(-1, 18)[:, 2:]
    return np.concatenate([raw & 0xF, raw >> 4], axis=1).astype(np.float64)


def wrong_counts(x: np.ndarray, qt) -> dict:
    blocks = x.reshape(-1, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = gguf_codes(blocks, qt)
        return {name: int((fn(blocks) != g).sum()) for name, fn in (WRONG_Q8 if qt == Q8 else WRONG_Q4).items()}


def discriminating_block(rng: np.random.Generator, kind: str, amax: float, sign_of_max: float) -> np.ndarray:
    """One 32-block whose element 0 is the max (|x| = amax, sign given) and whose other 31 elements
    lie within a few ulps of a rounding boundary and get a DIFFERENT code from gguf than from at least
    one of the WRONG_* ports (round-robin over the ports so that each is caught; falls back to
    exact-boundary values if not enough are found)."""
    qt = Q8 if kind == "q8" else Q4
    wrong = WRONG_Q8 if kind == "q8" else WRONG_Q4
    m = np.float32(sign_of_max * amax)
    if kind == "q8":
        d = np.float32(np.float32(abs(m)) / np.float32(127))
        ks = np.arange(-126, 126) + 0.5          # x*id near k + 0.5
    else:
        d = np.float32(m / np.float32(-8))
        ks = np.arange(-8, 8) + 0.5              # x*id + 8.5 near an integer  <=>  x*id near k + 0.5
    cands = []
    for k in ks:
        x0 = np.float32(np.float64(k) * np.float64(d))
        up = dn = x0
        cands.append(x0)
        for _ in range(16):
            up = np.nextafter(up, np.float32(np.inf), dtype=np.float32)
            dn = np.nextafter(dn, np.float32(-np.inf), dtype=np.float32)
            cands += [up, dn]
    cands = np.array([c for c in cands if abs(c) < abs(m)], dtype=np.float32)
    blk = np.zeros((cands.size, 32), dtype=np.float32)
    blk[:, 0] = m
    blk[:, 1] = cands
    g = gguf_codes(blk, qt)[:, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        diff = {name: np.flatnonzero(fn(blk)[:, 1] != g) for name, fn in wrong.items()}
    picked: list[int] = []
    order = {name: rng.permutation(idx).tolist() for name, idx in diff.items()}
    while len(picked) < 31 and any(order.values()):
        for name in wrong:
            while order[name]:
                i = order[name].pop()
                if i not in picked:
                    picked.append(i)
                    break
            if len(picked) >= 31:
                break
    vals = [cands[i] for i in picked]
    while len(vals) < 31:
        vals.append(np.float32(np.float64(rng.choice(ks)) * np.float64(d)))
    return np.array([m] + vals, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# cases


def build_cases() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(20261130)
    cases: list[tuple[str, np.ndarray]] = []

    # 0: plain random normal values
    cases.append(("normal random values, randn * 1.0", rng.standard_normal((4, 64)).astype(np.float32)))

    # 1: exact rounding ties
    half = np.arange(-16, 16, dtype=np.float32) + np.float32(0.5)   # -15.5 .. 15.5
    r0b0 = np.concatenate([[127.0], np.linspace(-120.5, 110.5, 31).round() + 0.5]).astype(np.float32)  # Q8: d = 1, id = 1
    r0b1 = np.concatenate([[-31.75], (np.arange(-15, 16) + 0.5) / 4]).astype(np.float32)             # Q8: d = 0.25, id = 4
    r1b0 = np.concatenate([[-8.0], (np.arange(-8, 7) + 0.5), (np.arange(-8, 8) + 0.5)]).astype(np.float32)  # Q4: d = 1, id = 1
    r1b1 = np.concatenate([[4.0], (np.arange(-8, 8) + 0.5) / 2, (np.arange(-7, 8) + 0.5) / 2]).astype(np.float32)  # Q4: d = -0.5, id = -2
    assert r0b0.size == r0b1.size == r1b0.size == r1b1.size == 32, (r0b0.size, r0b1.size, r1b0.size, r1b1.size)
    ties = np.stack([np.concatenate([r0b0, r0b1]), np.concatenate([r1b0, r1b1])])
    del half
    cases.append((
        "exact ties: row0 block0 max 127 (Q8 d=1, id=1) with x = k+0.5; row0 block1 max -31.75 (Q8 d=0.25, id=4) with "
        "x = (k+0.5)/4; row1 block0 max -8 (Q4 d=1, id=1) with x = k+0.5 (x*id+8.5 an exact integer); row1 block1 "
        "max 4 (Q4 d=-0.5, id=-2) with x = (k+0.5)/2. Q8_0 rounds half away from zero; Q4_0 trunc(x*id+8.5) rounds half up.",
        ties,
    ))

    # 2: special blocks
    zero = np.zeros(32, np.float32)
    negmax = (rng.uniform(-1, 1, 32) * 2).astype(np.float32)
    negmax[7] = np.float32(-3.0)
    opp_neg_first = (rng.uniform(-1, 1, 32)).astype(np.float32)
    opp_neg_first[3], opp_neg_first[20] = np.float32(-2.5), np.float32(2.5)
    opp_pos_first = (rng.uniform(-1, 1, 32)).astype(np.float32)
    opp_pos_first[5], opp_pos_first[6] = np.float32(1.75), np.float32(-1.75)
    negzero = np.full(32, -0.0, np.float32)
    const_neg = np.full(32, -0.3, np.float32)
    special = np.stack([
        np.concatenate([zero, negmax]),
        np.concatenate([opp_neg_first, opp_pos_first]),
        np.concatenate([negzero, const_neg]),
    ])
    cases.append((
        "special blocks: row0 = [all +0.0 | block whose max |x| is negative (-3.0 at index 7)]; row1 = [equal max "
        "magnitudes -2.5 (idx 3) then +2.5 (idx 20): argmax picks the first, Q4 d = +0.3125 and the +2.5 element hits "
        "16 -> clipped to 15 | +1.75 (idx 5) then -1.75 (idx 6): Q4 d = -0.21875]; row2 = [all -0.0 | all -0.3 "
        "(every element is the max)]. Q4_0 of the all +0.0 block stores d = +0/-8 = -0.0 (f16 bytes 00 80); of the "
        "all -0.0 block d = +0.0 (00 00); every code of both zero blocks is 8 (Q4) / 0 (Q8).",
        special,
    ))

    # 3: tiny values (subnormal / underflowing f16 scales)
    def blk(amax, seed_scale=1.0):
        v = rng.uniform(-1, 1, 32).astype(np.float32) * np.float32(amax)
        v[rng.integers(0, 32)] = np.float32(amax) * (1 if rng.random() < 0.5 else -1)
        return v.astype(np.float32)
    tiny = np.stack([
        np.concatenate([blk(1.27e-4), blk(8e-6), blk(3e-7)]),
        np.concatenate([blk(1e-9), blk(1e-20), blk(5e-3)]),
    ])
    cases.append((
        "tiny values: per-block max |x| = 1.27e-4 (Q8 d ~ 1e-6, f16 subnormal), 8e-6 (Q4 d ~ 1e-6 and Q8 d ~ 6.3e-8: "
        "f16 subnormal), 3e-7 (Q8 d = 2.4e-9 rounds to f16 0; Q4 d = 3.75e-8 rounds up to the smallest f16 subnormal "
        "5.96e-8), 1e-9 and 1e-20 (d underflows to f16 "
        "+/-0: codes are full-range but dequantize to +/-0), 5e-3 (normal f16).",
        tiny,
    ))

    # 4: huge values (f16 scale overflow). Every |x| >= max/4 so no code is 0 (inf * 0 would be NaN).
    def big(amax):
        mag = rng.uniform(0.25, 1.0, 32)
        sgn = np.where(rng.random(32) < 0.5, -1.0, 1.0)
        v = (mag * sgn * amax).astype(np.float32)
        v[rng.integers(0, 32)] = np.float32(amax)
        return v
    huge = np.stack([
        np.concatenate([big(8319008.0), big(8321040.0)]),   # Q8 d = 65504 exactly (f16 max) | d = 65520 -> f16 inf
        np.concatenate([big(524032.0), big(3.0e38)]),       # Q4 d = -65504 (finite) | f32-near-max: both d -> inf
    ])
    cases.append((
        "huge values (every |x| >= max/4 so no code is 0): row0 block0 max 8319008 (Q8 d = 65504 = f16 max, finite; "
        "Q4 d = -1039876 -> -inf), row0 block1 max 8321040 (Q8 d = 65520 rounds to f16 +inf), row1 block0 max 524032 "
        "(Q4 d = -65504 finite; Q8 d = 4126.2), row1 block1 max 3e38 (both scales +/-inf). Dequantized values are "
        "+/-inf where the stored f16 scale is inf. numpy warns 'overflow encountered in cast' but gguf does not fail.",
        huge,
    ))

    # 5: elements that catch plausible wrong ports (see WRONG_Q8 / WRONG_Q4)
    disc = np.stack([
        np.concatenate([discriminating_block(rng, "q8", 1.3, 1.0), discriminating_block(rng, "q8", 0.0173, -1.0)]),
        np.concatenate([discriminating_block(rng, "q8", 611.0, -1.0), discriminating_block(rng, "q8", 3.3e-3, 1.0)]),
        np.concatenate([discriminating_block(rng, "q4", 2.7, 1.0), discriminating_block(rng, "q4", 0.61, -1.0)]),
        np.concatenate([discriminating_block(rng, "q4", 97.0, -1.0), discriminating_block(rng, "q4", 0.0041, 1.0)]),
    ])
    cases.append((
        "arithmetic discriminators: element 0 of each block is the max; the other 31 elements sit within 16 ulps of a "
        "rounding boundary and were picked (round-robin) so that gguf's code differs from that of at least one "
        "plausible wrong port: Q8_0 (rows 0-1): f64 division, f32 x/d instead of x*(1/d), f64 product, round half to "
        "even; Q4_0 (rows 2-3): f64 division, f32 x/d, fused x*id+8.5, round-half-away-from-zero(x*id)+8. To match, "
        "use f32 d = amax/127 (Q4: m/-8), f32 id = 1/d, f32 x*id, and for Q4 a separate f32 add of 8.5 then trunc.",
        disc,
    ))

    # 6: mixed scales and outliers
    mixed = rng.standard_normal((3, 96)).astype(np.float32)
    scales = np.array([1e-3, 1.0, 1e3, 0.05, 37.0, 1e-2, 2.0, 0.5, 1e2], np.float32).reshape(3, 3)
    mixed = (mixed.reshape(3, 3, 32) * scales[..., None]).reshape(3, 96).astype(np.float32)
    mixed[0, 40] = np.float32(-50.0)     # outlier in block 1 of row 0
    mixed[2, 95] = np.float32(3.0e2)     # outlier at the last element
    mixed[1, 33] = mixed[1, 32] = np.float32(-2e3)  # equal repeated max
    cases.append(("mixed: randn with per-block scales 1e-3 .. 1e3, outliers, a repeated equal max", mixed))
    return cases


def main() -> int:
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "fixtures", "quant")
    os.makedirs(out_dir, exist_ok=True)
    check_pasted_source()
    facts = check_dtypes()
    cases = build_cases()

    tensors: dict[str, np.ndarray] = {}
    desc: dict[str, str] = {}
    notes: dict[str, list[str]] = {}
    for n, (text, x) in enumerate(cases):
        x = np.ascontiguousarray(x, dtype=np.float32)
        assert x.ndim == 2 and 2 <= x.shape[0] <= 4 and x.shape[1] in (64, 96), x.shape
        k = f"case{n}"
        tensors[f"{k}.input"] = x
        desc[k] = text
        for name, qt in (("q8_0", Q8), ("q4_0", Q4)):
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                q = quants.quantize(x, qt)
                dq = quants.dequantize(q, qt)
            if w:
                notes.setdefault(k, []).append(f"{name}: numpy warned: " + "; ".join(sorted({str(i.message) for i in w})))
            assert q.dtype == np.uint8 and q.shape == (x.shape[0], x.shape[1] // 32 * (34 if qt == Q8 else 18)), q.shape
            assert dq.dtype == np.float32 and dq.shape == x.shape
            tensors[f"{k}.{name}"] = np.ascontiguousarray(q)
            tensors[f"{k}.{name}_dequant"] = np.ascontiguousarray(dq)

    # how many stored codes each plausible wrong port would get wrong (case5 = the targeted case)
    allx = np.concatenate([tensors[f"case{n}.input"].reshape(-1, 32) for n in range(len(cases))])
    disc = {
        "case5": {"q8_0": wrong_counts(tensors["case5.input"], Q8), "q4_0": wrong_counts(tensors["case5.input"], Q4)},
        "all cases": {"q8_0": wrong_counts(allx, Q8), "q4_0": wrong_counts(allx, Q4)},
    }
    nonfinite = {k: int((~np.isfinite(v)).sum()) for k, v in tensors.items() if v.dtype == np.float32 and not np.isfinite(v).all()}

    path = os.path.join(out_dir, "gguf-oracle.safetensors")
    save_file(tensors, path, metadata={"cases": json.dumps(desc, sort_keys=True)})
    os.chmod(path, 0o644)
    back = load_file(path)
    assert set(back) == set(tensors)
    for key, v in tensors.items():
        assert back[key].dtype == v.dtype and back[key].tobytes() == v.tobytes(), key

    size = os.path.getsize(path)
    assert size < 100_000, size
    write_readme(out_dir, tensors, desc, notes, facts, disc, nonfinite, size)
    print(f"wrote {path} ({size} bytes), {len(cases)} cases; codes a wrong port gets wrong: {json.dumps(disc)}; "
          f"non-finite dequant entries {nonfinite}; warnings {notes}")
    return 0


def write_readme(out_dir, tensors, desc, notes, facts, disc, nonfinite, size):
    lines = [
        "# GGUF Q8_0 / Q4_0 byte-exact oracle",
        "",
        "Made by `tools/make_quant_oracle.py` with gguf-py's own numpy quantiser (`gguf.quants.quantize` / "
        "`dequantize`, the code llama.cpp's `convert_hf_to_gguf.py` uses; bit-exact with ggml-quants.c "
        "`quantize_row_q8_0_ref` / `quantize_row_q4_0_ref`). The exact gguf-py source is pasted at the top of the script.",
        "",
        f"- versions: {json.dumps(versions())}",
        f"- file: `gguf-oracle.safetensors`, {size} bytes; metadata key `cases` = JSON of the descriptions below.",
        "",
        "Per case `caseN`:",
        "",
        "- `caseN.input`: f32 [rows, cols] (cols 64 or 96 = 2 or 3 blocks of 32 per row).",
        "- `caseN.q8_0`: u8 [rows, cols/32*34]: per block f16 d (little-endian) then 32 i8 codes; value = d*q.",
        "- `caseN.q4_0`: u8 [rows, cols/32*18]: per block f16 d then 16 bytes; byte j holds element j in its low nibble "
        "and element j+16 in its high nibble; value = d*(nibble-8).",
        "- `caseN.q8_0_dequant`, `caseN.q4_0_dequant`: f32 [rows, cols] = `gguf.quants.dequantize` of those bytes.",
        "",
        "Arithmetic (all numpy intermediates are float32; checked at run time: " + json.dumps(facts) + "):",
        "",
        "- Q8_0: d = max|x| / 127 (f32); id = d == 0 ? 0 : 1/d (f32, from the unrounded f32 d); q = round-half-away-from-zero(x*id) "
        "(f32 product); stored scale = f16(d) (round to nearest even, may overflow to +inf).",
        "- Q4_0: m = the signed element of largest |x| (first on ties); d = m / -8 (f32, signed: an all-zero block gives -0.0); "
        "id = d == 0 ? 0 : 1/d (f32); q = min(15, trunc(x*id + 8.5)) with an f32 product and a separate f32 add "
        "(round half UP, not away from zero); stored scale = f16(d).",
        "- Dequantisation: f32(f16 d) * f32(q) (exact; inf*q = +/-inf).",
        "- Codes (out of every stored code) that a plausible wrong port gets wrong, per port: "
        + json.dumps(disc) + ".",
        "",
        "## Cases",
        "",
    ]
    for k in sorted(desc, key=lambda s: int(s[4:])):
        x = tensors[f"{k}.input"]
        lines.append(f"- `{k}` {list(x.shape)}: {desc[k]}")
        for note in notes.get(k, []):
            lines.append(f"  - {note}")
    if nonfinite:
        lines += ["", "Non-finite entries (count of +/-inf, no NaN by construction): " + json.dumps(nonfinite, sort_keys=True)]
    lines += [
        "",
        "Regenerate (into a scratch folder first, then compare bytes):",
        "",
        "```sh",
        "python -m venv /tmp/q && /tmp/q/bin/pip install numpy safetensors gguf==0.19.0",
        "/tmp/q/bin/python tools/make_quant_oracle.py /tmp/quant && cmp /tmp/quant/gguf-oracle.safetensors tests/fixtures/quant/gguf-oracle.safetensors",
        "```",
        "",
    ]
    open(os.path.join(out_dir, "README.md"), "w").write("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
