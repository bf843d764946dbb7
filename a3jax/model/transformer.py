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

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from a3jax.layout import previous_slots
from a3jax.model import attention as attention_lib
from a3jax.model import rope
from a3jax.model.config import ModelConfig
from a3jax.model.sharding import constrain, constrain_batch

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


KEPT_FULL_PRECISION = ("final_norm",)  # read in float32 (rms_norm); every other weight is cast before use


def compute_params(params: dict, compute_dtype) -> dict:
    """The params with every weight the model casts to its compute dtype before use (all but
    KEPT_FULL_PRECISION) cast once, for many forward passes in a row (decoding): a call then reads
    half-precision weights instead of re-reading and casting the float32 masters (at the 1B shape
    about 10 GB of traffic per decode call). The model computes bitwise the same values from them
    (tests/test_decode.py)."""
    dtype = jnp.dtype(compute_dtype)
    return {name: value if name in KEPT_FULL_PRECISION else
            jax.tree.map(lambda w: w if jnp.dtype(w.dtype).itemsize <= dtype.itemsize else w.astype(dtype), value)
            for name, value in params.items()}


def param_logical_axes(params: dict, table: dict = PARAM_AXES) -> dict:
    """The logical axes of exactly the parameters present in `params`, as the same tree."""
    return {k: param_logical_axes(v, table[k]) if isinstance(v, dict) else table[k] for k, v in params.items()}


def rms_norm(x, weight, eps):
    acc = jnp.promote_types(x.dtype, jnp.float32)  # float32 (float64 for float64 models)
    x32 = x.astype(acc)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (normed * weight.astype(acc)).astype(x.dtype)


def dense(x, w):
    """x @ w in x's dtype. Half-precision dots accumulate in float32 on every backend (cuBLAS's
    compute type, the TPU MXU, XLA:CPU's upcast), so asking for a float32 result and rounding it
    would add nothing to the forward, and it would cost the backward: JAX transposes a dot with
    its result type, so the cotangent would arrive in float32, the bfloat16 weight would be upcast
    and every backward GEMM would run float32 x float32 (TF32 on a GPU: 62% of the 1B step's GEMM
    FLOPs, in XLA:GPU's compile for an H100; BENCHMARKS.md "Half-precision backward")."""
    return jnp.einsum("...d,df->...f", x, w, preferred_element_type=x.dtype)


@jax.custom_vjp
def _half_logits(hidden, head_DxV):
    return jnp.einsum("...d,dv->...v", hidden, head_DxV, preferred_element_type=jnp.float32)


def _half_logits_fwd(hidden, head_DxV):
    return _half_logits(hidden, head_DxV), (hidden, head_DxV)


def _half_logits_bwd(residuals, g_f32):
    hidden, head_DxV = residuals
    g = g_f32.astype(hidden.dtype)
    d_hidden = jnp.einsum("...v,dv->...d", g, head_DxV, preferred_element_type=hidden.dtype)
    d_head = jnp.einsum("...d,...v->dv", hidden, g, preferred_element_type=head_DxV.dtype)
    return d_hidden, d_head


_half_logits.defvjp(_half_logits_fwd, _half_logits_bwd)


def logits_of(hidden, head_DxV):
    """float32 (float64 for float64 models) logits hidden @ head, hidden [..., D], head [D, V]
    cast to hidden's dtype. For a half-precision model the forward is unchanged (float32
    accumulation and result), and the backward rounds the logits' cotangent to that dtype so that
    its two GEMMs (d_hidden, d_head) run in half precision with float32 accumulation rather than
    as float32 x float32 (TF32 on a GPU, which already rounds the cotangent to 10 mantissa bits;
    bfloat16 keeps 8). Full-precision models: a plain dot."""
    head_DxV = head_DxV.astype(hidden.dtype)
    acc = jnp.promote_types(hidden.dtype, jnp.float32)
    if acc == hidden.dtype:
        return jnp.einsum("...d,dv->...v", hidden, head_DxV)
    return _half_logits(hidden, head_DxV)


class Rope(NamedTuple):
    """RoPE tables of a set of rows: cos, sin [B, R, head_dim] float32 (model/rope.py)."""

    cos: jax.Array
    sin: jax.Array


def rope_for(cfg: ModelConfig, positions_BxR) -> Rope:
    inv_freq = rope.inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    return Rope(*rope.rope_tables(positions_BxR, inv_freq, jnp.dtype(cfg.accumulation_dtype)))


