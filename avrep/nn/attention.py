"""Transformer building blocks: multi-head attention, MLP, pre-LN and post-LN blocks, pooling.

:class:`Attention` is ``nn.MultiHeadDotProductAttention`` with the same parameters, computed
faster on CPU (a looped, flash-style core with a custom VJP) and through
``jax.nn.dot_product_attention`` on GPU and TPU (:func:`_attention_core` decides, by the platform the
step is lowered for); :func:`batched_attention` forces the batched form. :class:`Block` /
:class:`Stack` are timm's pre-LN ViT blocks,
:class:`CrossAttentionBlock` and :class:`AttentionPooling` the VQ-MAE authors' cross-attention
block and learned-query pooling, :class:`PostNormLayer` PyTorch's post-norm transformer layer.
:func:`sincos_positions` is MAE's sin-cos position table.
"""

from __future__ import annotations

import contextlib
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

LN_EPS = 1e-5  # PyTorch's LayerNorm default (timm Block, nn.Transformer)
dense_init = nn.initializers.xavier_uniform()  # MAE / timm ViT Linear init


def layer_norm(name=None):
    """``nn.LayerNorm`` with PyTorch's epsilon (``LN_EPS``)."""
    return nn.LayerNorm(epsilon=LN_EPS, name=name)


def _attention(num_heads: int, name=None, qkv_bias: bool = True):
    return Attention(num_heads=num_heads, qkv_bias=qkv_bias, name=name)


class _DenseParams(nn.Module):
    """The kernel and bias of an ``nn.DenseGeneral`` (same names, shapes and initial values:
    the kernel is drawn flattened to 2-D, as DenseGeneral does, then reshaped), for
    :class:`Attention` to apply itself. ``use_bias=False``: no bias parameter (bias None)."""

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    use_bias: bool = True

    @nn.compact
    def __call__(self):
        def kernel_init(key, shape, dtype=jnp.float32):
            return dense_init(key, (math.prod(self.in_shape), math.prod(self.out_shape)), dtype).reshape(shape)

        kernel = self.param("kernel", kernel_init, self.in_shape + self.out_shape)
        bias = self.param("bias", nn.initializers.zeros_init(), self.out_shape) if self.use_bias else None
        return kernel, bias


class Attention(nn.Module):
    """``nn.MultiHeadDotProductAttention(num_heads, kernel_init=dense_init)`` with the same
    parameters (query / key / value / out, kernel + bias: checkpoints and parameter
    counts unchanged) and the same function (float32 rounding apart, tested), computed
    faster on CPU: a layer's forward + backward at the VQ-MAE-AV shapes takes 0.65x
    (decoder, [16, 520, 320]) and 0.74x (packed encoder, [16, 361, 320], key mask) the
    time of flax's module, whose attention matmuls and softmax passes over
    [B, H, N_q, N_k] arrays (70 MB at 520 tokens) are bound by memory traffic:

    * one matmul for the Q, K, V projections of self-attention (K, V for cross-attention);
    * the heads' softmax(QKᵀ/√d)V in a loop over (example, head) pairs
      (:func:`_attention_core`), so that each [N_q, N_k] score matrix (1 MB for 520
      tokens) stays in cache through the exp, the sum and the value product; the
      backward recomputes the probabilities per pair (flash-attention style) instead
      of storing and re-reading them.

    XLA's cost analysis counts the loop's body once, so benchmarks count FLOPs on the
    batched form (:func:`batched_attention`); the work itself is the same.

    Called like flax's module: inputs_q [B, N_q, C], inputs_k [B, N_k, C_kv] (default:
    inputs_q), inputs_v (default: inputs_k), mask broadcastable to [B, H, N_q, N_k]
    (True: attend) or None -> [B, N_q, C]. Like flax, masked scores are set to the
    float minimum before the softmax. No dropout, no decoding cache; differentiable in
    reverse mode only (custom VJP).

    ``qkv_bias=False`` drops the query / key / value biases (timm's ``Block(qkv_bias=False)``, the
    VQ-MAE authors' blocks); the output projection keeps its bias either way.
    """

    num_heads: int
    qkv_bias: bool = True

    @nn.compact
    def __call__(self, inputs_q, inputs_k=None, inputs_v=None, *, mask=None):
        inputs_k = inputs_q if inputs_k is None else inputs_k
        inputs_v = inputs_k if inputs_v is None else inputs_v
        b, n_q, c = inputs_q.shape
        n_k, c_kv = inputs_k.shape[1:]
        h = self.num_heads
        if c % h:
            raise ValueError(f"Attention: width {c} is not divisible by num_heads={h}")
        d = c // h
        query, key, value = (
            _DenseParams((cin,), (h, d), self.qkv_bias, name=n)()
            for n, cin in (("query", c), ("key", c_kv), ("value", c_kv))
        )
        out_kernel, out_bias = _DenseParams((h, d), (c,), name="out")()
        if inputs_k is inputs_q and inputs_v is inputs_q:  # self-attention: Q, K, V in one matmul
            q, k, v = _project_heads(inputs_q, (query, key, value))
        elif inputs_v is inputs_k:  # cross-attention: K, V in one matmul
            (q,) = _project_heads(inputs_q, (query,))
            k, v = _project_heads(inputs_k, (key, value))
        else:
            (q,), (k,), (v,) = (
                _project_heads(x, (p,)) for x, p in ((inputs_q, query), (inputs_k, key), (inputs_v, value))
            )
        q = q / jnp.sqrt(d).astype(q.dtype)  # flax's scaling
        if mask is not None:  # -> [B·H, N_q or 1, N_k], the layout of q, k, v
            mask = jnp.broadcast_to(mask, (b, h) + mask.shape[-2:]).reshape((b * h,) + mask.shape[-2:])
        o = _attention_core(q, k, v, mask)  # [B·H, N_q, d]
        o = o.reshape(b, h, n_q, d).transpose(0, 2, 1, 3).reshape(b * n_q, h * d)
        return (o @ out_kernel.reshape(h * d, c) + out_bias).reshape(b, n_q, c)


