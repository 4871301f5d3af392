"""Which family a set of weights is: read from the model's own configs, never from its widths.

A family fixes an architecture (which denoiser class, which text encoders, which extra inputs)
and runtime defaults (sampler, steps, guidance). Widths, depths and head counts are the model's
own: distilled, pruned and test checkpoints (BK-SDM, tiny-sd, 24-wide test pipelines) change them
and export the same way, because every exported shape is read from the loaded model's config.
So the architecture check compares `features` only; the hints that tell apart families of one
architecture (SD2.1 vs SD-Turbo, SDXL vs SDXL-Turbo) only rank candidates. Torch-free.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ...runtimes.errors import EdgegenError
from ..family import Family

# Feature -> how a message names it.
FEATURES = {
    "denoiser": "denoiser class",
    "text_encoders": "text encoders",
    "inpainting": "inpainting input (mask + masked image channels)",
    "added_conditioning": "added conditioning (addition_embed_type)",
    "guidance_embedding": "guidance embedding (time_cond_proj_dim / guidance_embeds)",
    "qk_norm": "q/k normalization (qk_norm)",
    "dual_attention": "dual attention layers (MMDiT-X)",
}


def features(denoiser_cls: str, denoiser: dict, text_encoders) -> dict:
    """The architecture-defining facts of a model: each changes the graph's inputs or blocks in a
    way the family's recipe must know; none is a width."""
    out_ch = denoiser.get("out_channels")
    return {
        "denoiser": denoiser_cls,
        "text_encoders": tuple(sorted(text_encoders)),
        # Inpainting UNets take latents + mask + masked-image latents (2C+1 channels in, C out).
        "inpainting": out_ch is not None and denoiser.get("in_channels") == 2 * out_ch + 1,
        "added_conditioning": denoiser.get("addition_embed_type"),
        "guidance_embedding": bool(denoiser.get("time_cond_proj_dim") or denoiser.get("guidance_embeds")),
        "qk_norm": bool(denoiser.get("qk_norm")),
        "dual_attention": bool(denoiser.get("dual_attention_layers")),
    }


def family_features(fam: Family, tiny: bool = False) -> dict:
    return features(fam.denoiser.cls, fam.denoiser.get(tiny), [te.component for te in fam.text_encoders])


@dataclass(frozen=True)
class ModelInfo:
    """What a weight source says about itself (configs only, no weights)."""

    where: str
    pipeline_class: str | None
    denoiser_cls: str
    denoiser: dict           # the denoiser's config.json
    text_encoders: tuple[str, ...]
    scheduler: dict

    @property
    def features(self) -> dict:
        return features(self.denoiser_cls, self.denoiser, self.text_encoders)


def _config_file(weights: str, rel: str) -> Path | None:
    p = Path(weights)
    if p.exists():
        return p / rel if (p / rel).is_file() else None
    from ..weights import HUB_ID

    if not HUB_ID.match(weights):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    hit = try_to_load_from_cache(weights, rel)
    return Path(hit) if isinstance(hit, str) else None


def _read_json(path: Path | None) -> dict | None:
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise EdgegenError(f"{path}: not a readable JSON config ({e})") from None


def read_model(weights: str) -> ModelInfo | None:
    """A diffusers folder's (or cached hub id's) model_index.json and denoiser config, or None
    where there is none to read (a single-file checkpoint, a hub id not cached)."""
    index = _read_json(_config_file(weights, "model_index.json"))
    if index is None:
        return None
    den = next((k for k in ("unet", "transformer") if isinstance(index.get(k), list) and index[k][-1]), None)
    if den is None:
        raise EdgegenError(f"{weights}: model_index.json names no unet or transformer; edgegen exports "
                           "text-to-image pipelines with one denoiser")
    cfg = _read_json(_config_file(weights, f"{den}/config.json"))
    if cfg is None:
        raise EdgegenError(f"{weights}: {den}/config.json is missing")
    tes = tuple(k for k, v in index.items() if k.startswith("text_encoder") and isinstance(v, list) and v[-1])
    sched = _read_json(_config_file(weights, "scheduler/scheduler_config.json")) or {}
    return ModelInfo(weights, index.get("_class_name"), cfg.get("_class_name") or index[den][-1], cfg, tes, sched)


def model_of_pipe(pipe, where: str) -> ModelInfo:
    """The same facts from a loaded diffusers pipeline (single files, hub loads)."""
    comps = pipe.components
    den = "unet" if comps.get("unet") is not None else "transformer"
    model = comps[den]
    tes = tuple(k for k, v in comps.items() if k.startswith("text_encoder") and v is not None)
    return ModelInfo(where, type(pipe).__name__, type(model).__name__, dict(model.config), tes,
                     dict(pipe.scheduler.config))