def _heads(cfg: ModelConfig, x_BxRxD, w, n_heads, rope_tables: Rope | None = None):
    """x @ w as [B, R, n_heads, head_dim], rotated by `rope_tables` when given."""
    b, r = x_BxRxD.shape[:2]
    out_BxRxHxK = checkpoint_name(dense(x_BxRxD, w).reshape(b, r, n_heads, cfg.head_dim), "projections")
    if rope_tables is None:
        return out_BxRxHxK
    return rope.apply_rope(out_BxRxHxK, rope_tables.cos, rope_tables.sin)


def layer(cfg: ModelConfig, p, content_BxCxD, query_BxQxD, rope_content: Rope, rope_query: Rope | None,
          attend, update_content: bool = True, fuse_streams: bool = False):
    """One pre-norm LLaMA layer over the content rows and (a3) the query rows: THE layer body of
    training (Transformer.hidden_states) and of decoding (decode/cache.py), which differ only in
    `attend`.

    Keys and values come from the content rows; both streams' queries use the same weights.
    attend(q_content_BxCxHxK | None, q_query_BxQxHxK | None, k_BxCxGxK, v_BxCxGxK) returns the
    streams' attention outputs (training: both streams over the row under the group masks;
    decoding: the cache with these keys appended). update_content=False (the a3 model's last
    layer in training, whose content output is never read) computes the query rows only and
    returns the content rows unchanged. fuse_streams: the two streams' rows go through the
    weights they share (norms, wq, wo, the MLP) as one [B, C + Q] GEMM each, so that every weight
    is read once per layer, not once per stream: decoding, where a call's few rows make each
    layer a read of its weights (SmolLM2 on a CPU: an `ar` call 1.45x faster, BENCHMARKS.md);
    training's long rows are compute-bound and keep the streams apart (no concatenated copies).
    Returns (content_BxCxD, query_BxQxD or None).
    """
    if fuse_streams and query_BxQxD is not None and update_content:
        return _fused_layer(cfg, p, content_BxCxD, query_BxQxD, rope_content, rope_query, attend)
    content_normed_BxCxD = rms_norm(content_BxCxD, p["attn_norm"], cfg.norm_eps)
    k_BxCxGxK = _heads(cfg, content_normed_BxCxD, p["wk"], cfg.n_kv_heads, rope_content)
    v_BxCxGxK = _heads(cfg, content_normed_BxCxD, p["wv"], cfg.n_kv_heads)
    q_content = _heads(cfg, content_normed_BxCxD, p["wq"], cfg.n_heads, rope_content) if update_content else None
    q_query = None
    if query_BxQxD is not None:
        query_normed_BxQxD = rms_norm(query_BxQxD, p["attn_norm"], cfg.norm_eps)
        q_query = _heads(cfg, query_normed_BxQxD, p["wq"], cfg.n_heads, rope_query)
    out_content, out_query = (None if o is None else checkpoint_name(o, "attention")
                              for o in attend(q_content, q_query, k_BxCxGxK, v_BxCxGxK))
    if update_content:
        content_BxCxD = residual_tail(cfg, p, content_BxCxD, out_content)
    if query_BxQxD is not None:
        query_BxQxD = residual_tail(cfg, p, query_BxQxD, out_query)
    return content_BxCxD, query_BxQxD


def _fused_layer(cfg: ModelConfig, p, content_BxCxD, query_BxQxD, rope_content: Rope, rope_query: Rope, attend):
    """layer(..., fuse_streams=True): the same values, the shared weights read once."""
    c = content_BxCxD.shape[1]
    both_BxRxD = jnp.concatenate([content_BxCxD, query_BxQxD], 1)
    normed_BxRxD = rms_norm(both_BxRxD, p["attn_norm"], cfg.norm_eps)
    content_normed_BxCxD = normed_BxRxD[:, :c]
    k_BxCxGxK = _heads(cfg, content_normed_BxCxD, p["wk"], cfg.n_kv_heads, rope_content)
    v_BxCxGxK = _heads(cfg, content_normed_BxCxD, p["wv"], cfg.n_kv_heads)
    rope_both = Rope(*(jnp.concatenate([a, b], 1) for a, b in zip(rope_content, rope_query)))
    q_BxRxHxK = _heads(cfg, normed_BxRxD, p["wq"], cfg.n_heads, rope_both)
    out_content, out_query = (checkpoint_name(o, "attention")
                              for o in attend(q_BxRxHxK[:, :c], q_BxRxHxK[:, c:], k_BxCxGxK, v_BxCxGxK))
    both_BxRxD = residual_tail(cfg, p, both_BxRxD, jnp.concatenate([out_content, out_query], 1))
    return both_BxRxD[:, :c], both_BxRxD[:, c:]


