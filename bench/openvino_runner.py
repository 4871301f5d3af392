"""`--baseline openvino`: the artifact's own ONNX graphs compiled by OpenVINO, in edgegen's pipeline.

Only the backend changes: tokenizers, sampler, guidance and the denoising loop are edgegen's,
so the ratios isolate onnxruntime against OpenVINO on the same graphs. Needs the `openvino`
package (bench says so when it is missing).
"""
from __future__ import annotations

import numpy as np


class OvComponent:
    """Drop-in for runtimes.onnxruntime_backend.OrtComponent: feeds by name, outputs by name."""

    def __init__(self, name: str, graph, io, device: str = "cpu"):
        import openvino as ov

        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(graph)), "GPU" if device == "cuda" else "CPU")
        self.name, self.io = name, io

    def __call__(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        feeds = {t.name: np.ascontiguousarray(feeds[t.name], dtype=t.dtype) for t in self.io.inputs if t.name in feeds}
        res = self.compiled(feeds)
        return {n: np.asarray(res[self.compiled.output(n)]) for n in self.io.output_names}


def swap_in_openvino(pipe, device: str) -> None:
    r = pipe.recipe
    names = [te["component"] for te in r["text_encoders"]] + [r["denoiser"], r["vae_decoder"]]
    for n in names:
        pipe._components.pop(n, None)   # free the onnxruntime session first
    for n in names:
        pipe._components[n] = OvComponent(n, pipe.artifact.graph_path(n), pipe.artifact.io(n), device)
