#!/usr/bin/env python3
"""Oracle fixtures for plain Mamba-1 checkpoints (transformers' `MambaForCausalLM`, no B/C/dt norms).

Reuses tools/make_fixtures.py (the Falcon Mamba fixture maker) with the model classes
swapped, so the fixtures have exactly the same format and are picked up by the parity tests.

    python -m venv /tmp/oracle-venv && /tmp/oracle-venv/bin/pip install -r tools/oracle-requirements.txt
    /tmp/oracle-venv/bin/python tools/make_mamba1_fixtures.py tests/fixtures
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import make_fixtures as mf  # noqa: E402
from transformers import MambaConfig, MambaForCausalLM  # noqa: E402

mf.FalconMambaConfig = MambaConfig
mf.FalconMambaForCausalLM = MambaForCausalLM


class _MambaAwareJson:
    """make_fixtures' README writer reads `mixer_rms_eps`, which Mamba-1 configs do not have."""

    def __getattr__(self, name):
        return getattr(json, name)

    def load(self, f):
        data = json.load(f)
        if isinstance(data, dict) and data.get("model_type") == "mamba":
            data.setdefault("mixer_rms_eps", "none (Mamba-1 has no B/C/dt norms)")
        return data


mf.json = _MambaAwareJson()

TINY = dict(hidden_size=64, num_hidden_layers=2, state_size=16, expand=2, conv_kernel=4, vocab_size=256,
            initializer_range=0.3)

SPECS = [
    mf.Spec("mamba1-tiny", dict(TINY), seed=5678, prompt_seed=5, prompt_len=12, batch=2, n_new=16, internals=True),
    mf.Spec(
        "mamba1-untied-bias-bf16",
        dict(TINY, hidden_size=48, num_hidden_layers=3, tie_word_embeddings=False, use_bias=True),
        seed=6789, prompt_seed=6, prompt_len=12, batch=2, n_new=16, internals=True, save_dtype="bfloat16",
        note="Plain Mamba-1 with untied lm_head and in/out_proj biases, saved in bfloat16; float32 references "
             "from the bf16-rounded weights.",
    ),
]


def main() -> int:
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "tests", "fixtures")
    os.makedirs(out, exist_ok=True)
    for spec in SPECS:
        mf.make_fixture(spec, out)
        readme = os.path.join(out, spec.name, "README.md")
        text = open(readme).read()
        text = text.replace("FalconMambaForCausalLM", "MambaForCausalLM").replace("FalconMambaConfig", "MambaConfig")
        text = text.replace("Falcon Mamba oracle fixture", "Mamba-1 oracle fixture")
        text = text.replace("`tools/make_fixtures.py` (steering repo)", "`tools/make_mamba1_fixtures.py` (this repo)")
        open(readme, "w").write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
