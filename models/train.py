"""Train the attnwatch patch forecaster and export it to ONNX.

    python models/train.py          # the committed model (see models/README.md for its time)

Training data: synthetic series (synth.py) and real, unlabelled series that
ship inside PyPI packages (realdata.py); never NAB or any other labelled
benchmark. The checkpoint is selected on the NLL of held-out synthetic
series and of the held-out last 20% of each real series, at the last token
(the one the service reads).

Writes, next to --out:
  <name>.onnx                   opset-18 graph with metadata_props (the contract)
  <name>.reference.json         a small input batch and ONNX Runtime's outputs,
                                used by the Rust parity test
Checks PyTorch against ONNX Runtime on that batch before it writes anything.
Needs torch, onnx, onnxruntime, numpy, scipy, pandas and the data packages
(see models/README.md); none of it is part of CI.
"""
import argparse
import json
import os
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch

import realdata
import synth
from declare_shapes import declare
from encoder import PatchForecaster, flops_per_run

CONTRACT_VERSION = "2"


def parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--horizon", type=int, default=64)
    ap.add_argument("--d-model", type=int, default=32)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--d-ff", type=int, default=64)
    ap.add_argument("--no-analog", action="store_true", help="ablation: no analog attention over the series' own memory")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--real-fraction", type=float, default=0.3, help="share of training sequences cut from real series")
    ap.add_argument("--warmup-fraction", type=float, default=0.4, help="share of sequences with a missing prefix (a series warming up)")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--export-scale-floor", type=float, default=0.05,
                    help="floor of the forecast scale in the exported graph, in units of the context's scale "
                         "(set a priori, not tuned on NAB)")
    ap.add_argument("--min-points", type=int, default=32, help="fewest present points before a context is run")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    ap.add_argument("--version", default="1.0.0")
    ap.add_argument("--export-only", metavar="CKPT", help="skip training: export the checkpoint CKPT (a .pt written by an earlier run)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "attnwatch-encoder.onnx"))
    return ap.parse_args()


def hide_prefix(rng, seq, context, min_points, prob):
    """A missing prefix (NaN) the way a warming-up series has one, keeping at
    least min_points present points in the context."""
    if rng.random() < prob:
        cut = rng.integers(1, context - min_points + 1)
        seq[:cut] = np.nan
    return seq


def batch(rng, n, args, real_sampler):
    length = args.context + args.horizon
    out = np.empty((n, length), dtype=np.float32)
    for i in range(n):
        if real_sampler is not None and rng.random() < args.real_fraction:
            s = real_sampler.crop(rng)
        else:
            s = synth.series(rng, length)
        out[i] = hide_prefix(rng, s, args.context, args.min_points, args.warmup_fraction)
    return torch.from_numpy(out)


def last_token_nll(model, seqs, chunk=128):
    """Mean NLL of the last token's forecast (what the service reads), in
    normalised units, over the present target points."""
    c, hzn = model.context, model.horizon
    total, count = 0.0, 0.0
    with torch.no_grad():
        for i in range(0, len(seqs), chunk):
            part = seqs[i:i + chunk]
            h, mean, scale, _, _, _ = model.encode(part[:, :c], last_only=True)
            mu, sd = model.predict(h[:, -1, :])
            y = part[:, c:c + hzn]
            ok = ~torch.isnan(y)
            target = torch.clamp((torch.nan_to_num(y) - mean[:, -1:]) / scale[:, -1:], -20.0, 20.0)
            loss = torch.log(sd) + 0.5 * ((target - mu) / sd) ** 2
            total += (loss * ok).sum().item()
            count += ok.sum().item()
    return total / max(count, 1.0)


def main():
    args = parse()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    torch.set_num_threads(args.threads)
    length = args.context + args.horizon
    real = realdata.load()
    real_train, real_held = realdata.split(real)
    train_sampler = realdata.Sampler(real_train, length) if real else None
    held_sampler = realdata.Sampler(real_held, length) if real else None
    print(f"real series: {len(real)} ({sum(len(v) for v in real.values())} points): {', '.join(sorted(real))}")

    model = PatchForecaster(args.context, args.patch, args.horizon, args.d_model, args.heads, args.layers, args.d_ff,
                            analog=not args.no_analog)
    if args.export_only:
        ckpt = torch.load(args.export_only)
        model.load_state_dict(ckpt["state"])
        model.eval()
        export(model, args, ckpt["info"])
        return
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=max(0.05, 2.0 / args.steps))
    vrng = np.random.default_rng(args.seed + 1)
    val_synth = torch.from_numpy(np.stack([
        hide_prefix(vrng, synth.series(vrng, length), args.context, args.min_points, args.warmup_fraction)
        for _ in range(512)]).astype(np.float32))
    val_real = (torch.from_numpy(np.stack([
        hide_prefix(vrng, held_sampler.crop(vrng), args.context, args.min_points, args.warmup_fraction)
        for _ in range(512)]).astype(np.float32)) if held_sampler else None)
    best = (float("inf"), None, 0, {})
    targets_seen = 0
    t0 = time.time()
    losses = []
    for step in range(1, args.steps + 1):
        x = batch(rng, args.batch, args, train_sampler)
        loss = model.nll(x, args.min_points)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        targets_seen += args.batch * model.tokens_n * args.horizon
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            vs = last_token_nll(model, val_synth)
            vr = last_token_nll(model, val_real) if val_real is not None else float("nan")
            model.train()
            sel = vs if val_real is None else 0.5 * (vs + vr)
            if sel < best[0]:
                best = (sel, {k: v.clone() for k, v in model.state_dict().items()}, step,
                        {"val_synthetic_nll": round(vs, 4), "val_real_nll": round(vr, 4)})
            print(f"step {step}/{args.steps} train_nll {np.mean(losses[-args.eval_every:]):.4f} "
                  f"val_synth_nll {vs:.4f} val_real_nll {vr:.4f} elapsed {time.time() - t0:.0f}s", flush=True)
    train_seconds = time.time() - t0
    model.load_state_dict(best[1])
    model.eval()
    print(f"selected the checkpoint of step {best[2]} (held-out NLL {best[0]:.4f}: {best[3]})")
    params = sum(p.numel() for p in model.parameters())
    info = {
        "data": "synthetic (models/synth.py) + real unlabelled series shipped in PyPI packages (models/realdata.py): "
                + ", ".join(sorted(real)),
        "objective": "gaussian NLL of the next H points at every token (causal)",
        "steps": args.steps, "batch": args.batch, "seed": args.seed, "seconds": round(train_seconds, 1),
        "target_points": targets_seen, "selected_step": best[2], **best[3], "params": params,
        "real_fraction": args.real_fraction, "warmup_fraction": args.warmup_fraction, "lr": args.lr,
    }
    torch.save({"state": model.state_dict(), "info": info}, args.out.replace(".onnx", ".pt"))
    export(model, args, info)


