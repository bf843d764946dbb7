"""The A3 two-stream transformer on a LLaMA backbone (Flax NNX), its `causal` variant, and the
`mdlm` masked-diffusion control.

Parameters (float32 masters; names map 1:1 to HF LLaMA, layers stacked on a leading axis L):
  embed [V, D]                          model.embed_tokens.weight
  layers.attn_norm [L, D]               model.layers.*.input_layernorm.weight
  layers.wq [L, D, Hq*Dh], wk, wv       model.layers.*.self_attn.{q,k,v}_proj.weight (transposed)
  layers.wo [L, Hq*Dh, D]               model.layers.*.self_attn.o_proj.weight (transposed)
  layers.mlp_norm [L, D]                model.layers.*.post_attention_layernorm.weight
  layers.w_gate, w_up [L, D, F]; w_down [L, F, D]   model.layers.*.mlp.*_proj.weight (transposed)
  final_norm [D]                        model.norm.weight
  lm_head [D, V] (untied only)          lm_head.weight (transposed)
  query_embed [D] (a3 only)             model.query_embed (the official code's name)

The content stream is exactly a LLaMA stack with the group mask; the query stream starts from
the learned query vector, shares every weight, and reads keys/values from the content stream.

Variant `mdlm` (masked diffusion, MDLM-style) has the same parameters as `causal` and ONE
bidirectional stream: every target row (group >= 1 of a real document) inputs the MASK token
(cfg.mask_token_id = vocab_size - 1) instead of its token, every row sees every key of its own
document (groups are ignored; padding, segment 0, is never visible to real rows), and row i's
content-stream logits predict token i (no shift). The MASK logit is pinned to MASK_LOGIT (MDLM's
"zero masking probability"), so MASK is never predicted.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from a3jax.model import attention as attention_lib
from a3jax.model import rope
from a3jax.model.config import ModelConfig
from a3jax.model.sharding import constrain_batch

MASK_LOGIT = -1e9  # the mdlm variant's logit for the MASK id: probability exactly 0 in float32
LAYER_PARAMS = ("attn_norm", "wq", "wk", "wv", "wo", "mlp_norm", "w_gate", "w_up", "w_down")

# Logical axis names of every parameter; parallel.py maps them to mesh axes with the rule table.
PARAM_AXES = {
    "embed": ("vocab", "embed"),
    "final_norm": ("norm",),
    "lm_head": ("embed", "vocab"),
    "query_embed": ("norm",),
    "layers": {
        "attn_norm": ("layers", "norm"),
        "wq": ("layers", "embed", "heads"),
        "wk": ("layers", "embed", "kv_heads"),
        "wv": ("layers", "embed", "kv_heads"),
        "wo": ("layers", "heads", "embed"),
        "mlp_norm": ("layers", "norm"),
        "w_gate": ("layers", "embed", "mlp"),
        "w_up": ("layers", "embed", "mlp"),
        "w_down": ("layers", "mlp", "embed"),
    },
}


def _param(value, *path):
    axes = PARAM_AXES
    for key in path:
        axes = axes[key]
    return nnx.Param(value, logical_axes=axes)


def param_logical_axes(params: dict, table: dict = PARAM_AXES) -> dict:
    """The logical axes of exactly the parameters present in `params`, as the same tree."""
    return {k: param_logical_axes(v, table[k]) if isinstance(v, dict) else table[k] for k, v in params.items()}


def rms_norm(x, weight, eps):
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (normed * weight.astype(jnp.float32)).astype(x.dtype)


def dense(x, w):
    return jnp.einsum("...d,df->...f", x, w, preferred_element_type=jnp.float32).astype(x.dtype)


def _layer(cfg: ModelConfig, p, content, query, cos, sin, segment_ids, groups, update_content,
           group_size=None):
    """One pre-norm LLaMA layer applied to the content stream and/or the query stream.

    content, query: [B, N, D]. With update_content=False (the a3 model's last layer) only the
    query rows are computed: the content stream's output would never be read.
    """
    b, n, _ = content.shape
    if update_content:
        rows = content if query is None else jnp.concatenate([content, query], axis=1)
        rows_normed = rms_norm(rows, p["attn_norm"], cfg.norm_eps)
        content_normed = rows_normed[:, :n]
    else:
        rows = query
        rows_normed = rms_norm(rows, p["attn_norm"], cfg.norm_eps)
        content_normed = rms_norm(content, p["attn_norm"], cfg.norm_eps)
    s = rows.shape[1]
    q = dense(rows_normed, p["wq"]).reshape(b, s, cfg.n_heads, cfg.head_dim)
    k = dense(content_normed, p["wk"]).reshape(b, n, cfg.n_kv_heads, cfg.head_dim)
    v = dense(content_normed, p["wv"]).reshape(b, n, cfg.n_kv_heads, cfg.head_dim)
    k = rope.apply_rope(k, cos, sin)
    q_rows = [rope.apply_rope(q[:, i:i + n], cos, sin) for i in range(0, s, n)]
    if update_content:
        q_content, q_query = q_rows[0], (q_rows[1] if query is not None else None)
    else:
        q_content, q_query = None, q_rows[0]
    out_content, out_query = attention_lib.two_stream_attention(
        q_content, q_query, k, v, segment_ids, groups, backend=cfg.attention,
        group_size=group_size, chunks=cfg.attention_chunks, causal=cfg.variant == "causal",
    )
    attn = jnp.concatenate([o for o in (out_content, out_query) if o is not None], axis=1)
    rows = residual_tail(cfg, p, rows, attn)
    if not update_content:
        return content, rows
    if query is None:
        return rows, None
    return rows[:, :n], rows[:, n:]


def residual_tail(cfg: ModelConfig, p, rows, attn_BxSxHxD):
    """rows + o_proj(attention), then the SwiGLU MLP block: the rest of a layer after attention."""
    b, s = rows.shape[:2]
    rows = rows + dense(attn_BxSxHxD.reshape(b, s, cfg.q_dim), p["wo"])
    mlp_in = rms_norm(rows, p["mlp_norm"], cfg.norm_eps)
    hidden = jax.nn.silu(dense(mlp_in, p["w_gate"])) * dense(mlp_in, p["w_up"])
    return rows + dense(hidden, p["w_down"])


def _remat(fn, policy: str):
    if policy == "none":
        return fn
    if policy == "full":
        return jax.checkpoint(fn)
    return jax.checkpoint(fn, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)


class Transformer(nnx.Module):
    """LLaMA-backbone transformer; variant `a3` adds the query stream, `causal` is plain LLaMA,
    `mdlm` is one bidirectional stream over MASK-ed targets."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        normal = nnx.initializers.normal(cfg.init_std)
        out_std = cfg.init_std / (2 * cfg.n_layers) ** 0.5  # residual-branch outputs start small
        L, D, F = cfg.n_layers, cfg.d_model, cfg.ffn_dim
        f32 = jnp.float32
        self.embed = _param(normal(rngs.params(), (cfg.vocab_size, D), f32), "embed")
        layer = {
            "attn_norm": jnp.ones((L, D), f32),
            "wq": normal(rngs.params(), (L, D, cfg.q_dim), f32),
            "wk": normal(rngs.params(), (L, D, cfg.kv_dim), f32),
            "wv": normal(rngs.params(), (L, D, cfg.kv_dim), f32),
            "wo": out_std * jax.random.normal(rngs.params(), (L, cfg.q_dim, D), f32),
            "mlp_norm": jnp.ones((L, D), f32),
            "w_gate": normal(rngs.params(), (L, D, F), f32),
            "w_up": normal(rngs.params(), (L, D, F), f32),
            "w_down": out_std * jax.random.normal(rngs.params(), (L, F, D), f32),
        }
        self.layers = nnx.Dict({name: _param(value, "layers", name) for name, value in layer.items()})
        self.final_norm = _param(jnp.ones((D,), f32), "final_norm")
        if not cfg.tie_embeddings:
            self.lm_head = _param(normal(rngs.params(), (D, cfg.vocab_size), f32), "lm_head")
        if cfg.variant == "a3":
            # One learned vector shared by all query rows, at embedding scale (not std 1).
            self.query_embed = _param(normal(rngs.params(), (D,), f32), "query_embed")

    @property
    def compute_dtype(self):
        return jnp.dtype(self.cfg.dtype)

    def embed_tokens(self, tokens_BxN):
        return jnp.take(self.embed[...], tokens_BxN, axis=0).astype(self.compute_dtype)

    def masked_rows(self, batch):
        """The rows an mdlm model reads as MASK: targets, i.e. group >= 1 of a real document."""
        return (batch["groups"] > 0) & (batch["segment_ids"] > 0)

    def hidden_states(self, batch, *, inputs_embeds=None, full_content=False, group_size=None):
        """Final-normed hidden states {"content": [B,N,D], "query": [B,N,D] or None}.

        The a3 model's last content layer is skipped unless full_content=True. For mdlm the target
        rows' inputs (tokens or inputs_embeds) are replaced by the MASK embedding and attention
        ignores groups (bidirectional inside each document).
        group_size (static): the batch is grid-aligned with this one group size (data.align_groups),
        for the static-mask attention paths; None otherwise.
        """
        cfg = self.cfg
        dtype = self.compute_dtype
        content = self.embed_tokens(batch["tokens"]) if inputs_embeds is None else inputs_embeds.astype(dtype)
        segment_ids, groups = batch["segment_ids"], batch["groups"]
        if cfg.variant == "mdlm":
            mask_embed = self.embed[cfg.mask_token_id].astype(dtype)
            content = jnp.where(self.masked_rows(batch)[..., None], mask_embed, content)
            groups = jnp.zeros_like(groups)  # one group: every row sees its whole document
            group_size = None  # the grid alignment no longer describes the visibility
        query = None
        if cfg.variant == "a3":
            query = jnp.broadcast_to(self.query_embed[...].astype(dtype), content.shape)
        inv_freq = rope.inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        cos, sin = rope.rope_tables(batch["positions"], inv_freq)
        params = {name: self.layers[name][...].astype(dtype) for name in LAYER_PARAMS}

        def step(carry, layer_params, update_content=True):
            content, query = _layer(cfg, layer_params, *carry, cos, sin, segment_ids, groups, update_content,
                                    group_size)
            return (constrain_batch(content), None if query is None else constrain_batch(query)), None

        skip_last = query is not None and not full_content
        n_scanned = cfg.n_layers - 1 if skip_last else cfg.n_layers
        carry = (content, query)
        if n_scanned:
            scanned = jax.tree.map(lambda a: a[:n_scanned], params)
            carry, _ = jax.lax.scan(_remat(step, cfg.remat), carry, scanned, unroll=True)
        if skip_last:
            last = jax.tree.map(lambda a: a[-1], params)
            carry, _ = step(carry, last, update_content=False)
        content, query = carry
        norm = self.final_norm[...]
        out = {"content": rms_norm(content, norm, cfg.norm_eps)}
        out["query"] = None if query is None else rms_norm(query, norm, cfg.norm_eps)
        return out

    def logits(self, hidden_BxNxD):
        """float32 logits [B, N, V] from final-normed hidden states."""
        if self.cfg.tie_embeddings:
            head = self.embed[...].T
        else:
            head = self.lm_head[...]
        logits = jnp.einsum("bnd,dv->bnv", hidden_BxNxD, head.astype(hidden_BxNxD.dtype),
                            preferred_element_type=jnp.float32)
        if self.cfg.variant == "mdlm":  # MASK is an input only: never predicted
            logits = logits.at[..., self.cfg.mask_token_id].set(MASK_LOGIT)
        return logits

    def __call__(self, batch, *, inputs_embeds=None, group_size=None):
        """Prediction logits [B, N, V]: query stream for a3 (token i's own logits), content for causal
        (row i predicts row i + 1), content for mdlm (row i's own token, from the MASK input)."""
        hidden = self.hidden_states(batch, inputs_embeds=inputs_embeds, group_size=group_size)
        return self.logits(hidden["query"] if self.cfg.variant == "a3" else hidden["content"])
