"""The attnwatch Transformer encoder, written out by hand.

Every equation of the design is visible here, so that the attention weights
the service publishes are a real output of the ONNX graph:

* scaled dot-product attention: softmax(Q K^T / sqrt(d_k)) V   (ScaledDotProduct)
* self-attention with learned W_Q, W_K, W_V                      (MultiHead.w_q/w_k/w_v)
* multi-head: Concat(head_1..head_h) W_O                         (MultiHead.w_o)
* encoder layer: x = LN(x + MHA(x)); x = LN(x + FFN(x))          (EncoderLayer)
* sinusoidal positional encoding added to the input embedding    (positional_encoding)
* per-window (RevIN-style) normalisation inside the graph         (Encoder.forward)

Task: masked prediction of the newest point. The window holds W points; the
newest value is hidden (replaced by 0 with a mask flag) and the model predicts
it with a Gaussian mean and scale from the other W-1 points. The raw anomaly
score is |x_new - mean| / scale, computed inside the graph as well.
"""
import math

import torch
from torch import nn


def positional_encoding(length: int, d_model: int) -> torch.Tensor:
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe


def scaled_dot_product(q, k, v, key_bias):
    """softmax(Q K^T / sqrt(d_k) + bias) V; returns (output, weights).
    key_bias is 0 for present positions and -1e4 for missing ones, so a
    missing point gets (numerically) zero attention."""
    d_k = int(q.shape[-1])
    logits = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(d_k)) + key_bias
    weights = torch.softmax(logits, dim=-1)
    return torch.matmul(weights, v), weights


class MultiHead(nn.Module):
    def __init__(self, d_model: int, heads: int, window: int):
        super().__init__()
        assert d_model % heads == 0
        self.heads, self.d_k, self.window = heads, d_model // heads, window
        self.w_q = nn.Linear(d_model, d_model)
        self.w_k = nn.Linear(d_model, d_model)
        self.w_v = nn.Linear(d_model, d_model)
        self.w_o = nn.Linear(d_model, d_model)

    def split(self, x):  # [B, W, d] -> [B, h, W, d_k]
        return x.reshape(-1, self.window, self.heads, self.d_k).transpose(1, 2)

    def forward(self, x, key_bias):
        q, k, v = self.split(self.w_q(x)), self.split(self.w_k(x)), self.split(self.w_v(x))
        out, weights = scaled_dot_product(q, k, v, key_bias)  # [B, h, W, d_k], [B, h, W, W]
        concat = out.transpose(1, 2).reshape(-1, self.window, self.heads * self.d_k)
        return self.w_o(concat), weights


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, d_ff: int, window: int, dropout: float):
        super().__init__()
        self.attn = MultiHead(d_model, heads, window)
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))
        self.ln1 = nn.LayerNorm(d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, key_bias):
        a, weights = self.attn(x, key_bias)
        x = self.ln1(x + self.drop(a))
        x = self.ln2(x + self.drop(self.ff(x)))
        return x, weights


class Encoder(nn.Module):
    """Input x: [B, W, F] raw values (F = 1 for the general model).

    Outputs (all float32):
      pred_mean  [B, F]           predicted newest value, original units
      pred_std   [B, F]           predicted scale, original units
      raw_score  [B, F]           |x_new - pred_mean| / pred_std
      attention  [B, L, H, W]     attention row of the newest (scored) position

    Missing points (warm-up, gaps) are NaN; they get no attention and do not
    enter the normalisation. The newest point must be present.
    """

    def __init__(self, window=64, d_model=32, heads=4, layers=2, d_ff=64, dropout=0.0, features=1, sd_floor=1e-2):
        super().__init__()
        self.window, self.features = window, features
        # Floor of the predicted scale, in units of the window's standard
        # deviation. Training uses 0.01; export may raise it (train.py
        # --export-scale-floor) so the model never claims more precision than
        # that fraction of the window's own spread.
        self.sd_floor = sd_floor
        self.embed = nn.Linear(3, d_model)  # (normalised value, is-target flag, is-missing flag)
        self.register_buffer("pe", positional_encoding(window, d_model), persistent=False)
        self.layers = nn.ModuleList(EncoderLayer(d_model, heads, d_ff, window, dropout) for _ in range(layers))
        self.head = nn.Linear(d_model, 2)  # mean, pre-softplus scale

    def normalise(self, x):
        """RevIN-style: statistics of the present context points only (the
        newest point cannot hide its own surprise). Missing points are NaN in
        the input; they are zeroed and flagged. Returns the normalised window,
        the presence mask, and the context mean and scale."""
        present = (~torch.isnan(x)).to(x.dtype)
        x0 = torch.where(present > 0, x, torch.zeros_like(x))
        ctx_p = present[:, :-1, :]
        count = torch.clamp(ctx_p.sum(dim=1, keepdim=True), min=1.0)
        mean = (x0[:, :-1, :] * ctx_p).sum(dim=1, keepdim=True) / count
        var = (((x0[:, :-1, :] - mean) * ctx_p) ** 2).sum(dim=1, keepdim=True) / count
        # The floor keeps constant windows finite; it is relative to the level.
        scale = torch.sqrt(var + (1e-3 * mean.abs() + 1e-6) ** 2)
        return (x0 - mean) / scale * present, present, mean, scale

    def core(self, x):
        """Shared by forward() and nll(): normalise, mask the newest value,
        encode, and predict it. Returns normalised input, window stats, the
        normalised prediction and the scored attention rows."""
        xn, present, mean, scale = self.normalise(x)  # [B, W, F]
        b_f = xn.transpose(1, 2).reshape(-1, self.window, 1)  # channel-independent: [B*F, W, 1]
        p_f = present.transpose(1, 2).reshape(-1, self.window, 1)
        mask = torch.zeros_like(b_f)
        mask[:, -1, :] = 1.0
        # Hide the newest value; clip the context so one wild point cannot saturate
        # the encoder (the raw score below still uses the unclipped value).
        tokens = torch.cat([torch.clamp(b_f, -10.0, 10.0) * (1.0 - mask), mask, 1.0 - p_f], dim=-1)
        key_bias = ((p_f[:, :, 0] - 1.0) * 1e4).reshape(-1, 1, 1, self.window)  # [B*F, 1, 1, W]
        h = self.embed(tokens) + self.pe
        rows = []
        for layer in self.layers:
            h, weights = layer(h, key_bias)
            rows.append(weights[:, :, -1, :])  # [B*F, H, W]: the scored row
        out = self.head(h[:, -1, :])  # [B*F, 2]
        mu_n = out[:, 0].reshape(-1, self.features)
        sd_n = (nn.functional.softplus(out[:, 1]) + self.sd_floor).reshape(-1, self.features)
        return xn, mean[:, 0, :], scale[:, 0, :], mu_n, sd_n, rows

    def forward(self, x):
        xn, mean, scale, mu_n, sd_n, rows = self.core(x)
        pred_mean = mu_n * scale + mean
        pred_std = sd_n * scale
        raw_score = torch.abs(xn[:, -1, :] - mu_n) / sd_n
        attention = torch.stack(rows, dim=1)  # [B*F, L, H, W]; with F = 1, B*F == B
        return pred_mean, pred_std, raw_score, attention

    def nll(self, x):
        """Gaussian NLL of the newest point in normalised units (training loss)."""
        xn, _, _, mu_n, sd_n, _ = self.core(x)
        target = torch.clamp(xn[:, -1, :], -20.0, 20.0)  # spikes in training data must not dominate
        return (torch.log(sd_n) + 0.5 * ((target - mu_n) / sd_n) ** 2).mean()
