"""Memory planner: will a model run on a device, in which mode, at which precision?

Weights come from the real architectures: each component is built on the meta
device (no memory, no weights) and its parameters plus persistent buffers are
counted; counts are cached in param_counts.json keyed by a hash of the config.
Activations are estimates whose formulas and constants are explained in
profiles/README.md. All sizes are bytes; GiB = 2**30.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..runtimes.errors import EdgegenError
from .catalog import Model, Part, get_model
from .device import Profile, check_precision

GiB = 2 ** 30
CACHE = Path(__file__).with_name("param_counts.json")

# Bytes per weight. 8-bit: per-output-channel scales, negligible. int4: one fp16 scale per
# 64-weight group (AWQ/GPTQ-style) = 4.25 bits. fp4: NVFP4, one fp8 scale per 16 weights = 4.5 bits.
BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "fp8": 1.0, "int4": 0.5 + 2 / 64, "fp4": 0.5 + 1 / 16}
# A plan fits when need * (1 + MARGIN) <= usable: the caching allocator's fragmentation and
# kernel workspaces that the estimates below leave out (PyTorch typically reserves 3-10% over
# what it has allocated).
MARGIN = 0.05
# Live activation elements per token and channel inside one transformer block (residual,
# norm output, q/k/v, attention output, 4x MLP hidden and its activation) and, for a VAE
# decoder at full resolution, full-size tensors of block_out_channels[1] channels: input,
# GroupNorm output, SiLU output, plus one for the convolution's layout copy / workspace
# (eager PyTorch CPU measured 4.3 on the sd15 decoder at 512x512, README).
K_BLOCK = 20
K_VAE = 4
# CPU host (onnxruntime-cpu), fitted on this repository's real-size sd15 artifact at 512x512
# (profiles/README.md, "CPU host model").
# Interpreter, numpy, the onnxruntime library, tokenizers and per-session buffers: 4.27 GiB measured
# with all three sessions loaded, less 3.845 GiB of fp32 weights.
ORT_BASE = 0.43 * GiB
# ORT's ONNX GroupNorm/SiLU decompositions keep more full-size temporaries than eager PyTorch:
# the sd15 decoder's arena at 512x512 is 0.92 GiB = 3.6 tensors of 256 x 512 x 512 fp32.
K_VAE_ORT = 3.6
# Python, torch and diffusers imported (0.31 GiB) plus what building the pipeline leaves
# beyond its weights (0.14 GiB), measured the same way.
TORCH_BASE = 0.45 * GiB
RUNTIMES = ("onnxruntime-cpu", "torch-cpu")
VERDICTS = {"resident": "fits (all components resident)",
            "sequential": "fits with sequential component loading",
            "offload": "does not fit (needs layer offload)"}


# -- parameter counts ---------------------------------------------------------------------

def _key(part: Part) -> str:
    blob = json.dumps([part.cls, part.config, list(part.submodules)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_on_meta(part: Part):
    """The component's torch module with meta tensors: architecture only, built in well under a second."""
    import torch

    lib, name = part.cls.split(".")
    cls = getattr(importlib.import_module(lib), name)
    with torch.device("meta"):
        if lib == "diffusers":
            return cls.from_config(part.config)
        return cls(cls.config_class(**part.config))


def count_weights(part: Part) -> int:
    """Parameters plus persistent buffers (SD3's positional table is a buffer of 226M values in
    SD3.5 Medium, and ships in the checkpoint), each tied tensor once."""
    model = build_on_meta(part)
    mods = [getattr(model, s) for s in part.submodules if getattr(model, s, None) is not None] or [model]
    seen, n = set(), 0
    for m in mods:
        for t in m.state_dict(keep_vars=True).values():
            if id(t) not in seen:
                seen.add(id(t))
                n += t.numel()
    return n


@functools.lru_cache(maxsize=1)
def _load_cache() -> dict:
    try:
        return json.loads(CACHE.read_text())
    except (OSError, ValueError):
        return {}


def _save_cache(cache: dict) -> None:
    try:
        CACHE.write_text(json.dumps(dict(sorted(cache.items())), indent=1) + "\n")
    except OSError:
        pass   # read-only install: still correct, only slower next time


def weight_count(part: Part, recompute: bool = False) -> int:
    """Weights of `part` (see count_weights), from the cache when its config is unchanged."""
    cache = _load_cache()
    key = _key(part)
    if not recompute and key in cache:
        return cache[key]["weights"]
    cache[key] = {"class": part.cls, "weights": count_weights(part)}
    _save_cache(cache)
    return cache[key]["weights"]


