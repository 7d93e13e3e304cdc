"""Draw synthetic face-track crops: a head, two eyes and a mouth whose opening is given per frame.

Everything is numpy over whole tracks at once: a track is (T, S, S) grayscale float32 in [0, 1], the crop a
face tracker would hand to an ASD model. The appearance of a face (size, skin tone, eye spacing, mouth width)
is fixed per track; what changes per frame is head pose (translation, scale, roll), lighting (gain and a
linear gradient), eye blinks and the mouth opening. Blur and sensor noise are applied last.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter


@dataclass(frozen=True)
class FaceStyle:
    """Per-track appearance and nuisance settings (crop-relative units: 1.0 = crop width)."""

    head_w: float = 0.36  # half-axes of the head ellipse
    head_h: float = 0.44
    skin: float = 0.65  # head intensity
    background: float = 0.3
    eye_dx: float = 0.14  # eye offset from the head centre
    eye_y: float = -0.10
    mouth_y: float = 0.2
    mouth_w: float = 0.13  # mouth half-width
    motion: float = 0.04  # std of head translation (crop units)
    roll_deg: float = 8.0  # std of head roll
    blur: float = 0.6  # gaussian sigma in pixels
    noise: float = 0.03  # std of additive sensor noise
    light: float = 0.2  # amplitude of the lighting drift and gradient

    @staticmethod
    def sample(rng: np.random.Generator) -> FaceStyle:
        """A random but plausible face and its nuisances."""
        return FaceStyle(
            head_w=rng.uniform(0.30, 0.40), head_h=rng.uniform(0.38, 0.47), skin=rng.uniform(0.45, 0.85),
            background=rng.uniform(0.05, 0.5), eye_dx=rng.uniform(0.11, 0.16), eye_y=rng.uniform(-0.14, -0.06),
            mouth_y=rng.uniform(0.17, 0.24), mouth_w=rng.uniform(0.09, 0.15), motion=rng.uniform(0.01, 0.05),
            roll_deg=rng.uniform(2.0, 12.0), blur=rng.uniform(0.3, 1.1), noise=rng.uniform(0.01, 0.06),
            light=rng.uniform(0.05, 0.3),
        )


def smooth_walk(rng: np.random.Generator, n: int, std: float, smooth: float = 12.0) -> np.ndarray:
    """(n,) slowly varying zero-mean signal with standard deviation about `std` (low-passed white noise)."""
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    x = gaussian_filter(rng.standard_normal(n + 4 * int(smooth)), smooth, mode="wrap")[: n]
    x = x / (x.std() + 1e-8)
    return (std * x).astype(np.float32)


def blink_track(rng: np.random.Generator, n: int, rate_hz: float = 0.3, fps: float = 25.0) -> np.ndarray:
    """(n,) eye openness in [0, 1]: open, with 3-frame blinks at random times."""
    eye = np.ones(n, dtype=np.float32)
    for start in np.flatnonzero(rng.random(n) < rate_hz / fps):
        eye[start : start + 3] = np.array([0.4, 0.0, 0.4], dtype=np.float32)[: max(0, min(3, n - start))]
    return eye


def _ellipse(x: np.ndarray, y: np.ndarray, cx, cy, ax, ay, sharp: float) -> np.ndarray:
    """Soft (anti-aliased) ellipse indicator. x, y: (1, S, S) grids; centres/axes broadcast as (T, 1, 1)."""
    r = np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)
    return 1.0 / (1.0 + np.exp(np.clip((r - 1.0) * sharp, -30, 30)))


def render_track(style: FaceStyle, mouth_open: np.ndarray, rng: np.random.Generator, size: int = 32,
                 clean: bool = False) -> np.ndarray:
    """Render one face track.

    Args:
        style: appearance and nuisance levels.
        mouth_open: (T,) mouth opening in [0, 1] (0 closed, 1 wide open).
        rng: draws head motion, blinks, lighting and noise.
        size: crop side S in pixels.
        clean: no motion, blur, lighting or noise (used by tests to read the mouth back).
    Returns:
        (T, S, S) float32 in [0, 1].
    """
    n = len(mouth_open)
    motion = 0.0 if clean else 1.0
    dx = motion * smooth_walk(rng, n, style.motion)[:, None, None]
    dy = motion * smooth_walk(rng, n, style.motion)[:, None, None]
    scale = 1.0 + motion * smooth_walk(rng, n, 0.05)[:, None, None]
    roll = np.deg2rad(motion * smooth_walk(rng, n, style.roll_deg))[:, None, None]
    eye = (np.ones(n, np.float32) if clean else blink_track(rng, n))[:, None, None]
    mouth = np.clip(np.asarray(mouth_open, dtype=np.float32), 0.0, 1.0)[:, None, None]

    grid = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    gx, gy = np.meshgrid(grid, grid)  # (S, S), x to the right, y down
    # head frame: undo translation, roll and scale so the face is drawn in canonical coordinates
    cos, sin = np.cos(roll), np.sin(roll)
    x0, y0 = gx[None] - dx, gy[None] - dy
    x = (cos * x0 + sin * y0) / scale  # (T, S, S)
    y = (-sin * x0 + cos * y0) / scale
    sharp = size / 3.0

    head = _ellipse(x, y, 0.0, 0.0, style.head_w, style.head_h, sharp * style.head_w * 3)
    img = style.background + (style.skin - style.background) * head
    eye_h = 0.035 * eye + 0.004
    for side in (-1.0, 1.0):
        e = _ellipse(x, y, side * style.eye_dx, style.eye_y, 0.05, eye_h, sharp * 0.15)
        img = img + (0.08 - img) * e
    mouth_h = 0.012 + 0.09 * mouth  # closed lips stay a thin line
    m = _ellipse(x, y, 0.0, style.mouth_y, style.mouth_w, mouth_h, sharp * 0.2)
    img = img + (0.05 - img) * m

    if not clean:
        gain = 1.0 + smooth_walk(rng, n, style.light, smooth=25.0)[:, None, None]
        angle = rng.uniform(0, 2 * np.pi)
        gradient = style.light * (np.cos(angle) * gx + np.sin(angle) * gy)[None]
        img = img * gain * (1.0 + gradient)
        img = gaussian_filter(img, sigma=(0.0, style.blur, style.blur), mode="nearest")
        img = img + style.noise * rng.standard_normal(img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def mouth_darkness(track: np.ndarray, style: FaceStyle) -> np.ndarray:
    """(T,) how dark the canonical mouth region of a `clean` track is: grows with the mouth opening.

    Used by the tests to check that what was drawn matches the mouth parameter (the labels' source).
    """
    size = track.shape[-1]
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    gx, gy = np.meshgrid(grid, grid)
    region = (np.abs(gx) < style.mouth_w * 0.6) & (np.abs(gy - style.mouth_y) < 0.12)
    return (style.skin - track[:, region]).mean(axis=1)
