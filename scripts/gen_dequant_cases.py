#!/usr/bin/env python3
"""Generate bit-exact dequantization cases for gorae-kernels from gguf-py's numpy dequantizers.

Writes crates/gorae-kernels/tests/data/dequant_cases.json, read by
crates/gorae-kernels/tests/dequant_bit_exact.rs. The JSON is committed; CI does not run this.

Setup (outside the repository):
    python3 -m venv /work/cache/venv
    /work/cache/venv/bin/pip install numpy gguf==0.19.0
    /work/cache/venv/bin/python scripts/gen_dequant_cases.py

Each case is one row of whole blocks: random bytes, except that every f16/f32 scale field (and
every element of the float types) is overwritten with a finite random value, so no output is NaN.
Half the cases use scales of a realistic size, half arbitrary finite bit patterns (subnormals and
large values included). Expected outputs are stored as u32 bit patterns so the Rust side can
demand bit identity.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

SEED = 20261128
OUT = Path(__file__).resolve().parent.parent / "crates/gorae-kernels/tests/data/dequant_cases.json"

# Byte offsets of the f16 scale fields within one block, per ggml's block structs
# (ggml-common.h). F32/F16/BF16 are handled separately (every element is a value).
F16_FIELDS: dict[str, list[int]] = {
    "Q4_0": [0],
    "Q4_1": [0, 2],
    "Q5_0": [0],
    "Q5_1": [0, 2],
    "Q8_0": [0],
    "Q8_1": [0, 2],
    "Q2_K": [80, 82],
    "Q3_K": [108],
    "Q4_K": [0, 2],
    "Q5_K": [0, 2],
    "Q6_K": [208],
}
# f32 scale fields (Q8_K's d).
F32_FIELDS: dict[str, list[int]] = {"Q8_K": [0]}

# Every type gorae-kernels supports, in the order the test reports them.
OUR_TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1",
             "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K"]

# Rows per type and blocks per row: a few blocks, a multi-block row among them.
ROWS = [1, 1, 1, 2, 1, 3]
FLOAT_ROW = 64  # elements per row for the float types


def finite_f16(rng: np.random.Generator, n: int, realistic: bool) -> np.ndarray:
    if realistic:
        mag = 10.0 ** rng.uniform(-4, 0, n)
        sign = rng.choice([-1.0, 1.0], n)
        return (mag * sign).astype(np.float16)
    bits = rng.integers(0, 1 << 16, n, dtype=np.uint32).astype(np.uint16)
    # Exponent all ones is inf/NaN: clear one exponent bit to land on a finite value.
    bad = (bits & 0x7C00) == 0x7C00
    bits[bad] &= np.uint16(0xFBFF)
    return bits.view(np.float16)


def finite_f32(rng: np.random.Generator, n: int, realistic: bool) -> np.ndarray:
    if realistic:
        return (10.0 ** rng.uniform(-4, 0, n) * rng.choice([-1.0, 1.0], n)).astype(np.float32)
    bits = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)
    bad = (bits & 0x7F800000) == 0x7F800000
    bits[bad] &= np.uint32(0xFF7FFFFF)
    return bits.view(np.float32)


def finite_bf16_bits(rng: np.random.Generator, n: int, realistic: bool) -> np.ndarray:
    return (finite_f32(rng, n, realistic).view(np.uint32) >> 16).astype(np.uint16)


def make_row(name: str, rng: np.random.Generator, n_blocks: int, realistic: bool) -> bytes:
    if name == "F32":
        return finite_f32(rng, FLOAT_ROW, realistic).tobytes()
    if name == "F16":
        return finite_f16(rng, FLOAT_ROW, realistic).tobytes()
    if name == "BF16":
        return finite_bf16_bits(rng, FLOAT_ROW, realistic).astype("<u2").tobytes()
    _, type_size = GGML_QUANT_SIZES[T[name]]
    row = bytearray(rng.integers(0, 256, n_blocks * type_size, dtype=np.uint8).tobytes())
    for b in range(n_blocks):
        base = b * type_size
        for off in F16_FIELDS.get(name, []):
            row[base + off: base + off + 2] = finite_f16(rng, 1, realistic).astype("<f2").tobytes()
        for off in F32_FIELDS.get(name, []):
            row[base + off: base + off + 4] = finite_f32(rng, 1, realistic).astype("<f4").tobytes()
    return bytes(row)


def main() -> int:
    rng = np.random.default_rng(SEED)
    types: dict[str, dict] = {}
    unsupported: dict[str, str] = {}
    for name in OUR_TYPES:
        qtype = T[name]
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        cases = []
        for i, n_blocks in enumerate(ROWS):
            realistic = i % 2 == 0
            raw = make_row(name, rng, n_blocks, realistic)
            data = np.frombuffer(raw, dtype=np.uint8).reshape(1, -1)
            try:
                out = dequantize(data, qtype)
            except NotImplementedError as e:
                unsupported[name] = f"gguf {_version('gguf')} gguf.quants.dequantize: {e}"
                break
            out = np.asarray(out, dtype=np.float32).reshape(-1)
            if not np.all(np.isfinite(out)):
                raise SystemExit(f"{name}: non-finite output in case {i}; generator bug")
            cases.append({
                "hex": raw.hex(),
                "expected_bits": [int(v) for v in out.view(np.uint32)],
            })
        if name in unsupported:
            continue
        types[name] = {"block_size": block_size, "type_size": type_size, "cases": cases}

    doc = {
        "generator": "scripts/gen_dequant_cases.py",
        "reference": "gguf (PyPI) gguf.quants.dequantize, numpy float32 arithmetic",
        "gguf_version": _version("gguf"),
        "numpy_version": np.__version__,
        "seed": SEED,
        "types": types,
        "unsupported": unsupported,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    n_cases = sum(len(t["cases"]) for t in types.values())
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): {len(types)} types, {n_cases} rows")
    for name, why in unsupported.items():
        print(f"  no reference for {name}: {why}")
    return 0


def _version(dist: str) -> str:
    from importlib.metadata import version
    return version(dist)


if __name__ == "__main__":
    sys.exit(main())
