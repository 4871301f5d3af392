"""`edgegen export --target coreml`: a family's PyTorch components -> CoreML ML programs.

coremltools has no ONNX frontend, so this branches from PyTorch: the same family files,
component wrappers (arch.components) and IOSpecs the ONNX export uses, each wrapper captured
(torch.jit.trace, or torch.export + run_decompositions({}) where tracing fails) and converted
with ct.convert(convert_to="mlprogram"). All conversion happens here; attention processors live
in coreml_attention.py, compression and its gate in coreml_compress.py, the read-back of saved
packages in coreml_spec.py.

The models are static: the IOSpecs narrowed to one image size and batch (the user's
--height/--width/--batch, else the family's opt size and one image; the denoiser takes the CFG
batch), the same narrowing a static ONNX export gets (export/sizes.py). Every shape comes from
the narrowed IOSpec. Deployment target, compute units and attention come from a device profile's
[coreml] table, else macOS14 / all / original; options override them.

Importing this module needs neither torch nor coremltools: option checks run first.
"""
from __future__ import annotations

import gc
import logging
import os
import platform
import re
import time
import tomllib
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..runtimes.artifact import check_out_path, digest_files, save_manifest, write_artifact
from ..runtimes.errors import EdgegenError
from ..runtimes.iospec import Dim, IOSpec
from .coreml_attention import ATTENTIONS
from .coreml_compress import Compression, lean_lut_indices

EXTRA = "pip install 'edgegen[coreml]'"
# CLI name -> ct.ComputeUnit member. Compute units are chosen when a model is loaded, not stored
# in the package: the manifest and the package's metadata record the one this export is meant for.
COMPUTE_UNITS = {"all": "ALL", "cpu-only": "CPU_ONLY", "cpu-and-gpu": "CPU_AND_GPU", "cpu-and-ne": "CPU_AND_NE"}
# ML programs need iOS15+; fp16 model IO and the compression ops need iOS16 / macOS13.
DEPLOYMENT_TARGETS = ("macOS13", "macOS14", "macOS15", "macOS26", "iOS16", "iOS17", "iOS18", "iOS26")
DEFAULTS = {"deployment_target": "macOS14", "compute_units": "all", "attention": "original"}
PRECISIONS = ("fp16", "fp32")
PACKAGE = "model.mlpackage"


@dataclass(frozen=True)
class Settings:
    """What one CoreML export is told; `source` says where each resolved value came from."""

    deployment_target: str
    compute_units: str
    attention: str
    precision: str = "fp16"
    compression: Compression | None = None
    profile: str | None = None
    source: dict = field(default_factory=dict)
    gate: bool = True
    thresholds: dict = field(default_factory=dict)
    gate_prompts: int = 2

    def to_dict(self) -> dict:
        return {"deployment_target": self.deployment_target, "compute_units": self.compute_units,
                "attention": self.attention, "precision": self.precision,
                "compression": self.compression.name if self.compression else None,
                "profile": self.profile, "from": self.source}


def profile_settings(name: str) -> tuple[dict, str]:
    """The [coreml] table of device profile `name` (checked), and the profile's name."""
    from ..profiles.device import get_profile

    prof = get_profile(name)
    if "coreml" not in prof.backends:
        raise EdgegenError(f"device {prof.name} has no CoreML (its backends: {', '.join(prof.backends)}); "
                           f"pick an Apple profile (edgegen profiles)")
    table = tomllib.loads(Path(prof.path).read_text()).get("coreml", {})
    known = {"deployment_target": DEPLOYMENT_TARGETS, "compute_units": tuple(COMPUTE_UNITS), "attention": ATTENTIONS}
    for key, value in table.items():
        if key not in known:
            raise EdgegenError(f"device profile {prof.path}: unknown [coreml] field {key!r}; known: {', '.join(known)}")
        if value not in known[key]:
            raise EdgegenError(f"device profile {prof.path}: [coreml] {key} {value!r} is not one of "
                               f"{', '.join(known[key])}")
    return table, prof.name


