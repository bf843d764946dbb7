"""A small PyTorch reference of the two-stream A3 model that runs an `a3jax export` folder.

Independent of JAX: plain torch, dense masks, eager attention. Inputs are the a3jax batch fields
(see a3jax/layout.py), int tensors [B, N]:
  tokens, positions (original positions for RoPE), groups, segment_ids (0 = padding)
Visibility: content row i sees key j iff segment(j) == segment(i) and group(j) <= group(i);
query row i sees key j iff segment(j) == segment(i) and group(j) < group(i). A row that sees no
key gets a zero attention output. Keys and values come from the content stream only; both
streams share every weight; pre-norm LLaMA layers (RMSNorm, rotate-half RoPE with llama3
scaling, GQA, SwiGLU). `forward` returns the query stream's logits (token i's own prediction);
an export without `model.query_embed` (variant causal) returns the content stream's logits.
config.json's "a3": {"query_input": "shift"} (a3jax's model.query_input) makes the query row of
position i read the embedding of token i - 1 where that token is in an earlier group of the same
document (else the query vector), at RoPE position i - 1; found here by a dense search over the
row, independently of a3jax's slot arithmetic.

    model = A3Reference.from_pretrained("exported/")
    logits = model(tokens, positions, groups, segment_ids)   # [B, N, V] float32

Needs the torch extra: pip install -e '.[torch]'.
"""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np

try:
    import torch
    from torch import nn
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("a3jax.convert.torch_ref needs PyTorch: pip install -e '.[torch]'") from error

QUERY_KEY = "model.query_embed"