def _vae_encoder(model: Model) -> Part:
    vae = model.role("vae_decoder")[0]
    return Part("vae_encoder", "vae_encoder", vae.cls, vae.config, submodules=("encoder", "quant_conv"))


def refresh_cache() -> None:
    """Recount every model's components and drop entries no config uses any more."""
    from .catalog import catalog_models, models

    fresh = {}
    for m in (*models().values(), *catalog_models().values()):
        for p in (*m.parts, _vae_encoder(m)):
            key = _key(p)
            if key not in fresh:
                fresh[key] = {"class": p.cls, "weights": count_weights(p), "used_by": []}
            fresh[key]["used_by"].append(f"{m.name}/{p.name}")
    _load_cache.cache_clear()
    _save_cache(fresh)


# -- activation estimates -----------------------------------------------------------------

def _heads_per_level(cfg: dict, levels: int) -> list[int]:
    # UNet2DConditionModel's attention_head_dim is, for legacy reasons, the number of heads.
    h = cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8)
    return list(h) if isinstance(h, (list, tuple)) else [h] * levels


def _unet_elems(cfg: dict, lh: int, lw: int, fused: bool) -> float:
    ch = cfg["block_out_channels"]
    n = [(lh >> i) * (lw >> i) for i in range(len(ch))]
    # Skip connections the up path needs, held from the down path: conv_in, each resnet, each downsampler.
    skips = ch[0] * n[0] + sum(cfg.get("layers_per_block", 2) * c * m for c, m in zip(ch, n))
    skips += sum(ch[i] * n[i + 1] for i in range(len(ch) - 1))
    heads = _heads_per_level(cfg, len(ch))
    attn = [i for i, t in enumerate(cfg["down_block_types"]) if "CrossAttn" in t]
    work = 6 * ch[0] * n[0]   # a resnet at the top level: input, GroupNorm, SiLU, conv outputs
    for i in attn[:1]:        # the first attention level has the most tokens
        work = max(work, K_BLOCK * ch[i] * n[i] + (0 if fused else 2 * heads[i] * n[i] ** 2))
    return skips + work


def _dit_elems(cfg: dict, image_tokens: int, text_tokens: int, fused: bool) -> float:
    heads, dim = cfg["num_attention_heads"], cfg["num_attention_heads"] * cfg["attention_head_dim"]
    tokens = image_tokens + text_tokens
    return K_BLOCK * dim * tokens + (0 if fused else 2 * heads * tokens ** 2)


def _vae_channels(cfg: dict) -> list[int]:
    return list(cfg.get("block_out_channels") or cfg["decoder_block_out_channels"])


def latent_grid(model: Model, height: int, width: int) -> tuple[int, int, int]:
    """Latent height, width and channels: the VAE downsamples by 2 per block after the first."""
    vae = model.role("vae_decoder")[0].config
    scale = 2 ** (len(_vae_channels(vae)) - 1)
    return height // scale, width // scale, vae.get("latent_channels", 4)


def _vae_elems(cfg: dict, height: int, width: int, fused: bool, k_vae: float) -> float:
    ch = _vae_channels(cfg)
    lat = (height >> (len(ch) - 1)) * (width >> (len(ch) - 1))
    # Full resolution: the last upsampler and first full-size resnet hold k_vae tensors of ch[1] channels.
    full = k_vae * ch[1] * height * width
    # Mid-block single-head attention over the latent grid: QK^T and softmax when not fused.
    mid = 4 * ch[-1] * lat + (0 if fused else 2 * lat ** 2)
    return max(full, mid)


def _text_elems(cfg: dict, tokens: int) -> float:
    d = cfg.get("hidden_size") or cfg["d_model"]
    ff = cfg.get("intermediate_size") or cfg["d_ff"] * (2 if cfg.get("is_gated_act") else 1)
    heads = cfg.get("num_attention_heads") or cfg["num_heads"]
    # HF text encoders run eager attention (T5's relative bias): scores are materialised.
    return tokens * (4 * d + 2 * ff) + 2 * heads * tokens ** 2


