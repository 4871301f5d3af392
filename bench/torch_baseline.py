"""The torch baseline: the same model in plain diffusers, timed stage by stage.

Same weights (the artifact's manifest says where they came from: seeded random and tiny
sources are rebuilt exactly by export.weights.load_pipeline, folders and checkpoints are
loaded again), same resolution, steps, guidance and initial latents, and the diffusers
scheduler class that the runtime's sampler reproduces (`diffusers_class`) configured from
the artifact's scheduler config. Eager fp32 PyTorch, default threads, output_type="np".

Stage names follow edgegen's runtime so that ratios line up: "tokenize:<tokenizer>" (the
tokenizer's __call__), each text encoder's forward, the denoiser's forward (one call per step),
"sampler" (scheduler.step; the CFG combination, which diffusers does inline, is not in it) and
the VAE decoder ("vae.decode").
"""
from __future__ import annotations

import time

from ..runtimes.errors import EdgegenError


def _sync(cuda: bool):
    if cuda:
        import torch

        torch.cuda.synchronize()


def _time_module(module, stage: str, rec, cuda: bool) -> None:
    starts = []

    def pre(mod, args, kwargs=None):
        _sync(cuda)
        starts.append(time.perf_counter())

    def post(mod, args, out):
        _sync(cuda)
        rec.add(stage, time.perf_counter() - starts.pop())

    module.register_forward_pre_hook(pre)
    module.register_forward_hook(post)


def _time_method(obj, name: str, stage: str, rec, cuda: bool) -> None:
    orig = getattr(obj, name)

    def timed(*args, **kwargs):
        _sync(cuda)
        t0 = time.perf_counter()
        out = orig(*args, **kwargs)
        _sync(cuda)
        rec.add(stage, time.perf_counter() - t0)
        return out

    setattr(obj, name, timed)


def _time_tokenizer(tok, stage: str, rec) -> None:
    """Tokenizers are called (`tok(prompt)`), and Python looks __call__ up on the class: give this
    instance a subclass whose __call__ is timed."""
    base = type(tok)

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = base.__call__(self, *args, **kwargs)
        rec.add(stage, time.perf_counter() - t0)
        return out

    tok.__class__ = type(f"Timed{base.__name__}", (base,), {"__call__": __call__})


def load_reference(manifest: dict):
    """The diffusers pipeline holding the artifact's weights."""
    from ..export.families import get_family
    from ..export.weights import Source, load_pipeline

    src = manifest.get("source") or {}
    if src.get("kind") not in ("tiny", "random", "folder", "single-file", "hub"):
        raise EdgegenError(f"the artifact's manifest does not say where its weights came from (source {src!r}); "
                           "the torch baseline cannot load the same weights")
    return load_pipeline(get_family(manifest["family"]), Source(src["kind"], src.get("path"), src.get("seed") or 0))


def torch_runner(cfg: dict, manifest: dict, rec):
    import diffusers
    import torch
    import numpy as np

    from ..runtimes.samplers import SAMPLERS

    torch.set_grad_enabled(False)
    cuda = cfg["device"] == "cuda"
    pipe = load_reference(manifest)
    pipe.scheduler = getattr(diffusers, SAMPLERS[cfg["sampler"]].diffusers_class).from_config(manifest["scheduler"])
    if cuda:
        pipe.to("cuda")
        torch.cuda.reset_peak_memory_stats()
    r = manifest["pipeline"]
    for te in r["text_encoders"]:
        _time_tokenizer(getattr(pipe, te["tokenizer"]), f"tokenize:{te['tokenizer']}", rec)
        _time_module(getattr(pipe, te["component"]), te["component"], rec, cuda)
    _time_module(getattr(pipe, r["denoiser"]), r["denoiser"], rec, cuda)
    _time_method(pipe.vae, "decode", r["vae_decoder"], rec, cuda)
    _time_method(pipe.scheduler, "step", "sampler", rec, cuda)
    kw = {}
    if r["kind"] == "flux":
        from ..runtimes.flux_pipeline import pack

        t5 = next(te for te in r["text_encoders"] if "hidden_states" in
                  [o["name"] for o in manifest["components"][te["component"]]["io"]["outputs"]])
        kw["max_sequence_length"] = manifest["components"][t5["component"]]["io"]["inputs"][0]["shape"][1]
    device = "cuda" if cuda else "cpu"

    def generate(latents: np.ndarray):
        lat = latents
        if r["kind"] == "flux":
            lat = pack(latents)
        out = pipe(cfg["prompt"], num_inference_steps=cfg["steps"], guidance_scale=cfg["guidance"],
                   height=cfg["height"], width=cfg["width"], latents=torch.from_numpy(lat).to(device),
                   output_type="np", **kw).images
        return (out[0] * 255).round().clip(0, 255).astype(np.uint8)

    info = {"runtime": f"torch {torch.__version__} + diffusers {diffusers.__version__} (eager fp32)",
            "scheduler": type(pipe.scheduler).__name__, "intra_op_threads": torch.get_num_threads()}

    def finish() -> dict:
        if not cuda:
            return {}
        return {"torch_cuda": {"max_memory_allocated": torch.cuda.max_memory_allocated(),
                               "max_memory_reserved": torch.cuda.max_memory_reserved()}}

    return generate, info, finish

