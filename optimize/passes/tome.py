"""Token merging (ToMe for Stable Diffusion, Bolya & Hoffman 2023) written into the U-Net graph.

Before each self-attention at the chosen resolutions, the most similar tokens are merged
(bipartite soft matching: one destination token per sx x sy cell, each other token scored
against the destinations by cosine similarity of the block's input, the best `ratio` of all
tokens averaged into their match); attention runs on the shorter sequence and its output is
copied back to every merged token before the residual add. Attention's cost falls with the
square of the tokens kept, its projections linearly. Cross-attention and the MLP are left
whole, as tomesd's defaults do (merging them costs more quality than it saves time).

tomesd patches the PyTorch blocks; an exported artifact has no PyTorch, so the same algorithm
is written here as ONNX nodes spliced into the exported graph (no library does that):
- its weights, names and every other node stay the parent's, so a later int8 pass calibrates
  on the merged activations and DeepCache still finds its cut;
- the token grid is read from the sample's shape at run time, so dynamic sizes stay dynamic;
- destinations are each cell's top-left token (tomesd's use_rand=False): a graph is a pure
  function, and the gate measured exactly the images it will compute.
Blocks are found by the exporter's module-scoped names (/down_blocks.i/attentions.j/
transformer_blocks.k/norm1|attn1/...); a block of another layout is left alone and counted.
tests/test_tome.py checks the graph against tomesd on the same PyTorch U-Net.
"""
from __future__ import annotations

import re
from collections import defaultdict

import onnx
from onnx import TensorProto, helper

from .. import graph as G
from ..registry import NothingToDo, Pass, PassContext, PassResult, Thresholds, register
from ...runtimes.errors import EdgegenError

_BLOCK = re.compile(r"^(.*?/(?:down_blocks\.(\d+)|(mid_block)|up_blocks\.(\d+))/attentions\.\d+/transformer_blocks\.\d+/)")
_INDEX = re.compile(r"/(down|up)_blocks\.(\d+)/")


class _Nodes:
    """Appends nodes under one name prefix; returns their output names."""

    def __init__(self, prefix: str, opset: int):
        self.prefix, self.opset, self.nodes, self.n = prefix, opset, [], 0

    def __call__(self, op: str, *inputs: str, outputs: int = 1, **attrs):
        self.n += 1
        name = f"{self.prefix}{op}_{self.n}"
        outs = [f"{name}_output_{k}" for k in range(outputs)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name, **attrs))
        return outs[0] if outputs == 1 else outs

    def const(self, value, dtype=TensorProto.INT64):
        shape = [] if not isinstance(value, (list, tuple)) else [len(value)]
        vals = value if isinstance(value, (list, tuple)) else [value]
        return self("Constant", value=helper.make_tensor("v", dtype, shape, vals))

    def reduce(self, op: str, x: str, axis: int, keepdims: int):
        # opset 18 moved the axes of Reduce* from an attribute to an input
        if self.opset >= 18:
            return self(op, x, self.const([axis]), keepdims=keepdims)
        return self(op, x, axes=[axis], keepdims=keepdims)


def _fixed(nodes, initializers) -> set[str]:
    """Weights and constants, and their Identity copies (the exporter's deduplicated weights)."""
    out = set(initializers) | {o for n in nodes if n.op_type == "Constant" for o in n.output}
    for n in nodes:   # nodes are in topological order
        if n.op_type == "Identity" and n.input[0] in out:
            out.add(n.output[0])
    return out


def _scope_io(nodes, scope: str, consumers, fixed) -> tuple[list[str], list[str]]:
    """Tensors entering `scope` from outside (not weights or constants) and tensors leaving it."""
    inside = [n for n in nodes if n.name.startswith(scope)]
    made = {o for n in inside for o in n.output}
    entering = sorted({i for n in inside for i in n.input if i and i not in made and i not in fixed})
    leaving = sorted(o for o in made if any(not c.name.startswith(scope) for c in consumers.get(o, [])))
    return entering, leaving


