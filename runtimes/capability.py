"""Capability checks for a compile target, in one place, before any work starts.

Each rule is a one-line refusal naming the device, the target and what is missing. The facts
come from three places: the device profile the user named (its kind, compute capability and
precisions), the host (CPU flags; the GPU when one is present and no profile was named), and
the artifact's manifest (each component's precision and the weight format its passes wrote).
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import EdgegenError

GPU_TARGETS = ("cuda", "tensorrt", "tensorrt-rtx")
# Weight-only formats whose ops are onnxruntime contrib ops (com.microsoft MatMulNBits /
# GatherBlockQuantized): only onnxruntime runs them; "qdq" is standard ONNX.
ORT_ONLY_FORMAT = "matmulnbits"
# Compute-capability floors (TensorRT support matrix; fp8 tensor cores arrive with Ada 8.9,
# bf16 with Ampere 8.0).
MIN_CC = {"fp8": (8, 9), "bf16": (8, 0)}
# OpenVINO's CPU plugin computes in 16 bits only with these ISA extensions (else it quietly uses f32).
OV_CPU_NEEDS = {"bf16": ({"avx512_bf16", "amx_bf16"}, "AVX512-BF16 or AMX"),
                "f16": ({"avx512_fp16", "amx_fp16"}, "AVX512-FP16 or AMX-FP16")}


def parse_cc(cc: str | None) -> tuple[int, int] | None:
    if not cc:
        return None
    major, _, minor = str(cc).partition(".")
    return int(major), int(minor or 0)


def trt_rtx_supports(cc: tuple[int, int]) -> bool:
    """The NvTensorRTRTX EP's own check: Ampere consumer 8.6, Ada 8.9, Blackwell >= 12.0 (not
    Hopper 9.0, A100 8.0, B200 10.0 or Turing 7.5)."""
    return cc in ((8, 6), (8, 9)) or cc >= (12, 0)


@dataclass
class Device:
    """What the checks know of the device: from a profile, or probed from this host."""

    name: str
    kind: str                          # gpu, soc, cpu
    compute_capability: tuple[int, int] | None = None
    precisions: tuple[str, ...] | None = None   # None: unknown, not checked
    cpu_flags: frozenset[str] = frozenset()

    @staticmethod
    def from_profile(p) -> "Device":
        return Device(p.name, p.kind, parse_cc(p.compute_capability), tuple(p.precisions))

    @staticmethod
    def this_host(target: str) -> "Device":
        from .host import cpu_flags, cpu_model, gpus

        if target in GPU_TARGETS:
            g = gpus()
            if not g:
                return Device("this host (no NVIDIA GPU found)", "cpu", cpu_flags=frozenset(cpu_flags()))
            return Device(g[0].name, "gpu", parse_cc(g[0].compute_capability))
        return Device(f"this host ({cpu_model()})", "cpu", cpu_flags=frozenset(cpu_flags()))


def component_formats(manifest: dict) -> dict[str, tuple[str, str | None]]:
    """component -> (precision, weight format of the pass that set it, if any)."""
    fmt_of = {p["name"]: p.get("config", {}).get("format") for p in manifest.get("passes", [])}
    out = {}
    for name, c in manifest["components"].items():
        passes = c.get("optimize", {}).get("passes", [])
        fmt = next((fmt_of.get(p) for p in reversed(passes) if fmt_of.get(p)), None)
        out[name] = (c.get("precision", "fp32"), fmt)
    return out


def check(target: str, device: Device, manifest: dict, precision: str | None = None, static: bool = False,
          ov_device: str = "CPU", fixed_batch: bool = False) -> None:
    """Raise EdgegenError (one line) if `target` cannot run this artifact on `device`."""
    where = f"{device.name} ({target})"
    if fixed_batch and "cfg-cutoff" in (manifest.get("pipeline_options") or {}) \
            and manifest.get("pipeline", {}).get("guidance") == "cfg":
        # A fixed batch pins the denoiser at the CFG form ([uncond, cond]); after the cutoff the
        # loop feeds it the cond half alone, a shape the compiled graph would not take.
        raise EdgegenError(f"{where}: the cfg-cutoff option runs the denoiser at two batch sizes (with CFG, then "
                           f"without) and a fixed --batch compiles one; leave out --batch, --height and --width "
                           f"(a dynamic compile), or compile the artifact this option was added to")
    if target in GPU_TARGETS:
        if device.kind not in ("gpu", "soc") or device.compute_capability is None:
            raise EdgegenError(f"--target {target} needs an NVIDIA GPU; {device.name} is not one "
                               f"(use --device with a GPU profile, or --target openvino for CPUs)")
        cc = device.compute_capability
        if target == "tensorrt-rtx" and not trt_rtx_supports(cc):
            raise EdgegenError(f"{where}: TensorRT-RTX runs on compute capability 8.6, 8.9 and >= 12.0 only; "
                               f"this device is {cc[0]}.{cc[1]} (use --target tensorrt or cuda)")
    elif target == "openvino" and device.kind == "gpu":
        raise EdgegenError(f"--target openvino runs on Intel CPUs, GPUs and NPUs; {device.name} is an NVIDIA GPU "
                           f"(use --target tensorrt or cuda)")
    if target == "openvino":
        if ov_device == "NPU" and not static:
            raise EdgegenError(f"{where}: OpenVINO's NPU needs static shapes; give fixed --height, --width and --batch")
        needs = OV_CPU_NEEDS.get(precision or "")
        if needs and ov_device == "CPU" and device.kind == "cpu" and device.cpu_flags \
                and not device.cpu_flags & needs[0]:
            raise EdgegenError(f"{where}: --precision {precision} needs a CPU with {needs[1]}; "
                               f"this one has neither (use --precision f32)")
    wanted = {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}.get(precision or "", precision)
    if wanted and device.precisions is not None and wanted not in device.precisions:
        raise EdgegenError(f"{where}: device profile {device.name} cannot compute in {wanted} "
                           f"(it lists {', '.join(device.precisions)})")
    for comp, (prec, fmt) in component_formats(manifest).items():
        if fmt == ORT_ONLY_FORMAT and target != "cuda":
            raise EdgegenError(f"{where}: {comp} is {prec} in onnxruntime's MatMulNBits format, which only "
                               f"onnxruntime runs; re-optimize with --pass {prec}:format=qdq, or use --target cuda")
        floor = MIN_CC.get(prec)
        if target in GPU_TARGETS and floor and device.compute_capability < floor:
            raise EdgegenError(f"{where}: {comp} is {prec}, which needs compute capability >= "
                               f"{floor[0]}.{floor[1]}; this device is "
                               f"{device.compute_capability[0]}.{device.compute_capability[1]}")
        if prec == "fp8" and target == "openvino":
            raise EdgegenError(f"{where}: {comp} is fp8 (E4M3 QDQ), which edgegen gates for NVIDIA GPUs only; "
                               f"compile the int8 or fp32 artifact for OpenVINO")
        base = {"int8-weights": "int8"}.get(prec, prec)
        if device.precisions is not None and base not in device.precisions and base != "fp32":
            raise EdgegenError(f"{where}: {comp} is {prec}, which device profile {device.name} does not run "
                               f"(it lists {', '.join(device.precisions)})")


def check_runtime(backend: str, device: str, name: str, component: dict) -> None:
    """Refuse, before its session is made, a component the chosen runtime cannot execute: a
    streamed export computes in bfloat16 (`compute_dtype`), which onnxruntime's CPU EP has no
    kernels for (MatMul, Mul, ... all fail at session creation)."""
    if backend == "onnxruntime" and device.lower() == "cpu" and component.get("compute_dtype") == "bfloat16":
        raise EdgegenError(f"{name} computes in bfloat16, which onnxruntime's CPU EP cannot run; make a CPU "
                           f"artifact with edgegen optimize ARTIFACT --pass int4:compute=float32 (or "
                           f"int8-weights:compute=float32) --components {name}, or use --device cuda")
