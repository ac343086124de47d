"""The attnwatch patch forecaster: a causal Transformer encoder, written out by hand.

Every equation of the design is visible here, so that the attention weights
the service publishes are a real output of the ONNX graph:

* scaled dot-product attention: softmax(Q K^T / sqrt(d_k) + mask) V   (scaled_dot_product)
* self-attention with learned W_Q, W_K, W_V                         (MultiHead.w_q/w_k/w_v)
* multi-head: Concat(head_1..head_h) W_O                            (MultiHead.w_o)
* encoder layer: x = LN(x + MHA(x)); x = LN(x + FFN(x))             (EncoderLayer)
* sinusoidal positional encoding added to the input embedding       (positional_encoding)
* causal (prefix) RevIN normalisation inside the graph, with the
  statistics fed back in as token features                          (PatchForecaster.tokens)
* analog attention over the series' own memory: the newest patch is the
  query, every earlier subsequence of the context a key, the values that
  followed it the value; logits -||q - k||^2 / tau (scaled dot-product
  attention with the norms kept), so the forecast can copy what followed
  the most similar past pattern. Its best match is the novelty of the
  newest pattern                                                    (PatchForecaster.analog)

Task. The context holds C = T x P points, cut into T patch tokens of P points
(the newest point ends the last patch). Token j sees tokens 0..j (causal
attention) and forecasts the next H points after its patch: a Gaussian mean
and scale per point, in units of its own prefix statistics. Training puts the
loss at every token; serving reads only the last token's forecast, which
covers the H points after the context, and the last token's attention rows.

Normalisation is causal: token j is normalised with the mean and scale of
all present points in patches 0..j, so no token sees the statistics of points
it forecasts. At the last token these are the whole context's statistics
(RevIN). Because per-window normalisation hides level and scale, each token
also receives its patch's own mean and spread relative to the prefix, the
prefix's coefficient of variation and its present fraction.
"""
import math

import torch
from torch import nn

NEG = -1e4  # additive mask: exp(-1e4) is 0 in float32
HARD_TAU = 2e-3  # temperature of the near-hard long analog (per-point squared distance, context-scale units)


def positional_encoding(length: int, d_model: int) -> torch.Tensor:
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe


def scaled_dot_product(q, k, v, bias):
    """softmax(Q K^T / sqrt(d_k) + bias) V; returns (output, weights).
    `bias` is 0 where a query may look and -1e4 where it may not (a later
    token, or a token without any present point)."""
    d_k = int(q.shape[-1])
    logits = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(d_k)) + bias
    weights = torch.softmax(logits, dim=-1)
    return torch.matmul(weights, v), weights


class MultiHead(nn.Module):
    def __init__(self, d_model: int, heads: int):
        super().__init__()
        assert d_model % heads == 0
        self.heads, self.d_k = heads, d_model // heads
        self.w_q = nn.Linear(d_model, d_model)
        self.w_k = nn.Linear(d_model, d_model)
        self.w_v = nn.Linear(d_model, d_model)
        self.w_o = nn.Linear(d_model, d_model)

    def split(self, x):  # [B, n, d] -> [B, h, n, d_k]
        return x.reshape(x.shape[0], -1, self.heads, self.d_k).transpose(1, 2)

    def forward(self, x_q, x_kv, bias):
        q, k, v = self.split(self.w_q(x_q)), self.split(self.w_k(x_kv)), self.split(self.w_v(x_kv))
        out, weights = scaled_dot_product(q, k, v, bias)  # [B, h, n_q, d_k], [B, h, n_q, T]
        concat = out.transpose(1, 2).reshape(x_q.shape[0], -1, self.heads * self.d_k)
        return self.w_o(concat), weights


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, d_ff: int, dropout: float):
        super().__init__()
        self.attn = MultiHead(d_model, heads)
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))
        self.ln1 = nn.LayerNorm(d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, bias, last_only: bool = False):
        """`last_only`: compute only the last token's output (serving's last
        layer: nothing else is read), with the same weights and equations."""
        x_q = x[:, -1:, :] if last_only else x
        a, weights = self.attn(x_q, x, bias[:, :, -1:, :] if last_only else bias)
        y = self.ln1(x_q + self.drop(a))
        y = self.ln2(y + self.drop(self.ff(y)))
        return y, weights