def activation_bytes(part: Part, model: Model, height: int, width: int, batch: int, act_bytes: int,
                     fused: bool = True, k_vae: float = K_VAE) -> float:
    """Peak live activation bytes while `part` runs (weights excluded)."""
    lh, lw, lc = latent_grid(model, height, width)
    b = batch * (2 if model.cfg else 1)
    cfg = part.config
    if part.role == "text_encoder":
        return batch * act_bytes * _text_elems(cfg, part.tokens)
    if part.role == "vae_decoder":
        return batch * act_bytes * _vae_elems(cfg, height, width, fused, k_vae)
    if "block_out_channels" in cfg:
        return b * act_bytes * _unet_elems(cfg, lh, lw, fused)
    # DiTs: latent patches become tokens; FLUX packs 2x2 in the pipeline (64 = 16 x 4 input
    # channels, patch_size 1), SD3 and AuraFlow patchify 2x2 inside the model.
    image_tokens = lh * lw * lc // (cfg["in_channels"] * cfg.get("patch_size", 1) ** 2)
    text = model.text_tokens + (8 if part.cls.endswith("AuraFlowTransformer2DModel") else 0)  # register tokens
    return b * act_bytes * _dit_elems(cfg, image_tokens, text, fused)


# -- plans --------------------------------------------------------------------------------

@dataclass
class Stage:
    name: str
    precision: str
    weights: float
    activations: float

    @property
    def peak(self) -> float:
        return self.weights + self.activations


@dataclass
class Plan:
    model: str
    label: str                      # baseline | 8-bit | 4-bit | the user's --precision
    precisions: dict[str, str]      # component -> precision
    stages: list[Stage]
    usable: float                   # bytes the device gives the pipeline
    resident_peak: float = 0.0
    sequential_peak: float = 0.0
    verdict: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        g = lambda x: round(x / GiB, 3)
        return {"model": self.model, "label": self.label, "precisions": self.precisions,
                "verdict": self.verdict, "meaning": VERDICTS[self.verdict],
                "usable_gib": g(self.usable), "resident_peak_gib": g(self.resident_peak),
                "sequential_peak_gib": g(self.sequential_peak), "margin": MARGIN,
                "stages": [{"component": s.name, "precision": s.precision, "weights_gib": g(s.weights),
                            "activations_gib": g(s.activations), "peak_gib": g(s.peak)} for s in self.stages],
                "notes": self.notes}


def _is_t5(part: Part) -> bool:
    return "T5" in part.cls


def precision_plans(model: Model, supported: tuple[str, ...]) -> list[tuple[str, dict[str, str]]]:
    """fp16 everywhere; then 8-bit denoiser and text encoders; then 4-bit denoiser and T5."""
    base = "fp16" if "fp16" in supported else "fp32"
    eight = next((p for p in ("fp8", "int8") if p in supported), None)
    four = next((p for p in ("int4", "fp4") if p in supported), None)
    plans = [("baseline", {p.name: base for p in model.parts})]
    if eight:
        plans.append(("8-bit", {p.name: base if p.role == "vae_decoder" else eight for p in model.parts}))
    if eight and four:
        plans.append(("4-bit", {p.name: base if p.role == "vae_decoder" else four if p.role == "denoiser" or _is_t5(p)
                                else eight for p in model.parts}))
    return plans


def evaluate(model: Model, precisions: dict[str, str], usable: float, height: int, width: int, batch: int,
             fused: bool = True, label: str = "", host: bool = False) -> Plan:
    """Stages run text encoders (one at a time) -> denoiser -> VAE decoder.

    host=True models edgegen's onnxruntime CPU runtime instead of a GPU framework: the process's
    own overhead counts, and each session's arena stays with it (see rss_breakdown)."""
    # Quantised weights run with 16-bit activations next to fp16 parts, fp32 ones on a fp32 host.
    act_bytes = 2 if {"fp16", "bf16"} & set(precisions.values()) else 4
    if host:
        acts = {p.name: activation_bytes(p, model, height, width, batch, act_bytes, False, K_VAE_ORT)
                for p in model.parts}
    else:
        acts = {p.name: activation_bytes(p, model, height, width, batch, act_bytes, fused) for p in model.parts}
    stages = [Stage(p.name, precisions[p.name], weight_count(p) * BYTES[precisions[p.name]], acts[p.name])
              for p in model.parts]
    plan = Plan(model.name, label, precisions, stages, usable)
    weights = sum(s.weights for s in stages)
    if host:
        plan.resident_peak = ORT_BASE + weights + sum(s.activations for s in stages)
        plan.sequential_peak = ORT_BASE + max(s.peak for s in stages)
    else:
        plan.resident_peak = weights + max(s.activations for s in stages)
        plan.sequential_peak = max(s.peak for s in stages)
    if plan.resident_peak * (1 + MARGIN) <= usable:
        plan.verdict = "resident"
    elif plan.sequential_peak * (1 + MARGIN) <= usable:
        plan.verdict = "sequential"
        top = max(stages, key=lambda s: s.peak)
        plan.notes.append(f"peak stage: {top.name} ({top.peak / GiB:.2f} GiB)")
    else:
        plan.verdict = "offload"
    return plan


