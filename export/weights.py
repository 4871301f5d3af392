"""Where weights come from: a local diffusers folder, a single-file checkpoint, a hub id,
seeded random weights on the real architecture, or the tiny config of the same classes.

Every source ends as a diffusers pipeline object: the exporter takes its components,
and tests use the same object as the PyTorch reference.
"""
from __future__ import annotations

import inspect
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..runtimes.errors import EdgegenError
from .family import Family

PICKLE_SUFFIXES = {".ckpt", ".bin", ".pt", ".pth", ".pkl"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Source:
    kind: str                  # tiny | random | folder | single-file | hub
    path: str | None = None
    seed: int = 0
    trust_pickle: bool = False

    @property
    def tiny(self) -> bool:
        return self.kind == "tiny"

    def describe(self) -> dict:
        return {"kind": self.kind, "path": self.path, "seed": self.seed if self.kind in ("tiny", "random") else None}


WAYS_FORWARD = ("give --weights PATH (a diffusers folder or .safetensors you have), --random-weights "
                "(the real architecture with seeded random weights) or --tiny (a small config of the same classes)")


def resolve_source(weights: str | None, random_weights: bool, tiny: bool, seed: int, trust_pickle: bool,
                   hub_id: str | None = None, shipped: str | None = None) -> Source:
    """Turn CLI flags into a Source, refusing bad combinations before any work. With none of the
    three, the weights that ship with the family (`shipped`) are used, else the family's own hub
    id (`hub_id`) is tried: the user may have it cached."""
    chosen = [f for f, on in (("--weights", weights), ("--random-weights", random_weights), ("--tiny", tiny)) if on]
    if not chosen and shipped:
        return Source("folder", shipped)
    if not chosen and hub_id:
        check_hub_cached(hub_id)
        return Source("hub", hub_id, trust_pickle=trust_pickle)
    if len(chosen) != 1:
        raise EdgegenError("give exactly one of --weights PATH, --random-weights, --tiny")
    if tiny:
        return Source("tiny", seed=seed)
    if random_weights:
        return Source("random", seed=seed)
    p = Path(weights)
    if p.is_dir():
        return Source("folder", str(p), trust_pickle=trust_pickle)
    if p.is_file():
        if p.suffix.lower() in PICKLE_SUFFIXES and not trust_pickle:
            raise EdgegenError(f"{p} is a pickle checkpoint, which can run code when loaded; "
                               "convert it to .safetensors or pass --trust-pickle")
        if p.suffix.lower() not in PICKLE_SUFFIXES | {".safetensors"}:
            raise EdgegenError(f"{p}: unsupported checkpoint type {p.suffix!r} (want .safetensors or a diffusers folder)")
        return Source("single-file", str(p), trust_pickle=trust_pickle)
    if HUB_ID.match(weights) and not weights.startswith("."):
        return Source("hub", weights, trust_pickle=trust_pickle)
    raise EdgegenError(f"--weights {weights}: no such file or folder")


def check_hub_cached(hub_id: str) -> None:
    """Offline, a hub id not in the local cache can only fail: say so before any heavy work."""
    if os.environ.get("HF_HUB_OFFLINE") != "1":
        return
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return
    if not isinstance(try_to_load_from_cache(hub_id, "model_index.json"), str):
        raise EdgegenError(f"{hub_id} is not in the Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading it; "
                           + WAYS_FORWARD)


def _component_names(family: Family) -> list[str]:
    names = []
    for te in family.text_encoders:
        names += [te.component, te.tokenizer]
    return names + [family.denoiser.component, family.vae.component, "scheduler"]


def check_folder(family: Family, folder: Path, trust_pickle: bool) -> None:
    """Fail before loading if the folder lacks a component, holds the wrong model or only pickles."""
    if not (folder / "model_index.json").is_file():
        raise EdgegenError(f"{folder} is not a diffusers folder: model_index.json is missing")
    # The architecture check comes first: "wrong model" says more than "missing text_encoder_2".
    from .families import families
    from .families.infer import check_named, read_model

    check_named(family, read_model(str(folder)), families())
    for name in _component_names(family):
        if not (folder / name).is_dir():
            raise EdgegenError(f"{folder} is missing component {name!r} (folder {folder / name})")
    for name in [te.component for te in family.text_encoders] + [family.denoiser.component, family.vae.component]:
        files = [f.name for f in (folder / name).iterdir()]
        if "config.json" not in files:
            raise EdgegenError(f"{folder / name} has no config.json")
        if not any(f.endswith(".safetensors") or f.endswith(".safetensors.index.json") for f in files):
            if any(Path(f).suffix in PICKLE_SUFFIXES for f in files) and not trust_pickle:
                raise EdgegenError(f"{folder / name} holds only pickle weights; convert to safetensors or pass --trust-pickle")
            if not any(Path(f).suffix in PICKLE_SUFFIXES for f in files):
                raise EdgegenError(f"{folder / name} has no weight files")


def _pipeline_class(family: Family):
    import diffusers

    return getattr(diffusers, family.pipeline_class)


def _assemble(family: Family, parts: dict):
    """Build the family's diffusers pipeline from parts, with optional extras (safety checker) off."""
    cls = _pipeline_class(family)
    params = inspect.signature(cls.__init__).parameters
    kwargs = {k: parts.get(k) for k in params if k not in ("self", "args", "kwargs")}
    if "requires_safety_checker" in params:
        kwargs["requires_safety_checker"] = False
    if "force_zeros_for_empty_prompt" in params:
        kwargs["force_zeros_for_empty_prompt"] = family.force_zeros_for_empty_prompt
    return cls(**kwargs)


def write_tokenizer(te, folder: Path) -> Path:
    """A real tokenizer for `te`, built offline (the CLIP merges ship with edgegen; T5/Gemma are trained)."""
    if te.tokenizer_kind == "clip":
        from .clip_vocab import write_clip_tokenizer

        return write_clip_tokenizer(folder, te.pad_token)
    from . import text_tokenizers

    return getattr(text_tokenizers, f"write_{te.tokenizer_kind}_tokenizer")(folder, te.max_length)


def write_config_folder(family: Family, folder: Path, tiny: bool) -> Path:
    """A diffusers folder with configs and tokenizers but no weights (for from_single_file offline)."""
    import diffusers
    import transformers

    index = {"_class_name": family.pipeline_class, "_diffusers_version": diffusers.__version__}
    for te in family.text_encoders:
        getattr(transformers, te.model_class).config_class(**(te.tiny if tiny else te.config)).save_pretrained(folder / te.component)
        write_tokenizer(te, folder / te.tokenizer)
        index[te.component] = ["transformers", te.model_class]
        index[te.tokenizer] = ["transformers", type(_load_tokenizer(folder / te.tokenizer)).__name__]
    for m in (family.denoiser, family.vae):
        (folder / m.component).mkdir(parents=True, exist_ok=True)
        (folder / m.component / "config.json").write_text(json.dumps({**m.get(tiny), "_class_name": m.cls}, indent=2))
        index[m.component] = ["diffusers", m.cls]
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(family.scheduler, indent=2))
    index["scheduler"] = ["diffusers", family.scheduler["_class_name"]]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def _load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def build_random(family: Family, tiny: bool, seed: int, device: str | None = None, preset: dict | None = None):
    """The family's pipeline with seeded random weights (real configs, or tiny ones). With
    device="meta" the models hold shapes only (no memory): what FLOP counts and recipes need.
    `preset`: component -> model used as given (the streamed ones, on meta)."""
    import contextlib

    import diffusers
    import torch
    import transformers

    on = (lambda: torch.device(device)) if device else contextlib.nullcontext
    preset = preset or {}
    parts = dict(preset)
    with tempfile.TemporaryDirectory() as tmp:
        for i, te in enumerate(family.text_encoders):
            cls = getattr(transformers, te.model_class)
            torch.manual_seed(seed + i)
            if te.component not in preset:
                with on():
                    parts[te.component] = cls(cls.config_class(**(te.tiny if tiny else te.config))).eval()
            parts[te.tokenizer] = _load_tokenizer(write_tokenizer(te, Path(tmp) / te.tokenizer))
    for k, m in enumerate((family.denoiser, family.vae)):
        torch.manual_seed(seed + 10 + k)
        if m.component not in preset:
            with on():
                parts[m.component] = getattr(diffusers, m.cls).from_config(m.get(tiny)).eval()
    parts["scheduler"] = getattr(diffusers, family.scheduler["_class_name"]).from_config(family.scheduler)
    return _assemble(family, parts)