def residual_tail(cfg: ModelConfig, p, x_BxRxD, attn_BxRxHxK):
    """x + o_proj(attention), then the SwiGLU MLP block: the rest of a layer after attention."""
    b, r = x_BxRxD.shape[:2]
    x_BxRxD = x_BxRxD + dense(attn_BxRxHxK.reshape(b, r, cfg.q_dim), p["wo"])
    mlp_in_BxRxD = rms_norm(x_BxRxD, p["mlp_norm"], cfg.norm_eps)
    hidden_BxRxF = jax.nn.silu(dense(mlp_in_BxRxD, p["w_gate"])) * dense(mlp_in_BxRxD, p["w_up"])
    hidden_BxRxF = constrain(hidden_BxRxF, "batch", None, "mlp")
    return x_BxRxD + dense(hidden_BxRxF, p["w_down"])


def _remat(fn, policy: str):
    if policy == "none":
        return fn
    if policy == "full":
        return jax.checkpoint(fn)
    if policy == "save_attention":
        return jax.checkpoint(fn, policy=jax.checkpoint_policies.save_only_these_names("attention", "projections"))
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
        if cfg.facts.query_stream:
            # One learned vector shared by all query rows, at embedding scale (not std 1).
            self.query_embed = _param(normal(rngs.params(), (D,), f32), "query_embed")

    @property
    def compute_dtype(self):
        return jnp.dtype(self.cfg.dtype)

    @property
    def facts(self):
        """What this model's variant does (a3jax/variants.py)."""
        return self.cfg.facts

    def embed_tokens(self, tokens_BxN):
        return jnp.take(self.embed[...], tokens_BxN, axis=0).astype(self.compute_dtype)

    def layer_params(self) -> dict:
        """The stacked layer weights [L, ...] in the compute dtype."""
        return {name: self.layers[name][...].astype(self.compute_dtype) for name in LAYER_PARAMS}

    def stacked_params(self) -> dict:
        """The stacked layer weights [L, ...] as stored (float32 masters): cast one layer at a time
        inside the layer scan, so no compute-dtype copy of the whole stack exists."""
        return {name: self.layers[name][...] for name in LAYER_PARAMS}

    def query_vector(self, shape_BxQxD):
        """The learned query vector at every row."""
        return jnp.broadcast_to(self.query_embed[...].astype(self.compute_dtype), shape_BxQxD)

    def query_rows(self, positions_BxQ, previous_BxQxD=None, previous_known_BxQ=None):
        """The query stream's input rows and RoPE positions for rows that predict `positions`.

        query_input='vector' (the paper's): the query vector at the target's own position.
        query_input='shift': the row predicting position i reads the previous token's embedding
        (previous_BxQxD) where it is known -- position i - 1 in an earlier group -- and the query
        vector otherwise, at RoPE position i - 1 ("the token after position i - 1"). Under the
        'ar' order a converted causal model's row i - 1 is then computed exactly. The caller
        decides what is known (the layout in training, the cache's visible slots in decoding).
        """
        shape = positions_BxQ.shape + (self.cfg.d_model,)
        rows_BxQxD = self.query_vector(shape)
        if not self.cfg.shifted_query:
            return rows_BxQxD, positions_BxQ
        rows_BxQxD = jnp.where(previous_known_BxQ[..., None], previous_BxQxD.astype(rows_BxQxD.dtype), rows_BxQxD)
        return rows_BxQxD, jnp.maximum(positions_BxQ - 1, 0)

    def masked_rows(self, batch):
        """The rows a masked-inputs model (mdlm) reads as MASK: targets, i.e. group >= 1 of a real document."""
        return (batch["groups"] > 0) & (batch["segment_ids"] > 0)

    def hidden_states(self, batch, *, inputs_embeds=None, full_content=False, group_size=None):
        """Final-normed hidden states {"content": [B,N,D], "query": [B,N,D] or None}.

        The a3 model's last content layer is skipped unless full_content=True. With masked inputs
        (mdlm) the target rows' inputs (tokens or inputs_embeds) are replaced by the MASK embedding
        and attention ignores groups (bidirectional inside each document).
        group_size (static): the batch is grid-aligned with this one group size (data.align_groups),
        for the static-mask attention paths; None otherwise.
        """
        cfg, facts = self.cfg, self.facts
        content_BxNxD = (self.embed_tokens(batch["tokens"]) if inputs_embeds is None
                         else inputs_embeds.astype(self.compute_dtype))
        segment_ids, groups = batch["segment_ids"], batch["groups"]
        if facts.masked_inputs:
            mask_embed_D = self.embed[cfg.mask_token_id].astype(self.compute_dtype)
            content_BxNxD = jnp.where(self.masked_rows(batch)[..., None], mask_embed_D, content_BxNxD)
        if facts.bidirectional:
            groups = jnp.zeros_like(groups)  # one group: every row sees its whole document
            group_size = None  # the grid alignment no longer describes the visibility
        rope_rows = rope_query = rope_for(cfg, batch["positions"])
        query_BxNxD = None
        if facts.query_stream:
            previous_BxN, known_BxN = previous_slots(segment_ids, batch["positions"], groups)
            previous_BxNxD = jnp.take_along_axis(content_BxNxD, previous_BxN[..., None], axis=1)
            query_BxNxD, query_positions = self.query_rows(batch["positions"], previous_BxNxD, known_BxN)
            if cfg.shifted_query:
                rope_query = rope_for(cfg, query_positions)

        def attend(q_content, q_query, k, v):
            return attention_lib.two_stream_attention(
                q_content, q_query, k, v, segment_ids, groups, backend=cfg.attention, group_size=group_size,
                chunks=cfg.attention_chunks, causal=facts.next_token)

        dtype = self.compute_dtype

        def step(carry, layer_params, update_content=True):
            layer_params = {name: w.astype(dtype) for name, w in layer_params.items()}  # this layer only
            content, query = layer(cfg, layer_params, *carry, rope_rows, rope_query, attend, update_content)
            return (constrain_batch(content), None if query is None else constrain_batch(query)), None

        params = self.stacked_params()
        skip_last = query_BxNxD is not None and not full_content
        n_scanned = cfg.n_layers - 1 if skip_last else cfg.n_layers
        carry = (content_BxNxD, query_BxNxD)
        if n_scanned:
            scanned = jax.tree.map(lambda a: a[:n_scanned], params)
            carry, _ = jax.lax.scan(_remat(step, cfg.remat), carry, scanned, unroll=bool(cfg.unroll_layers))
        if skip_last:
            last = jax.tree.map(lambda a: a[-1], params)
            carry, _ = step(carry, last, update_content=False)
        content_BxNxD, query_BxNxD = carry
        return {"content": self.final_norm_of(content_BxNxD),
                "query": None if query_BxNxD is None else self.final_norm_of(query_BxNxD)}

    def final_norm_of(self, x_BxRxD):
        return rms_norm(x_BxRxD, self.final_norm[...], self.cfg.norm_eps)

    def head(self):
        """The output projection [D, V]: the embedding matrix's transpose when tied."""
        return self.embed[...].T if self.cfg.tie_embeddings else self.lm_head[...]

    def logits(self, hidden_BxNxD):
        """float32 logits [B, N, V] from final-normed hidden states. A full-precision tied head
        contracts the [V, D] embedding as it lies: for a decoding call's single row, XLA:CPU would
        copy the transposed embedding (its whole 113 MB for SmolLM2) in every call."""
        tied_full = self.cfg.tie_embeddings and jnp.promote_types(hidden_BxNxD.dtype, jnp.float32) == hidden_BxNxD.dtype
        if tied_full:
            logits_BxNxV = jnp.einsum("...d,vd->...v", hidden_BxNxD, self.embed[...].astype(hidden_BxNxD.dtype))
        else:
            logits_BxNxV = logits_of(hidden_BxNxD, self.head())
        logits_BxNxV = constrain(logits_BxNxV, "batch", None, "vocab")
        if self.facts.masked_inputs:  # MASK is an input only: never predicted
            logits_BxNxV = logits_BxNxV.at[..., self.cfg.mask_token_id].set(MASK_LOGIT)
        return logits_BxNxV

    def __call__(self, batch, *, inputs_embeds=None, group_size=None):
        """Prediction logits [B, N, V] from the stream the variant predicts from: the query stream
        for a3 (token i's own logits), the content stream for causal (row i predicts row i + 1)
        and for mdlm (row i's own token, from the MASK input)."""
        hidden = self.hidden_states(batch, inputs_embeds=inputs_embeds, group_size=group_size)
        return self.logits(hidden[self.facts.predicts_from])