def export(model, args, info):
    out = args.out
    model.sd_floor = args.export_scale_floor
    rng = np.random.default_rng(1234)
    ref = np.stack([synth.series(rng, args.context) for _ in range(4)]).astype(np.float32)
    ref[1, : args.context // 2 + 5] = np.nan  # a warming-up series (not patch-aligned)
    ref[2, : args.context - args.min_points] = np.nan  # the shortest context that is run
    ref[3] = 1234.5  # a constant series
    x = torch.from_numpy(ref).unsqueeze(-1)
    names = ["forecast_mean", "forecast_std", "attention", "novelty"]
    torch.onnx.export(
        model, (x,), out, dynamo=False, opset_version=18,
        input_names=["context"], output_names=names,
        dynamic_axes={"context": {0: "batch"}, **{n: {0: "batch"} for n in names}},
    )
    m = onnx.load(out)
    flops = flops_per_run(args.context, args.patch, args.horizon, args.d_model, args.heads, args.layers, args.d_ff,
                          analog=not args.no_analog)
    info["flops_per_run"] = flops
    meta = {
        "attnwatch.contract": CONTRACT_VERSION,
        "attnwatch.model_name": "attnwatch-forecaster",
        "attnwatch.model_version": args.version,
        "attnwatch.context": str(args.context),
        "attnwatch.patch": str(args.patch),
        "attnwatch.horizon": str(args.horizon),
        "attnwatch.min_points": str(args.min_points),
        "attnwatch.features": "value",
        "attnwatch.layers": str(args.layers),
        "attnwatch.heads": str(args.heads),
        "attnwatch.d_model": str(args.d_model),
        "attnwatch.input": "context: float32 [batch, C, F] raw values, oldest first; the last row is the newest "
                           "point and must be present; missing points (a series warming up) are NaN, at least "
                           "min_points present",
        "attnwatch.outputs": json.dumps({
            "forecast_mean": "float32 [batch, H, F]: mean of each of the H points after the context, input units",
            "forecast_std": "float32 [batch, H, F]: scale of each of those points, input units",
            "attention": "float32 [batch, layers, heads, T]: the forecasting (last) token's softmax attention over "
                         "the T = C / patch context tokens; token k covers context points k*patch .. k*patch+patch-1",
            "novelty": "float32 [batch, 2]: ln(1e-3 + d), d the mean squared distance per point (in units of the "
                       "context's scale) from the newest patch (column 0) and from the newest 8 patches (column 1) to "
                       "their best match among the context's earlier subsequences",
        }),
        "attnwatch.score": "forecast surprise: z = (x - forecast_mean[h]) / forecast_std[h] for the point h steps "
                           "after the context; forecast_std >= scale_floor x the context's scale; causal (prefix) "
                           "RevIN normalisation with the statistics fed back as token features is in the graph",
        "attnwatch.scale_floor": str(args.export_scale_floor),
        "attnwatch.flops_per_run": str(flops),
        "attnwatch.training": json.dumps(info),
    }
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    declare(m)
    onnx.save(m, out)

    sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"context": x.numpy()})
    with torch.no_grad():
        want = [t.numpy() for t in model(x)]
    worst = max(float(np.max(np.abs(a - b) / (1.0 + np.abs(b)))) for a, b in zip(got, want))
    assert all(np.isfinite(a).all() for a in got), "non-finite output on the reference batch"
    print(f"parity torch vs onnxruntime: max relative diff {worst:.2e}")
    assert worst < 1e-4, "ONNX export does not match PyTorch"
    reference = {
        "input": {"name": "context", "shape": list(x.shape),
                  "data": [None if np.isnan(v) else float(v) for v in x.numpy().ravel()],
                  "missing": "null marks a missing position (NaN in the model input)"},
        "outputs": {name: {"shape": list(a.shape), "data": a.ravel().tolist()} for name, a in zip(names, got)},
    }
    with open(out.replace(".onnx", ".reference.json"), "w") as f:
        json.dump(reference, f, allow_nan=False)
    print(f"wrote {out} ({os.path.getsize(out)} bytes), params {info['params']}, flops/run {flops}, "
          f"trained {info['seconds']:.0f}s")


if __name__ == "__main__":
    main()
