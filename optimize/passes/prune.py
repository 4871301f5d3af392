"""Pruning: unstructured magnitude at a given sparsity, or N:M structured (2:4 for sparse
tensor cores), on the weights of Conv/MatMul/Gemm nodes outside the skip list.

Written by hand: no ONNX library prunes weights. The graph is unchanged (dense zeros),
so the file does not shrink; TensorRT's sparse kernels (and compressors) use the zeros.
N:M groups run along the reduction dimension, the one sparse tensor cores compress:
input channels for Conv ([O, I, kh, kw]: groups of M consecutive input channels at each
(o, kh, kw)), K for MatMul ([K, N]) and for Gemm (axis 1 when transB, else 0).

Memory: streaming. `graph.rewrite_weights` reads one tensor at a time from the source
files and appends it to the new data file: peak memory is the largest tensor.
"""
from __future__ import annotations

import numpy as np

from .. import graph as G
from ..registry import Pass, PassContext, PassResult, Thresholds, register
from ...runtimes.errors import EdgegenError


def magnitude_mask(w: np.ndarray, sparsity: float) -> np.ndarray:
    """Keep the largest (1 - sparsity) fraction of |w| (per tensor)."""
    k = int(round(w.size * sparsity))
    if k <= 0:
        return np.ones(w.shape, bool)
    flat = np.abs(w).ravel()
    cut = np.partition(flat, k - 1)[k - 1]
    mask = np.abs(w) > cut
    # Ties at the cut: drop exactly k in total, in index order.
    extra = k - int((~mask).sum())
    if extra < 0:
        tied = np.flatnonzero((np.abs(w) == cut).ravel())
        mask.ravel()[tied[:-extra]] = True
    return mask


def n_m_mask(w: np.ndarray, n: int, m: int, axis: int) -> np.ndarray:
    """In every group of m consecutive elements along `axis`, keep the n largest |w|.
    A remainder shorter than m stays dense."""
    x = np.moveaxis(np.abs(w), axis, -1)
    k = x.shape[-1]
    full = k - k % m
    mask = np.ones(x.shape, bool)
    if full:
        g = x[..., :full].reshape(*x.shape[:-1], full // m, m)
        order = np.argsort(-g, axis=-1, kind="stable")
        keep = np.zeros(g.shape, bool)
        np.put_along_axis(keep, order[..., :n], True, axis=-1)
        mask[..., :full] = keep.reshape(*x.shape[:-1], full)
    return np.moveaxis(mask, -1, axis)


def reduction_axis(node, weight_rank: int) -> int:
    if node.op_type == "Conv":
        return 1
    if node.op_type == "Gemm":
        return 1 if next((a.i for a in node.attribute if a.name == "transB"), 0) else 0
    return weight_rank - 2  # MatMul: [.., K, N]


@register
class Prune(Pass):
    name = "prune"
    version = 1
    group = "sparsity"
    order = 10  # before any precision pass: prune the fp32 weights
    roles = ("denoiser",)
    thresholds = Thresholds(cosine=0.5, rel_err=1.0, psnr=14.0, ssim=0.35)
    defaults = {"mode": "n:m", "n": 2, "m": 4, "sparsity": 0.5, "skip": True}
    help = "magnitude (--prune 0.5) or N:M structured (--prune 2:4) sparsity"

    def check_config(self):
        c = self.config
        if c["mode"] not in ("magnitude", "n:m"):
            raise EdgegenError("prune: mode must be magnitude or n:m")
        if c["mode"] == "magnitude" and not 0 < c["sparsity"] < 1:
            raise EdgegenError("prune: sparsity must be in (0, 1)")
        if c["mode"] == "n:m" and not 0 < c["n"] < c["m"]:
            raise EdgegenError("prune: need 0 < n < m")
        if c["mode"] == "magnitude":
            self.config = {k: c[k] for k in ("mode", "sparsity", "skip")}
        else:
            self.config = {k: c[k] for k in ("mode", "n", "m", "skip")}

    def apply(self, ctx: PassContext) -> PassResult:
        c = self.config
        model = G.structure(ctx.src)
        G.ensure_node_names(model)
        skipped = set(G.skip_list(model)) if c["skip"] else set()
        targets = {}  # weight name -> (node, reduction axis)
        ranks = {t.name: len(t.dims) for t in model.graph.initializer}
        for n in G.weight_nodes(model):
            if n.name in skipped or ranks[n.input[1]] < 2:
                continue
            targets.setdefault(n.input[1], (n, reduction_axis(n, ranks[n.input[1]])))
        if not targets:
            raise EdgegenError(f"{ctx.component}: no weights to prune")
        layers = {}

        def prune(name: str, w: np.ndarray):
            node, axis = targets[name]
            if c["mode"] == "magnitude":
                mask = magnitude_mask(w, c["sparsity"])
            else:
                mask = n_m_mask(w, c["n"], c["m"], axis)
            out = np.where(mask, w, np.zeros((), w.dtype))
            layers[node.name] = round(float((out == 0).mean()), 4)
            return out

        files = G.rewrite_weights(ctx.src, ctx.dst, prune, set(targets))
        total = sum(np.prod(t.dims) for t in model.graph.initializer if t.name in targets)
        zeros = sum(layers[targets[t][0].name] * np.prod(
            next(x.dims for x in model.graph.initializer if x.name == t)) for t in targets)
        return PassResult(files, precision=None, report={
            "pruned_layers": len(layers), "sparsity": round(float(zeros / total), 4),
            "layer_sparsity": layers, "skipped_nodes": sorted(skipped)})
