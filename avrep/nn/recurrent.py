"""Recurrent building blocks with PyTorch's parameter layouts (GRU cell; LSTM cell and layer, tanh RNN layer,
forward, backward in time or bidirectional), and scanning a module over time."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn


def _uniform(scale: float):
    """U(-scale, scale), PyTorch's initialisation of GRU parameters (scale = 1/sqrt(hidden))."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


class GRUCell(nn.Module):
    """GRU with PyTorch's parameters and gate order (r, z, n).

    r = σ(x W_ir + b_ir + h W_hr + b_hr), z = σ(x W_iz + b_iz + h W_hz + b_hz),
    n = tanh(x W_in + b_in + r ⊙ (h W_hn + b_hn)), h' = (1 - z) ⊙ n + z ⊙ h.
    ``project`` (the input half) is separate from ``step`` so that a caller whose
    inputs are known beforehand projects all frames at once outside the scan.
    Initialisation: PyTorch's U(±1/sqrt(hidden)) for every parameter, as in the
    authors' code.
    """

    in_features: int
    hidden: int

    def setup(self):
        h3 = 3 * self.hidden
        init = _uniform(self.hidden**-0.5)
        self.w_ih = self.param("w_ih", init, (self.in_features, h3))
        self.w_hh = self.param("w_hh", init, (self.hidden, h3))
        self.b_ih = self.param("b_ih", init, (h3,))
        self.b_hh = self.param("b_hh", init, (h3,))

    def project(self, x):
        return x @ self.w_ih + self.b_ih

    def step(self, x_proj, h):
        xr, xz, xn = jnp.split(x_proj, 3, axis=-1)
        hr, hz, hn = jnp.split(h @ self.w_hh + self.b_hh, 3, axis=-1)
        r = nn.sigmoid(xr + hr)
        z = nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + r * hn)
        return (1.0 - z) * n + z * h


def scan(module, body, carry, xs, length: int):
    """``lax.scan`` of ``body(module, carry, x) -> (carry, y)`` over the leading
    (time) axis of ``xs``; the body may call ``module``'s submodules, whose
    parameters are shared by all steps."""
    scan = nn.scan(body, variable_broadcast="params", split_rngs={"params": False}, length=length)
    return scan(module, carry, xs)


def time_major(tree):
    """Swaps the two leading axes of every array of ``tree``: [B, T, ...] <-> [T, B, ...]."""
    return jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), tree)


# ------------------------------------------------------------------ LSTM / RNN ---
#
# PyTorch's nn.LSTM / nn.RNN, one layer, parameter for parameter: ``weight_ih`` (G·H, in),
# ``weight_hh`` (G·H, H), ``bias_ih`` and ``bias_hh`` (G·H,), both biases added; G = 4 gate blocks
# in the order (i, f, g, o) for an LSTM, G = 1 for a tanh RNN. A bidirectional layer has a second
# set with the suffix ``_reverse`` (torch's ``weight_ih_l0_reverse``) and returns [forward,
# backward] concatenated on the feature axis. The equations are pure functions of a parameter
# dict, so a model can step a layer inside its own scan (``project`` all frames at once, then
# ``step``) as well as run it over a whole sequence (``lax.scan``; no Python loop over time).


def _rnn_params(module, in_features: int, hidden: int, gates: int, suffix: str = "") -> dict:
    """Declares one direction's parameters on ``module`` (PyTorch's U(±1/sqrt(hidden)) init)."""
    init = _uniform(hidden**-0.5)
    g = gates * hidden
    return {
        "weight_ih": module.param("weight_ih" + suffix, init, (g, in_features)),
        "weight_hh": module.param("weight_hh" + suffix, init, (g, hidden)),
        "bias_ih": module.param("bias_ih" + suffix, init, (g,)),
        "bias_hh": module.param("bias_hh" + suffix, init, (g,)),
    }


def rnn_project(p: dict, x: jax.Array) -> jax.Array:
    """The input half of the gates, ``x W_ih^T + b_ih`` (any leading axes)."""
    return x @ p["weight_ih"].T + p["bias_ih"]