def _project_heads(x, params):
    """x [B, N, C] through the (kernel [C, H, d], bias [H, d] or None) pairs as one matmul ->
    one [B·H, N, d] array per pair."""
    b, n, c = x.shape
    h, d = params[0][0].shape[1:]
    kernel = jnp.concatenate([k.reshape(c, h * d) for k, _ in params], axis=1)
    y = x.reshape(b * n, c) @ kernel
    if params[0][1] is not None:
        y = y + jnp.concatenate([bias.reshape(h * d) for _, bias in params])
    y = y.reshape(b, n, len(params), h, d)
    return tuple(y.transpose(2, 0, 3, 1, 4).reshape(len(params), b * h, n, d))


def _masked_scores(q, k, mask):
    """Scores q kᵀ as float32 (the softmax statistics stay float32 under bfloat16 inputs, as flax's
    ``force_fp32_for_softmax``), masked scores at the float minimum as flax."""
    s = jnp.einsum("...qd,...kd->...qk", q, k).astype(jnp.float32)
    return s if mask is None else jnp.where(mask, s, jnp.finfo(s.dtype).min)


def _attention_core(q, k, v, mask):
    """softmax(q kᵀ, masked) v per leading index: q [G, N_q, d], k, v [G, N_k, d], mask
    [G, N_q or 1, N_k] bool or None -> [G, N_q, d] (see :class:`Attention`).

    The one place that picks the attention kernel, by the platform the step is lowered for (so a step
    exported for GPU or TPU from a CPU host gets their kernel): on CPU the loop over (example, head)
    pairs, for CPU caches; elsewhere ``jax.nn.dot_product_attention`` (:func:`_attention_core_accelerator`),
    where XLA picks cuDNN's fused attention when it applies (a loop there would serialise small matmuls).
    :func:`batched_attention` forces the batched form on every platform while tracing (benchmarks count
    FLOPs with it: XLA's cost analysis counts a loop's body once). All three are tested equal.
    """
    if _FORCE_BATCHED_ATTENTION:
        return _attention_core_batched(q, k, v, mask)
    return jax.lax.platform_dependent(q, k, v, mask, cpu=_attention_core_looped, default=_attention_core_accelerator)


_FORCE_BATCHED_ATTENTION = False


@contextlib.contextmanager
def batched_attention():
    """Within this block, models traced use the batched attention form on every backend. jit reuses
    a function's earlier trace, so jit a new function object here (e.g. ``lambda *a: step(*a)``)."""
    global _FORCE_BATCHED_ATTENTION
    previous, _FORCE_BATCHED_ATTENTION = _FORCE_BATCHED_ATTENTION, True
    try:
        yield
    finally:
        _FORCE_BATCHED_ATTENTION = previous


