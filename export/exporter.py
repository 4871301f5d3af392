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
from .arch import get_arch
from .families import get_family
from .components import MAX_BATCH
from .family import Family
from .sizes import SizeRequest, narrow_export
from .sizes import resolution as export_resolution
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


def _write_tokenizers(family: Family, pipe, root: Path) -> list[str]:
    from .text_tokenizers import write_runtime_tokenizer_any

    files = []
    for te in family.text_encoders:
        folder = root / te.tokenizer
        with tempfile.TemporaryDirectory() as tmp:
            getattr(pipe, te.tokenizer).save_pretrained(tmp)
            shutil.copytree(tmp, folder)
            write_runtime_tokenizer_any(Path(tmp), folder, te.max_length, te.padding_side)
        files += [str(p.relative_to(root)) for p in sorted(folder.iterdir())]
    return files


def manifest_head(family: Family, source: Source, pipe, recipe: dict, tmp: Path) -> dict:
    """Write the tokenizers and scheduler config into `tmp`; the manifest fields every export
    format shares (ONNX here, CoreML in coreml.py), with the digests of those files."""
    tok_files = _write_tokenizers(family, pipe, tmp)
    (tmp / "scheduler").mkdir()
    pipe.scheduler.save_config(tmp / "scheduler")
    return {
        "family": family.name,
        "description": family.description,
        "source": source.describe(),
        "size": "tiny" if source.tiny else "full",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "pipeline": recipe,
        "scheduler": json.loads((tmp / "scheduler" / "scheduler_config.json").read_text()),
        "files": digest_files(tmp, tok_files + ["scheduler/scheduler_config.json"]),
    }


def release_weights(done, later) -> None:
    """Move the weights of component `done` to the meta device, except those a `later` component
    also reads (the VAE decoder and encoder wrap one AutoencoderKL). Shapes and configs stay;
    the memory goes back: the components of a real-size pipeline are exported one after another,
    and none needs another's weights once it is exported and validated."""
    import gc

    from torch import nn

    keep = {id(p) for c in later for p in c.module.parameters()}
    for mod in done.module.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None and id(p) not in keep and p.device.type != "meta":
                mod._parameters[name] = nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)
    gc.collect()


def export(family_name: str, source: Source, out: str | Path, force: bool = False, progress=None,
           exporter: str | None = None, pipe=None, sizes: SizeRequest | None = None, stream=None) -> Path:
    """`stream`: a streamed.StreamRequest; its components are traced on meta and their weights
    streamed from safetensors (export/streamed.py), the others export as usual."""
    from . import streamed as S

    family = get_family(family_name)
    out = Path(out)
    check_out_path(out, force)
    sizes = sizes or SizeRequest()
    sizes.check()
    say = progress or (lambda msg: None)
    started = time.time()
    streams = S.choose(family, source, stream) if stream is not None else []
    if stream is not None and pipe is not None:
        raise EdgegenError("export(stream=...) loads its own pipeline (its streamed models stay on meta)")
    say(f"loading {family.name} ({source.kind})" + (f"; streaming {', '.join(streams)}" if streams else ""))
    # A pipeline loaded here is this function's own: each component's weights are released once it
    # is exported and validated (a caller's pipeline is left as it was given).
    own = pipe is None
    preset = {"preset": {n: S.meta_model(family, source, n) for n in streams}} if streams else {}
    pipe = pipe if pipe is not None else load_pipeline(family, source, **preset)
    arch = get_arch(family.arch)
    resolution = export_resolution(family.tiny_resolution if source.tiny else family.resolution,
                                   arch.size_limits(pipe), sizes)
    comps = arch.components(family, pipe, resolution)
    ios, recipe = narrow_export({c.name: c.io for c in comps}, arch.recipe(family, pipe, resolution), sizes,
                                {te.component for te in family.text_encoders}, MAX_BATCH)
    for comp in comps:
        comp.io = ios[comp.name]

    from .onnx_export import export_component, validate_component

    with write_artifact(out, force) as tmp, S.scratch(out, streams and source.kind != "folder") as scratch:
        components = {}
        for i, comp in enumerate(comps):
            say(f"exporting {comp.name} ({comp.params / 1e6:.1f}M params)" + (" streamed" if comp.name in streams else ""))
            t0 = time.time()
            precision = "fp32"
            if comp.name in streams:
                try:
                    ckpt, weights = S.checkpoint(family, source, comp.name, comp.module.model, scratch, stream.dtype,
                                                 source.seed)
                    files, validation = S.export_streamed(comp, ckpt, weights, tmp / comp.name, stream.dtype, say)
                finally:
                    if scratch is not None:
                        S.remove(scratch / f"{comp.name}.safetensors")
                precision = S.LOW[stream.dtype]
                t1 = time.time()
            else:
                files = export_component(comp, tmp / comp.name, exporter or comp.exporter)
                t1 = time.time()
                say(f"validating {comp.name} against PyTorch")
                release = (lambda c=comp, k=i: release_weights(c, comps[k + 1:])) if own else None
                validation = validate_component(comp, tmp / comp.name / "model.onnx", release=release)
                if release is not None:
                    release()
            rel = [f"{comp.name}/{f}" for f in files]
            components[comp.name] = {
                "graph": f"{comp.name}/model.onnx",
                "files": digest_files(tmp, rel),
                "io": comp.io.to_dict(),
                "params": comp.params,
                "precision": precision,
                **({"compute_dtype": stream.dtype} if comp.name in streams else {}),
                "exporter": "streaming" if comp.name in streams else exporter or comp.exporter,
                "export_seconds": round(t1 - t0, 2),
                "validation": validation,
            }
        manifest = {
            **manifest_head(family, source, pipe, recipe, tmp),
            "components": components,
            "passes": [{"name": "export", "version": 1,
                        "config": {"format": "onnx", "exporter": exporter or "per component", "precision": "fp32",
                                   "sizes": sizes.to_dict(), "static": sizes.static,
                                   **({"stream": {"dtype": stream.dtype, "components": streams}} if streams else {}),
                                   "seconds": round(time.time() - started, 1)}}],
            "tools": tool_versions(),
        }
        from .sampler_graphs import add_sampler_graphs, merge_entries

        say("tracing the default sampler (and the few-step denoise graph) into ONNX")
        # A streamed denoiser is too big to run as a one-call denoise graph's validation here (and a
        # bf16 one cannot run on the CPU at all): the runtime steps it from the sampler graphs.
        merge_entries(manifest, add_sampler_graphs(tmp, manifest, say=say,
                                                   denoise=False if family.denoiser.component in streams else None))
        save_manifest(tmp, manifest)
    if not out.exists():
        raise EdgegenError(f"export finished but {out} was not written")
    return out