def find_blocks(model: onnx.ModelProto) -> tuple[list[dict], list[str]]:
    """Every U-Net transformer block: its scope, resolution level (0: the latent's own), the block
    input (the similarity metric), norm1's output (merged) and attn1's output (unmerged).
    Returns (blocks, scopes of blocks whose layout was not recognised)."""
    nodes = list(model.graph.node)
    downs = [int(m.group(2)) for n in nodes for m in [_INDEX.search(n.name)] if m and m.group(1) == "down"]
    ups = [int(m.group(2)) for n in nodes for m in [_INDEX.search(n.name)] if m and m.group(1) == "up"]
    n_down, n_up = max(downs, default=-1) + 1, max(ups, default=-1) + 1
    scopes: dict[str, int] = {}
    for n in nodes:
        m = _BLOCK.search(n.name)
        if m and m.group(1) not in scopes:
            # down block i works at level i; the mid block at the last down block's; up block i
            # mirrors down block n_up-1-i (its upsampler comes after its attentions)
            d, mid, u = m.group(2), m.group(3), m.group(4)
            scopes[m.group(1)] = int(d) if d is not None else (n_down - 1 if mid else n_up - 1 - int(u))
    consumers = defaultdict(list)
    for n in nodes:
        for i in n.input:
            consumers[i].append(n)
    fixed = _fixed(nodes, G.initializer_names(model))
    blocks, odd = [], []
    for scope, level in scopes.items():
        n_in, n_out = _scope_io(nodes, scope + "norm1/", consumers, fixed)
        a_in, a_out = _scope_io(nodes, scope + "attn1/", consumers, fixed)
        # Self-attention fed by norm1 alone, norm1 read by attn1 alone: the layout ToMe rewrites.
        if len(n_in) == 1 and n_out == a_in and len(a_in) == 1 and len(a_out) == 1 and \
                all(c.name.startswith(scope + "attn1/") for c in consumers[n_out[0]]):
            blocks.append({"scope": scope, "level": level, "metric": n_in[0], "normed": n_out[0],
                           "attn_out": a_out[0]})
        else:
            odd.append(scope)
    return blocks, odd


def _grid(b: _Nodes, sample: str, level: int, sx: int, sy: int) -> dict:
    """The level's token grid from the sample's shape, and its fixed split into src | dst tokens."""
    shape = b("Shape", sample)
    d = b.const(2 ** level)
    hw = [b("Div", b("Add", b("Gather", shape, b.const(k)), b.const(2 ** level - 1)), d) for k in (2, 3)]
    h, w = hw                       # ceil(latent / 2**level): a stride-2 conv's output size
    n = b("Mul", h, w)
    t = b("Range", b.const(0), n, b.const(1))
    y, x = b("Div", t, w), b("Mod", t, w)
    zero = b.const(0)

    def on(v, stride, size):       # v % stride == 0 and v inside the whole cells
        first = b("Equal", b("Mod", v, b.const(stride)), zero)
        inside = b("Less", v, b("Mul", b("Div", size, b.const(stride)), b.const(stride)))
        return b("And", first, inside)

    is_dst = b("And", on(y, sy, h), on(x, sx, w))
    flat = b.const([-1])
    dst = b("Reshape", b("NonZero", is_dst), flat)
    src = b("Reshape", b("NonZero", b("Not", is_dst)), flat)
    n_src = b("Reshape", b("Sub", n, b("Gather", b("Shape", dst), zero)), flat)   # [1]
    return {"n": n, "dst": dst, "src": src, "n_src": n_src}