def resolve_settings(device: str | None = None, deployment_target: str | None = None, compute_units: str | None = None,
                     attention: str | None = None, precision: str = "fp16", palettize: int | None = None,
                     int8_weights: bool = False, int4_weights: bool = False, gate: bool = True,
                     thresholds: dict | None = None, gate_prompts: int = 2) -> Settings:
    """Options, then the profile's [coreml] table, then the defaults. Pure checks: run before
    anything is imported or loaded."""
    from .coreml_compress import choose

    for flag, value, known in (("--compute-units", compute_units, tuple(COMPUTE_UNITS)),
                               ("--deployment-target", deployment_target, DEPLOYMENT_TARGETS),
                               ("--attention", attention, ATTENTIONS), ("--precision", precision, PRECISIONS)):
        if value is not None and value not in known:
            raise EdgegenError(f"{flag} {value}: known: {', '.join(known)}")
    comp = choose(palettize, int8_weights, int4_weights)
    table, prof = profile_settings(device) if device else ({}, None)
    asked = {"deployment_target": deployment_target, "compute_units": compute_units, "attention": attention}
    values, source = {}, {}
    for key, value in asked.items():
        if value is not None:
            values[key], source[key] = value, "option"
        elif key in table:
            values[key], source[key] = table[key], f"profile {prof}"
        else:
            values[key], source[key] = DEFAULTS[key], "default"
    if precision == "fp32" and values["compute_units"] == "cpu-and-ne":
        raise EdgegenError("--precision fp32 cannot run on the Neural Engine (it computes in fp16): "
                           "use --compute-units cpu-and-gpu or all")
    bad = [t for t in (thresholds or {}) if t not in ("cosine", "rel_err", "psnr", "ssim")]
    if bad:
        raise EdgegenError(f"unknown gate metric {bad[0]!r}; known: cosine, rel_err, psnr, ssim")
    if (thresholds or not gate) and comp is None:
        raise EdgegenError(f"{'--threshold' if thresholds else '--no-gate'} only applies with a compression "
                           f"(--palettize, --int8-weights, --int4-weights)")
    if not 1 <= gate_prompts <= 8:
        raise EdgegenError(f"--gate-prompts {gate_prompts}: must be 1..8")
    return Settings(values["deployment_target"], values["compute_units"], values["attention"], precision, comp,
                    prof, source, gate, dict(thresholds or {}), gate_prompts)


def import_coremltools():
    """coremltools, quietly (its import logs missing macOS libraries and untested torch versions),
    or a one-line error naming the extra."""
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import coremltools as ct
    except ImportError:
        raise EdgegenError(f"--target coreml needs coremltools: {EXTRA}") from None
    return ct


def check_with_coremltools(ct, settings: Settings) -> None:
    """Checks that need coremltools' own tables: the target exists and carries the compression."""
    try:
        spec = ct.target[settings.deployment_target].value
    except KeyError:
        raise EdgegenError(f"coremltools {ct.__version__} has no deployment target {settings.deployment_target}") from None
    comp = settings.compression
    if comp is not None and spec < comp.min_spec:
        need = ", ".join(k for k in DEPLOYMENT_TARGETS if ct.target[k].value == comp.min_spec)
        raise EdgegenError(f"{comp.flag} needs deployment target {need} or later (its weights are stored "
                           f"by ops introduced there); {settings.deployment_target} comes from the "
                           f"{settings.source['deployment_target']}: pass --deployment-target")


def check_static(sizes) -> None:
    """Size options a static model cannot take: refused before anything is loaded."""
    if sizes.min_size is not None or sizes.max_size is not None:
        raise EdgegenError("--min-size/--max-size declare a size range; CoreML models here are static: "
                           "give --height/--width")
    prof = sizes.profile
    if prof.batch is not None and not prof.batch.fixed:
        raise EdgegenError(f"--batch {sizes.batch}: CoreML models here are static; give one number")


def static_request(sizes, default: tuple[int, int, int], limits):
    """The user's size request made fully static: missing sides at the family's opt, one image."""
    from .sizes import SizeRequest, resolution

    check_static(sizes)
    opt = resolution(default, limits, sizes)[1]   # the user's values checked against the model here
    return SizeRequest(sizes.height or opt, sizes.width or opt, sizes.batch or "1")


def pin(io: IOSpec) -> IOSpec:
    """Every dim at its opt: a range the narrowing left (a text length) becomes that one size."""
    return replace(io, dims={n: Dim(n, d.opt, d.opt, d.opt, d.multiple) for n, d in io.dims.items()})


