"""Train the attnwatch encoder on synthetic series and export it to ONNX.

    python models/train.py          # the committed model: W 384, 2000 steps, batch 64, seed 7

Writes, next to --out:
  <name>.onnx                   opset-18 graph with metadata_props (the contract)
  <name>.reference.json         a small input batch and ONNX Runtime's outputs,
                                used by the Rust parity test
Checks PyTorch against ONNX Runtime on that batch before it writes anything.
Needs torch, onnx, onnxruntime and numpy (not part of CI; see models/README.md).
"""
import argparse
import json
import os
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch

from declare_shapes import declare
from encoder import Encoder
from synth import windows

CONTRACT_VERSION = "1"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--window", type=int, default=384)
    ap.add_argument("--d-model", type=int, default=32)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--d-ff", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--export-scale-floor", type=float, default=0.3,
                    help="floor of the predicted scale in the exported graph (window std units); chosen on the NAB dev "
                         "labels among 0.01, 0.1, 0.3 (see README.md)")
    ap.add_argument("--min-points", type=int, default=16, help="fewest present points a window may have")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--version", default="0.3.0")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "attnwatch-encoder.onnx"))
    ap.add_argument("--nab-values", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "nab-dev", "data"),
                    help="directory of NAB CSVs whose *values* (never labels) are used for validation and checkpoint selection")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = Encoder(args.window, args.d_model, args.heads, args.layers, args.d_ff)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps)
    val = torch.from_numpy(windows(np.random.default_rng(args.seed + 1), 512, args.window)).unsqueeze(-1)
    nab = nab_windows(args.nab_values, args.window)
    best = (float("inf"), None, 0)

    t0 = time.time()
    loss_hist = []
    for step in range(1, args.steps + 1):
        x = torch.from_numpy(hide(rng, windows(rng, args.batch, args.window), args.min_points)).unsqueeze(-1)
        loss = model.nll(x)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_hist.append(loss.item())
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            with torch.no_grad():
                vloss = chunked_nll(model, val)
                nab_nll = chunked_nll(model, nab) if nab is not None else float("nan")
            model.train()
            if nab is not None and nab_nll < best[0]:
                best = (nab_nll, {k: v.clone() for k, v in model.state_dict().items()}, step)
            print(f"step {step}/{args.steps} train_nll {np.mean(loss_hist[-args.eval_every:]):.4f} "
                  f"val_nll {vloss:.4f} nab_values_nll {nab_nll:.4f} elapsed {time.time() - t0:.0f}s", flush=True)
    train_seconds = time.time() - t0
    if best[1] is not None:
        model.load_state_dict(best[1])
        print(f"selected the checkpoint of step {best[2]} (lowest NLL on NAB values: {best[0]:.4f})")
    model.eval()
    with torch.no_grad():
        val_nll = chunked_nll(model, val)

    params = sum(p.numel() for p in model.parameters())
    export(model, args, params, train_seconds, val_nll, best)


def chunked_nll(model, x, chunk=256):
    """Mean NLL over x, in chunks (attention memory grows with W^2)."""
    total = 0.0
    for i in range(0, len(x), chunk):
        part = x[i:i + chunk]
        total += model.nll(part).item() * len(part)
    return total / len(x)


def hide(rng, w, min_points):
    """Mark points missing (NaN) the way serving produces them: a missing
    prefix while a series warms up (30% of windows) and sporadic gaps (10%)."""
    w = w.copy()
    n, length = w.shape
    for i in range(n):
        u = rng.random()
        if u < 0.3:
            w[i, : rng.integers(1, length - min_points + 1)] = np.nan
        elif u < 0.4:
            gaps = rng.random(length - 1) < rng.uniform(0.01, 0.2)
            w[i, :-1][gaps] = np.nan
    return w


def nab_windows(root, window, stride=4, cap=4000):
    """Windows cut from the NAB dev values (labels are never read)."""
    if not os.path.isdir(root):
        print(f"no NAB values at {root}; selecting on synthetic validation only")
        return None
    out = []
    for dirpath, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            if f.endswith(".csv"):
                vals = np.loadtxt(os.path.join(dirpath, f), delimiter=",", skiprows=1, usecols=1, dtype=np.float64)
                for i in range(0, len(vals) - window + 1, stride):
                    out.append(vals[i:i + window])
    rng = np.random.default_rng(0)
    arr = np.array(out, dtype=np.float32)
    if len(arr) > cap:
        arr = arr[rng.choice(len(arr), cap, replace=False)]
    return torch.from_numpy(arr).unsqueeze(-1)