def lstm_step(p: dict, x_proj: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """One LSTM step from the projected input: gates (i, f, g, o) = x_proj + h W_hh^T + b_hh;
    c' = σ(f) c + σ(i) tanh(g), h' = σ(o) tanh(c'). Returns (h', c')."""
    h, c = carry
    i, f, g, o = jnp.split(x_proj + (h @ p["weight_hh"].T + p["bias_hh"]), 4, axis=-1)
    c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
    return nn.sigmoid(o) * jnp.tanh(c), c


def rnn_tanh_step(p: dict, x_proj: jax.Array, h: jax.Array) -> jax.Array:
    """One step of PyTorch's ``nn.RNN`` (tanh): h' = tanh(x_proj + h W_hh^T + b_hh)."""
    return jnp.tanh(x_proj + (h @ p["weight_hh"].T + p["bias_hh"]))


def run_lstm(p: dict, xs: jax.Array, carry=None, *, reverse: bool = False):
    """An LSTM direction over time-major ``xs`` [T, B, in] with ``lax.scan``.

    ``reverse``: runs from the last frame to the first and returns the outputs in the
    original order (torch's flip, run, flip back). ``carry`` = (h, c), zeros if None.
    Returns (outputs [T, B, H], final (h, c)).
    """
    hidden = p["weight_hh"].shape[1]
    if carry is None:
        zeros = jnp.zeros(xs.shape[1:-1] + (hidden,), xs.dtype)
        carry = (zeros, zeros)

    def body(carry, x_proj):
        carry = lstm_step(p, x_proj, carry)
        return carry, carry[0]

    carry, hs = jax.lax.scan(body, carry, rnn_project(p, xs), reverse=reverse)
    return hs, carry


def run_rnn_tanh(p: dict, xs: jax.Array, h=None, *, reverse: bool = False):
    """A tanh RNN direction over time-major ``xs`` [T, B, in]; as :func:`run_lstm` (carry = h)."""
    hidden = p["weight_hh"].shape[1]
    if h is None:
        h = jnp.zeros(xs.shape[1:-1] + (hidden,), xs.dtype)

    def body(h, x_proj):
        h = rnn_tanh_step(p, x_proj, h)
        return h, h

    h, hs = jax.lax.scan(body, h, rnn_project(p, xs), reverse=reverse)
    return hs, h


class LSTMCell(nn.Module):
    """PyTorch's LSTM cell, parameter for parameter (``weight_ih`` (4H, in), ``weight_hh`` (4H, H),
    ``bias_ih``, ``bias_hh``; gates i, f, g, o).

    ``__call__(carry, x) -> (carry, h)`` is one step (Flax's cell convention, so it can be used
    with ``nn.scan``); ``project`` / ``step`` split it for callers that project all frames at once.
    """

    in_features: int
    hidden: int

    def setup(self):
        self.p = _rnn_params(self, self.in_features, self.hidden, 4)

    def initial_state(self, batch_shape, dtype=jnp.float32):
        zeros = jnp.zeros(tuple(batch_shape) + (self.hidden,), dtype)
        return zeros, zeros

    def project(self, x):
        return rnn_project(self.p, x)

    def step(self, x_proj, carry):
        return lstm_step(self.p, x_proj, carry)

    def __call__(self, carry, x):
        carry = self.step(self.project(x), carry)
        return carry, carry[0]


class _RecurrentLayer(nn.Module):
    """One recurrent layer over a whole sequence (see :class:`LSTM`)."""

    in_features: int
    hidden: int
    bidirectional: bool = False
    reverse: bool = False
    time_major: bool = True

    _gates = 4
    _run = staticmethod(run_lstm)

    def setup(self):
        self.p = _rnn_params(self, self.in_features, self.hidden, self._gates)
        if self.bidirectional:
            self.p_reverse = _rnn_params(self, self.in_features, self.hidden, self._gates, "_reverse")

    @property
    def out_features(self) -> int:
        return self.hidden * (2 if self.bidirectional else 1)

    def project(self, x):
        """Input half of the (forward direction's) gates, for stepping inside a caller's scan."""
        return rnn_project(self.p, x)

    def __call__(self, xs):
        """xs [T, B, in] ([B, T, in] if not ``time_major``) -> outputs [T, B, H or 2H] (same layout)."""
        if not self.time_major:
            xs = jnp.swapaxes(xs, 0, 1)
        if self.reverse:  # torch: the layer is applied to the time-flipped sequence, flipped back
            xs = xs[::-1]
        out = self._run(self.p, xs)[0]
        if self.bidirectional:
            out = jnp.concatenate([out, self._run(self.p_reverse, xs, reverse=True)[0]], axis=-1)
        if self.reverse:
            out = out[::-1]
        return out if self.time_major else jnp.swapaxes(out, 0, 1)


class LSTM(_RecurrentLayer):
    """One ``torch.nn.LSTM`` layer over a sequence, parameter for parameter.

    Parameters ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh`` (torch's ``*_l0``) and, if
    ``bidirectional``, the same with ``_reverse``; zero initial state. ``reverse=True`` runs the
    layer on the time-flipped sequence and flips its output back (the backward-in-time
    inference RNNs of the DVAE family; for a bidirectional layer its first half then runs backward
    in time and its second half forward). ``step`` / ``project`` / ``initial_state`` expose the
    (forward) direction for models that step it inside their own scan.
    """

    def initial_state(self, batch_shape, dtype=jnp.float32):
        zeros = jnp.zeros(tuple(batch_shape) + (self.hidden,), dtype)
        return zeros, zeros

    def step(self, x_proj, carry):
        return lstm_step(self.p, x_proj, carry)


class SimpleRNN(_RecurrentLayer):
    """One ``torch.nn.RNN`` layer (tanh), parameter for parameter, as :class:`LSTM` (carry = h)."""

    _gates = 1
    _run = staticmethod(run_rnn_tanh)

    def initial_state(self, batch_shape, dtype=jnp.float32):
        return jnp.zeros(tuple(batch_shape) + (self.hidden,), dtype)

    def step(self, x_proj, h):
        return rnn_tanh_step(self.p, x_proj, h)
