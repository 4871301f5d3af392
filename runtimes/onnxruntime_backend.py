"""ONNX Runtime backend: one InferenceSession per component, CPU or CUDA EP."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import EdgegenError
from .iospec import IOSpec

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}


def make_session(graph: Path, device: str = "cpu", threads: int = 0):
    """An InferenceSession on `device`'s providers; refuses a silent fallback to CPU."""
    import onnxruntime as ort

    if device not in PROVIDERS:
        raise EdgegenError(f"unknown onnxruntime device {device!r}; known: {', '.join(PROVIDERS)}")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(graph), opts, providers=PROVIDERS[device])
    # ORT falls back to CPU silently when CUDA libraries are missing.
    if PROVIDERS[device][0] not in session.get_providers():
        raise EdgegenError(f"onnxruntime could not use {PROVIDERS[device][0]} here "
                           f"(available: {', '.join(ort.get_available_providers())})")
    return session


class OrtComponent:
    """A component graph with its IOSpec; checks feeds against the spec before running."""

    def __init__(self, name: str, graph: Path, io: IOSpec, device: str = "cpu", threads: int = 0):
        self.session = make_session(graph, device, threads)
        self.name, self.io = name, io

    def __call__(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        feeds = {t.name: np.ascontiguousarray(feeds[t.name], dtype=t.dtype) for t in self.io.inputs if t.name in feeds}
        try:
            self.io.infer_sizes(feeds)
        except ValueError as e:
            raise EdgegenError(f"{self.name}: {e}") from None
        return dict(zip(self.io.output_names, self.session.run(self.io.output_names, feeds)))
