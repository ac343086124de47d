"""Synthetic generator of mostly-normal operational series for self-supervised training.

One call to `series(rng, length)` draws a sampling rate (points per day, from
1-minute to daily data, or a series without a calendar) and composes:

* seasonality: a daily profile (smooth, business-hours plateau, piecewise
  levels with ramps, or a closed random walk) and a weekly modulation
  (weekday/weekend factor, or a per-weekday template), each with its own
  amplitude drift; or free-running cycles (sine, sawtooth, square) of any
  period; or none;
* trend and drift: linear, random walk, or slow multiplicative drift of the
  seasonal amplitude;
* level shifts that persist, and regime changes (noise level, amplitude,
  or the seasonal profile itself changes and stays);
* bursts: stretches of raised level or variance that end again;
* noise: gaussian, laplace, student-t (heavy tails), multiplicative, or an
  AR(1) process;
* counts: integer-valued (Poisson) series, sometimes sparse;
* quantisation, clipping at zero, rare isolated spikes;
* missing data: forward-filled runs (what the service's window stage does
  with short gaps).

Everything here is "normal" from the model's point of view: anomalies are
rare in training data, and the forecast must learn what is predictable, not
the anomalies themselves. The missing prefix of a warming-up series is added
by train.py, not here.
"""
import numpy as np
from scipy.signal import lfilter

# Points per day for calendar series; 0 means "no calendar" (free cycles).
RATES = np.array([1440, 288, 288, 288, 144, 96, 48, 24, 24, 1, 0, 0])


def series(rng: np.random.Generator, length: int) -> np.ndarray:
    t = np.arange(length, dtype=np.float64)
    per_day = int(rng.choice(RATES))
    x = np.zeros(length)
    if per_day >= 24 and rng.random() < 0.85:
        x += calendar(rng, t, per_day)
    elif per_day == 0 or rng.random() < 0.5:
        for _ in range(rng.integers(0, 3)):
            x += cycle(rng, t)
    x += trend(rng, t)
    x = regimes(rng, x, length)
    x = x + noise(rng, length, x)
    x = bursts(rng, x, length)
    level = rng.normal(0, 10) if rng.random() < 0.5 else rng.lognormal(2, 2)
    scale = rng.lognormal(0, 1.5)
    x = level + scale * x
    u = rng.random()
    if u < 0.15:  # counts, sometimes sparse
        lam = np.clip(x - np.quantile(x, rng.uniform(0, 0.3)), 0, None)
        lam = lam / (lam.mean() + 1e-9) * rng.lognormal(0.5, 1.5)
        x = rng.poisson(lam).astype(np.float64)
    elif u < 0.25:  # quantised gauges
        step = np.std(x) * rng.uniform(0.02, 0.3) + 1e-9
        x = np.round(x / step) * step
    elif u < 0.32:  # non-negative with a floor (latencies, rates)
        x = np.clip(x, 0, None)
    if rng.random() < 0.25:  # rare isolated spikes
        sd = np.std(x) + 1e-3
        for _ in range(rng.integers(1, 4)):
            at = rng.integers(0, length)
            x[at] += rng.normal(0, 5) * sd
    if rng.random() < 0.15:  # forward-filled gaps (the window stage's fill)
        for _ in range(rng.integers(1, 6)):
            at = rng.integers(1, length)
            x[at:at + rng.integers(1, 17)] = x[at - 1]
    return x


def profile(rng: np.random.Generator, k: int) -> np.ndarray:
    """One cycle of k points, zero mean, max |value| 1."""
    kind = rng.integers(0, 4)
    u = np.arange(k) / k
    if kind == 0:  # smooth: a few harmonics
        shape = sum(rng.normal(0, 1 / h) * np.sin(2 * np.pi * h * u + rng.uniform(0, 2 * np.pi))
                    for h in range(1, 4))
    elif kind == 1:  # business hours: a plateau with soft edges
        start, width = rng.uniform(0.2, 0.45), rng.uniform(0.25, 0.5)
        edge = rng.uniform(0.01, 0.06)
        shape = 1 / (1 + np.exp(-(u - start) / edge)) - 1 / (1 + np.exp(-(u - start - width) / edge))
        shape = shape + rng.normal(0, 0.1) * np.sin(2 * np.pi * u)
    elif kind == 2:  # piecewise levels with ramps
        cuts = np.sort(rng.choice(np.arange(1, k), size=min(k - 1, rng.integers(1, 6)), replace=False))
        levels = rng.normal(0, 1, len(cuts) + 1)
        shape = np.repeat(levels, np.diff(np.concatenate([[0], cuts, [k]])))
        ramp = max(1, int(k * rng.uniform(0, 0.05)))
        shape = np.convolve(np.concatenate([shape, shape[:ramp]]), np.ones(ramp) / ramp, "valid")[:k]
    else:  # smoothed closed random walk
        walk = np.cumsum(rng.normal(0, 1, k))
        walk -= np.linspace(0, walk[-1], k)
        width = max(1, int(k * rng.uniform(0.01, 0.08)))
        shape = np.convolve(np.concatenate([walk[-width:], walk, walk[:width]]),
                            np.ones(2 * width + 1) / (2 * width + 1), "valid")[:k]
    shape = np.asarray(shape, dtype=np.float64)
    shape = shape - shape.mean()
    return shape / (np.abs(shape).max() + 1e-9)