class PatchForecaster(nn.Module):
    """Input: x [B, C, 1] raw values, oldest first, NaN where missing.

    forward() (serving) returns, all float32:
      forecast_mean [B, H, 1]  mean of each of the next H points, input units
      forecast_std  [B, H, 1]  its scale (>= sd_floor x the context's scale)
      attention     [B, L, heads, T]  the last token's attention row per layer and head
      novelty       [B, 2]   ln(1e-3 + d) of the newest patch's and the newest long_query
                             patches' best analog match (d: mean squared distance per point,
                             in units of the context's scale)
    """

    STATS = 4  # patch mean, patch log-spread, prefix log-CV, present fraction

    def __init__(self, context=2048, patch=32, horizon=64, d_model=32, heads=4, layers=2, d_ff=64,
                 dropout=0.0, sd_floor=1e-2, analog=True):
        super().__init__()
        assert context % patch == 0 and horizon >= patch
        self.context, self.patch, self.horizon = context, patch, horizon
        self.tokens_n = context // patch
        self.sd_floor = sd_floor
        self.use_analog = analog
        self.embed = nn.Linear(2 * patch + self.STATS, d_model)
        self.register_buffer("pe", positional_encoding(self.tokens_n, d_model), persistent=False)
        causal = torch.triu(torch.full((self.tokens_n, self.tokens_n), NEG), diagonal=1)
        self.register_buffer("causal", causal, persistent=False)
        self.layers = nn.ModuleList(EncoderLayer(d_model, heads, d_ff, dropout) for _ in range(layers))
        # Analog attention: keys every key_step points (row a of shift r
        # starts at a*P + r); queries of 1 and long_query patches.
        assert horizon == 2 * patch, "the analog values are the two patches after a key"
        self.key_step = 8
        self.long_query = 8
        shifts = list(range(0, patch, self.key_step))
        self.register_buffer("key_shifted", torch.tensor([float(r > 0) for r in shifts]), persistent=False)
        self.log_tau = nn.Parameter(torch.tensor(math.log(0.05)))
        self.log_tau_long = nn.Parameter(torch.tensor(math.log(0.05)))
        extra = 3 * horizon + 4 if analog else 0  # three analog forecasts, two log novelties, two validities
        self.head = nn.Linear(d_model + extra, 2 * horizon)

    def tokens(self, x):
        """Causal normalisation and token features.

        Returns tokens [B, T, 2P+4], per-token prefix mean and scale [B, T],
        per-token present-point counts (prefix) [B, T], and the key bias
        [B, 1, T, T] (causal, and no attention to tokens without points)."""
        b, t, p = x.shape[0], self.tokens_n, self.patch
        present = (~torch.isnan(x)).to(x.dtype)
        # Shift by the newest value before summing squares: exact in real
        # arithmetic (variance is shift-invariant) and keeps float32 sums of
        # large-valued series from cancelling.
        ref = torch.where(present[:, -1:] > 0, x[:, -1:], torch.zeros_like(x[:, -1:]))
        x0 = torch.where(present > 0, x - ref, torch.zeros_like(x))
        xp, pp = x0.reshape(b, t, p), present.reshape(b, t, p)
        n_p = pp.sum(-1)
        s_p = xp.sum(-1)
        q_p = (xp * xp).sum(-1)
        n = torch.cumsum(n_p, 1)
        n1 = torch.clamp(n, min=1.0)
        mean0 = torch.cumsum(s_p, 1) / n1
        var = torch.clamp(torch.cumsum(q_p, 1) / n1 - mean0 * mean0, min=0.0)
        mean = mean0 + ref  # prefix mean in input units
        floor = 1e-3 * torch.abs(mean) + 1e-6  # constant series stay finite; relative to the level
        scale = torch.sqrt(var + floor * floor)
        z = torch.clamp((xp - mean0.unsqueeze(-1)) / scale.unsqueeze(-1), -10.0, 10.0) * pp
        np1 = torch.clamp(n_p, min=1.0)
        pm = s_p / np1
        pvar = torch.clamp(q_p / np1 - pm * pm, min=0.0)
        stats = torch.stack([
            torch.clamp((pm - mean0) / scale, -10.0, 10.0) * (n_p > 0).to(x.dtype),
            torch.clamp(0.5 * torch.log(pvar + floor * floor) - torch.log(scale), -10.0, 3.0),
            torch.clamp(torch.log(scale) - torch.log(torch.abs(mean) + scale), -10.0, 0.0),
            n_p / p,
        ], dim=-1)
        tok = torch.cat([z, 1.0 - pp, stats], dim=-1)
        key_bias = ((n_p > 0).to(x.dtype) - 1.0) * (-NEG)  # 0 present, -1e4 empty
        bias = self.causal.unsqueeze(0) + key_bias.reshape(b, 1, t)  # [B, T, T]
        return tok, mean, scale, n, bias.unsqueeze(1)

    def analog(self, x, mean, scale, last_only):
        """Analog attention over earlier subsequences of the context, at two
        query lengths: the newest patch (P points: what the newest pattern
        looks like) and the newest `long_query` patches (L P points: where in
        its cycle the series is).

        Keys are the subsequences that start every `key_step` points (lags
        that are multiples of 8 cover a day at 1, 5, 10, 15, 30 and 60-minute
        sampling); the value of a key is the H = 2P points that followed it.
        Rows of P points are cut from the context with slices and reshapes
        (contiguous copies, cheap), not gathers; a query-row x key-row
        distance matrix gives both query lengths (the long one as a sum
        along its diagonals).

        Returns, per query token (T' = T, or 1 when last_only):
          forecasts [B, T', 3, H]: short, long and near-hard long analog
                                   forecasts of the next H points, in the
                                   token's normalised units;
          novelty   [B, T', 2]: ln(1e-3 + d) for the best short and long match,
                                d = mean squared distance per point in units of
                                the token's scale;
          valid     [B, T', 2]: whether each query had a usable key."""
        b, t, p, L = x.shape[0], self.tokens_n, self.patch, self.long_query
        present = (~torch.isnan(x)).to(x.dtype)
        ref = torch.where(present[:, -1:] > 0, x[:, -1:], torch.zeros_like(x[:, -1:]))
        xs = torch.where(present > 0, x - ref, torch.zeros_like(x))
        rows, prows = [], []
        for r in range(0, p, self.key_step):
            rows.append(xs[:, r:r + (t - 1) * p].reshape(b, t - 1, p))  # row a starts at a*P + r
            prows.append(present[:, r:r + (t - 1) * p].reshape(b, t - 1, p).sum(-1))
        rows = torch.stack(rows, dim=1)  # [B, S, T-1, P]
        prows = torch.stack(prows, dim=1)  # [B, S, T-1]
        nk = t - 3  # key rows a = 0 .. T-4 (their two followers are rows a+1, a+2)
        follow1 = rows[:, :, 1:t - 2].reshape(b, -1, p)  # [B, S * nk, P]: the first P followers
        follow2 = rows[:, :, 2:t - 1].reshape(b, -1, p)  # the next P
        row_full = (prows >= p - 0.5).to(x.dtype)  # [B, S, T-1]
        follow_ok = row_full[:, :, 1:t - 2] * row_full[:, :, 2:t - 1]  # [B, S, nk]
        tq = L if last_only else t
        q = xs.reshape(b, t, p)[:, t - tq:]  # [B, tq, P]
        q_full = (present.reshape(b, t, p)[:, t - tq:].sum(-1) >= p - 0.5).to(x.dtype)  # [B, tq]
        g = torch.matmul(q.unsqueeze(1), rows.transpose(2, 3))  # [B, S, tq, T-1]
        qq = (q * q).sum(-1).reshape(b, 1, tq, 1)
        rr = (rows * rows).sum(-1).unsqueeze(2)  # [B, S, 1, T-1]
        pd = torch.clamp(qq + rr - 2.0 * g, min=0.0)  # patch squared distances
        ok_pair = q_full.reshape(b, 1, tq, 1) * row_full.unsqueeze(2)  # [B, S, tq, T-1]
        # Long query: the sum over the L row pairs along each diagonal ending at (j, a).
        long_d = pd[:, :, L - 1:, L - 1:]
        long_ok = ok_pair[:, :, L - 1:, L - 1:]
        for m in range(1, L):
            long_d = long_d + pd[:, :, L - 1 - m:tq - m, L - 1 - m:t - 1 - m]
            long_ok = long_ok * ok_pair[:, :, L - 1 - m:tq - m, L - 1 - m:t - 1 - m]
        # Pad the long results back to the full [tq, T-1] grid (invalid where the
        # query or key has fewer than L rows before it).
        long_d = nn.functional.pad(long_d, (L - 1, 0, L - 1, 0))
        long_ok = nn.functional.pad(long_ok, (L - 1, 0, L - 1, 0))
        if last_only:
            pick = slice(tq - 1, tq)  # the last query token only
            tok = torch.full((1, 1), float(t - 1))
            s, m0 = scale[:, -1:], mean[:, -1:] - ref
        else:
            pick = slice(0, tq)
            tok = torch.arange(t, dtype=x.dtype).unsqueeze(1)
            s, m0 = scale, mean - ref
        # token j may use key row a (start a*P + r, followers to a*P + r + 3P) when a <= j - 3 - (r > 0)
        shifted = self.key_shifted.reshape(1, -1, 1, 1)  # [1, S, 1, 1]
        arow = torch.arange(nk, dtype=x.dtype).reshape(1, 1, 1, nk)
        visible = (arow <= tok.reshape(1, 1, -1, 1) - 3.0 - shifted).to(x.dtype)  # [1, S, T', nk]
        forecasts, novelty, valid = [], [], []
        denom = p * (s * s).reshape(b, 1, -1, 1)
        nkeys = nk * (p // self.key_step)
        for d, okp, n_rows, log_tau in ((pd, ok_pair, 1, self.log_tau), (long_d, long_ok, L, self.log_tau_long)):
            dist = d[:, :, pick, :nk] / (n_rows * denom)  # [B, S, T', nk]
            ok = okp[:, :, pick, :nk] * follow_ok.unsqueeze(2) * visible
            dist = dist.permute(0, 2, 1, 3).reshape(b, -1, nkeys)  # [B, T', S * nk]
            okf = ok.permute(0, 2, 1, 3).reshape(b, -1, nkeys)
            v = (okf.sum(-1) > 0.5).to(x.dtype)  # [B, T']
            # Soft (learned temperature) and, for the long query, near-hard
            # attention: the continuation of the single best match, which
            # keeps sharp edges that averaging over neighbouring lags blurs.
            temps = [torch.exp(log_tau)] + ([torch.full((), HARD_TAU)] if n_rows > 1 else [])
            for tau in temps:
                w = torch.softmax(-dist / tau + (okf - 1.0) * (-NEG), dim=-1)  # [B, T', S * nk]
                fc = torch.cat([torch.matmul(w, follow1), torch.matmul(w, follow2)], dim=-1)  # [B, T', H]
                forecasts.append(torch.clamp((fc - m0.unsqueeze(-1)) / s.unsqueeze(-1), -10.0, 10.0) * v.unsqueeze(-1))
            best = torch.min(dist + (1.0 - okf) * 1e6, dim=-1).values
            novelty.append(torch.log(torch.clamp(best, max=1e4) + 1e-3) * v)
            valid.append(v)
        return torch.stack(forecasts, dim=2), torch.stack(novelty, dim=-1), torch.stack(valid, dim=-1)

    def encode(self, x, last_only):
        tok, mean, scale, n, bias = self.tokens(x)
        h = self.embed(tok) + self.pe
        rows = []
        for i, layer in enumerate(self.layers):
            h, weights = layer(h, bias, last_only=last_only and i == len(self.layers) - 1)
            rows.append(weights[:, :, -1, :])  # [B, heads, T]: the last token's row
        if self.use_analog:
            fc_n, novelty, valid = self.analog(x, mean, scale, last_only)  # [B,T',3,H], [B,T',2], [B,T',2]
            h = torch.cat([h, fc_n.flatten(2), novelty, valid], dim=-1)
        else:
            shape = (x.shape[0], 1 if last_only else self.tokens_n, 2)
            novelty = torch.zeros(shape, dtype=x.dtype)
        return h, mean, scale, n, rows, novelty

    def predict(self, h):
        out = self.head(h)
        mu = out[..., : self.horizon]
        sd = nn.functional.softplus(out[..., self.horizon:]) + self.sd_floor
        return mu, sd

    def forward(self, x):
        x = x.reshape(x.shape[0], self.context)  # [B, C, F = 1] -> [B, C]
        h, mean, scale, _, rows, novelty = self.encode(x, last_only=True)
        mu, sd = self.predict(h[:, -1, :])  # [B, H]
        m, s = mean[:, -1:], scale[:, -1:]
        forecast_mean = (mu * s + m).unsqueeze(-1)
        forecast_std = (sd * s).unsqueeze(-1)
        return forecast_mean, forecast_std, torch.stack(rows, dim=1), novelty[:, -1, :]

    def nll(self, seq, min_points: int = 8):
        """Gaussian NLL at every token, in each token's normalised units.

        seq [B, C + H]: the context and the H points after it. Token j is
        scored on points (j+1)P .. (j+1)P + H - 1 of seq; a target point
        counts when present, and a token when it has seen min_points points."""
        c, hzn, p = self.context, self.horizon, self.patch
        x = seq[:, :c]
        h, mean, scale, n, _, _ = self.encode(x, last_only=False)
        mu, sd = self.predict(h)  # [B, T, H]
        idx = (torch.arange(self.tokens_n).unsqueeze(1) + 1) * p + torch.arange(hzn).unsqueeze(0)  # [T, H]
        y = seq[:, idx]  # [B, T, H]
        ok = (~torch.isnan(y)) & (n.unsqueeze(-1) >= min_points)
        target = torch.clamp((torch.nan_to_num(y) - mean.unsqueeze(-1)) / scale.unsqueeze(-1), -20.0, 20.0)
        loss = torch.log(sd) + 0.5 * ((target - mu) / sd) ** 2
        okf = ok.to(loss.dtype)
        return (loss * okf).sum() / torch.clamp(okf.sum(), min=1.0)


def flops_per_run(context, patch, horizon, d, heads, layers, d_ff, analog=True):
    """Multiply-adds x2 of one serving call (one context), as computed by
    forward(): every layer but the last over all T tokens, the last layer
    for the last token only (its keys and values over all T), and the last
    patch's analog attention over its (P / 8)(T - 3) keys."""
    t = context // patch
    embed = t * (2 * patch + PatchForecaster.STATS) * d
    full = 4 * t * d * d + 2 * t * t * d + 2 * t * d * d_ff
    last = 2 * t * d * d + 2 * d * d + 2 * t * d + 2 * d * d_ff
    shifts, long_q = patch // 8, 8
    keys = shifts * (t - 3)
    # query-row x key-row dots and norms, the long diagonals, two weighted follower sums
    ana = (shifts * long_q * (t - 1) * patch + shifts * (t - 1) * patch + keys * long_q
           + 3 * keys * horizon) if analog else 0
    head = (d + (3 * horizon + 4 if analog else 0)) * 2 * horizon
    return 2 * (embed + (layers - 1) * full + last + ana + head)
