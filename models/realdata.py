"""Real, unlabelled series that ship inside PyPI packages (no download at run time).

None of these is an anomaly benchmark, and none carries labels:

| package | file | series | sampling |
|---|---|---|---|
| bokeh-sampledata | CGM.csv.gz | continuous glucose monitor: glucose, sensor current (isig) | 5 min |
| bokeh-sampledata | sea_surface_temperature.csv.gz | sea surface temperature | 30 min |
| bokeh-sampledata | stocks.csv.gz | AAPL, GOOG, IBM, MSFT daily close and volume | 1 day (trading) |
| bokeh-sampledata | cycling.csv.gz | one ride: speed, heart rate, cadence, power, altitude | 1 s |
| vega-datasets | seattle-temps.csv, sf-temps.csv | air temperature, 2010 | 1 h |
| pmdarima | taylor | electricity demand, England and Wales, 2000 | 30 min |

`load()` returns {name: float64 array}. Series are split in time for
training: the first 80% trains, the last 20% is held out for checkpoint
selection (`split`).
"""
import gzip
import os

import numpy as np


def _csv(path, column, sep=","):
    import pandas as pd
    df = pd.read_csv(path, sep=sep)
    return pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=np.float64)


def load() -> dict:
    out = {}
    try:
        import bokeh_sampledata
        d = os.path.join(os.path.dirname(bokeh_sampledata.__file__), "_data")
        out["cgm_glucose"] = _csv(os.path.join(d, "CGM.csv.gz"), "glucose")
        out["cgm_isig"] = _csv(os.path.join(d, "CGM.csv.gz"), "isig")
        out["sea_surface_temperature"] = _csv(os.path.join(d, "sea_surface_temperature.csv.gz"), "temperature (celsius)")
        import pandas as pd
        stocks = pd.read_csv(os.path.join(d, "stocks.csv.gz"))
        for ticker, g in stocks.groupby("Ticker"):
            g = g.sort_values("Date")
            out[f"stock_{ticker}_close"] = pd.to_numeric(g["Close"], errors="coerce").to_numpy(dtype=np.float64)
            out[f"stock_{ticker}_volume"] = pd.to_numeric(g["Volume"], errors="coerce").to_numpy(dtype=np.float64)
        cyc = pd.read_csv(os.path.join(d, "cycling.csv.gz"))
        for col in ["speed", "heart_rate", "cadence", "power", "altitude"]:
            if col in cyc.columns:
                out[f"cycling_{col}"] = pd.to_numeric(cyc[col], errors="coerce").to_numpy(dtype=np.float64)
    except ImportError:
        pass
    try:
        import vega_datasets
        d = os.path.join(os.path.dirname(vega_datasets.__file__), "_data")
        out["seattle_temps"] = _csv(os.path.join(d, "seattle-temps.csv"), "temp")
        out["sf_temps"] = _csv(os.path.join(d, "sf-temps.csv"), "temp")
    except ImportError:
        pass
    try:
        from pmdarima.datasets import load_taylor
        out["taylor_demand"] = np.asarray(load_taylor(), dtype=np.float64)
    except ImportError:
        pass
    return {k: v[np.isfinite(v)] for k, v in out.items() if np.isfinite(v).sum() > 500}


def split(series: dict, holdout: float = 0.2):
    """(train, held-out) dicts: the first and last parts of each series in time."""
    train, held = {}, {}
    for k, v in series.items():
        cut = int(len(v) * (1 - holdout))
        train[k], held[k] = v[:cut], v[cut:]
    return train, held


class Sampler:
    """Random crops of `length` points from a dict of series, optionally
    decimated (every k-th point, or k-point means) to vary the sampling rate."""

    def __init__(self, series: dict, length: int):
        self.length = length
        self.series = [v for v in series.values() if len(v) >= length // 8]
        w = np.array([len(v) for v in self.series], dtype=np.float64)
        self.p = np.sqrt(w) / np.sqrt(w).sum()  # long series are not allowed to dominate

    def crop(self, rng: np.random.Generator) -> np.ndarray:
        v = self.series[rng.choice(len(self.series), p=self.p)]
        k = int(rng.choice([1, 1, 1, 2, 3, 6]))
        if k > 1:
            n = len(v) // k * k
            v = v[:n].reshape(-1, k).mean(1) if rng.random() < 0.5 else v[:n:k]
        if len(v) >= self.length:
            at = rng.integers(0, len(v) - self.length + 1)
            return v[at:at + self.length].copy()
        out = np.full(self.length, np.nan)  # short series: a missing prefix
        out[-len(v):] = v
        return out
