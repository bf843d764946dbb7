"""Model FLOPs of one training token (forward + backward = 3 x forward), for MFU.

Notation: D = d_model, L = layers, F = ffn width, Hq/Hkv query/KV heads of width Dh, V = vocab,
K = keys a row attends on average. A matmul of [m, k] x [k, n] costs 2mkn FLOPs.

Per token and layer, forward:
  stream(x)  = 2*D*Hq*Dh (q) + 2*Hq*Dh*D (o) + 3 * 2*D*F (gate, up, down)   one stream's rows
  kv         = 2 * 2*D*Hkv*Dh                                              keys/values (content only)
  attn(K)    = 2 * 2*Hq*Dh*K                                               scores + weighted values
A3 (two streams; the last layer's content stream is skipped, logits from the query stream only):
  L*(2*stream + kv) - stream + L*(attn(Kc) + attn(Kq)) - attn(Kc) + 2*D*V
causal (one stream):
  L*(stream + kv + attn(Kc)) + 2*D*V
K: after sorting, content rows see ~half of the row (block-causal), query rows slightly less;
we count Kc = Kq = N/2 (the causal average), so the attention term matches what a causal
framework would print for the same shape. `causal_equivalent` is the causal formula of the same
shape: the number other frameworks report, useful for comparing tokens/s across frameworks.
Norms, softmax, RoPE and the embedding lookup are not counted (they are not matmuls).
"""

from __future__ import annotations

from a3jax.model.config import ModelConfig

# Dense bf16 peak FLOP/s by jax device_kind (substring match); override with train.peak_flops.
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "TPU v6": 918e12,
    "TPU v5p": 459e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v4": 275e12,
}


def layer_terms(cfg: ModelConfig, seq_len: int) -> tuple[float, float, float, float]:
    d, dh = cfg.d_model, cfg.head_dim
    stream = 2 * d * cfg.n_heads * dh * 2 + 3 * 2 * d * cfg.ffn_dim
    kv = 2 * 2 * d * cfg.n_kv_heads * dh
    attn = 2 * 2 * cfg.n_heads * dh * (seq_len / 2)
    logits = 2 * d * cfg.vocab_size
    return stream, kv, attn, logits


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    stream, kv, attn, logits = layer_terms(cfg, seq_len)
    layers, facts = cfg.n_layers, cfg.facts
    if facts.query_stream:  # two streams; the last layer's content rows are skipped
        return layers * (2 * stream + kv) - stream + layers * 2 * attn - attn + logits
    keys = 2 * attn if facts.bidirectional else attn  # a row attending its whole document sees 2x the keys
    return layers * (stream + kv + keys) + logits


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward + backward (2 x forward) model FLOPs per token."""
    return 3 * forward_flops_per_token(cfg, seq_len)


def causal_equivalent_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    stream, kv, attn, logits = layer_terms(cfg, seq_len)
    return 3 * (cfg.n_layers * (stream + kv + attn) + logits)


def peak_flops(device_kind: str, override: float = 0.0) -> float | None:
    """Peak FLOP/s of one device, or None when unknown (then no MFU is reported)."""
    if override:
        return float(override)
    for name, value in PEAK_FLOPS.items():
        if name.lower() in device_kind.lower():
            return value
    return None