def inverse_frequencies(head_dim: int, theta: float, scaling: dict | None) -> np.ndarray:
    """Per-pair inverse frequencies (float64 maths, float32 result), llama3 band rescaling."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    if not scaling or scaling.get("rope_type", scaling.get("type")) in (None, "default"):
        return inv_freq.astype(np.float32)
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    original = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= original / high) & (wavelen <= original / low)
    return np.where(medium, blended, scaled).astype(np.float32)


def _rms_norm(x, weight, eps):
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


def _rotate(x, cos, sin):
    """Rotate-half RoPE: pairs (j, j + D/2). x [B, H, N, D]; cos, sin [B, 1, N, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def _load_tensors(folder: pathlib.Path, dtype) -> dict:
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() \
        else ["model.safetensors"]
    tensors = {}
    for name in files:
        tensors.update({k: v.to(dtype) for k, v in load_file(str(folder / name)).items()})
    return tensors


class A3Reference(nn.Module):
    def __init__(self, config: dict, tensors: dict):
        super().__init__()
        self.config = config
        self.n_layers = config["num_hidden_layers"]
        self.n_heads = config["num_attention_heads"]
        self.n_kv_heads = config.get("num_key_value_heads") or self.n_heads
        self.head_dim = config.get("head_dim") or config["hidden_size"] // self.n_heads
        self.eps = config["rms_norm_eps"]
        self.tied = bool(config.get("tie_word_embeddings", False))
        self.weights = nn.ParameterDict({k.replace(".", "__"): nn.Parameter(v, requires_grad=False)
                                         for k, v in tensors.items()})
        self.has_query = QUERY_KEY in tensors
        self.shifted = self.has_query and (config.get("a3") or {}).get("query_input", "vector") == "shift"
        inv = inverse_frequencies(self.head_dim, config.get("rope_theta", 10000.0), config.get("rope_scaling"))
        self.register_buffer("inv_freq", torch.from_numpy(inv), persistent=False)

    @classmethod
    def from_pretrained(cls, folder, dtype=torch.float32) -> A3Reference:
        folder = pathlib.Path(folder)
        config = json.loads((folder / "config.json").read_text())
        return cls(config, _load_tensors(folder, dtype)).eval()

    def w(self, name: str):
        return self.weights[name.replace(".", "__")]

    def _attention(self, q_rows, k, v, mask):
        """q_rows [B, S, Hq*Dh] already rotated as [B, Hq, S, Dh]; k, v [B, Hkv, N, Dh]; mask [B, S, N]."""
        rep = self.n_heads // self.n_kv_heads
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        scores = torch.einsum("bhsd,bhnd->bhsn", q_rows.float(), k.float()) / math.sqrt(self.head_dim)
        scores = scores.masked_fill(~mask[:, None], float("-inf"))
        sees_any = mask.any(-1)[:, None, :, None]
        probs = torch.softmax(scores.masked_fill(~sees_any, 0.0), dim=-1)
        out = torch.einsum("bhsn,bhnd->bhsd", probs, v.float()) * sees_any
        return out.to(v.dtype)

    def _layer(self, i, content, query, rope_content, rope_query, masks):
        b, n, _ = content.shape
        p = f"model.layers.{i}."
        rows = content if query is None else torch.cat([content, query], dim=1)
        normed = _rms_norm(rows, self.w(p + "input_layernorm.weight"), self.eps)
        content_normed = normed[:, :n]

        def heads(x, count):
            return x.view(b, -1, count, self.head_dim).transpose(1, 2)

        k = heads(content_normed @ self.w(p + "self_attn.k_proj.weight").T, self.n_kv_heads)
        v = heads(content_normed @ self.w(p + "self_attn.v_proj.weight").T, self.n_kv_heads)
        k = _rotate(k, *rope_content)
        q = heads(normed @ self.w(p + "self_attn.q_proj.weight").T, self.n_heads)
        q = torch.cat([_rotate(q[:, :, s:s + n], *rope) for s, rope in zip(range(0, q.shape[2], n),
                                                                          (rope_content, rope_query))], dim=2)
        attn = self._attention(q, k, v, masks)
        attn = attn.transpose(1, 2).reshape(b, rows.shape[1], -1)
        rows = rows + attn @ self.w(p + "self_attn.o_proj.weight").T
        mlp_in = _rms_norm(rows, self.w(p + "post_attention_layernorm.weight"), self.eps)
        gate = torch.nn.functional.silu(mlp_in @ self.w(p + "mlp.gate_proj.weight").T)
        rows = rows + (gate * (mlp_in @ self.w(p + "mlp.up_proj.weight").T)) @ self.w(p + "mlp.down_proj.weight").T
        if query is None:
            return rows, None
        return rows[:, :n], rows[:, n:]

    @torch.no_grad()
    def hidden_states(self, tokens, positions, groups, segment_ids=None):
        """Final-normed (content [B, N, D], query [B, N, D] or None)."""
        tokens, positions, groups = (torch.as_tensor(np.asarray(x)).long() for x in (tokens, positions, groups))
        segment_ids = (torch.ones_like(tokens) if segment_ids is None
                       else torch.as_tensor(np.asarray(segment_ids)).long())
        embed = self.w("model.embed_tokens.weight")
        content = embed[tokens]
        query = self.w(QUERY_KEY).expand_as(content).contiguous() if self.has_query else None
        same = segment_ids[:, :, None] == segment_ids[:, None, :]
        content_mask = same & (groups[:, None, :] <= groups[:, :, None])
        query_mask = same & (groups[:, None, :] < groups[:, :, None])
        masks = content_mask if query is None else torch.cat([content_mask, query_mask], dim=1)
        query_positions = positions
        if self.shifted:  # row i reads token i - 1 where the query mask shows it
            previous = query_mask & (positions[:, None, :] == positions[:, :, None] - 1)
            previous_token = (previous.long() * tokens[:, None, :]).sum(-1)
            query = torch.where(previous.any(-1)[..., None], embed[previous_token], query)
            query_positions = (positions - 1).clamp(min=0)
        for i in range(self.n_layers):
            content, query = self._layer(i, content, query, self._rope(positions), self._rope(query_positions),
                                         masks)
        norm = self.w("model.norm.weight")
        return _rms_norm(content, norm, self.eps), None if query is None else _rms_norm(query, norm, self.eps)

    def _rope(self, positions):
        angles = positions.to(self.inv_freq.dtype)[..., None] * self.inv_freq
        angles = torch.cat([angles, angles], dim=-1)[:, None]
        return torch.cos(angles), torch.sin(angles)

    def logits(self, hidden):
        head = self.w("model.embed_tokens.weight") if self.tied else self.w("lm_head.weight")
        return (hidden.float() @ head.float().T)

    @torch.no_grad()
    def forward(self, tokens, positions, groups, segment_ids=None):
        """Query-stream logits [B, N, V] (content-stream logits for a causal export)."""
        content, query = self.hidden_states(tokens, positions, groups, segment_ids)
        return self.logits(query if query is not None else content)