# coremltools modules that draw tqdm bars unconditionally (bound at import, so TQDM_DISABLE set
# later has no effect); silenced while converting, restored after.
_TQDM_USERS = (("coremltools.converters.mil.frontend.torch.ops", "_tqdm"),
               ("coremltools.converters.mil.mil.passes.pass_pipeline", "tqdm"),
               ("coremltools.optimize.torch._utils.k_means", "tqdm"))
_WORKER_LOG_LEVEL = "COREMLTOOLS_OPTIMIZE_TORCH_LOG_LEVEL"


@contextmanager
def quiet():
    """No progress bars or tracer warnings from coremltools/torch inside the CLI's own display."""
    import importlib
    from functools import partial

    saved = []
    for mod_name, attr in _TQDM_USERS:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        bar = getattr(mod, attr, None)
        if bar is not None:
            saved.append((mod, attr, bar))
            setattr(mod, attr, partial(bar, disable=True))
    # coremltools.optimize.torch sets INFO on its own loggers (a line per clustered tensor), and the
    # converter logs a failing op before raising; the raised error is what edgegen reports.
    # k-means worker processes are spawned and configure their logger from this variable.
    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith("coremltools")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    old_env = os.environ.get(_WORKER_LOG_LEVEL)
    os.environ[_WORKER_LOG_LEVEL] = "error"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for mod, attr, bar in saved:
            setattr(mod, attr, bar)
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if old_env is None:
            os.environ.pop(_WORKER_LOG_LEVEL, None)
        else:
            os.environ[_WORKER_LOG_LEVEL] = old_env


def _capture(module, args, how: str):
    import torch

    with torch.no_grad():
        if how == "torch.jit.trace":
            return torch.jit.trace(module, args, check_trace=False)
        return torch.export.export(module, args).run_decompositions({})


def _what_failed(e: Exception) -> str:
    """The op (or limit) a capture/conversion error names, in a few words."""
    text = str(e)
    for pat in (r"convert function for op '([\w.]+)' not implemented", r"Unsupported fx node [\w.]+, kind ([\w.]+)"):
        m = re.search(pat, text)
        if m:
            return f"op '{m.group(1)}' has no CoreML converter"
    first = (text.strip().splitlines() or [type(e).__name__])[0]
    return f"{type(e).__name__}: {first[:200]}"


def convert(ct, comp, precision: str, units: str, target: str):
    """One Component -> an in-memory MLModel (not loaded: prediction is macOS-only), and how its
    graph was captured. Tries the capture the component's ONNX exporter uses first."""
    import numpy as np
    import torch

    sizes = {n: d.opt for n, d in comp.io.dims.items()}
    feeds = comp.io.example(sizes, seed=0)
    args = tuple(torch.from_numpy(v) for v in feeds.values())
    # CoreML model inputs are float32/float16/int32: int64 token ids come in as int32.
    inputs = [ct.TensorType(name=t.name, shape=t.resolve(sizes), dtype=np.int32 if t.dtype.startswith("int")
                            else np.float32) for t in comp.io.inputs]
    outputs = [ct.TensorType(name=t.name, dtype=np.float32) for t in comp.io.outputs]
    order = ["torch.jit.trace", "torch.export"]
    if comp.exporter == "dynamo":
        order.reverse()
    errors = []
    for how in order:
        try:
            with quiet(), lean_lut_indices():
                graph = _capture(comp.module, args, how)
                model = ct.convert(graph, inputs=inputs, outputs=outputs, convert_to="mlprogram",
                                   minimum_deployment_target=ct.target[target],
                                   compute_units=ct.ComputeUnit[COMPUTE_UNITS[units]],
                                   compute_precision=ct.precision.FLOAT16 if precision == "fp16"
                                   else ct.precision.FLOAT32,
                                   skip_model_load=True)
            return model, how
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - any capture or converter failure becomes one line
            errors.append((how, e))
        finally:
            gc.collect()
    how, e = errors[0]
    tried = " and ".join(h for h, _ in errors)
    raise EdgegenError(f"coremltools {ct.__version__} cannot convert {comp.name}: {_what_failed(e)} "
                       f"(tried {tried}; first error from {how})")