def _hint_score(fam: Family, m: ModelInfo) -> int:
    """How well the non-architecture facts agree: the pipeline class, the scheduler's prediction
    type and class, and (for real checkpoints) the conditioning width of the family's config."""
    s = 8 * (m.pipeline_class == fam.pipeline_class)
    s += 4 * (m.scheduler.get("prediction_type", "epsilon") == fam.scheduler.get("prediction_type", "epsilon"))
    s += 2 * (m.scheduler.get("_class_name") == fam.scheduler["_class_name"])
    s += m.scheduler.get("timestep_spacing") == fam.scheduler.get("timestep_spacing")
    for key in ("cross_attention_dim", "joint_attention_dim", "caption_channels"):
        if key in fam.denoiser.config:
            s += m.denoiser.get(key) == fam.denoiser.config[key]
    return s


def candidates(m: ModelInfo, known: dict[str, Family]) -> list[str]:
    """Families whose architecture is the model's, best first (registry order breaks ties)."""
    feats = m.features
    fits = [f for f in known.values() if family_features(f) == feats]
    return [f.name for f in sorted(fits, key=lambda f: -_hint_score(f, m))]


def differences(fam: Family, m: ModelInfo) -> list[str]:
    """'<feature>: the model has X, family F has Y' for each architecture feature that differs."""
    mine, theirs = m.features, family_features(fam)
    return [f"{FEATURES[k]}: the weights have {_show(mine[k])}, {fam.name} has {_show(theirs[k])}"
            for k in FEATURES if mine[k] != theirs[k]]


def _show(v) -> str:
    if isinstance(v, tuple):
        return " + ".join(v) or "none"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return "none" if v is None else str(v)


def infer(m: ModelInfo, known: dict[str, Family]) -> tuple[str, list[str]]:
    """(the family, the other families of the same architecture) or a one-line error."""
    fits = candidates(m, known)
    if not fits:
        raise EdgegenError(f"{m.where}: a {m.pipeline_class or 'pipeline'} with a {m.denoiser_cls} whose architecture "
                           f"matches no family ({_describe(m)}); families: {', '.join(known)}")
    return fits[0], fits[1:]


def _describe(m: ModelInfo) -> str:
    f = m.features
    return ", ".join(f"{FEATURES[k].split(' (')[0]} {_show(v)}" for k, v in f.items() if k != "denoiser")


def check_named(fam: Family, m: ModelInfo, known: dict[str, Family]) -> None:
    """Refuse weights of another architecture than the named family, naming both sides and the
    family they are."""
    diffs = differences(fam, m)
    if not diffs:
        return
    fits = candidates(m, known)
    held = f"a {m.pipeline_class}" if m.pipeline_class else "weights"
    arch = f" ({known[fits[0]].description.split(' (')[0]} architecture)" if fits else ""
    hint = f"; try: edgegen export {fits[0]} --weights {m.where} ..." if fits else \
        f"; it matches no family ({', '.join(known)})"
    raise EdgegenError(f"{m.where} holds {held}{arch}, not {fam.name}: {diffs[0]}{hint}")


# diffusers' single-file model types (loaders.single_file_utils.infer_diffusers_model_type) -> family.
SINGLE_FILE_TYPES = {"v1": "sd15", "v2": "sd21", "xl_base": "sdxl", "inpainting": "sd15-inpaint",
                     "xl_inpaint": "sdxl-inpaint", "sd3": "sd3-medium", "sd35_medium": "sd35-medium",
                     "sd35_large": "sd35-large", "flux-dev": "flux-dev", "flux-schnell": "flux-schnell",
                     "sana": "sana-1600m"}


class _Shapes:
    """A checkpoint's tensor names and shapes, read from the safetensors header without loading
    a tensor: what diffusers' model-type inference looks at (`key in ckpt`, `ckpt[key].shape`)."""

    def __init__(self, f):
        self._f, self._keys = f, set(f.keys())

    def __contains__(self, key) -> bool:
        return key in self._keys

    def __getitem__(self, key):
        return type("T", (), {"shape": tuple(self._f.get_slice(key).get_shape())})

    def keys(self):
        return self._keys


def single_file_family(path: str) -> tuple[str | None, str | None]:
    """(family, diffusers' model type) of a .safetensors checkpoint, by diffusers' own rules; a
    family of None where the type is one edgegen has no family for."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type
    from safetensors import safe_open

    try:
        with safe_open(path, framework="np") as f:
            kind = infer_diffusers_model_type(_Shapes(f))
    except (OSError, ValueError, KeyError, IndexError) as e:
        raise EdgegenError(f"{path}: cannot read it as a safetensors checkpoint ({str(e).splitlines()[0][:160]})") from None
    return SINGLE_FILE_TYPES.get(kind), kind
