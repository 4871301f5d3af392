"""CoreML: runs the .mlpackages of an `edgegen export --target coreml` artifact with coremltools.

Prediction (MLModel.predict) exists on macOS only: coremltools' Linux and Windows wheels convert
and inspect models but ship no CoreML framework to run them. So off macOS this backend refuses
in one line before anything is loaded. coremltools is imported when a component loads, never at
import time. Compute units are a load-time choice in CoreML; the artifact records the ones it was
exported for, per component (an fp32 VAE runs on cpu-and-gpu: the Neural Engine computes fp16).
"""
from __future__ import annotations

import importlib.util
import platform
from typing import Callable

import numpy as np

from .backend import Backend, ComponentSpec, check_feeds

UNITS = {"all": "ALL", "cpu-only": "CPU_ONLY", "cpu-and-gpu": "CPU_AND_GPU", "cpu-and-ne": "CPU_AND_NE"}


def not_macos() -> str | None:
    if platform.system() == "Darwin":
        return None
    return (f"CoreML prediction needs macOS (coremltools predict is not available on {platform.system()}); "
            f"run this artifact on a Mac")


class CoreMLBackend(Backend):
    name = "coreml"
    library = "coremltools"
    extra = "coreml"
    devices = tuple(UNITS)
    precisions = ("fp16", "fp32")

    @classmethod
    def missing(cls) -> str | None:
        # The platform first: installing coremltools off macOS would not make prediction work.
        why = not_macos()
        if why:
            return why
        if importlib.util.find_spec("coremltools") is None:
            return "the coreml backend needs coremltools: pip install 'edgegen[coreml]'"
        return None

    def binding(self) -> dict:
        # An mlpackage is portable across Apple devices; CoreML compiles it for the one it loads on.
        return {"backend": self.name}

    def build_options(self) -> dict:
        return {"device": self.device, "precision": self.precision}

    def load(self, spec: ComponentSpec) -> Callable[..., dict[str, np.ndarray]]:
        import coremltools as ct

        units = (spec.compiled or {}).get("compute_units", self.device)
        model = ct.models.MLModel(str(spec.graph), compute_units=ct.ComputeUnit[UNITS[units]])
        int_inputs = {t.name for t in spec.io.inputs if t.dtype.startswith("int")}
        outputs = spec.io.output_names

        def run(**feeds) -> dict[str, np.ndarray]:
            feeds, _ = check_feeds(spec.name, spec.io, feeds)
            feeds = {k: v.astype(np.int32) if k in int_inputs else v for k, v in feeds.items()}
            res = model.predict(feeds)
            return {k: np.asarray(res[k], dtype=np.float32) for k in outputs}

        return run


BACKEND = CoreMLBackend