def _merge(b: _Nodes, g: dict, blk: dict, ratio: float) -> tuple[str, dict]:
    """The matching on the block input, the merged norm1 output, and what unmerge needs."""
    flat, one = b.const([-1]), b.const([1])
    metric = b("Div", blk["metric"], b.reduce("ReduceL2", blk["metric"], -1, 1))
    a = b("Gather", metric, g["src"], axis=1)                        # [B, Ns, C]
    d = b("Gather", metric, g["dst"], axis=1)                        # [B, Nd, C]
    scores = b("MatMul", a, b("Transpose", d, perm=[0, 2, 1]))        # [B, Ns, Nd]
    best = b.reduce("ReduceMax", scores, -1, 0)                      # [B, Ns]
    match = b("ArgMax", scores, axis=-1, keepdims=0)                 # [B, Ns]
    order = b("TopK", best, g["n_src"], axis=-1, largest=1, sorted=1, outputs=2)[1]
    # r = min(Ns, int(N * ratio)), as tomesd
    n_f = b("Cast", g["n"], to=TensorProto.FLOAT)
    r = b("Cast", b("Floor", b("Mul", n_f, b.const(float(ratio), TensorProto.FLOAT))), to=TensorProto.INT64)
    r = b("Min", b("Reshape", r, flat), g["n_src"])
    big = b.const([2 ** 62])
    unm_i = b("Slice", order, r, big, one)                           # [B, Ns - r] kept src tokens
    src_i = b("Slice", order, b.const([0]), r, one)                  # [B, r] merged src tokens
    dst_of = b("GatherElements", match, src_i, axis=1)               # [B, r] their destinations

    x = blk["normed"]
    xs = b("Gather", x, g["src"], axis=1)
    xd = b("Gather", x, g["dst"], axis=1)
    last = flat
    unm = b("GatherND", xs, b("Unsqueeze", unm_i, last), batch_dims=1)
    moved = b("GatherND", xs, b("Unsqueeze", src_i, last), batch_dims=1)    # [B, r, C]
    to = b("Expand", b("Unsqueeze", dst_of, last), b("Shape", moved))
    total = b("ScatterElements", xd, to, moved, axis=1, reduction="add")
    # torch's scatter_reduce "mean" (include_self): the destination counts itself once
    ones = b("ConstantOfShape", b("Shape", dst_of), value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))
    b_nd = b("Shape", b("Gather", xd, b.const(0), axis=2))          # [B, Nd]
    itself = b("ConstantOfShape", b_nd, value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))
    count = b("ScatterElements", itself, dst_of, ones, axis=1, reduction="add")   # [B, Nd]
    mean = b("Div", total, b("Unsqueeze", count, last))
    merged = b("Concat", unm, mean, axis=1)                          # [B, N - r, C]

    # Unmerge: output token t takes row inv[t] of concat(attention out, its rows for the merged
    # src tokens); inv inverts the order merge left the tokens in.
    pos = b("Concat", b("Gather", g["src"], unm_i), b("Expand", b("Unsqueeze", g["dst"], b.const([0])), b_nd),
            b("Gather", g["src"], src_i), axis=1)                    # [B, N]
    inv = b("ScatterElements", b("Mul", pos, b.const(0)), pos,
            b("Expand", b("Range", b.const(0), g["n"], b.const(1)), b("Shape", pos)), axis=1)
    return merged, {"inv": inv, "dst_of": dst_of, "kept": b("Sub", g["n_src"], r)}


def _unmerge(b: _Nodes, y: str, m: dict) -> str:
    last = b.const([-1])
    dst_y = b("Slice", y, m["kept"], b.const([2 ** 62]), b.const([1]))           # [B, Nd, C]
    moved = b("GatherND", dst_y, b("Unsqueeze", m["dst_of"], last), batch_dims=1)  # [B, r, C]
    rows = b("Concat", y, moved, axis=1)                                          # [B, N, C]
    return b("GatherND", rows, b("Unsqueeze", m["inv"], last), batch_dims=1)


def choose(model: onnx.ModelProto, max_downsample: int) -> tuple[list[dict], list[dict], list[str]]:
    """(blocks to merge, all recognised blocks, unrecognised scopes); NothingToDo if none to merge."""
    blocks, odd = find_blocks(model)
    chosen = [b for b in blocks if 2 ** b["level"] <= max_downsample]
    if not blocks:
        raise NothingToDo("it has no U-Net transformer blocks (.../attentions.j/transformer_blocks.k/ in the exporter's "
                          f"node names) to merge tokens in{'; unrecognised: ' + str(len(odd)) if odd else ''}")
    if not chosen:
        levels = sorted({2 ** b["level"] for b in blocks})
        raise NothingToDo(f"no U-Net self-attention at downsample <= {max_downsample} (its transformer blocks are "
                          f"at {', '.join(map(str, levels))}{'; unrecognised: ' + str(len(odd)) if odd else ''})")
    return chosen, blocks, odd


