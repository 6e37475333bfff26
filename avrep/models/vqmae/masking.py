"""VQ-MAE masking with static shapes: sampling, (un)shuffling, packed and paired slot buffers, masked logits.

**Masking with static shapes** ([Sadok-thesis] Sec. 5.2.3–5.2.4). Whole tokens are masked, uniformly at random
("patch") or whole time groups of tokens at once ("frame": all frequency bands of a
10-frame audio window, all 36 spatial tokens of a 5-frame visual window). The masking
ratio is fixed or, for VQ-MAE-AV, coupled: (p_a, p_v) ~ Dir(1, 1), so p_a + p_v = 1.
The number of visible tokens is round(N(1 - p)) (the code's rule), which depends on
the drawn ratio; jit needs static shapes, so :func:`sample_masking` sorts the tokens by
noise (MAE's shuffle) and hands the encoder a buffer of a *static* number of slots
(``max_visible``): the first ``num_visible`` slots hold the visible tokens, the others
are padding, marked invalid and excluded as attention keys (so they never influence
a valid token; valid outputs equal those of an encoder run on the visible tokens
alone, which the tests check). With a fixed ratio the buffer is exactly the visible
set (no padding, MAE's full saving); with Dirichlet ratios it holds every token of
the modality. SAF with Dirichlet ratios does better: with p_a + p_v = 1 the visible
total N_a(1 - p_a) + N_v p_a varies (160 to 360 tokens of a 2 s clip) but never
exceeds max(N_a, N_v) plus rounding, so the visible tokens of both modalities are
packed into one joint buffer of that static bound (:func:`packed_saf_slots`: 361
slots instead of 520; the encoder step is ~1.4x cheaper, and the result is the same
as the padded buffers, tested). CAF streams are per modality, and a call-time
``mask_ratio`` need not sum to 1, so both keep the per-modality buffers. The same
trick bounds the masked tokens: the loss gathers a static ``N - min_visible`` slots
from the masked end of the shuffle. Different ratio draws therefore never change a
shape (compiled once, the whole training step included; tested).

**Paired ratios** (``paired_ratios``, our option, on in the configs): example 2k + 1 gets
example 2k's draw swapped, (p_v, p_a). Each example's ratios are still Dir(1, 1) (α
symmetric), so the expected loss is that of independent draws; but a pair's visible
tokens then add up to about N_a + N_v and its masked tokens of a modality to about N,
whatever the draw (:func:`paired_slots`). The SAF encoder therefore runs one row per
pair (attention kept within each example by a segment mask): 522 slots for two 2 s
clips instead of 2 · 361, and the masked tokens' logits are gathered per pair: 161 / 361
slots instead of 2 · 159 / 2 · 359. Same loss, global tokens and gradients as the padded
buffers for the same masks (tested).

Dirichlet ratios are drawn per example by default (``ratio_per_example``; the code
draws once per batch, which ``False`` reproduces; the thesis does not say). A
modality keeps at least ``min_visible`` masking units (default 1) so that its global
token is always defined; this only changes draws with p > 1 - 1/(2N). The masking
noise and the Dirichlet draw come from the ``"mask"`` RNG stream
(``apply(..., rngs={"mask": key})``); ``mask_ratio=`` at call time overrides them
(e.g. the 0-90 % reconstruction sweep of [Sadok-thesis] Fig. C.1) without recompiling.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from avrep.models.config import check_choice
from avrep.models.vqmae.tokens import _Grid

MASK_UNITS = ("patch", "frame")
MASK_RNG = "mask"


class Masking(NamedTuple):
    """One modality's masking, with static shapes (N tokens, K encoder slots, M target slots).

    order [B, N]: token ids shuffled, visible ones first. restore [B, N]: position of
    each token in ``order``. num_visible [B]: visible tokens. keep [B, K] = order[:, :K]:
    tokens fed to the encoder; valid [B, K]: slot holds a visible token (the rest is
    padding). masked [B, N]: token is masked. masked_ids [B, M] = order[:, N-M:]: tokens
    whose logits are computed; masked_valid [B, M]: that token is really masked.
    """

    order: jax.Array
    restore: jax.Array
    num_visible: jax.Array
    keep: jax.Array
    valid: jax.Array
    masked: jax.Array
    masked_ids: jax.Array
    masked_valid: jax.Array


def num_visible_units(ratio, num_units: int, min_units: int = 0, max_units: int | None = None):
    """round(num_units · (1 - ratio)) clipped to [min_units, max_units] (the code's rule).

    Host-side (NumPy, float64) for Python floats, traced otherwise.
    """
    max_units = num_units if max_units is None else max_units
    if isinstance(ratio, (int, float)):
        return int(np.clip(np.round(num_units * (1.0 - ratio)), min_units, max_units))
    n = jnp.round(num_units * (1.0 - jnp.asarray(ratio, jnp.float32)))
    return jnp.clip(n, min_units, max_units).astype(jnp.int32)


def sample_masking(
    key,
    ratio,
    *,
    batch: int,
    num_units: int,
    unit_size: int = 1,
    min_visible_units: int = 0,
    max_visible_units: int | None = None,
) -> Masking:
    """Random masking of ``num_units`` units of ``unit_size`` consecutive tokens each.

    ``unit_size=1`` is token ("patch") masking; whole time windows ("frame") are units
    of ``tokens_per_window`` tokens (the token order is time-window major). ``ratio``:
    the masked fraction, a scalar or [batch], traced or not. The visible count
    round(num_units(1 - ratio)) is clipped to [min_visible_units, max_visible_units];
    these two *static* bounds fix every shape: K = max_visible_units · unit_size
    encoder slots and M = N - min_visible_units · unit_size target slots. Equal bounds
    give an exact, padding-free buffer (a fixed ratio known in advance).
    """
    max_visible_units = num_units if max_visible_units is None else max_visible_units
    if not 0 <= min_visible_units <= max_visible_units <= num_units:
        raise ValueError(
            f"sample_masking: need 0 <= min_visible_units ({min_visible_units}) <= "
            f"max_visible_units ({max_visible_units}) <= num_units ({num_units})"
        )
    n_tokens = num_units * unit_size
    ratio = jnp.broadcast_to(jnp.asarray(ratio, jnp.float32), (batch,))
    n_vis = num_visible_units(ratio, num_units, min_visible_units, max_visible_units) * unit_size
    unit_order = jnp.argsort(jax.random.uniform(key, (batch, num_units)), axis=1)
    order = (unit_order[:, :, None] * unit_size + jnp.arange(unit_size)).reshape(batch, n_tokens)
    k = max_visible_units * unit_size
    return _masking(order, n_vis, k, n_tokens - min_visible_units * unit_size)


def masking_from_order(order, num_visible: int) -> Masking:
    """The exact (padding-free) Masking of a given shuffle: order [B, N] lists each example's token ids,
    the first ``num_visible`` visible. For replaying a stored masking, e.g. the authors' permutations
    (their ``forward_indexes``, transposed to batch-major) in the parity tests."""
    order = jnp.asarray(order)
    b, n = order.shape
    if not 0 <= num_visible <= n:
        raise ValueError(f"masking_from_order: num_visible={num_visible} is outside [0, {n}] (tokens per example)")
    return _masking(order, jnp.full((b,), num_visible, jnp.int32), num_visible, n - num_visible)


def _masking(order, n_vis, k: int, m: int) -> Masking:
    """The Masking of shuffle ``order`` [B, N] with ``n_vis`` [B] visible tokens, K = ``k`` encoder slots
    and M = ``m`` target slots."""
    order = order.astype(jnp.int32)
    n_tokens = order.shape[1]
    restore = jnp.argsort(order, axis=1).astype(jnp.int32)
    slots = jnp.arange(n_tokens)
    return Masking(
        order=order,
        restore=restore,
        num_visible=n_vis,
        keep=order[:, :k],
        valid=slots[:k] < n_vis[:, None],
        masked=restore >= n_vis[:, None],
        masked_ids=order[:, n_tokens - m :],
        masked_valid=slots[n_tokens - m :] >= n_vis[:, None],
    )


def authors_unscored(masking: Masking, all_logits: bool):
    """The masked token [code-vqmae-s]'s loss leaves out: the first one in shuffle order (the encoder never
    saw it; their decoder counts the [CLS] row among the visible tokens, an off-by-one). -> a mask shaped as
    the prediction's ``target_mask``: [B, N] with ``all_logits``, else [B, M] over ``masked_ids``."""
    n_vis = masking.num_visible[:, None]
    if all_logits:
        return masking.restore == n_vis
    n, m = masking.order.shape[1], masking.masked_ids.shape[1]
    return (n - m + jnp.arange(m)) == n_vis


