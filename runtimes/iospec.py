"""One declaration of a component's tensors, with symbolic dimensions.

A component's IOSpec is the single place where its shapes are stated. From it come
the ONNX dynamic axes (export), the example and validation inputs, TensorRT
optimisation profiles, the runtime's input checks and output buffers, and the
manifest's IO section. Torch-free: the runtime reads it back from manifest.json.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}
# Output shapes may scale a dimension ("8*latent_height", "height/8"); inputs use plain names.
_TERM = re.compile(r"^(?:(\d+)\*)?([a-z_][a-z0-9_]*)(?:([*/])(\d+))?$")


@dataclass(frozen=True)
class Dim:
    """A symbolic dimension with its min/opt/max range; values are multiples of `multiple`."""

    name: str
    min: int
    opt: int
    max: int
    multiple: int = 1

    def __post_init__(self):
        if not (1 <= self.min <= self.opt <= self.max):
            raise ValueError(f"dim {self.name}: need 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")
        for v in (self.min, self.opt, self.max):
            if v % self.multiple:
                raise ValueError(f"dim {self.name}: {v} is not a multiple of {self.multiple}")

    def check(self, value: int) -> str | None:
        if value % self.multiple:
            return f"{self.name}={value} is not a multiple of {self.multiple}"
        if not self.min <= value <= self.max:
            return f"{self.name}={value} is outside the exported range [{self.min}, {self.max}]"
        return None

    def mid(self) -> int:
        """A legal value away from both `min` and `opt`, for validation at unseen shapes."""
        v = (self.min + self.opt) // 2 // self.multiple * self.multiple
        return max(v, self.min)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple  # ints and dimension expressions
    # Inclusive value range used for example inputs (token ids, timesteps).
    low: float = -1.0
    high: float = 1.0

    def resolve(self, sizes: dict[str, int]) -> tuple[int, ...]:
        out = []
        for d in self.shape:
            if isinstance(d, int):
                out.append(d)
                continue
            m = _TERM.match(d)
            if not m:
                raise ValueError(f"bad dimension expression {d!r} in {self.name}")
            v = int(m.group(1) or 1) * sizes[m.group(2)]
            if m.group(3) == "*":
                v *= int(m.group(4))
            elif m.group(3) == "/":
                v //= int(m.group(4))
            out.append(v)
        return tuple(out)

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "low": self.low, "high": self.high}

    @staticmethod
    def from_dict(d: dict) -> "TensorSpec":
        return TensorSpec(d["name"], d["dtype"], tuple(d["shape"]), d.get("low", -1.0), d.get("high", 1.0))


@dataclass(frozen=True)
class IOSpec:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dims: dict[str, Dim] = field(default_factory=dict)

    def __post_init__(self):
        for t in self.inputs:
            for d in t.shape:
                if isinstance(d, str) and d not in self.dims:
                    raise ValueError(f"input {t.name} uses undeclared dim {d!r}")

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def sizes(self, which: str = "opt", **override: int) -> dict[str, int]:
        """Concrete sizes at `min`/`opt`/`max`/`mid`, with overrides."""
        out = {}
        for name, d in self.dims.items():
            out[name] = d.mid() if which == "mid" else getattr(d, which)
        unknown = set(override) - set(out)
        if unknown:
            raise ValueError(f"unknown dims {sorted(unknown)}")
        out.update(override)
        return out

    def fixed_sizes(self) -> dict[str, int]:
        """The dims a static shape profile pinned (min == max), by name."""
        return {n: d.min for n, d in self.dims.items() if d.min == d.max}

    def export_sizes(self) -> dict[str, int]:
        """Where to trace: small (cheap) but never 0/1, which torch.export would bake in as constants."""
        out = {n: d.min if d.min >= 2 else d.opt for n, d in self.dims.items()}
        if "batch" in self.dims:
            b = self.dims["batch"]
            out["batch"] = min(max(2, b.min), b.max)
        return out

    def example(self, sizes: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
        """Seeded inputs at `sizes`, within each tensor's declared value range."""
        rng = np.random.default_rng(seed)
        feeds = {}
        for t in self.inputs:
            shape = t.resolve(sizes)
            if t.dtype.startswith("int"):
                feeds[t.name] = rng.integers(int(t.low), int(t.high) + 1, size=shape).astype(_DTYPES[t.dtype])
            else:
                feeds[t.name] = rng.uniform(t.low, t.high, size=shape).astype(_DTYPES[t.dtype])
        return feeds

    def profile(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """(min, opt, max) shape per input: a TensorRT optimisation profile."""
        lo, opt, hi = (self.sizes(w) for w in ("min", "opt", "max"))
        return {t.name: (t.resolve(lo), t.resolve(opt), t.resolve(hi)) for t in self.inputs}

    def infer_sizes(self, feeds: dict[str, np.ndarray]) -> dict[str, int]:
        """Bind dims from actual input shapes; raise ValueError on any mismatch."""
        sizes: dict[str, int] = {}
        for t in self.inputs:
            if t.name not in feeds:
                raise ValueError(f"missing input {t.name}")
            actual = feeds[t.name].shape
            if len(actual) != len(t.shape):
                raise ValueError(f"{t.name}: expected rank {len(t.shape)}, got shape {actual}")
            for d, v in zip(t.shape, actual):
                if isinstance(d, int):
                    if d != v:
                        raise ValueError(f"{t.name}: expected shape {t.shape}, got {actual}")
                elif sizes.setdefault(d, v) != v:
                    raise ValueError(f"{t.name}: dim {d} is {v} here but {sizes[d]} elsewhere")
        for name, v in sizes.items():
            problem = self.dims[name].check(v)
            if problem:
                raise ValueError(problem)
        return sizes

    def to_dict(self) -> dict:
        return {
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "dims": {n: {"min": d.min, "opt": d.opt, "max": d.max, "multiple": d.multiple} for n, d in self.dims.items()},
        }

    @staticmethod
    def from_dict(d: dict) -> "IOSpec":
        return IOSpec(
            tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
            tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
            {n: Dim(n, v["min"], v["opt"], v["max"], v.get("multiple", 1)) for n, v in d["dims"].items()},
        )