def _attention_core_batched(q, k, v, mask):
    p = jax.nn.softmax(_masked_scores(q, k, mask))
    return jnp.einsum("gqk,gkd->gqd", p.astype(v.dtype), v)


def _attention_core_accelerator(q, k, v, mask):
    """``jax.nn.dot_product_attention`` on [G, N, 1 head, d] (q is scaled already; its XLA form computes
    the softmax in float32, masked scores at a large negative value: the same function). ``implementation``
    is left to JAX: XLA's form in JAX 0.10 (cuDNN's fused kernel is only used when named, and needs
    half-precision inputs)."""
    o = jax.nn.dot_product_attention(
        q[:, :, None], k[:, :, None], v[:, :, None], mask=None if mask is None else mask[:, None], scale=1.0
    )
    return o[:, :, 0]


@jax.custom_vjp
def _attention_core_looped(q, k, v, mask):
    return _attention_core_fwd(q, k, v, mask)[0]


def _attention_core_fwd(q, k, v, mask):
    def one(args):
        q, k, v, mask = args
        s = _masked_scores(q, k, mask)
        m = s.max(-1, keepdims=True)
        e = jnp.exp(s - m)
        total = e.sum(-1, keepdims=True)
        # normalising after the value product: [N_q, d], not [N_q, N_k]
        o = jnp.matmul(e.astype(v.dtype), v, preferred_element_type=jnp.float32) / total
        return o.astype(q.dtype), (m, total)

    o, (m, total) = jax.lax.map(one, (q, k, v, mask))
    return o, (q, k, v, mask, o, m, total)


def _attention_core_bwd(res, do):
    q, k, v, mask, o, m, total = res
    # Σ_k p·dp = Σ_d do·o (the softmax gradient's row term)
    delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), -1, keepdims=True)

    def one(args):
        q, k, v, mask, do, m, total, delta = args
        p = jnp.exp(_masked_scores(q, k, mask) - m) / total  # the forward's probabilities, recomputed
        ds = p * (jnp.matmul(do, v.T, preferred_element_type=jnp.float32) - delta)
        if mask is not None:  # flax's where() passes no gradient to masked scores (matters for all-masked rows)
            ds = jnp.where(mask, ds, 0.0)
        ds, p = ds.astype(q.dtype), p.astype(q.dtype)
        return ds @ k, ds.T @ q, p.T @ do

    dq, dk, dv = jax.lax.map(one, (q, k, v, mask, do, m, total, delta))
    return dq, dk, dv, None


_attention_core_looped.defvjp(_attention_core_fwd, _attention_core_bwd)


def _attention_mask(valid, segment=None):
    """[B, K] key validity -> [B, 1, 1, K] attention mask (None: all keys). ``segment`` [B, K]
    (paired rows, :func:`_pair_rows`): which example of the row a slot holds, -1 for padding;
    a slot then attends only to its own example's slots -> [B, 1, K, K]."""
    if segment is not None:
        return (segment[:, None, :, None] == segment[:, None, None, :]) & (segment >= 0)[:, None, None, :]
    return None if valid is None else valid[:, None, None, :]


class MLP(nn.Module):
    """Linear(hidden) -> exact GELU -> Linear(width): timm's ``Mlp``."""

    hidden: int

    @nn.compact
    def __call__(self, x):
        h = gelu(nn.Dense(self.hidden, kernel_init=dense_init, name="fc1")(x))
        return nn.Dense(x.shape[-1], kernel_init=dense_init, name="fc2")(h)


def gelu(x):
    """Exact GELU, x·Φ(x) = x/2·(1 + erf(x/√2)): PyTorch's formula (timm's ``nn.GELU``).

    ``nn.gelu(approximate=False)`` evaluates the same function through erfc, which XLA's CPU
    backend computes with an exp and two branches; this form is cheaper in the
    training step (~30 % less for the activation and its gradient, ~1 % of the VQ-MAE-S
    step) and agrees to float32 rounding (tested).
    """
    return 0.5 * x * (1.0 + jax.lax.erf(x * np.float32(1.0 / math.sqrt(2.0))).astype(x.dtype))