def _gather(x, ids):
    """x [B, N, ...] at ids [B, K] -> [B, K, ...]."""
    ids = ids.reshape(ids.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, ids, axis=1)


def _unshuffle(z, valid, masking: Masking, mask_token, offset=0):
    """Encoder slots back in token order, the mask token everywhere else: [B, N, D].

    Token t of the modality sits in encoder slot ``offset + restore[t]`` when visible
    (``offset`` [B]: where the modality starts in a packed SAF buffer, 0 otherwise);
    every masked token reads one mask-token row appended after the slots. ``valid``
    is implied by ``masking`` (kept for the callers' symmetry).
    """
    del valid
    b, k, d = z.shape
    slot = jnp.where(masking.masked, k, masking.restore + jnp.reshape(offset, (-1, 1)))
    z = jnp.concatenate([z, jnp.broadcast_to(mask_token.astype(z.dtype), (b, 1, d))], axis=1)
    return _gather(z, slot)


def _pack_visible(m_a: Masking, m_v: Masking, size: int):
    """One buffer of ``size`` slots: slot j < n_a holds audio token order_a[j], slot
    n_a + j (j < n_v) visual token N_a + order_v[j] (ids into concat(audio, visual)),
    the rest is padding. -> ids [B, size]."""
    n_a = m_a.num_visible[:, None]
    slots = jnp.arange(size)
    ids_a = jnp.take_along_axis(
        m_a.order, jnp.broadcast_to(jnp.minimum(slots, m_a.order.shape[1] - 1), (n_a.shape[0], size)), axis=1
    )
    j_v = jnp.clip(slots - n_a, 0, m_v.order.shape[1] - 1)
    ids_v = m_a.order.shape[1] + jnp.take_along_axis(m_v.order, j_v, axis=1)
    return jnp.where(slots < n_a, ids_a, ids_v)