def _size(model: Model, height: int | None, width: int | None, batch: int) -> tuple[int, int]:
    h, w = height or model.size, width or model.size
    if h % 16 or w % 16 or h <= 0 or w <= 0:
        raise EdgegenError(f"height and width must be positive multiples of 16, got {h}x{w}")
    if batch < 1:
        raise EdgegenError(f"batch must be >= 1, got {batch}")
    return h, w


def plan_for_device(model_name: str, profile: Profile, height: int | None = None, width: int | None = None,
                    batch: int = 1, precision: str | None = None) -> dict:
    """All precision plans tried on this device, and the proposal: the first (least quantised) that fits."""
    if precision is not None:
        check_precision(profile, precision)
    model = get_model(model_name)
    h, w = _size(model, height, width, batch)
    # Accelerators never hold all heads' scores: CUDA/TensorRT fuse attention, CoreML's split-einsum
    # attention (Apple's ml-stable-diffusion) runs it per head in chunks. CPU profiles use the ORT model.
    fused = profile.kind != "cpu"
    if precision is None:
        candidates = precision_plans(model, profile.precisions)
    else:
        vae = precision if precision in ("fp32", "fp16", "bf16") else ("fp16" if "fp16" in profile.precisions else "fp32")
        candidates = [(precision, {p.name: vae if p.role == "vae_decoder" else precision for p in model.parts})]
    usable = profile.usable_gb * GiB
    host = profile.kind == "cpu"
    plans = [evaluate(model, prec, usable, h, w, batch, fused, label, host) for label, prec in candidates]
    chosen = next((p for p in plans if p.verdict != "offload"), None)
    return {"model": model.name, "title": model.title, "device": profile.name, "height": h, "width": w,
            "batch": batch, "cfg": model.cfg, "fused_attention": fused,
            "memory_model": "onnxruntime-cpu process RSS" if host else "accelerator memory",
            "usable_gib": round(profile.usable_gb, 3), "plans": [p.to_dict() for p in plans],
            "proposal": chosen.to_dict() if chosen else None}


# -- the consumer-GPU table ---------------------------------------------------------------

TABLE_ROWS = (8, 10, 12, 16, 20, 24, 32)
TABLE_COLUMNS = {"sd35-medium": "SD3.5 Medium", "sdxl": "SDXL", "playground-v25": "Playground v2.5",
                 "auraflow": "AuraFlow v0.2", "sd35-large": "SD3.5 Large", "sd35-large-turbo": "SD3.5 Large Turbo",
                 "flux-dev": "FLUX.1 dev", "flux-schnell": "FLUX.1 schnell"}
TABLE_MODELS = tuple(TABLE_COLUMNS)
# A generic NVIDIA card of each size: Ada-like precisions, CUDA context reserve as in the rtx profiles.
TABLE_RESERVED_GB = 0.5
TABLE_PRECISIONS = ("fp16", "bf16", "fp8", "int8", "int4")
SHORT = {"resident": "res", "sequential": "seq", "offload": "**no**"}


def table_cells(rows=TABLE_ROWS, models=TABLE_MODELS) -> dict[str, dict[int, list[Plan]]]:
    out = {}
    for name in models:
        model = get_model(name)
        out[name] = {}
        for gb in rows:
            usable = (gb - TABLE_RESERVED_GB) * GiB
            out[name][gb] = [evaluate(model, prec, usable, model.size, model.size, 1, True, label)
                             for label, prec in precision_plans(model, TABLE_PRECISIONS)]
    return out


def smallest_card(cells: dict[int, list[Plan]], step: int, verdicts: tuple[str, ...]) -> int | None:
    return next((gb for gb, plans in sorted(cells.items()) if plans[step].verdict in verdicts), None)