def calendar(rng: np.random.Generator, t: np.ndarray, per_day: int) -> np.ndarray:
    """Daily profile times a weekly modulation, each with a drifting amplitude."""
    phase = rng.integers(0, per_day * 7)
    tt = t + phase
    day = profile(rng, per_day)
    x = day[(tt % per_day).astype(int)]
    drift = np.exp(np.cumsum(rng.normal(0, rng.uniform(0, 0.002), len(t))))  # slow amplitude drift
    x = x * drift
    weekday = (tt // per_day).astype(int) % 7
    w = rng.random()
    if w < 0.35:  # weekends differ by a factor
        factor = np.where(weekday >= 5, rng.uniform(0.1, 0.8), 1.0)
        x = x * factor
    elif w < 0.55:  # each weekday its own level
        x = x + rng.normal(0, 0.3, 7)[weekday]
    elif w < 0.7 and per_day <= 288:  # a weekly template at week resolution
        week = profile(rng, per_day * 7)
        x = x + rng.uniform(0.2, 1.0) * week[(tt % (per_day * 7)).astype(int)]
    return rng.lognormal(0, 0.5) * x


def cycle(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    period = rng.choice([rng.uniform(4, 40), rng.uniform(40, 600)])
    phase = rng.uniform(0, 1)
    kind = rng.integers(0, 4)
    u = (t / period + phase) % 1.0
    if kind == 0:
        base = np.sin(2 * np.pi * u)
    elif kind == 1:
        base = 2 * u - 1
    elif kind == 2:
        base = np.tanh(3 * np.sin(2 * np.pi * u))
    else:
        k = int(max(4, round(period)))
        base = profile(rng, k)[np.minimum((u * k).astype(int), k - 1)]
    return rng.lognormal(0, 0.7) * base


def trend(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    kind = rng.integers(0, 4)
    n = len(t)
    if kind == 1:
        return rng.normal(0, 1.0) * t / n
    if kind == 2:
        return np.cumsum(rng.normal(0, rng.lognormal(-3, 1), n))
    if kind == 3:  # random walk with mean reversion (AR(1) level)
        a, sd = 1 - rng.lognormal(-5, 1), rng.lognormal(-2.5, 1)
        return ar1(rng.normal(0, sd, n), a)
    return np.zeros(n)


def ar1(e: np.ndarray, a: float) -> np.ndarray:
    """y[i] = a y[i-1] + e[i]."""
    return lfilter([1.0], [1.0, -a], e)


def regimes(rng: np.random.Generator, x: np.ndarray, n: int) -> np.ndarray:
    """Persistent changes: level shifts, amplitude changes."""
    if rng.random() < 0.35:
        for _ in range(rng.integers(1, 4)):
            at = rng.integers(0, n)
            x[at:] += rng.normal(0, 1.0)
    if rng.random() < 0.15:
        at = rng.integers(0, n)
        x[at:] *= rng.lognormal(0, 0.5)
    return x


def noise(rng: np.random.Generator, n: int, x: np.ndarray) -> np.ndarray:
    scale = rng.lognormal(-1.8, 1.0)
    fam = rng.integers(0, 5)
    if fam == 0:
        e = rng.normal(0, 1, n)
    elif fam == 1:
        e = rng.laplace(0, 0.7, n)
    elif fam == 2:
        e = rng.standard_t(rng.uniform(2.2, 5), n) * 0.6
    elif fam == 3:  # AR(1) noise
        a = rng.uniform(0.3, 0.95)
        e = ar1(rng.normal(0, np.sqrt(1 - a * a), n), a)
    else:  # multiplicative: noise grows with the signal
        e = rng.normal(0, 1, n) * (0.3 + np.abs(x - x.min()) / (np.ptp(x) + 1e-9))
    if rng.random() < 0.2:  # noise regime change
        at = rng.integers(0, n)
        e[at:] *= rng.lognormal(0, 0.6)
    return scale * e


def bursts(rng: np.random.Generator, x: np.ndarray, n: int) -> np.ndarray:
    """Stretches of raised level or variance that end again."""
    if rng.random() < 0.2:
        sd = np.std(x) + 1e-3
        for _ in range(rng.integers(1, 4)):
            at, width = rng.integers(0, n), rng.integers(3, 60)
            if rng.random() < 0.5:
                x[at:at + width] += abs(rng.normal(0, 1.5)) * sd
            else:
                x[at:at + width] += rng.normal(0, rng.uniform(0.5, 2), len(x[at:at + width])) * sd
    return x