def _packed_ranges(size: int, start, n_a, n_v):
    """Where each modality sits in a packed row of ``size`` slots whose example starts at slot
    ``start`` [B] (its n_a visible audio tokens, then its n_v visual ones) -> ({modality: its
    slots [B, size]}, {modality: its first slot [B]})."""
    slots = jnp.arange(size)
    offsets = {"audio": start, "visual": start + n_a}
    valid = {
        name: (slots >= offsets[name][:, None]) & (slots < (offsets[name] + n)[:, None])
        for name, n in (("audio", n_a), ("visual", n_v))
    }
    return valid, offsets


def _masking_units(module, grid: _Grid, num_tokens: int) -> tuple[int, int, int]:
    """(units, tokens per unit, floor of visible units) of one modality's masking: whole token
    windows ("frame") or single tokens ("patch"), at least ``min_visible`` units left visible."""
    unit = grid.tokens_per_window if module.mask_unit == "frame" else 1
    units = num_tokens // unit
    return units, unit, min(module.min_visible, units)


def packed_saf_slots(model, num_tokens: Mapping[str, int]) -> int | None:
    """Static size of VQMAEAV's packed SAF encoder buffer, or None if it does not apply.

    With coupled Dirichlet ratios (p_a + p_v = 1) the visible total
    u_a·clip(round(U_a(1 - p_a))) + u_v·clip(round(U_v(1 - p_v))) (U masking units of u
    tokens, the floor ``min_visible``) stays near max(N_a, N_v), far below N_a + N_v. Its
    maximum is found exactly on the host: a pair of unit counts (i, j) can occur iff the
    p_a giving round(U_a(1 - p_a)) = i and the one giving round(U_v p_a) = j overlap
    (closed intervals, widened by 1e-4 for the float32 draw, whose p_a + p_v is 1 within
    a few ulps). A 2 s clip: 361 slots (patch masking) or 376 (frame) instead of 520.
    """
    if model.encoder_fusion != "saf" or model.masking != "dirichlet":
        return None
    n = num_tokens
    (ua, sa, la), (uv, sv, lv) = (_masking_units(model, g, n[g.name]) for g in model._grids())
    i = np.arange(ua + 1)[:, None]  # visible audio units, before the floor
    j = np.arange(uv + 1)[None, :]
    lo = np.maximum(np.maximum(1 - (i + 0.5) / ua, (j - 0.5) / uv), 0.0)
    hi = np.minimum(np.minimum(1 - (i - 0.5) / ua, (j + 0.5) / uv), 1.0)
    total = sa * np.clip(i, la, ua) + sv * np.clip(j, lv, uv)
    size = int(total[lo <= hi + 1e-4].max())
    return size if size < n["audio"] + n["visual"] else None


