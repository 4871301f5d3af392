"""Procedural shapes-on-colours images with captions: the training and test data of the
shipped `edgegen-shapes` model and of its classifier.

Everything is drawn with PIL from a seed, so any split can be rebuilt exactly offline.
An image is one shape (circle, square, triangle, star) in a named colour on a background of
another named colour, at one of five positions and two sizes. Captions name the colour and
shape always, the size, position and background usually (dropping them teaches the model
prompts like "a red circle", which users type).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SIZE = 32
SHAPES = ("circle", "square", "triangle", "star")
# Far apart in RGB, so the classifier and a user agree on what each name looks like.
COLOURS = {
    "red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (240, 220, 30),
    "purple": (140, 40, 180), "orange": (245, 130, 20), "white": (245, 245, 245), "black": (15, 15, 15),
}
COLOUR_NAMES = tuple(COLOURS)
POSITIONS = {"in the center": (0.5, 0.5), "at the top left": (0.28, 0.28), "at the top right": (0.72, 0.28),
             "at the bottom left": (0.28, 0.72), "at the bottom right": (0.72, 0.72)}
POSITION_NAMES = tuple(POSITIONS)
SIZES = {"small": 0.17, "large": 0.30}   # radius as a fraction of the side


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    position: str
    size: str

    def caption(self, size: bool = True, position: bool = True, background: bool = True) -> str:
        words = []
        if size:
            words.append(self.size)
        words += [self.colour, self.shape]
        if position:
            words.append(self.position)
        if background:
            words += ["on", _a(self.background), self.background, "background"]
        return " ".join([_a(words[0]), *words])


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def random_scene(rng: np.random.Generator) -> Scene:
    colour, background = rng.choice(len(COLOUR_NAMES), 2, replace=False)
    size = "small" if rng.random() < 0.5 else "large"
    # A large shape fills a corner: keep large ones central or one corner step in, as drawn.
    return Scene(SHAPES[rng.integers(len(SHAPES))], COLOUR_NAMES[colour], COLOUR_NAMES[background],
                 POSITION_NAMES[rng.integers(len(POSITION_NAMES))], size)


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        k = r / math.sqrt(2) * 1.15
        pts = [(-k, -k), (k, -k), (k, k), (-k, k)]
    elif shape == "triangle":
        pts = [(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    else:  # star: five points, inner radius 0.45
        pts = [((r if i % 2 == 0 else 0.45 * r) * math.cos(-math.pi / 2 + i * math.pi / 5),
                (r if i % 2 == 0 else 0.45 * r) * math.sin(-math.pi / 2 + i * math.pi / 5)) for i in range(10)]
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def render(scene: Scene, rng: np.random.Generator | None = None, size: int = SIZE) -> np.ndarray:
    """HxWx3 uint8. `rng` adds the small jitter (position, size, rotation, shade) that keeps
    the model from memorising pixels; None draws the canonical picture."""
    from PIL import Image, ImageDraw

    j = (lambda lo, hi: rng.uniform(lo, hi)) if rng is not None else (lambda lo, hi: 0.0)
    shade = lambda rgb: tuple(int(np.clip(v + j(-18, 18), 0, 255)) for v in rgb)  # noqa: E731
    scale = 4   # supersampled, then reduced: anti-aliased edges like a real image
    n = size * scale
    img = Image.new("RGB", (n, n), shade(COLOURS[scene.background]))
    d = ImageDraw.Draw(img)
    px, py = POSITIONS[scene.position]
    cx, cy = (px + j(-0.04, 0.04)) * n, (py + j(-0.04, 0.04)) * n
    r = SIZES[scene.size] * (1 + j(-0.12, 0.12)) * n
    fill = shade(COLOURS[scene.colour])
    if scene.shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        angle = j(-0.25, 0.25) if scene.shape != "square" else j(-0.4, 0.4)
        d.polygon(_polygon(scene.shape, cx, cy, r, angle), fill=fill)
    return np.asarray(img.resize((size, size), Image.LANCZOS))


def dataset(n: int, seed: int, drop: float = 0.3) -> tuple[np.ndarray, list[str], list[Scene]]:
    """n jittered images (uint8 NHWC), captions (size/position/background each dropped with
    probability `drop`) and their scenes."""
    rng = np.random.default_rng(seed)
    images, captions, scenes = np.empty((n, SIZE, SIZE, 3), np.uint8), [], []
    for i in range(n):
        s = random_scene(rng)
        images[i] = render(s, rng)
        captions.append(s.caption(*(rng.random() >= drop for _ in range(3))))
        scenes.append(s)
    return images, captions, scenes


def held_out(n: int = 100, seed: int = 10_000) -> list[Scene]:
    """Test scenes, seeded apart from every training seed; full captions."""
    rng = np.random.default_rng(seed)
    return [random_scene(rng) for _ in range(n)]
