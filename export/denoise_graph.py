"""One ONNX graph for a whole few-step denoising loop: N x (denoiser + guidance + sampler step).

The graph is the artifact's exported denoiser graph unrolled N times (no torch needed): every
step gets a copy of the denoiser's nodes with its values renamed under a "s<i>/" prefix, while
the initializers (the weights) and the fixed conditioning inputs keep their names, so the
weights are stored once and read by every step. When the denoiser keeps its weights in an
external data file, the denoise graph is written beside it and points at the same file, so the
artifact stores them once in all. Between the copies sit the sampler's per-step scalars from
sampler_graphs.derive_tables (baked as constants: the step index is fixed per copy).

Unrolled rather than an ONNX Loop: the steps are few (1-4), ORT optimizes and plans a flat graph
as it does the denoiser alone, the per-step constants need no gathering, and execution
providers that offload whole graphs (TensorRT, CoreML, NNAPI, WebGPU) handle plain nodes far
better than control flow. Cost: N copies of the node list (not of the weights; ~0.3 MB per
copy for SD1.5) and a longer session creation (SD1.5, 4 steps: 50 s vs 19 s for the UNet alone
on the bench box). onnxruntime keeps the shared weights once in memory too, and its common
subexpression elimination computes the steps' identical cross-attention K/V projections of the
fixed text once.

IO (names): `latents` (initial latents times init_noise_sigma, shaped as the denoiser's latent
input: packed 2x2 for FLUX), the denoiser's fixed inputs under their own names
(encoder_hidden_states, text_embeds, time_ids, timestep_cond, pooled_projections, img_ids,
txt_ids, guidance, ...; with CFG they carry the [uncond, cond] batch, dim "cfg_batch"),
`noise` [N, *latents] when the sampler draws (step i uses noise[i]; numpy draw order, see
runtimes.graph_sampler.draw_noise), `guidance_scale` [1] with CFG -> `final_latents`
(final_sample of the last step).
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from ..runtimes.errors import EdgegenError
from ..runtimes.graph_sampler import GivenNoise, draw_noise, reference_denoise
from ..runtimes.iospec import Dim, IOSpec, TensorSpec
from .sampler_graphs import DENOISE_TOL, TERMS, GraphBuilder, SamplerTables, affine_step, denoiser_timesteps

MAX_DENOISE_STEPS = 4   # add_sampler_graphs builds a denoise graph by default up to this many steps
CFG_BATCH = "cfg_batch"


def _rename_graph(g, r) -> None:
    """Rename every value in subgraph `g` (and its own subgraphs) in place with r()."""
    for vi in (*g.input, *g.output, *g.value_info):
        vi.name = r(vi.name)
    for t in g.initializer:
        t.name = r(t.name)
    for node in g.node:
        _rename_node(node, r)


def _rename_node(node, r) -> None:
    from onnx import AttributeProto

    node.input[:] = [r(n) for n in node.input]
    node.output[:] = [r(n) for n in node.output]
    for a in node.attribute:
        if a.type == AttributeProto.GRAPH:
            _rename_graph(a.g, r)
        elif a.type == AttributeProto.GRAPHS:
            for sub in a.graphs:
                _rename_graph(sub, r)


def _external_files(model) -> list[str]:
    from onnx import TensorProto

    files = set()
    for t in model.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            files.update(e.value for e in t.external_data if e.key == "location")
    return sorted(files)


def build_denoise_graph(denoiser_graph: Path, out: Path, tables: SamplerTables, io: IOSpec, *, latent_input: str,
                        timestep_input: str = "timestep", timestep_scale: float = 1.0, cfg: bool = False) -> list[str]:
    """Write the unrolled denoise graph to `out`; return the external data files it shares with
    the denoiser (relative to their folder; empty when the weights are inside the graph)."""
    import onnx
    from onnx import TensorProto, helper

    src = onnx.load(str(denoiser_graph), load_external_data=False)
    shared = _external_files(src)
    if shared and out.parent.resolve() != denoiser_graph.parent.resolve():
        raise EdgegenError("write the denoise graph beside the denoiser graph: it shares its external data file")
    g = src.graph
    pred_name = g.output[0].name
    keep = {t.name for t in g.initializer} | {t.values.name for t in g.sparse_initializer}
    by_name = {i.name: i for i in g.input}
    if latent_input not in by_name or timestep_input not in by_name:
        raise EdgegenError(f"{denoiser_graph}: no {latent_input!r}/{timestep_input!r} input")
    fixed = [i for i in g.input if i.name not in keep and i.name not in (latent_input, timestep_input)]
    keep |= {i.name for i in fixed}

    n = tables.num_steps
    b = GraphBuilder(prefix="sampler/")
    nodes, value_info = [], []
    ts = denoiser_timesteps(tables, timestep_scale)
    x = "latents"
    state = None
    noise_used = any(np.asarray(tables.coef["noise"]) != 0)
    for i in range(n):
        p = f"s{i}/"
        xin = x
        if tables.input_scale[i] != 1.0:
            xin = b.op("Mul", [x, b.const(tables.input_scale[i], hint=f"s{i}_input_scale")], f"s{i}_model_input")
        if cfg:
            xin = b.op("Concat", [xin, xin], f"s{i}_cfg_input", axis=0)
        batch = b.op("Slice", [b.op("Shape", [xin]), b.const([0], np.int64), b.const([1], np.int64)], f"s{i}_batch")
        t = b.op("Expand", [b.const([ts[i]], hint=f"s{i}_timestep"), batch], f"s{i}_timestep")
        nodes += b.nodes
        b.nodes = []
        mapping = {latent_input: xin, timestep_input: t}

        def r(name, p=p, mapping=mapping):
            if not name or name in keep:
                return name
            return mapping.get(name, p + name)

        for node in g.node:
            new = copy.deepcopy(node)
            _rename_node(new, r)
            if new.name:
                new.name = p + new.name
            nodes.append(new)
        for vi in g.value_info:
            new = copy.deepcopy(vi)
            new.name = r(new.name)
            value_info.append(new)
        pred = r(pred_name)
        if cfg:
            half = b.op("Slice", [b.op("Shape", [x]), b.const([0], np.int64), b.const([1], np.int64)], f"s{i}_half")
            uncond, cond = b.op("Split", [pred, b.op("Concat", [half, half], axis=0)], f"s{i}_split", outputs=2,
                                axis=0)
            pred = b.op("Add", [uncond, b.op("Mul", ["guidance_scale", b.op("Sub", [cond, uncond])])], f"s{i}_guided")
        values = {"x": x, "out": pred, "prev": state}
        if noise_used and tables.coef["noise"][i] != 0:
            values["noise"] = b.op("Gather", ["noise", b.const(i, np.int64)], f"s{i}_noise", axis=0)
        coefs = {term: b.const(tables.coef[term][i], hint=f"s{i}_c_{term}") for term in TERMS
                 if tables.coef[term][i] != 0}
        if "prev" in coefs and state is None:
            raise EdgegenError(f"{tables.sampler}: step {i} reads a previous x0 before any step made one")
        clip = None
        if tables.clip is not None and tables.clip["limit"][i] != 0:
            clip = tuple(b.const(tables.clip[k][i], hint=f"s{i}_clip_{k}") for k in ("x", "out", "limit"))
        last = i == n - 1
        if tables.state is not None and not last:
            st = {term: b.const(tables.state[term][i], hint=f"s{i}_state_{term}") for term in ("x", "out")
                  if tables.state[term][i] != 0}
            state = affine_step(b, st, None, values, out=f"s{i}/x0")
        x = affine_step(b, coefs, clip, values, out=f"s{i}/next_latents")
        nodes += b.nodes
        b.nodes = []
    if tables.final_scale != 1.0:
        b.op("Mul", [x, b.const(tables.final_scale, hint="final_scale")], outputs=["final_latents"])
    else:
        b.op("Identity", [x], outputs=["final_latents"])
    nodes += b.nodes

    lat_vi = copy.deepcopy(by_name[latent_input])
    lat_vi.name = "latents"
    batch_dim = lat_vi.type.tensor_type.shape.dim[0].dim_param
    inputs = [lat_vi]
    for f in fixed:
        vi = copy.deepcopy(f)
        dims = vi.type.tensor_type.shape.dim
        if cfg and len(dims) and dims[0].dim_param == batch_dim:
            dims[0].dim_param = CFG_BATCH
        inputs.append(vi)
    if noise_used:
        lat_dims = [d.dim_param or d.dim_value for d in lat_vi.type.tensor_type.shape.dim]
        inputs.append(helper.make_tensor_value_info("noise", TensorProto.FLOAT, [n, *lat_dims]))
    if cfg:
        inputs.append(helper.make_tensor_value_info("guidance_scale", TensorProto.FLOAT, [1]))
    out_vi = copy.deepcopy(lat_vi)
    out_vi.name = "final_latents"
    graph = helper.make_graph(
        nodes, f"denoise_{tables.sampler}_{n}", inputs, [out_vi], [*g.initializer, *b.inits],
        doc_string=f"edgegen: {n} steps of {src.graph.name or 'the denoiser'} with the {tables.sampler} sampler"
                   f"{' and classifier-free guidance' if cfg else ''}", value_info=value_info)
    graph.sparse_initializer.extend(g.sparse_initializer)
    model = helper.make_model(graph, opset_imports=list(src.opset_import), producer_name="edgegen",
                              functions=list(src.functions))
    model.ir_version = src.ir_version
    # The checker resolves external data itself (and refuses hard-linked data files, which
    # optimize's linked artifacts have), so graphs with external weights are checked by loading
    # them in onnxruntime and running them against the loop (validate_denoise_graph) instead.
    if not shared:
        onnx.checker.check_model(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(out))
    return shared


def denoise_io(io: IOSpec, latent_input: str, tables: SamplerTables, cfg: bool) -> IOSpec:
    """The denoise graph's IOSpec, from the denoiser's."""
    lat = next(t for t in io.inputs if t.name == latent_input)
    dims = dict(io.dims)
    batch = lat.shape[0]
    fixed = [t for t in io.inputs if t.name not in (latent_input, "timestep")]
    if cfg:
        d = dims[batch]
        dims[batch] = Dim(batch, d.min, max(d.min, d.opt // 2), max(d.min, d.max // 2))
        dims[CFG_BATCH] = Dim(CFG_BATCH, 2 * d.min, 2 * dims[batch].opt, 2 * dims[batch].max, 2)
        fixed = [TensorSpec(t.name, t.dtype, (CFG_BATCH, *t.shape[1:]) if t.shape and t.shape[0] == batch else t.shape,
                            t.low, t.high) for t in fixed]
    ins = [TensorSpec("latents", "float32", lat.shape, -4, 4), *fixed]
    if np.any(np.asarray(tables.coef["noise"]) != 0):
        ins.append(TensorSpec("noise", "float32", (tables.num_steps, *lat.shape), -4, 4))
    if cfg:
        ins.append(TensorSpec("guidance_scale", "float32", (1,), 1, 10))
    names = {d for t in ins for d in t.shape if isinstance(d, str)}
    return IOSpec(tuple(ins), (TensorSpec("final_latents", "float32", lat.shape),),
                  {k: v for k, v in dims.items() if k in names})


class RowNoise:
    """A copy of a prepared numpy sampler whose step i takes its one noise draw from rows[i]
    (the denoise graph's `noise` input); zeros when rows is None (no noise input: every noise
    coefficient is 0, e.g. Euler-a's single last step)."""

    def __init__(self, sampler, rows: np.ndarray | None):
        self._sampler, self._rows = copy.deepcopy(sampler), rows

    def __getattr__(self, name):
        return getattr(self._sampler, name)

    def step(self, out, i, sample, rng=None):
        row = np.zeros(np.shape(sample), np.float32) if self._rows is None else self._rows[i]
        return self._sampler.step(out, i, sample, GivenNoise(row))


def _session(path: Path, threads: int = 0):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def validate_denoise_graph(graph: Path, denoiser_graph: Path, sampler, denoiser_io: IOSpec, io: IOSpec, *,
                           latent_input: str, timestep_scale: float = 1.0, cfg: bool = False, guidance: float = 1.0,
                           seed: int = 0, tol: float = DENOISE_TOL) -> dict:
    """The denoise graph against reference_denoise (N denoiser calls + the numpy sampler) on
    seeded inputs at a shape other than the export one; raise EdgegenError past `tol`."""
    sizes = io.sizes("mid", batch=1)
    feeds = io.example(sizes, seed=seed)
    rng = np.random.default_rng(seed + 1)
    lat = feeds["latents"] = (rng.standard_normal(feeds["latents"].shape)
                              * np.float32(sampler.init_noise_sigma)).astype(np.float32)
    rows = None
    if "noise" in feeds:
        # Row i is step i's noise (the graph reads it only where the step's noise term is nonzero).
        rows = feeds["noise"] = draw_noise(rng, [True] * len(sampler.timesteps), lat.shape)
    if cfg:
        feeds["guidance_scale"] = np.array([guidance], np.float32)
    got = _session(graph).run(["final_latents"], feeds)[0]
    den = _session(denoiser_graph)
    fixed = {k: v for k, v in feeds.items() if k not in ("latents", "noise", "guidance_scale")}
    pred_name = denoiser_io.output_names[0]

    def run_denoiser(**kw):
        return den.run([pred_name], {k: np.ascontiguousarray(v, np.float32) for k, v in kw.items()})[0]

    ref = reference_denoise(run_denoiser, RowNoise(sampler, rows), lat, fixed, latent_input=latent_input,
                            timestep_scale=timestep_scale, cfg=cfg, guidance=guidance)
    err, scale = float(np.abs(got.astype(np.float64) - ref).max()), float(np.abs(ref).max())
    limit = tol * max(1.0, scale)
    result = {"reference": "numpy loop: N denoiser onnxruntime calls + numpy sampler",
              "rule": f"max|graph-loop| <= {tol}*max(1, max|loop|)", "sizes": sizes, "max_abs_err": err,
              "max_abs_ref": scale, "tolerance": limit, "passed": err <= limit}
    if not np.isfinite(got).all():
        raise EdgegenError("denoise graph output has NaN/inf")
    if err > limit:
        raise EdgegenError(f"denoise graph differs from the numpy loop by {err:.3g} > {limit:.3g}")
    return result