def _pairs(x):
    """[B, N, ...] -> [B/2, 2N, ...]: examples 2k and 2k + 1 concatenated along the token axis."""
    return x.reshape(x.shape[0] // 2, 2 * x.shape[1], *x.shape[2:])


def _pair_rows(ids, start, count, stride: int, size: int):
    """Lists of examples 2k and 2k + 1 in one row of ``size`` slots: ``ids[2k, start[2k]:][:count[2k]]``,
    then ``stride + ids[2k + 1, start[2k + 1]:][:count[2k + 1]]``, then padding. ``ids`` [B, L] index
    per-example arrays of ``stride`` entries; the rows index :func:`_pairs` of them.

    -> (row ids [B/2, size], segment [B/2, size]: 0 or 1 for the example a slot holds, -1 for
    padding; each example's first slot in its row [B]).
    """
    b, length = ids.shape
    slots = jnp.arange(size)
    c0, c1 = count[0::2, None], count[1::2, None]

    def take(rows, first):  # rows[first + j] for every slot j, clipped (padding reads a real entry)
        return jnp.take_along_axis(rows, jnp.clip(first + slots, 0, length - 1), axis=1)

    row = jnp.where(slots < c0, take(ids[0::2], start[0::2, None]), stride + take(ids[1::2], start[1::2, None] - c0))
    segment = jnp.where(slots < c0, 0, jnp.where(slots < c0 + c1, 1, -1))
    first = jnp.stack([jnp.zeros_like(c0[:, 0]), c0[:, 0]], axis=1).reshape(b)
    return row, segment, first


def paired_slots(model, num_tokens: Mapping[str, int]) -> dict[str, int] | None:
    """Static row sizes for VQMAEAV's paired ratios (None if they are off): per modality the
    masked slots of a pair of examples, and with a SAF encoder its joint visible ``"encoder"`` slots.

    Example 2k + 1 gets example 2k's draw swapped, (p_v, p_a) = (1 - p_a, p_a) up to float32
    rounding, so a modality of U masking units of s tokens keeps
    round(U(1 - p)) + round(U p) ∈ [U - 1, U + 1] units visible over the pair, and with the
    floor l at least max(U - 1, 2l) and at most U + max(l, 1) (a unit clipped up to l means
    the other round() is at most U). A pair of 2 s clips: 161 + 361 = 522 encoder slots for
    2 · 361, and 161 / 361 masked slots for 2 · 159 / 2 · 359.
    """
    if not model.paired_ratios:
        return None
    sizes = {}
    encoder = 0
    for g in model._grids():
        units, unit, floor = _masking_units(model, g, num_tokens[g.name])
        sizes[g.name] = unit * min(units + 1, 2 * units - 2 * floor)
        encoder += unit * min(units + max(floor, 1), 2 * units)
    if model.encoder_fusion == "saf":
        sizes["encoder"] = encoder
    return sizes


def _ratio_override(mask_ratio, batch: int, owner: str, columns: int):
    """A call-time ratio (scalar, [columns] or [batch, columns]) -> [batch, columns]."""
    r = jnp.asarray(mask_ratio, jnp.float32)
    if r.ndim == 0 or r.shape == (columns,) or r.shape == (batch, columns):
        return jnp.broadcast_to(r, (batch, columns))
    raise ValueError(f"{owner}: mask_ratio has shape {r.shape}; expected a scalar, [{columns}] or [{batch}, {columns}]")


def _check_masking_fields(module) -> None:
    check_choice(module, "mask_unit", MASK_UNITS)
    if not 0.0 <= module.mask_ratio <= 1.0:
        raise ValueError(
            f"{type(module).__name__}.mask_ratio={module.mask_ratio}: expected a masked fraction in [0, 1]"
        )
    if module.min_visible < 0:
        raise ValueError(f"{type(module).__name__}.min_visible={module.min_visible}: expected >= 0")
    if module.width % module.num_heads:
        raise ValueError(
            f"{type(module).__name__}: width={module.width} is not a multiple of num_heads={module.num_heads}"
        )


def _mask_modality(module, key, ratio, grid: _Grid, num_tokens: int, batch: int, exact: bool):
    """Masking of one modality; ``exact``: the ratio is the static ``mask_ratio`` field."""
    units, unit, lo = _masking_units(module, grid, num_tokens)
    hi = units
    if exact:  # a fixed ratio known at trace time: an exact, padding-free buffer
        lo = hi = num_visible_units(float(module.mask_ratio), units, lo, units)
    return sample_masking(
        key, ratio, batch=batch, num_units=units, unit_size=unit, min_visible_units=lo, max_visible_units=hi
    )


def _prediction(head, y, tokens, masking: Masking, all_logits: bool, pair_slots: int | None = None):
    """Logits of the masked tokens' indices, their targets and which slots count.

    ``pair_slots`` (paired ratios): the masked tokens of examples 2k and 2k + 1 share row k of
    that many slots, so logits come as [B/2, pair_slots, n, k] (the loss is a mean over the
    batch's masked indices either way)."""
    if all_logits:
        sel, targets, target_mask = y, tokens, masking.masked
    elif pair_slots is not None:
        n = masking.order.shape[1]
        ids, segment, _ = _pair_rows(masking.order, masking.num_visible, n - masking.num_visible, n, pair_slots)
        sel, targets, target_mask = _gather(_pairs(y), ids), _gather(_pairs(tokens), ids), segment >= 0
    else:
        ids = masking.masked_ids
        sel, targets, target_mask = _gather(y, ids), _gather(tokens, ids), masking.masked_valid
    logits = head(sel)
    return {"logits": logits, "targets": targets, "target_mask": target_mask}
