"""The quality gate: an optimized artifact against its parent on fixed inputs.

Per component: the new graph runs on the inputs the parent's components saw along
sampler trajectories of held-out gate prompts, and its outputs are compared with the
parent's outputs on exactly those inputs (cosine similarity, relative L2 error; worst
sample). End to end: the new pipeline generates the gate prompts from the same latents
and seeds as the parent did; images are compared by PSNR and SSIM (worst prompt).
"""
from __future__ import annotations

import numpy as np

from ..runtimes.artifact import Artifact
from .registry import Thresholds


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a @ b / (na * nb))


def rel_err(ref: np.ndarray, new: np.ndarray) -> float:
    ref, new = ref.astype(np.float64), new.astype(np.float64)
    if not np.isfinite(new).all():
        return float("inf")
    n = np.linalg.norm(ref)
    d = np.linalg.norm(new - ref)
    return float(d / n) if n > 0 else (0.0 if d == 0 else float("inf"))


def psnr(ref: np.ndarray, new: np.ndarray, peak: float = 255.0) -> float:
    """PSNR in dB, capped at 100 (identical images) so manifests stay plain JSON."""
    mse = np.mean((ref.astype(np.float64) - new.astype(np.float64)) ** 2)
    return 100.0 if mse == 0 else min(100.0, float(10 * np.log10(peak * peak / mse)))


def _gauss_filter(x: np.ndarray, size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Separable Gaussian filter over the first two axes, 'valid' region only."""
    k = np.exp(-0.5 * ((np.arange(size) - (size - 1) / 2) / sigma) ** 2)
    k /= k.sum()
    v = np.lib.stride_tricks.sliding_window_view(x, size, axis=0)   # H-10, W, C, 11
    x = v @ k
    v = np.lib.stride_tricks.sliding_window_view(x, size, axis=1)
    return v @ k


def ssim(ref: np.ndarray, new: np.ndarray, peak: float = 255.0) -> float:
    """Mean SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1=0.01, K2=0.03),
    averaged over channels.

    Written here in numpy because the reference implementation (scikit-image) is not a
    dependency of edgegen and the formula is a few lines; it matches skimage's
    structural_similarity(gaussian_weights=True, use_sample_covariance=False) on the
    valid (unpadded) region.
    """
    x, y = ref.astype(np.float64), new.astype(np.float64)
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    win = min(11, x.shape[0], x.shape[1])
    win -= 1 - win % 2  # odd window for tiny images
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    f = lambda z: _gauss_filter(z, win)  # noqa: E731
    mx, my = f(x), f(y)
    sxx, syy, sxy = f(x * x) - mx * mx, f(y * y) - my * my, f(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(s.mean())


def _verdict(values: dict, thr: Thresholds, keys: tuple[str, ...]) -> list[str]:
    """Failures as 'metric value vs limit' strings (NaN fails every comparison)."""
    fails = []
    for k in keys:
        v, lim = values[k], getattr(thr, k)
        ok = v <= lim if k == "rel_err" else v >= lim
        if not ok:
            fails.append(f"{k} {v:.4g} {'>' if k == 'rel_err' else '<'} {lim:g}")
    return fails


def component_gate(session_run, inputs: list[dict], ref_outputs: list[dict], thr: Thresholds) -> dict:
    """session_run(feeds) -> {output name: array}.

    Gated: cosine and relative error of each output over the whole trajectory (all gate
    samples together; the worst output counts). A single step can be far more sensitive
    than the image (random-weight tiny UNets at t=999), so per-sample worst values are
    recorded beside them but not gated.
    """
    per_out: dict[str, list] = {}
    cos_s, err_s = [], []
    for feeds, ref in zip(inputs, ref_outputs):
        new = session_run(feeds)
        for name, r in ref.items():
            per_out.setdefault(name, []).append((r, new[name]))
            cos_s.append(cosine(r, new[name]))
            err_s.append(rel_err(r, new[name]))
    cos, err = [], []
    for pairs in per_out.values():
        a = np.concatenate([r.ravel() for r, _ in pairs])
        b = np.concatenate([n.ravel() for _, n in pairs])
        cos.append(cosine(a, b))
        err.append(rel_err(a, b))
    worst = {"cosine": float(min(cos)) if not np.isnan(cos).any() else float("nan"), "rel_err": float(max(err))}
    fails = _verdict(worst, thr, ("cosine", "rel_err"))
    return {"samples": len(inputs), "cosine": round(worst["cosine"], 6), "rel_err": round(worst["rel_err"], 6),
            "worst_sample": {"cosine": round(float(np.min(cos_s)), 6), "rel_err": round(float(np.max(err_s)), 6)},
            "thresholds": {"cosine": thr.cosine, "rel_err": thr.rel_err},
            "passed": not fails, "failures": fails}


def end_to_end_gate(art: Artifact, runs: list[dict], ref_images: list[np.ndarray], thr: Thresholds) -> dict:
    """Regenerate the gate prompts with the new artifact; PSNR/SSIM against the parent's images."""
    from .calibrate import make_pipeline

    pipe = make_pipeline(art)
    ps, ss = [], []
    for run, ref in zip(runs, ref_images):
        img = pipe(run["prompt"], steps=run["steps"], seed=run["seed"], latents=run["latents"], **run.get("inputs", {}))
        if isinstance(run["prompt"], list):   # a fixed batch > 1: the copies are alike, judge the first
            img = img[0]
        ps.append(psnr(ref, img))
        ss.append(ssim(ref, img))
    worst = {"psnr": float(np.min(ps)), "ssim": float(np.min(ss))}
    fails = _verdict(worst, thr, ("psnr", "ssim"))
    return {"prompts": len(runs), "psnr": round(worst["psnr"], 3), "psnr_mean": round(float(np.mean(ps)), 3),
            "ssim": round(worst["ssim"], 5), "ssim_mean": round(float(np.mean(ss)), 5),
            "thresholds": {"psnr": thr.psnr, "ssim": thr.ssim}, "passed": not fails, "failures": fails}


def gate_images(art: Artifact, traj, thr: Thresholds, what: str) -> dict:
    """end_to_end_gate on a trajectory's gate runs; a pipeline that cannot run fails the gate
    with one line naming `what` was gated, not a traceback."""
    from ..runtimes.errors import EdgegenError

    try:
        return end_to_end_gate(art, traj.gate_runs, traj.images, thr)
    except EdgegenError:
        raise
    except Exception as e:
        raise EdgegenError(f"gate failed: the pipeline {what} does not run: {str(e).splitlines()[0]}") from None