def _check_spec(name: str, io: IOSpec, spec: dict) -> None:
    """The saved package must declare exactly the IOSpec's tensors (int64 ids as int32)."""
    sizes = {n: d.opt for n, d in io.dims.items()}
    for kind, want, got in (("input", io.inputs, spec["inputs"]), ("output", io.outputs, spec["outputs"])):
        exp = [(t.name, "int32" if t.dtype.startswith("int") else t.dtype, list(t.resolve(sizes))) for t in want]
        have = [(f["name"], f["dtype"], f["shape"]) for f in got]
        if exp != have:
            raise EdgegenError(f"{name}: the converted package declares {kind}s {have}, not its IOSpec's {exp}")


def _files(root: Path, folder: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in folder.rglob("*") if p.is_file())


def _component_precision(settings: Settings, role: str, pipe) -> tuple[str, str | None]:
    """Compute precision of one component, and why it differs from the request."""
    import inspect

    if settings.precision == "fp32":
        return "fp32", None
    # SDXL's VAE overflows in fp16: its config sets force_upcast and diffusers' SDXL pipelines run
    # it in fp32 then (Apple's converter forces fp32 for it too). The SD1.x/2.x pipelines ignore
    # the flag, which AutoencoderKL sets by default, so it counts only where the pipeline reads it.
    if role in ("vae_decoder", "vae_encoder") and getattr(pipe.vae.config, "force_upcast", False) \
            and "force_upcast" in inspect.getsource(type(pipe)):
        return "fp32", f"the VAE overflows in fp16 ({type(pipe).__name__} upcasts it: force_upcast)"
    return "fp16", None


