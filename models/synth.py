"""Synthetic generator of mostly-normal series for self-supervised training.

Each series mixes: 0-3 seasonalities (sine / sawtooth / square-ish, or a
random repeated template: a daily profile that only its own last cycle
predicts), a
linear or random-walk trend, persistent level regimes (step changes that
stay), noise from several families (gaussian, laplace, student-t), optional
integer-valued / sparse count series, and rare short spikes so that the
model sees that surprises happen without learning to predict them.
"""
import numpy as np


def series(rng: np.random.Generator, length: int) -> np.ndarray:
    t = np.arange(length, dtype=np.float64)
    x = np.zeros(length)
    for _ in range(rng.integers(0, 4)):
        period = rng.choice([rng.uniform(4, 40), rng.uniform(40, 300)])
        amp = rng.lognormal(0, 0.7)
        phase = rng.uniform(0, 2 * np.pi)
        kind = rng.integers(0, 4)
        base = np.sin(2 * np.pi * t / period + phase)
        if kind == 1:
            base = 2 * ((t / period + phase) % 1.0) - 1
        elif kind == 2:
            base = np.tanh(3 * base)
        elif kind == 3:
            base = template(rng, period, t, phase)
        x += amp * base
    trend = rng.integers(0, 3)
    if trend == 1:
        x += rng.normal(0, 0.02) * t
    elif trend == 2:
        x += np.cumsum(rng.normal(0, rng.uniform(0.01, 0.3), length))
    if rng.random() < 0.4:  # persistent level regimes
        for _ in range(rng.integers(1, 4)):
            at = rng.integers(0, length)
            x[at:] += rng.normal(0, 2.0)
    noise_scale = rng.lognormal(-1.5, 1.0)
    family = rng.integers(0, 3)
    if family == 0:
        noise = rng.normal(0, 1, length)
    elif family == 1:
        noise = rng.laplace(0, 0.7, length)
    else:
        noise = rng.standard_t(3, length) * 0.6
    x += noise_scale * noise
    level = rng.normal(0, 10) if rng.random() < 0.5 else rng.lognormal(2, 2)
    scale = rng.lognormal(0, 1.5)
    x = level + scale * x
    if rng.random() < 0.15:  # integer-valued counts, sometimes sparse
        lam = np.clip(x - x.min(), 0, None)
        lam = lam / (lam.mean() + 1e-9) * rng.lognormal(0, 1.5)
        x = rng.poisson(lam).astype(np.float64)
    if rng.random() < 0.3:  # rare spikes
        for _ in range(rng.integers(1, 3)):
            at = rng.integers(0, length)
            x[at] += rng.normal(0, 6) * (np.std(x) + 1e-3)
    return x


def template(rng: np.random.Generator, period: float, t: np.ndarray, phase: float) -> np.ndarray:
    """A random cycle shape tiled with `period`: piecewise levels with ramps,
    or a smoothed random walk, scaled to [-1, 1]."""
    k = int(max(4, round(period)))
    if rng.random() < 0.5:
        cuts = np.sort(rng.choice(np.arange(1, k), size=min(k - 1, rng.integers(1, 6)), replace=False))
        levels = rng.normal(0, 1, len(cuts) + 1)
        shape = np.repeat(levels, np.diff(np.concatenate([[0], cuts, [k]])))
        ramp = max(1, int(k * rng.uniform(0, 0.05)))
        shape = np.convolve(np.concatenate([shape, shape[:ramp]]), np.ones(ramp) / ramp, "valid")[:k]
    else:
        walk = np.cumsum(rng.normal(0, 1, k))
        walk -= np.linspace(0, walk[-1], k)  # close the loop
        width = max(1, int(k * rng.uniform(0.01, 0.08)))
        shape = np.convolve(np.concatenate([walk[-width:], walk, walk[:width]]), np.ones(2 * width + 1) / (2 * width + 1), "valid")[:k]
    shape = shape - shape.mean()
    shape = shape / (np.abs(shape).max() + 1e-9)
    idx = ((t + phase / (2 * np.pi) * period) % period) / period * k
    return shape[np.minimum(idx.astype(int), k - 1)]


def windows(rng: np.random.Generator, n: int, window: int, length: int = 0) -> np.ndarray:
    """n windows of shape [window], cut at random offsets from fresh series
    (of `length` points, by default twice the window)."""
    length = max(length, 2 * window)
    out = np.empty((n, window), dtype=np.float32)
    i = 0
    while i < n:
        s = series(rng, length)
        for _ in range(min(16, n - i)):
            at = rng.integers(0, length - window + 1)
            out[i] = s[at:at + window]
            i += 1
    return out
