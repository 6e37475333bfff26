"""The DVAE-family models whose decoder does not read past frames of x: VAE, DKF, RVAE, DSAE.

Each docstring gives the data flow, in the authors' names; concatenations are in the order shown.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from avrep.models.dvae.base import SAMPLE_RNG, DVAEBase, LinearStack, cat, dense, out_dim, reparameterize, shift_right
from avrep.nn import recurrent
from avrep.nn.recurrent import LSTM, SimpleRNN


class VAE(DVAEBase):
    """Frame-wise Itakura–Saito VAE (Leglaive et al. 2018): no recurrence, prior N(0, I).

    q(z_t | x_t): ``mlp_x_z`` -> ``inf_mean`` / ``inf_logvar``; p(x_t | z_t): ``mlp_z_x`` ->
    ``gen_logvar`` (log-variance of the speech power). ``dense_z_x`` None: ``dense_x_z`` reversed,
    as the authors' class builds it.
    """

    dense_x_z: tuple[int, ...] = (256, 128, 64, 32)
    dense_z_x: tuple[int, ...] | None = None

    def setup(self):
        dec = tuple(reversed(self.dense_x_z)) if self.dense_z_x is None else self.dense_z_x
        self.mlp_x_z = LinearStack(self.dense_x_z, self.activation)
        self.inf_mean = dense(self.z_dim)
        self.inf_logvar = dense(self.z_dim)
        self.mlp_z_x = LinearStack(dec, self.activation)
        self.gen_logvar = dense(self.x_dim)

    def decode(self, z):
        """z [..., z_dim] -> log-variance [..., x_dim]."""
        return self.gen_logvar(self.mlp_z_x(z))

    def __call__(self, x, *, sample: bool = True, eps=None):
        xt = self._check_x(x)
        noise = self._noise(eps, sample, *xt.shape[:2], dtype=xt.dtype)
        h = self.mlp_x_z(xt)
        mean, logvar = self.inf_mean(h), self.inf_logvar(h)
        z = reparameterize(mean, logvar, noise)
        return self._outputs(self.decode(z), z, mean, logvar)

    def generate(self, batch: int, num_frames: int, *, return_all: bool = False):
        z = jax.random.normal(self.make_rng(SAMPLE_RNG), (num_frames, batch, self.z_dim))
        return self._generated(self.decode(z), z, return_all=return_all)


class _ReluPair(nn.Module):
    """``linear2(relu(linear1(x)))``, then a sigmoid if ``gate`` (DKF's ``mlp_gate`` / ``mlp_z_prop``)."""

    features: int
    gate: bool = False

    @nn.compact
    def __call__(self, x):
        y = dense(self.features, "linear2")(nn.relu(dense(self.features, "linear1")(x)))
        return nn.sigmoid(y) if self.gate else y


class _SoftplusVariance(nn.Module):
    """``Sequential(ReLU, Linear, Softplus)`` (DKF's ``prior_logvar``; its Linear is named ``1``)."""

    features: int

    @nn.compact
    def __call__(self, x):
        return nn.softplus(dense(self.features, "1")(nn.relu(x)))


class DKF(DVAEBase):
    """Deep Kalman filter (Krishnan et al. 2017's deep Markov model, the DVAE benchmark's DKF).

    Inference: g = ``rnn_gx``(``mlp_x_gx``(x)), an LSTM run backward in time (flipped, run, flipped
    back: g_t summarises x_{t:T}); per step, from z_0 = 0:
    g~_t = (``mlp_ztm1_g``(z_{t-1}) + g_t) / 2, q(z_t) = N(``inf_mean``, ``inf_logvar`` of
    ``mlp_g_z``(g~_t)). With ``bidir_gx`` the LSTM is bidirectional over the unflipped sequence and
    g~_t = (``mlp_ztm1_g``(z_{t-1}) + g_t^fwd + g_t^bwd) / 3 (ST-LR). ``mlp_ztm1_g`` ends with a
    ``linear_last`` layer to the LSTM width.
    Prior (gated transition, from z_{t-1}): gate = sigmoid(``mlp_gate``), proposal = ``mlp_z_prop``,
    mean = (1 - gate) ``prior_mean``(z_{t-1}) + gate proposal, logvar = log softplus(Linear(relu(proposal))).
    Decoder: ``gen_logvar``(``mlp_z_x``(z_t)).
    """

    dense_x_gx: tuple[int, ...] = (256,)
    dim_rnn_gx: int = 128
    bidir_gx: bool = False
    dense_ztm1_g: tuple[int, ...] = (32, 64)
    dense_g_z: tuple[int, ...] = (64, 32)
    dense_z_x: tuple[int, ...] = (32, 64, 128, 256)

    def setup(self):
        act, z = self.activation, self.z_dim
        self.mlp_x_gx = LinearStack(self.dense_x_gx, act)
        self.rnn_gx = LSTM(
            out_dim(self.x_dim, self.dense_x_gx),
            self.dim_rnn_gx,
            bidirectional=self.bidir_gx,
            reverse=not self.bidir_gx,
        )
        self.mlp_ztm1_g = LinearStack(self.dense_ztm1_g, act, last=self.dim_rnn_gx)
        self.mlp_g_z = LinearStack(self.dense_g_z, act)
        self.inf_mean = dense(z)
        self.inf_logvar = dense(z)
        self.mlp_gate = _ReluPair(z, gate=True)
        self.mlp_z_prop = _ReluPair(z)
        self.prior_mean = dense(z)
        self.prior_logvar = _SoftplusVariance(z)
        self.mlp_z_x = LinearStack(self.dense_z_x, act)
        self.gen_logvar = dense(self.x_dim)

    def prior(self, z_tm1):
        """Gated transition p(z_t | z_{t-1}) -> (mean, logvar)."""
        gate = self.mlp_gate(z_tm1)
        z_prop = self.mlp_z_prop(z_tm1)
        mean = (1 - gate) * self.prior_mean(z_tm1) + gate * z_prop
        return mean, jnp.log(self.prior_logvar(z_prop))

    def decode(self, z):
        return self.gen_logvar(self.mlp_z_x(z))

    def __call__(self, x, *, sample: bool = True, eps=None):
        xt = self._check_x(x)
        time, batch = xt.shape[:2]
        noise = self._noise(eps, sample, time, batch, dtype=xt.dtype)
        g = self.rnn_gx(self.mlp_x_gx(xt))
        g = jnp.split(g, 2, axis=-1) if self.bidir_gx else (g,)

        def body(mdl, z_prev, inp):
            g_t, n_t = inp
            m = mdl.mlp_ztm1_g(z_prev)
            gt = (m + g_t[0] + g_t[1]) / 3 if len(g_t) == 2 else (m + g_t[0]) / 2
            h = mdl.mlp_g_z(gt)
            mean, logvar = mdl.inf_mean(h), mdl.inf_logvar(h)
            z = reparameterize(mean, logvar, n_t)
            return z, (z, mean, logvar)

        z0 = jnp.zeros((batch, self.z_dim), xt.dtype)
        _, (z, mean, logvar) = recurrent.scan(self, body, z0, (tuple(g), noise), time)
        prior_mean, prior_logvar = self.prior(shift_right(z))
        return self._outputs(self.decode(z), z, mean, logvar, prior_mean, prior_logvar)

    def generate(self, batch: int, num_frames: int, *, return_all: bool = False):
        noise = jax.random.normal(self.make_rng(SAMPLE_RNG), (num_frames, batch, self.z_dim))

        def body(mdl, z_prev, n_t):
            mean, logvar = mdl.prior(z_prev)
            z = reparameterize(mean, logvar, n_t)
            return z, z

        _, z = recurrent.scan(self, body, jnp.zeros((batch, self.z_dim)), noise, num_frames)
        return self._generated(self.decode(z), z, return_all=return_all)


class RVAE(DVAEBase):
    """Recurrent VAE (Leglaive et al. 2020): prior N(0, I), decoder an RNN over z_{1:t}.

    Inference: g^x = ``rnn_g_x``(``mlp_x_gx``(x)) applied to the time-flipped sequence and flipped
    back (backward in time; non-causal, ``causal=False``: a bidirectional LSTM, whose first half then
    runs backward and second half forward in time); per step, from z_0 = 0 and a zero state:
    g^z_t = ``rnn_g_z`` stepped on ``mlp_z_gz``(z_{t-1}), q(z_t) = N(``inf_mean``, ``inf_logvar`` of
    ``mlp_g_z``([g^x_t, g^z_t])).
    Decoder: h = ``rnn_h``(``mlp_z_h``(z)) forward (bidirectional if ``bidir_h``; None: as the
    inference LSTM, i.e. ``not causal``, the authors' RVAE-NonCausal), ``gen_logvar``(``mlp_h_x``(h)).
    """

    causal: bool = True
    dense_x_gx: tuple[int, ...] = (256,)
    dim_rnn_g_x: int = 128
    dense_z_gz: tuple[int, ...] = (32, 64)
    dim_rnn_g_z: int = 128
    dense_g_z: tuple[int, ...] = (64, 32)
    dense_z_h: tuple[int, ...] = (32, 64)
    dim_rnn_h: int = 128
    bidir_h: bool | None = None
    dense_h_x: tuple[int, ...] = (256,)

    def setup(self):
        act = self.activation
        bidir_h = (not self.causal) if self.bidir_h is None else self.bidir_h
        self.mlp_x_gx = LinearStack(self.dense_x_gx, act)
        self.rnn_g_x = LSTM(
            out_dim(self.x_dim, self.dense_x_gx), self.dim_rnn_g_x, bidirectional=not self.causal, reverse=True
        )
        self.mlp_z_gz = LinearStack(self.dense_z_gz, act)
        self.rnn_g_z = LSTM(out_dim(self.z_dim, self.dense_z_gz), self.dim_rnn_g_z)
        self.mlp_g_z = LinearStack(self.dense_g_z, act)
        self.inf_mean = dense(self.z_dim)
        self.inf_logvar = dense(self.z_dim)
        self.mlp_z_h = LinearStack(self.dense_z_h, act)
        self.rnn_h = LSTM(out_dim(self.z_dim, self.dense_z_h), self.dim_rnn_h, bidirectional=bidir_h)
        self.mlp_h_x = LinearStack(self.dense_h_x, act)
        self.gen_logvar = dense(self.x_dim)

    def decode(self, z):
        """Time-major z [T, B, z_dim] -> log-variance [T, B, x_dim]."""
        return self.gen_logvar(self.mlp_h_x(self.rnn_h(self.mlp_z_h(z))))

    def __call__(self, x, *, sample: bool = True, eps=None):
        xt = self._check_x(x)
        time, batch = xt.shape[:2]
        noise = self._noise(eps, sample, time, batch, dtype=xt.dtype)
        g_x = self.rnn_g_x(self.mlp_x_gx(xt))

        def body(mdl, carry, inp):
            z_prev, state = carry
            g_t, n_t = inp
            state = mdl.rnn_g_z.step(mdl.rnn_g_z.project(mdl.mlp_z_gz(z_prev)), state)
            h = mdl.mlp_g_z(cat(g_t, state[0]))
            mean, logvar = mdl.inf_mean(h), mdl.inf_logvar(h)
            z = reparameterize(mean, logvar, n_t)
            return (z, state), (z, mean, logvar)

        zeros = jnp.zeros((batch, self.dim_rnn_g_z), xt.dtype)
        carry = (jnp.zeros((batch, self.z_dim), xt.dtype), (zeros, zeros))
        _, (z, mean, logvar) = recurrent.scan(self, body, carry, (g_x, noise), time)
        return self._outputs(self.decode(z), z, mean, logvar)

    def generate(self, batch: int, num_frames: int, *, return_all: bool = False):
        z = jax.random.normal(self.make_rng(SAMPLE_RNG), (num_frames, batch, self.z_dim))
        return self._generated(self.decode(z), z, return_all=return_all)


class DSAE(DVAEBase):
    """Disentangled sequential autoencoder (Li & Mandt 2018), as the DVAE benchmark builds it: a static
    latent v per sequence and a dynamical z_t with a learned LSTM prior.

    q(v | x): f = ``mlp_x``(x); ``rnn_g_v`` (bidirectional LSTM) over f, its last forward state and
    its first backward state concatenated -> ``mlp_gv_v`` -> ``inf_v_mean`` / ``inf_v_logvar``.
    q(z | x, v) (all frames at once): ``mlp_xv_gxv``([f_t, v]) -> ``rnn_g_xv`` (bidirectional) ->
    ``mlp_gxv_gz`` -> ``rnn_g_z`` (a forward tanh RNN) -> ``inf_z_mean`` / ``inf_z_logvar``.
    p(z_t | z_{1:t-1}): ``rnn_prior`` (LSTM) over z_{t-1} (z_0 = 0) -> ``prior_mean`` / ``prior_logvar``;
    p(v) = N(0, I). Decoder: ``gen_logvar``(``mlp_vz_x``([v, z_t])).
    Outputs add ``v``, ``v_mean``, ``v_logvar``, ``v_prior_mean``, ``v_prior_logvar`` [B, v_dim].
    """

    v_dim: int = 16
    dense_x: tuple[int, ...] = ()
    dim_rnn_gv: int = 128
    dense_gv_v: tuple[int, ...] = ()
    dense_xv_gxv: tuple[int, ...] = ()
    dim_rnn_gxv: int = 128
    dense_gxv_gz: tuple[int, ...] = ()
    dim_rnn_gz: int = 128
    dim_rnn_prior: int = 128
    dense_vz_x: tuple[int, ...] = (32, 64, 128, 256)

    def setup(self):
        act = self.activation
        f = out_dim(self.x_dim, self.dense_x)
        self.mlp_x = LinearStack(self.dense_x, act)
        self.rnn_g_v = LSTM(f, self.dim_rnn_gv, bidirectional=True)
        self.mlp_gv_v = LinearStack(self.dense_gv_v, act)
        self.inf_v_mean = dense(self.v_dim)
        self.inf_v_logvar = dense(self.v_dim)
        self.mlp_xv_gxv = LinearStack(self.dense_xv_gxv, act)
        self.rnn_g_xv = LSTM(out_dim(f + self.v_dim, self.dense_xv_gxv), self.dim_rnn_gxv, bidirectional=True)
        self.mlp_gxv_gz = LinearStack(self.dense_gxv_gz, act)
        self.rnn_g_z = SimpleRNN(out_dim(2 * self.dim_rnn_gxv, self.dense_gxv_gz), self.dim_rnn_gz)
        self.inf_z_mean = dense(self.z_dim)
        self.inf_z_logvar = dense(self.z_dim)
        self.rnn_prior = LSTM(self.z_dim, self.dim_rnn_prior)
        self.prior_mean = dense(self.z_dim)
        self.prior_logvar = dense(self.z_dim)
        self.mlp_vz_x = LinearStack(self.dense_vz_x, act)
        self.gen_logvar = dense(self.x_dim)

    def decode(self, v, z):
        """v [B, v_dim], time-major z [T, B, z_dim] -> log-variance [T, B, x_dim]."""
        v = jnp.broadcast_to(v, z.shape[:2] + v.shape[-1:])
        return self.gen_logvar(self.mlp_vz_x(cat(v, z)))

    def __call__(self, x, *, sample: bool = True, eps=None, eps_v=None):
        xt = self._check_x(x)
        time, batch = xt.shape[:2]
        noise = self._noise(eps, sample, time, batch, dtype=xt.dtype)
        if eps_v is not None and tuple(jnp.shape(eps_v)) != (batch, self.v_dim):
            raise ValueError(f"DSAE: eps_v has shape {tuple(jnp.shape(eps_v))}; expected [{batch}, {self.v_dim}]")
        noise_v = self._noise(
            None if eps_v is None else jnp.asarray(eps_v)[:, None], sample, 1, batch, self.v_dim, dtype=xt.dtype
        )
        f = self.mlp_x(xt)
        g_v = self.rnn_g_v(f)
        h_v = self.mlp_gv_v(cat(g_v[-1, :, : self.dim_rnn_gv], g_v[0, :, self.dim_rnn_gv :]))
        v_mean, v_logvar = self.inf_v_mean(h_v), self.inf_v_logvar(h_v)
        v = reparameterize(v_mean, v_logvar, None if noise_v is None else noise_v[0])
        v_t = jnp.broadcast_to(v, (time,) + v.shape)
        g = self.rnn_g_z(self.mlp_gxv_gz(self.rnn_g_xv(self.mlp_xv_gxv(cat(f, v_t)))))
        mean, logvar = self.inf_z_mean(g), self.inf_z_logvar(g)
        z = reparameterize(mean, logvar, noise)
        h = self.rnn_prior(shift_right(z))
        out = self._outputs(self.decode(v, z), z, mean, logvar, self.prior_mean(h), self.prior_logvar(h))
        zeros = jnp.zeros_like(v_mean)
        return dict(out, v=v, v_mean=v_mean, v_logvar=v_logvar, v_prior_mean=zeros, v_prior_logvar=zeros)

    def generate(self, batch: int, num_frames: int, *, return_all: bool = False):
        v = jax.random.normal(self.make_rng(SAMPLE_RNG), (batch, self.v_dim))
        noise = jax.random.normal(self.make_rng(SAMPLE_RNG), (num_frames, batch, self.z_dim))

        def body(mdl, carry, n_t):
            z_prev, state = carry
            state = mdl.rnn_prior.step(mdl.rnn_prior.project(z_prev), state)
            z = reparameterize(mdl.prior_mean(state[0]), mdl.prior_logvar(state[0]), n_t)
            return (z, state), z

        zeros = jnp.zeros((batch, self.dim_rnn_prior))
        carry = (jnp.zeros((batch, self.z_dim)), (zeros, zeros))
        _, z = recurrent.scan(self, body, carry, noise, num_frames)
        return self._generated(self.decode(v, z), z, return_all=return_all, v=v)