def load_pipeline(family: Family, source: Source, preset: dict | None = None):
    """Load the source as the family's diffusers pipeline, or raise EdgegenError. `preset`:
    component -> model to use as given instead of loading it (streamed components, on meta)."""
    if source.kind in ("tiny", "random"):
        return build_random(family, source.tiny, source.seed, preset=preset)
    cls = _pipeline_class(family)
    extra = {} if source.trust_pickle else {"use_safetensors": True}
    # Graphs are traced and validated in fp32 (optimize makes fp16/bf16 behind its gate). Hub
    # folders often store fp16, and transformers 5 loads a checkpoint in its stored dtype by
    # default: the text encoder came out fp16 beside fp32 inputs and its graph did not load.
    import torch

    extra["torch_dtype"] = torch.float32
    if "safety_checker" in inspect.signature(cls.__init__).parameters:
        extra.update(safety_checker=None, requires_safety_checker=False)
    if source.kind == "folder":
        check_folder(family, Path(source.path), source.trust_pickle)
        pipe = cls.from_pretrained(source.path, local_files_only=True, **extra, **(preset or {}))
    elif source.kind == "single-file":
        with tempfile.TemporaryDirectory() as tmp:
            config = write_config_folder(family, Path(tmp), tiny=False)
            extra.pop("use_safetensors", None)
            try:
                pipe = cls.from_single_file(source.path, config=str(config), local_files_only=True, **extra)
            except Exception as e:  # diffusers raises many types (SingleFileComponentError, KeyError, ...)
                raise EdgegenError(f"{source.path}: not a {family.name} single-file checkpoint ({str(e).splitlines()[0][:200]})") from None
    else:
        try:
            pipe = cls.from_pretrained(source.path, local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1", **extra)
        except Exception as e:  # the hub client raises many types; all mean "could not get it"
            raise EdgegenError(f"could not load {source.path} from the Hugging Face hub or its cache "
                               f"({type(e).__name__}); " + WAYS_FORWARD) from None
    from .families import families
    from .families.infer import check_named, model_of_pipe

    check_named(family, model_of_pipe(pipe, source.path), families())
    return pipe