def apply_tome(model: onnx.ModelProto, sample: str, ratio: float, max_downsample: int, sx: int, sy: int) -> dict:
    """Rewrite `model` in place; returns what was merged where."""
    chosen, blocks, odd = choose(model, max_downsample)
    opset = G.opset(model)
    g = model.graph
    grids, new = {}, []
    for lv in sorted({b["level"] for b in chosen}):   # one token split per level, shared by its blocks
        nb = _Nodes(f"/tome/level{lv}/", opset)
        grids[lv] = _grid(nb, sample, lv, sx, sy)
        new += nb.nodes
    after: dict[str, list] = defaultdict(list)       # tensor -> nodes to insert after its producer
    rewire = {}
    for blk in chosen:
        mb = _Nodes(blk["scope"] + "tome/", opset)
        merged, m = _merge(mb, grids[blk["level"]], blk, ratio)
        ub = _Nodes(blk["scope"] + "tome/unmerge/", opset)
        out = _unmerge(ub, blk["attn_out"], m)
        after[blk["normed"]] += mb.nodes
        after[blk["attn_out"]] += ub.nodes
        rewire[blk["scope"]] = (blk["normed"], merged, blk["attn_out"], out)
    for old in g.node:
        n = onnx.NodeProto()
        n.CopyFrom(old)   # the originals go when the node list is replaced
        scope = next((s for s in rewire if n.name.startswith(s)), None)
        if scope is not None:
            xn, merged, y, out = rewire[scope]
            if n.name.startswith(scope + "attn1/"):
                n.input[:] = [merged if i == xn else i for i in n.input]
            elif not n.name.startswith(scope + "tome/"):
                n.input[:] = [out if i == y else i for i in n.input]
        new.append(n)
        for o in n.output:
            new += after.get(o, [])
    # Each inserted node follows its inputs' producers, so the order stays topological.
    del g.node[:]
    g.node.extend(new)
    return {"blocks": len(chosen), "levels": sorted({b["level"] for b in chosen}),
            "left_whole": len(blocks) - len(chosen), "unrecognised": len(odd)}


@register
class TokenMerge(Pass):
    name = "tome"
    version = 1
    group = "tokens"
    order = 3   # first: it finds blocks by the exporter's names, which fusions replace
    roles = ("denoiser",)
    # ToMe approximates attention by design; the component limits catch a broken rewrite, the
    # image gate judges the approximation (as for the step options: same limits).
    thresholds = Thresholds(cosine=0.9, rel_err=0.5, psnr=20.0, ssim=0.7)
    defaults = {"ratio": 0.5, "max_downsample": 1, "sx": 2, "sy": 2}
    help = "token merging before U-Net self-attention (ToMe: ratio of tokens merged, at downsample <= max_downsample)"

    def check_config(self):
        c = self.config
        for k in ("max_downsample", "sx", "sy"):
            if not isinstance(c[k], int) or c[k] < 1:
                raise EdgegenError(f"tome: {k} must be a whole number >= 1, got {c[k]!r}")
        if c["max_downsample"] & (c["max_downsample"] - 1):
            raise EdgegenError(f"tome: max_downsample must be 1, 2, 4 or 8, got {c['max_downsample']}")
        top = 1 - 1 / (c["sx"] * c["sy"])
        if not isinstance(c["ratio"], (int, float)) or not 0 < c["ratio"] <= top:
            raise EdgegenError(f"tome: ratio must be in (0, {top:g}] (at most all but one token per "
                               f"{c['sx']}x{c['sy']} cell), got {c['ratio']!r}")

    def applicable(self, comp: dict) -> str | None:
        if "tome" in (comp.get("optimize") or {}).get("passes", []):
            return "it already merges tokens (start from its parent to change the ratio)"
        return super().applicable(comp)

    def applicable_graph(self, path):
        model = G.structure(path)
        if G.opset(model) < 16:
            return f"it needs opset >= 16 (ScatterElements with reduction), the graph has {G.opset(model)}"
        try:
            choose(model, self.config["max_downsample"])
        except NothingToDo as e:
            return str(e)
        return None

    def apply(self, ctx: PassContext) -> PassResult:
        model = G.structure(ctx.src)
        sample = ctx.io.inputs[0]
        if len(sample.shape) != 4:
            raise NothingToDo("its first input is not a 4-D latent: not a U-Net")
        c = self.config
        report = apply_tome(model, sample.name, float(c["ratio"]), c["max_downsample"], c["sx"], c["sy"])
        ctx.dst.mkdir(parents=True, exist_ok=True)
        files = [G.GRAPH]
        # Only the graph changes: the weights stay the parent's file (linked, not rewritten).
        external = {e.value for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL
                    for e in t.external_data if e.key == "location"}
        for loc in sorted(external):
            G.link_or_copy((ctx.src.parent / loc).resolve(), ctx.dst / loc)
            files.append(loc)
        onnx.save_model(model, str(ctx.dst / G.GRAPH))
        ctx.say(f"{ctx.component}: tome merges {c['ratio']:g} of the tokens in {report['blocks']} self-attention "
                f"blocks (levels {report['levels']})")
        return PassResult(files, precision=None, report=report)
