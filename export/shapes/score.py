"""The honest metric for edgegen-shapes: a small CNN, trained on the same procedural
generator, that reads an image's shape, colour, background, position and size.

    python -m edgegen.export.shapes.score --train          # writes classifier.safetensors beside this file

Prompt adherence = the share of images whose shape and colour both match the caption.
The classifier is trained on jittered, blurred and noised renders (generated images are
softer than PIL's), and its own accuracy is measured on fresh renders of another seed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from . import data

WEIGHTS = Path(__file__).with_name("classifier.safetensors")
HEADS = {"shape": data.SHAPES, "colour": data.COLOUR_NAMES, "background": data.COLOUR_NAMES,
         "position": data.POSITION_NAMES, "size": tuple(data.SIZES)}


def _net():
    import torch.nn as nn

    class ShapeNet(nn.Module):
        def __init__(self):
            super().__init__()
            layers, c = [], 3
            for w in (32, 64, 64):      # 32 -> 16 -> 8 -> 4
                layers += [nn.Conv2d(c, w, 3, stride=2, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                           nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                c = w
            self.body = nn.Sequential(*layers, nn.Flatten())
            self.heads = nn.ModuleDict({k: nn.Linear(c * (data.SIZE // 8) ** 2, len(v)) for k, v in HEADS.items()})

        def forward(self, x):
            h = self.body(x)
            return {k: head(h) for k, head in self.heads.items()}

    return ShapeNet()


def _labels(scenes) -> dict[str, np.ndarray]:
    return {k: np.array([names.index(getattr(s, k)) for s in scenes]) for k, names in HEADS.items()}


def _tensor(images: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _augment(x, g):
    """Blur, noise and a brightness shift: what separates a generated image from a render."""
    import torch
    import torch.nn.functional as F

    n = len(x)
    k = torch.tensor([1.0, 2.0, 1.0])
    k = (k[:, None] * k[None, :] / 16).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=3)
    w = torch.rand(n, 1, 1, 1, generator=g)
    x = w * blurred + (1 - w) * x
    x = x + 0.08 * torch.rand(n, 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g)
    return (x + 0.1 * (torch.rand(n, 3, 1, 1, generator=g) - 0.5)).clamp(-1, 1)


def train(images: int = 12000, steps: int = 1500, seed: int = 1, out: Path = WEIGHTS) -> dict:
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file

    t0 = time.time()
    imgs, _, scenes = data.dataset(images, seed)
    x, y = _tensor(imgs), {k: torch.from_numpy(v) for k, v in _labels(scenes).items()}
    torch.manual_seed(seed)
    net = _net()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(len(x), (64,), generator=g)
        logits = net(_augment(x[idx], g))
        loss = sum(F.cross_entropy(logits[k], y[k][idx]) for k in HEADS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == steps - 1:
            print(f"[{time.time() - t0:6.1f} s] classifier {step}/{steps}: loss {loss.item():.4f}", file=sys.stderr)
    net.eval()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out))
    acc = accuracy(load(out))
    record = {"command": f"python -m edgegen.export.shapes.score --train --seed {seed}", "images": images,
              "steps": steps, "seed": seed, "seconds": round(time.time() - t0, 1), "accuracy_on_fresh_renders": acc}
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def load(path: Path = WEIGHTS):
    import torch
    from safetensors.torch import load_file

    if not path.exists():
        raise FileNotFoundError(f"{path}: train it with python -m edgegen.export.shapes.score --train")
    net = _net()
    net.load_state_dict(load_file(str(path)))
    return net.eval()


def classify(net, images: np.ndarray) -> list[dict[str, str]]:
    """images: NHWC uint8 (any side; resized to data.SIZE). One dict of head -> name per image."""
    import torch

    if images.shape[1:3] != (data.SIZE, data.SIZE):
        from PIL import Image

        images = np.stack([np.asarray(Image.fromarray(i).resize((data.SIZE, data.SIZE), Image.BICUBIC))
                           for i in images])
    with torch.no_grad():
        out = net(_tensor(images))
    idx = {k: v.argmax(1).numpy() for k, v in out.items()}
    return [{k: HEADS[k][idx[k][i]] for k in HEADS} for i in range(len(images))]


def accuracy(net, n: int = 1000, seed: int = 20_000) -> dict[str, float]:
    """Per-head accuracy, and shape+colour together, on fresh jittered renders."""
    imgs, _, scenes = data.dataset(n, seed)
    pred = classify(net, imgs)
    out = {k: float(np.mean([p[k] == getattr(s, k) for p, s in zip(pred, scenes)])) for k in HEADS}
    out["shape_and_colour"] = float(np.mean([p["shape"] == s.shape and p["colour"] == s.colour
                                             for p, s in zip(pred, scenes)]))
    return {k: round(v, 4) for k, v in out.items()}


def adherence(net, images: np.ndarray, scenes) -> dict:
    """Share of images whose shape and colour match their scene (the prompt), and per head."""
    pred = classify(net, images)
    hits = [p["shape"] == s.shape and p["colour"] == s.colour for p, s in zip(pred, scenes)]
    per = {k: round(float(np.mean([p[k] == getattr(s, k) for p, s in zip(pred, scenes)])), 4)
           for k in ("shape", "colour", "background")}
    return {"adherence": round(float(np.mean(hits)), 4), "n": len(scenes), "per_head": per, "hits": hits}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    if a.train:
        print(json.dumps(train(seed=a.seed), indent=1))
    else:
        print(json.dumps(accuracy(load()), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