def export_coreml(family_name: str, source, out: str | Path, settings: Settings, sizes=None, force: bool = False,
                  progress=None, pipe=None) -> Path:
    """Convert every component of the family's pipeline (`pipe`, else loaded from `source`) into an
    artifact folder at `out`. A compression rewrites `pipe`'s denoiser and text encoder weights in
    place (the gate needs the compressed torch model); pass a pipeline you can spare."""
    from ..runtimes.backend import proc_status_bytes
    from .arch import get_arch
    from .components import MAX_BATCH
    from .coreml_attention import attention_processors
    from .coreml_spec import METADATA_PREFIX, read_package
    from .exporter import manifest_head, tool_versions
    from .families import get_family
    from .sizes import SizeRequest, narrow_export
    from .sizes import resolution as export_resolution
    from .weights import load_pipeline

    family = get_family(family_name)
    out = Path(out)
    check_out_path(out, force)
    sizes = sizes or SizeRequest()
    sizes.check()
    check_static(sizes)
    ct = import_coremltools()
    check_with_coremltools(ct, settings)
    if settings.attention != "original" and family.arch != "unet":
        raise EdgegenError(f"--attention {settings.attention} applies to U-Net families; {family.name}'s "
                           f"denoiser is a {family.denoiser.cls}")
    say = progress or (lambda msg: None)
    started = time.time()
    say(f"loading {family.name} ({source.kind})")
    pipe = pipe if pipe is not None else load_pipeline(family, source)
    arch = get_arch(family.arch)
    default = family.tiny_resolution if source.tiny else family.resolution
    req = static_request(sizes, default, arch.size_limits(pipe))
    resolution = export_resolution(default, arch.size_limits(pipe), req)
    comps = arch.components(family, pipe, resolution)
    text_encoders = {te.component for te in family.text_encoders}
    ios, recipe = narrow_export({c.name: c.io for c in comps}, arch.recipe(family, pipe, resolution), req,
                                text_encoders, MAX_BATCH)
    for comp in comps:
        comp.io = pin(ios[comp.name])
    roles = {c.name: "text_encoder" if c.name in text_encoders else
             next((r for r in ("denoiser", "vae_decoder", "vae_encoder") if recipe.get(r) == c.name), "other")
             for c in comps}

    compression = None
    if settings.compression is not None:
        from .coreml_compress import compress_and_gate

        targets = [c for c in comps if roles[c.name] in ("text_encoder", "denoiser")]
        limits = settings.compression.thresholds.with_overrides(settings.thresholds)
        with quiet():
            compression = compress_and_gate(pipe, targets, recipe, settings.compression, settings.gate, limits,
                                            settings.gate_prompts, say)

    # A component whose weights the compressor skipped entirely (int4 blocks wider than a tiny
    # layer) is stored 16-bit and says so.
    compressed = {n for n, r in (compression or {}).get("components", {}).items() if r["weights_compressed"]}
    with write_artifact(out, force) as tmp:
        components, per = {}, {}
        for comp in comps:
            role = roles[comp.name]
            precision, why_precision = _component_precision(settings, role, pipe)
            units, why_units = settings.compute_units, None
            if precision == "fp32" and units == "cpu-and-ne":
                units, why_units = "cpu-and-gpu", "fp32 does not run on the Neural Engine"
            attention = settings.attention if role == "denoiser" else "original"
            say(f"converting {comp.name} ({comp.params / 1e6:.1f}M params, {precision}"
                f"{', ' + attention + ' attention' if role == 'denoiser' else ''})")
            t0 = time.time()
            ctx = attention_processors(comp.module.model, attention) if role == "denoiser" else nullcontext()
            with ctx:
                model, how = convert(ct, comp, precision, units, settings.deployment_target)
            seconds = time.time() - t0
            meta = {"family": family.name, "component": comp.name, "compute_units": units, "attention": attention,
                    "compute_precision": precision,
                    "compression": settings.compression.name if comp.name in compressed else "none"}
            for k, v in meta.items():
                model.user_defined_metadata[METADATA_PREFIX + k] = v
            model.short_description = f"{family.name} {comp.name}, exported by edgegen"
            folder = tmp / comp.name
            folder.mkdir()
            with quiet():
                model.save(str(folder / PACKAGE))
            del model
            gc.collect()
            spec = read_package(folder / PACKAGE)
            _check_spec(comp.name, comp.io, spec)
            bits = spec.pop("weights")
            if meta["compression"] != "none" and str(settings.compression.bits) not in bits["compressed"]:
                raise EdgegenError(f"{comp.name}: the converted package stores no {settings.compression.bits}-bit "
                                   f"weights although {meta['compression']} was applied (captured with {how}; "
                                   f"stored: {bits['compressed'] or 'none compressed'})")
            files = digest_files(tmp, _files(tmp, folder))
            size = sum(f["bytes"] for f in files.values())
            components[comp.name] = {"graph": f"{comp.name}/{PACKAGE}", "files": files, "io": comp.io.to_dict(),
                                     "params": comp.params, "precision": precision,
                                     "compiled": {"backend": "coreml", "compute_units": units}}
            per[comp.name] = {"mlpackage": f"{comp.name}/{PACKAGE}", "spec": spec,
                              "deployment_target": settings.deployment_target, "compute_units": units,
                              "compute_precision": precision, "attention": attention,
                              "compression": meta["compression"],
                              "weight_bits": bits, "bytes": size, "files": files,
                              "captured_with": how, "conversion_seconds": round(seconds, 2),
                              **({"compute_precision_reason": why_precision} if why_precision else {}),
                              **({"compute_units_reason": why_units} if why_units else {})}
            say(f"{comp.name}: {size / 1e6:.1f} MB, {bits['average_bits']} bits/weight, {seconds:.1f} s")
        d = recipe["defaults"]
        prof = {"height": [d["height"]] * 3, "width": [d["width"]] * 3, "batch": recipe["batch"], "static": True}
        manifest = {
            **manifest_head(family, source, pipe, recipe, tmp),
            "components": components,
            "passes": [{"name": "export", "version": 1,
                        "config": {"format": "coreml", "sizes": req.to_dict(), "static": True, **settings.to_dict()}}],
            "tools": {**tool_versions(), "coremltools": ct.__version__},
            "target": {
                "target": "coreml", "backend": "coreml",
                # Pipeline.load hands options to the runtime backend (runtimes/coreml_backend.py).
                "options": {"device": settings.compute_units, "precision": settings.precision},
                "binding": {"backend": "coreml"},
                "versions": {"coremltools": ct.__version__},
                "settings": settings.to_dict(),
                "shape_profile": prof,
                "build": {"seconds": round(time.time() - started, 1), "peak_rss_bytes": proc_status_bytes("VmHWM")},
                "fingerprint": {"host": {"system": platform.system(), "machine": platform.machine()}},
                "components": per,
                "compression": compression,
            },
        }
        save_manifest(tmp, manifest)
    return out
