"""deepcache: reuse the U-Net's deep features between steps (Ma et al., DeepCache, CVPR 2024).

Adjacent steps' high-level features barely change; the skip branch at full resolution carries
what does. Every `interval`-th step runs the whole U-Net, which here also outputs the feature
entering its last up block; the steps between run a shallow graph: conv_in, the first down
block (its skip outputs), the last up block fed that cached feature, and conv_out.

Both graphs are cut from the exported U-Net by onnx's own Extractor, so they hold exactly its
operators and weights (any precision pass already applied); the cut point is found from the
exporter's module-scoped node names (/up_blocks.N/...). The shallow graph fed the whole graph's
feature must reproduce the whole graph's prediction: that is checked before the gate.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ...runtimes.artifact import digest_files
from ...runtimes.errors import EdgegenError
from ...runtimes.iospec import IOSpec, TensorSpec
from ...runtimes.step_options import DEEP_FEATURE
from .registry import PipelineOption, register

_SCOPE = re.compile(r"/up_blocks\.(\d+)/")


def cut_point(model):
    """The one tensor the second-to-last up block hands to the last, its channel count, and the
    graph with inferred shapes (onnx's Extractor needs them)."""
    import onnx

    prod, last = {}, -1
    for n in model.graph.node:
        m = _SCOPE.search(n.name)
        k = int(m.group(1)) if m else None
        last = max(last, k if k is not None else -1)
        for o in n.output:
            prod[o] = k
    if last < 1:
        raise EdgegenError("its U-Net graph has no module-scoped up-block node names (/up_blocks.N/...) to find "
                           "the cache point by; DeepCache needs a U-Net exported by edgegen (TorchScript names)")
    found = {i for n in model.graph.node if (m := _SCOPE.search(n.name)) and int(m.group(1)) == last
             for i in n.input if prod.get(i) == last - 1}
    if len(found) != 1:
        raise EdgegenError(f"expected one tensor from up block {last - 1} into up block {last}, found {len(found)}: "
                           "the graph's names do not show where to cut")
    name = found.pop()
    inferred = onnx.shape_inference.infer_shapes(model)
    for v in inferred.graph.value_info:
        if v.name == name:
            dims = v.type.tensor_type.shape.dim
            if len(dims) == 4 and dims[1].HasField("dim_value"):
                return name, dims[1].dim_value, inferred
    raise EdgegenError(f"cannot infer the channel count of {name}")


@register
class DeepCache(PipelineOption):
    name = "deepcache"
    defaults = {"interval": 3}
    psnr, ssim = 20.0, 0.7
    help = "Whole U-Net every INTERVAL steps; between, a shallow graph on the cached deep feature."

    def check_config(self):
        i = self.config["interval"]
        if not isinstance(i, int) or i < 1:
            raise EdgegenError(f"deepcache: interval must be a whole number >= 1, got {i!r}")

    def applicable(self, art):
        r = art.manifest["pipeline"]
        if r.get("kind") != "unet":
            return f"it caches U-Net features, and this artifact's denoiser is a {r.get('kind')} transformer"
        if not str(art.components[r["denoiser"]]["graph"]).endswith(".onnx"):
            return "its U-Net is not an ONNX graph"
        return None

    def build(self, art, tmp: Path, manifest: dict, say) -> dict:
        import onnx
        from onnx import helper

        from .. import graph as G

        den = manifest["pipeline"]["denoiser"]
        src = art.graph_path(den)
        model = G.structure(src)
        cut, channels, inferred = cut_point(model)
        say(f"deepcache: cache point {cut} ({channels} channels)")
        io = art.io(den)
        sample = io.inputs[0]
        feature = TensorSpec(DEEP_FEATURE, "float32", ("batch", channels, *sample.shape[2:]))
        out_name = io.outputs[0].name

        # The shallow graph: everything the prediction needs once the cut tensor is given.
        shallow = onnx.utils.Extractor(inferred).extract_model([*io.input_names, cut], [out_name])
        for n in shallow.graph.node:
            n.input[:] = [DEEP_FEATURE if i == cut else i for i in n.input]
        for v in shallow.graph.input:
            if v.name == cut:
                v.name = DEEP_FEATURE
        # Its weights are a small part of the U-Net's: read them (G's reader: artifacts hard-link
        # files, which onnx's own loader refuses) and store them with the graph.
        for t in shallow.graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                t.CopyFrom(onnx.numpy_helper.from_array(G.read_initializer(t, src.parent), t.name))
        sname = f"{den}_shallow"
        files = [f"{sname}/{f}" for f in G.save_model(shallow, tmp / sname)]
        kept = len(shallow.graph.node) / max(1, len(model.graph.node))
        params = sum(int(np.prod(t.dims)) for t in shallow.graph.initializer if len(t.dims) > 1)
        del shallow, inferred

        # The whole graph: the same nodes, the cut tensor also an output. Its weights are the
        # parent's external file (already linked into tmp), the graph file alone is rewritten.
        model.graph.node.append(helper.make_node("Identity", [cut], [DEEP_FEATURE], name="deepcache/output"))
        model.graph.output.append(helper.make_tensor_value_info(
            DEEP_FEATURE, onnx.TensorProto.FLOAT, ["batch", channels, *[str(d) for d in sample.shape[2:]]]))
        gpath = tmp / manifest["components"][den]["graph"]
        gpath.unlink()
        onnx.save_model(model, str(gpath))
        del model

        rec = manifest["components"][den]
        rec["files"] = digest_files(tmp, list(rec["files"]))
        rec["io"] = IOSpec(io.inputs, (*io.outputs, feature), io.dims).to_dict()
        manifest["components"][sname] = {
            "graph": files[0], "files": digest_files(tmp, files),
            "io": IOSpec((*io.inputs, feature), io.outputs, io.dims).to_dict(),
            "precision": rec.get("precision", "fp32"), "params": params,
        }
        check = self.check(tmp, manifest, den, sname)
        if check["rel_err"] > 1e-4:
            raise EdgegenError(f"deepcache: the shallow graph fed the whole graph's feature differs from it "
                               f"(rel err {check['rel_err']:.3g}); nothing written")
        return {"component": sname, "cut": cut, "shallow_node_fraction": round(kept, 3), "check": check}

    @staticmethod
    def check(root: Path, manifest: dict, den: str, sname: str) -> dict:
        """Whole graph vs shallow graph on the whole graph's feature, at the smallest sizes."""
        from ...runtimes.onnxruntime_backend import OrtComponent

        rec, srec = manifest["components"][den], manifest["components"][sname]
        io = IOSpec.from_dict(rec["io"])
        feeds = io.example(io.sizes("min"), seed=7)
        whole = OrtComponent(den, root / rec["graph"], io)(**feeds)
        part = OrtComponent(sname, root / srec["graph"], IOSpec.from_dict(srec["io"]))(
            **feeds, **{DEEP_FEATURE: whole[DEEP_FEATURE]})
        a, b = whole[io.outputs[0].name].astype(np.float64), part[io.outputs[0].name].astype(np.float64)
        return {"sizes": io.sizes("min"), "rel_err": float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30)),
                "rule": "shallow(inputs, whole's feature) == whole(inputs), rel err <= 1e-4"}