def fit_table(rows=TABLE_ROWS, models=TABLE_MODELS) -> str:
    """Markdown: rows are GPU memory sizes, columns models, cells fp16 / 8-bit (fp8) / 4-bit (int4)."""
    cells = table_cells(rows, models)
    titles = {m: TABLE_COLUMNS.get(m) or get_model(m).title for m in models}
    den = get_model(models[0]).role("denoiser")[0].name
    steps = [p.precisions[den] for p in cells[models[0]][rows[0]]]
    lines = ["| GPU memory | " + " | ".join(titles[m] for m in models) + " |",
             "|---|" + "---|" * len(models)]
    for gb in rows:
        row = [" / ".join(SHORT[p.verdict] for p in cells[m][gb]) for m in models]
        lines.append(f"| {gb} GB | " + " | ".join(row) + " |")
    lines += ["", "Each cell: fp16 / fp8 / int4. fp8 = denoiser and text encoders in fp8; int4 = denoiser and T5 "
              "in int4, CLIPs fp8. VAE fp16, batch 1, each model's native size (1024x1024), CFG where the model "
              "uses it. res = fits with every component resident; seq = fits with sequential component loading "
              "(each text encoder, then the denoiser, then the VAE, each freed after its stage: model-level CPU "
              "offload); **no** = does not fit without offload below the component level (layer streaming). "
              f"A card of N GB has N GiB, of which {TABLE_RESERVED_GB} GiB go to the CUDA context; a plan fits "
              f"when its peak x {1 + MARGIN:.2f} fits the rest.", "",
              "Smallest card (GB) on which each plan fits, with sequential loading / all resident:", "",
              "| Model | " + " | ".join(steps) + " |", "|---|" + "---|" * len(steps)]
    fmt = lambda gb: f"{gb}" if gb else f">{rows[-1]}"
    for m in models:
        row = [f"{fmt(smallest_card(cells[m], i, ('sequential', 'resident')))} / "
               f"{fmt(smallest_card(cells[m], i, ('resident',)))}" for i in range(len(steps))]
        lines.append(f"| {titles[m]} | " + " | ".join(row) + " |")
    lines += ["", "Where the memory goes (GiB): fp16 weights per component; peaks at fp16 / fp8 / int4:", "",
              "| Model | fp16 weights | resident peak | sequential peak | peak stage at fp16 |", "|---|---|---|---|---|"]
    for m in models:
        plans = cells[m][rows[0]]
        comps = ", ".join(f"{s.name} {s.weights / GiB:.2f}" for s in plans[0].stages)
        res = " / ".join(f"{p.resident_peak / GiB:.1f}" for p in plans)
        seq = " / ".join(f"{p.sequential_peak / GiB:.1f}" for p in plans)
        top = max(plans[0].stages, key=lambda s: s.peak).name
        lines.append(f"| {titles[m]} | {comps} | {res} | {seq} | {top} |")
    return "\n".join(lines) + "\n"


# -- CPU host: peak RSS of the ONNX Runtime pipeline ---------------------------------------

def rss_breakdown(family: str, precision: str = "fp32", height: int = 512, width: int = 512, batch: int = 1,
                  runtime: str = "onnxruntime-cpu", warm: bool = True, mem_pattern: bool = False) -> dict[str, float]:
    """Bytes by cause. onnxruntime-cpu keeps one session per component, each with its own arena that
    never shrinks: the first run at a shape grows it by the activation peak. With mem_pattern=True
    (onnxruntime's default; edgegen's CPU sessions turn it off) the second run also allocates the
    memory-pattern block it planned, as large again: warm=True (a bench that runs each stage at least
    twice) counts both, and the UNet always runs twice or more in one generation."""
    if runtime not in RUNTIMES:
        raise EdgegenError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    if precision not in ("fp32", "fp16", "int8"):
        raise EdgegenError(f"the CPU model covers fp32, fp16 and int8 graphs, not {precision!r}")
    model = get_model(family)
    h, w = _size(model, height, width, batch)
    act = 2 if precision == "fp16" else 4   # int8 graphs (dynamic quantisation) compute in fp32
    out = {"runtime": ORT_BASE if runtime == "onnxruntime-cpu" else TORCH_BASE}
    for p in model.parts:
        out[f"{p.name} weights"] = weight_count(p) * BYTES[precision]
    if runtime == "torch-cpu":
        # A diffusers pipeline holds the whole VAE, encoder included.
        out["vae_encoder weights"] = weight_count(_vae_encoder(model)) * BYTES[precision]
        # Eager PyTorch frees intermediates as it goes and its CPU SDPA is fused: one stage at a time.
        out["activations"] = max(activation_bytes(p, model, h, w, batch, act, fused=True) for p in model.parts)
        return out
    for p in model.parts:
        runs = 2 if mem_pattern and (warm or p.role == "denoiser") else 1
        out[f"{p.name} arena"] = runs * activation_bytes(p, model, h, w, batch, act, fused=False, k_vae=K_VAE_ORT)
    return out


def predict_peak_rss(family: str, precision: str = "fp32", height: int = 512, width: int = 512, batch: int = 1,
                     runtime: str = "onnxruntime-cpu", warm: bool = True, mem_pattern: bool = False) -> int:
    """Predicted peak resident set size, in bytes, of one process generating with `family`
    (export family or catalog model) through edgegen's runtime on CPU."""
    return int(sum(rss_breakdown(family, precision, height, width, batch, runtime, warm, mem_pattern).values()))


if __name__ == "__main__":
    refresh_cache()
