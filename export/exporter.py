"""`edgegen export`: a family + a weight source -> a validated ONNX artifact folder."""
from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from ..runtimes.artifact import check_out_path, digest_files, save_manifest, write_artifact
from ..runtimes.errors import EdgegenError
from .components import pipeline_components, vae_scale_factor
from .families import get_family
from .family import Family
from .weights import Source, load_pipeline


def tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("edgegen", "torch", "diffusers", "transformers", "onnx", "onnxscript", "onnxruntime", "tokenizers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _pipeline_recipe(family: Family, pipe, resolution: tuple[int, int, int]) -> dict:
    """What the torch-free runtime needs to run the denoising loop (no family names)."""
    vae_cfg = pipe.vae.config
    return {
        "kind": "unet",
        "text_encoders": [{"component": te.component, "tokenizer": te.tokenizer, "pooled": te.pooled}
                          for te in family.text_encoders],
        "denoiser": "unet",
        "vae_decoder": "vae_decoder",
        "vae_encoder": "vae_encoder",
        "vae_scale_factor": vae_scale_factor(pipe.vae),
        "latent_channels": vae_cfg.latent_channels,
        "scaling_factor": vae_cfg.scaling_factor,
        "shift_factor": getattr(vae_cfg, "shift_factor", None),
        "guidance": family.guidance_mode,
        "force_zeros_for_empty_prompt": family.force_zeros_for_empty_prompt,
        "defaults": {"sampler": family.sampler, "steps": family.steps, "guidance": family.guidance,
                     "height": resolution[1], "width": resolution[1]},
    }


def _write_tokenizers(family: Family, pipe, root: Path) -> list[str]:
    from .clip_vocab import write_runtime_tokenizer

    files = []
    for te in family.text_encoders:
        folder = root / te.tokenizer
        with tempfile.TemporaryDirectory() as tmp:
            getattr(pipe, te.tokenizer).save_pretrained(tmp)
            for f in Path(tmp).iterdir():
                shutil.copy(f, folder / f.name) if folder.exists() else (folder.mkdir(), shutil.copy(f, folder / f.name))
            write_runtime_tokenizer(Path(tmp), folder)
        files += [str(p.relative_to(root)) for p in sorted(folder.iterdir())]
    return files


def export(family_name: str, source: Source, out: str | Path, force: bool = False, progress=None,
           exporter: str | None = None, pipe=None) -> Path:
    family = get_family(family_name)
    out = Path(out)
    check_out_path(out, force)
    say = progress or (lambda msg: None)
    started = time.time()
    say(f"loading {family.name} ({source.kind})")
    exporter = exporter or family.exporter
    pipe = pipe if pipe is not None else load_pipeline(family, source)
    resolution = family.tiny_resolution if source.tiny else family.resolution
    comps = pipeline_components(family, pipe, resolution)

    from .onnx_export import export_component, validate_component

    with write_artifact(out, force) as tmp:
        components = {}
        for comp in comps:
            say(f"exporting {comp.name} ({comp.params / 1e6:.1f}M params)")
            t0 = time.time()
            files = export_component(comp, tmp / comp.name, exporter)
            t1 = time.time()
            say(f"validating {comp.name} against PyTorch")
            validation = validate_component(comp, tmp / comp.name / "model.onnx")
            rel = [f"{comp.name}/{f}" for f in files]
            components[comp.name] = {
                "graph": f"{comp.name}/model.onnx",
                "files": digest_files(tmp, rel),
                "io": comp.io.to_dict(),
                "params": comp.params,
                "precision": "fp32",
                "export_seconds": round(t1 - t0, 2),
                "validation": validation,
            }
        tok_files = _write_tokenizers(family, pipe, tmp)
        (tmp / "scheduler").mkdir()
        pipe.scheduler.save_config(tmp / "scheduler")
        misc = tok_files + ["scheduler/scheduler_config.json"]
        save_manifest(tmp, {
            "family": family.name,
            "description": family.description,
            "source": source.describe(),
            "size": "tiny" if source.tiny else "full",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "pipeline": _pipeline_recipe(family, pipe, resolution),
            "scheduler": json.loads((tmp / "scheduler" / "scheduler_config.json").read_text()),
            "components": components,
            "files": digest_files(tmp, misc),
            "passes": [{"name": "export", "version": 1,
                        "config": {"format": "onnx", "exporter": exporter, "precision": "fp32",
                                   "seconds": round(time.time() - started, 1)}}],
            "tools": tool_versions(),
        })
    if not out.exists():
        raise EdgegenError(f"export finished but {out} was not written")
    return out