def flops_per_window(w, d, h, layers, d_ff):
    """Multiply-adds x2 for one window (F = 1)."""
    per_layer = 4 * w * d * d * 2 + 2 * w * w * d * 2 + 2 * w * d * d_ff * 2
    return layers * per_layer + w * 2 * d * 2 + d * 2 * 2


def export(model, args, params, train_seconds, val_nll, best):
    out = args.out
    model.sd_floor = args.export_scale_floor
    ref = windows(np.random.default_rng(1234), 4, args.window)
    ref[1, : args.window // 2] = np.nan  # a warming-up series
    ref[2, 5:9] = np.nan  # a gap
    x = torch.from_numpy(ref).unsqueeze(-1)
    torch.onnx.export(
        model, (x,), out, dynamo=False, opset_version=18,
        input_names=["window"],
        output_names=["pred_mean", "pred_std", "raw_score", "attention"],
        dynamic_axes={"window": {0: "batch"}, "pred_mean": {0: "batch"}, "pred_std": {0: "batch"},
                      "raw_score": {0: "batch"}, "attention": {0: "batch"}},
    )
    m = onnx.load(out)
    flops = flops_per_window(args.window, args.d_model, args.heads, args.layers, args.d_ff)
    meta = {
        "attnwatch.contract": CONTRACT_VERSION,
        "attnwatch.model_name": "attnwatch-encoder",
        "attnwatch.model_version": args.version,
        "attnwatch.window": str(args.window),
        "attnwatch.min_points": str(args.min_points),
        "attnwatch.features": "value",
        "attnwatch.layers": str(args.layers),
        "attnwatch.heads": str(args.heads),
        "attnwatch.d_model": str(args.d_model),
        "attnwatch.input": "window: float32 [batch, W, F] raw values, oldest first; the last row is the point to score "
                           "and must be present; missing points are NaN (at least min_points present)",
        "attnwatch.outputs": json.dumps({
            "pred_mean": "float32 [batch, F]: predicted value of the newest point, input units",
            "pred_std": "float32 [batch, F]: predicted scale of the newest point, input units",
            "raw_score": "float32 [batch, F]: |x_new - pred_mean| / pred_std",
            "attention": "float32 [batch, layers, heads, W]: softmax attention row of the newest position",
        }),
        "attnwatch.score": "raw_score = |x[W-1] - mean| / std of a Gaussian predicted from the other W-1 points "
                            "(newest value masked); std >= scale_floor x the context's std; per-window normalisation "
                            "(RevIN, context statistics) is in the graph",
        "attnwatch.scale_floor": str(args.export_scale_floor),
        "attnwatch.training": json.dumps({
            "data": "synthetic (models/synth.py)", "objective": "gaussian NLL of the masked newest point",
            "steps": args.steps, "batch": args.batch, "seed": args.seed, "seconds": round(train_seconds, 1),
            "val_nll": round(val_nll, 4), "selected_step": best[2], "nab_values_nll": round(best[0], 4) if best[1] is not None else None, "params": params, "flops_per_window": flops,
        }),
    }
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    declare(m)  # static output shapes for the contract check
    onnx.save(m, out)

    # Parity: PyTorch vs ONNX Runtime, then the reference file for Rust.
    sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"window": x.numpy()})
    with torch.no_grad():
        want = [t.numpy() for t in model(x)]
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(got, want))
    assert all(np.isfinite(a).all() for a in got), "non-finite output on the reference batch"
    print(f"parity torch vs onnxruntime: max abs diff {worst:.2e}")
    assert worst < 1e-4, "ONNX export does not match PyTorch"
    ref = {
        "input": {"name": "window", "shape": list(x.shape),
                  "data": [None if np.isnan(v) else float(v) for v in x.numpy().ravel()],
                  "missing": "null marks a missing position (NaN in the model input)"},
        "outputs": {name: {"shape": list(a.shape), "data": a.ravel().tolist()}
                    for name, a in zip(["pred_mean", "pred_std", "raw_score", "attention"], got)},
    }
    with open(out.replace(".onnx", ".reference.json"), "w") as f:
        json.dump(ref, f, allow_nan=False)
    print(f"wrote {out} ({os.path.getsize(out)} bytes), params {params}, flops/window {flops}, "
          f"trained {train_seconds:.0f}s, val_nll {val_nll:.4f}")


if __name__ == "__main__":
    main()
