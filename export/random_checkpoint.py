"""Seeded random .safetensors checkpoints, written one tensor at a time.

Parameter names and shapes come from the model built on the meta device (no weights
exist in memory); values are seeded random (Linear-style uniform(+-1/sqrt(fan_in)),
norm scales near 1, small biases). Each tensor is generated in chunks and written
straight to the file, so a 24 GB checkpoint needs well under 1 GB of RAM. The streaming
exporter (export/streaming.py) reads such a file for `edgegen export --random-weights --stream`.

Why not `safetensors.torch.save_file`/`safetensors.numpy.save_file`: both take a dict
holding every tensor in memory at once (24 GB for FLUX), which is what this file exists
to avoid, and the library has no incremental writer. The format is simple enough to
stream: 8-byte little-endian header length, a JSON header of
{name: {dtype, shape, data_offsets}} (padded with spaces to 8 bytes, as the reference
writer does), then the raw little-endian bytes in header order. The result reads back
with `safetensors.safe_open` (tests check that).
"""
from __future__ import annotations

import json
import math
import struct
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

# safetensors dtype tag and element size for the dtypes written here.
_ST_DTYPES = {"bfloat16": ("BF16", 2), "float16": ("F16", 2), "float32": ("F32", 4)}
CHUNK = 1 << 24  # elements generated per step (64 MB of float32 scratch)


def write_safetensors_streaming(path: Path, entries: list[tuple[str, str, tuple[int, ...]]],
                                chunks: Iterable[Iterator], metadata: dict | None = None) -> int:
    """Write `entries` (name, dtype, shape) in order; `chunks` holds, per entry, an iterator of
    byte buffers (bytes or contiguous numpy arrays, written without a copy).

    Returns the file size. Raises ValueError when an entry's bytes don't add up to its shape.
    """
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    sizes = []
    for name, dtype, shape in entries:
        tag, width = _ST_DTYPES[dtype]
        n = math.prod(shape) * width
        header[name] = {"dtype": tag, "shape": list(shape), "data_offsets": [offset, offset + n]}
        sizes.append(n)
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for (name, _, _), n, it in zip(entries, sizes, chunks):
                written = 0
                for b in it:
                    f.write(b)
                    written += memoryview(b).nbytes
                if written != n:
                    raise ValueError(f"{name}: wrote {written} bytes, expected {n}")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)  # a crash never leaves a truncated file under the final name
    return path.stat().st_size


def _init_range(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(center, half-width) of the uniform distribution for one tensor."""
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        return 0.0, 1.0 / math.sqrt(fan_in)  # torch.nn.Linear's default init bound
    if "norm" in name and name.endswith("weight"):
        return 1.0, 0.1  # RMSNorm / LayerNorm scales
    return 0.0, 0.02  # biases


def random_chunks(shape: tuple[int, ...], dtype: str, seed: int, center: float, half: float) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    left = math.prod(shape)
    while left:
        n = min(left, CHUNK)
        x = rng.random(n, dtype=np.float32)
        x *= 2 * half
        x += center - half
        if dtype == "bfloat16":
            # bf16 is the top half of an fp32 (truncation: the checkpoint is defined by these bytes).
            yield (x.view(np.uint32) >> 16).astype(np.uint16)
        else:
            yield x.astype(np.float16) if dtype == "float16" else x
        left -= n


def meta_param_shapes(model_cls, config) -> list[tuple[str, tuple[int, ...]]]:
    """Parameter names (state_dict keys) and shapes of the model built on the meta device.
    Tied weights appear once (named_parameters' default), under their first name."""
    import torch

    from .streaming import construct

    with torch.device("meta"):
        model = construct(model_cls, config)
    return [(n, tuple(p.shape)) for n, p in model.named_parameters()]


def summary_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def make_random_checkpoint(model_cls, config: dict, path: Path, dtype: str = "bfloat16", seed: int = 0) -> dict:
    """Seeded random weights for every parameter of `model_cls(config)`; returns a summary, also
    written next to the file (<name>.json) for benches that find the checkpoint already there."""
    shapes = meta_param_shapes(model_cls, config)
    entries = [(n, dtype, s) for n, s in shapes]
    chunks = (random_chunks(s, dtype, seed * 1_000_003 + i, *_init_range(n, s)) for i, (n, s) in enumerate(shapes))
    t0 = time.perf_counter()
    size = write_safetensors_streaming(path, entries, chunks, {"format": "pt", "edgegen": "seeded random", "seed": str(seed)})
    info = {"path": str(path), "tensors": len(shapes), "params": sum(math.prod(s) for _, s in shapes),
            "bytes": size, "dtype": dtype, "seed": seed, "seconds": round(time.perf_counter() - t0, 1)}
    summary_path(path).write_text(json.dumps(info, indent=2) + "\n")
    return info