class Block(nn.Module):
    """Pre-LN transformer block (timm ``Block``): x + MHSA(LN(x)), then x + MLP(LN(x)).

    ``valid`` [B, N] excludes padding slots as keys (their own outputs are ignored
    downstream); ``segment`` (see :func:`_attention_mask`) keeps two packed examples apart.
    ``qkv_bias``: query / key / value biases (timm's option of the same name).
    """

    num_heads: int
    mlp_ratio: float
    qkv_bias: bool = True

    @nn.compact
    def __call__(self, x, valid=None, segment=None):
        h = layer_norm("norm1")(x)
        attention = _attention(self.num_heads, "attn", self.qkv_bias)
        x = x + attention(h, h, mask=_attention_mask(valid, segment))
        return x + MLP(int(self.mlp_ratio * x.shape[-1]), name="mlp")(layer_norm("norm2")(x))


class CrossAttentionBlock(nn.Module):
    """The authors' cross-attention block: a = MHA(q, kv, kv); out = q + LN(MLP(a)).

    ``residual_attention=True`` is their pooling variant: a = q + MHA(q, kv, kv);
    out = a + LN(MLP(a)). One LayerNorm either way ([Sadok-thesis] Sec. 5.2.5; [code-vqmae-av]).
    """

    num_heads: int
    mlp_ratio: float
    residual_attention: bool = False

    @nn.compact
    def __call__(self, q, kv, kv_valid=None):
        a = _attention(self.num_heads, "attn")(q, kv, kv, mask=_attention_mask(kv_valid))
        if self.residual_attention:
            a = a + q
        base = a if self.residual_attention else q
        return base + layer_norm("norm")(MLP(int(self.mlp_ratio * q.shape[-1]), name="mlp")(a))


class Stack(nn.Module):
    """``depth`` Blocks, then a LayerNorm if ``final_norm``."""

    depth: int
    num_heads: int
    mlp_ratio: float
    final_norm: bool
    qkv_bias: bool = True

    @nn.compact
    def __call__(self, x, valid=None, segment=None):
        for i in range(self.depth):
            x = Block(self.num_heads, self.mlp_ratio, self.qkv_bias, name=f"block_{i}")(x, valid, segment)
        return layer_norm("norm")(x) if self.final_norm else x


class AttentionPooling(nn.Module):
    """Global token w = CrossAttentionBlock(residual)(learned query, z) ([Sadok-thesis] Sec. 5.2.5,
    Eqs. 5.1–5.2; CaiT).

    z [B, N, D], valid [B, N] or None -> [B, D].
    """

    num_heads: int
    mlp_ratio: float

    @nn.compact
    def __call__(self, z, valid=None):
        query = self.param("query", nn.initializers.normal(1.0), (1, z.shape[-1]))
        q = jnp.broadcast_to(query, (z.shape[0], 1, z.shape[-1]))
        return CrossAttentionBlock(self.num_heads, self.mlp_ratio, residual_attention=True, name="block")(q, z, valid)[
            :, 0
        ]


class PostNormLayer(nn.Module):
    """PyTorch ``TransformerEncoderLayer`` / ``TransformerDecoderLayer`` (post-norm, ReLU)
    without dropout; a decoder layer when ``memory`` is given."""

    num_heads: int
    mlp_dim: int

    @nn.compact
    def __call__(self, x, memory=None, memory_valid=None):
        x = layer_norm("norm1")(x + _attention(self.num_heads, "self_attn")(x, x))
        if memory is not None:
            attn = _attention(self.num_heads, "cross_attn")(x, memory, memory, mask=_attention_mask(memory_valid))
            x = layer_norm("norm2")(x + attn)
        h = nn.Dense(self.mlp_dim, kernel_init=dense_init, name="fc1")(x)
        h = nn.Dense(x.shape[-1], kernel_init=dense_init, name="fc2")(nn.relu(h))
        return layer_norm("norm3")(x + h)


def sincos_positions(coordinates: np.ndarray, width: int) -> np.ndarray:
    """[N, axes] integer token coordinates -> [N, width] sin-cos table (MAE's, one block per axis).

    The width is split evenly over the axes (an even number of values each; the few left over
    stay 0); each axis gets sines then cosines at frequencies 1 / 10000^(i / half).
    """
    coordinates = np.asarray(coordinates, np.float64)
    per_axis = 2 * (width // (2 * coordinates.shape[1]))
    half = per_axis // 2
    freqs = 1.0 / 10000 ** (np.arange(half) / max(half, 1))
    table = np.zeros((len(coordinates), width), np.float32)
    for axis in range(coordinates.shape[1]):
        angles = coordinates[:, axis : axis + 1] * freqs
        table[:, axis * per_axis : (axis + 1) * per_axis] = np.concatenate([np.sin(angles), np.cos(angles)], 1)
    return table
