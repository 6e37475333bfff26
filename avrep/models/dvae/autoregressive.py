"""The autoregressive DVAE-family models (the decoder reads x_{1:t-1}): STORN, VRNN, SRNN.

``__call__`` is teacher-forced (the past frames are the data) unless said otherwise; ``generate``
feeds back the model's own output: by default a sample of the speech power, exp(log_var) · E with
E ~ Exp(1) (|s|² of a circular complex Gaussian draw of that variance), or with
``feedback="variance"`` the variance exp(log_var) itself (what SRNN_ss feeds back when training); an
SRNN with a real Gaussian output (MixDVAE's box model) feeds back a sample of it or, with
``feedback="mean"``, its mean.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from avrep.models.config import check_choice
from avrep.models.dvae.base import SAMPLE_RNG, DVAEBase, LinearStack, cat, dense, out_dim, reparameterize, shift_right
from avrep.nn import recurrent
from avrep.nn.recurrent import LSTM

# What ``generate`` feeds back from a Gaussian output: a sample of it, or its mean.
GAUSSIAN_FEEDBACKS = ("sample", "mean")


def _step(rnn: LSTM, x, state):
    return rnn.step(rnn.project(x), state)


def _zero_state(batch: int, hidden: int, dtype=jnp.float32):
    zeros = jnp.zeros((batch, hidden), dtype)
    return zeros, zeros


class STORN(DVAEBase):
    """Stochastic recurrent network (Bayer & Osendorfer 2014), as the DVAE benchmark builds it.

    Inference (causal, all frames at once): g = ``rnn_g``(``mlp_x_g``(x)) forward,
    q(z_t | x_{1:t}) = N(``inf_mean``, ``inf_logvar`` of ``mlp_g_z``(g_t)). Prior N(0, I).
    Decoder: h = ``rnn_h`` over [``mlp_z_h``(z_t), ``mlp_xtm1_h``(x_{t-1})] (x_0 = 0), then
    ``gen_logvar``(``mlp_h_x``(h_t)).
    """

    dense_x_g: tuple[int, ...] = (256,)
    dim_rnn_g: int = 128
    dense_g_z: tuple[int, ...] = (64, 32)
    dense_z_h: tuple[int, ...] = (32, 64)
    dense_xtm1_h: tuple[int, ...] = (256,)
    dim_rnn_h: int = 128
    dense_h_x: tuple[int, ...] = (256,)

    def setup(self):
        act = self.activation
        self.mlp_x_g = LinearStack(self.dense_x_g, act)
        self.rnn_g = LSTM(out_dim(self.x_dim, self.dense_x_g), self.dim_rnn_g)
        self.mlp_g_z = LinearStack(self.dense_g_z, act)
        self.inf_mean = dense(self.z_dim)
        self.inf_logvar = dense(self.z_dim)
        self.mlp_z_h = LinearStack(self.dense_z_h, act)
        self.mlp_xtm1_h = LinearStack(self.dense_xtm1_h, act)
        h_in = out_dim(self.z_dim, self.dense_z_h) + out_dim(self.x_dim, self.dense_xtm1_h)
        self.rnn_h = LSTM(h_in, self.dim_rnn_h)
        self.mlp_h_x = LinearStack(self.dense_h_x, act)
        self.gen_logvar = dense(self.x_dim)

    def __call__(self, x, *, sample: bool = True, eps=None):
        xt = self._check_x(x)
        noise = self._noise(eps, sample, *xt.shape[:2], dtype=xt.dtype)
        g = self.mlp_g_z(self.rnn_g(self.mlp_x_g(xt)))
        mean, logvar = self.inf_mean(g), self.inf_logvar(g)
        z = reparameterize(mean, logvar, noise)
        h = self.rnn_h(cat(self.mlp_z_h(z), self.mlp_xtm1_h(shift_right(xt))))
        return self._outputs(self.gen_logvar(self.mlp_h_x(h)), z, mean, logvar)

    def generate(self, batch: int, num_frames: int, *, feedback: str = "sample", return_all: bool = False):
        gain = self._feedback_noise(feedback, num_frames, batch)
        z = jax.random.normal(self.make_rng(SAMPLE_RNG), (num_frames, batch, self.z_dim))
        zh = self.mlp_z_h(z)  # z does not depend on the past: all frames at once

        def body(mdl, carry, inp):
            x_prev, state = carry
            zh_t, gain_t = inp
            state = _step(mdl.rnn_h, cat(zh_t, mdl.mlp_xtm1_h(x_prev)), state)
            log_var = mdl.gen_logvar(mdl.mlp_h_x(state[0]))
            x_t = jnp.exp(log_var) * gain_t
            return (x_t, state), (log_var, x_t)

        carry = (jnp.zeros((batch, self.x_dim)), _zero_state(batch, self.dim_rnn_h))
        _, (log_var, x) = recurrent.scan(self, body, carry, (zh, gain), num_frames)
        return self._generated(log_var, z, x, return_all)


class VRNN(DVAEBase):
    """Variational RNN (Chung et al. 2015), as the DVAE benchmark builds it.

    Per step t, with the LSTM state h_t before consuming frame t (zero at t = 1):
    q(z_t) = N(``inf_mean``, ``inf_logvar`` of ``mlp_hx_z``([φx_t, h_t])), φx = ``feature_extractor_x``;
    p(z_t | h_t) = N(``prior_mean``, ``prior_logvar`` of ``mlp_h_z``(h_t));
    p(x_t) from ``gen_logvar``(``mlp_hz_x``([φz_t, h_t])), φz = ``feature_extractor_z``;
    h_{t+1} = ``rnn`` stepped on [φx_t, φz_t].
    """

    dense_x: tuple[int, ...] = (256,)
    dense_z: tuple[int, ...] = (32, 64)
    dense_hx_z: tuple[int, ...] = (64, 32)
    dense_hz_x: tuple[int, ...] = (256,)
    dense_h_z: tuple[int, ...] = (64, 32)
    dim_rnn: int = 128

    def setup(self):
        act = self.activation
        self.feature_extractor_x = LinearStack(self.dense_x, act)
        self.feature_extractor_z = LinearStack(self.dense_z, act)
        self.mlp_hx_z = LinearStack(self.dense_hx_z, act)
        self.inf_mean = dense(self.z_dim)
        self.inf_logvar = dense(self.z_dim)
        self.mlp_h_z = LinearStack(self.dense_h_z, act)
        self.prior_mean = dense(self.z_dim)
        self.prior_logvar = dense(self.z_dim)
        self.mlp_hz_x = LinearStack(self.dense_hz_x, act)
        self.gen_logvar = dense(self.x_dim)
        rnn_in = out_dim(self.x_dim, self.dense_x) + out_dim(self.z_dim, self.dense_z)
        self.rnn = LSTM(rnn_in, self.dim_rnn)

    def prior(self, h):
        p = self.mlp_h_z(h)
        return self.prior_mean(p), self.prior_logvar(p)

    def decode(self, phi_z, h):
        return self.gen_logvar(self.mlp_hz_x(cat(phi_z, h)))

    def __call__(self, x, *, sample: bool = True, eps=None):
        xt = self._check_x(x)
        time, batch = xt.shape[:2]
        noise = self._noise(eps, sample, time, batch, dtype=xt.dtype)
        phi_x = self.feature_extractor_x(xt)

        def body(mdl, state, inp):
            phi_x_t, n_t = inp
            q = mdl.mlp_hx_z(cat(phi_x_t, state[0]))
            mean, logvar = mdl.inf_mean(q), mdl.inf_logvar(q)
            z = reparameterize(mean, logvar, n_t)
            phi_z = mdl.feature_extractor_z(z)
            return _step(mdl.rnn, cat(phi_x_t, phi_z), state), (state[0], z, mean, logvar, phi_z)

        _, (h, z, mean, logvar, phi_z) = recurrent.scan(
            self, body, _zero_state(batch, self.dim_rnn, xt.dtype), (phi_x, noise), time
        )
        prior_mean, prior_logvar = self.prior(h)  # all frames at once, from the stored states
        return self._outputs(self.decode(phi_z, h), z, mean, logvar, prior_mean, prior_logvar, h=h)

    def generate(self, batch: int, num_frames: int, *, feedback: str = "sample", return_all: bool = False):
        gain = self._feedback_noise(feedback, num_frames, batch)
        noise = jax.random.normal(self.make_rng(SAMPLE_RNG), (num_frames, batch, self.z_dim))

        def body(mdl, state, inp):
            n_t, gain_t = inp
            z = reparameterize(*mdl.prior(state[0]), n_t)
            phi_z = mdl.feature_extractor_z(z)
            log_var = mdl.decode(phi_z, state[0])
            x_t = jnp.exp(log_var) * gain_t
            state = _step(mdl.rnn, cat(mdl.feature_extractor_x(x_t), phi_z), state)
            return state, (log_var, z, x_t)

        _, (log_var, z, x) = recurrent.scan(self, body, _zero_state(batch, self.dim_rnn), (noise, gain), num_frames)
        return self._generated(log_var, z, x, return_all)


INFERENCES = ("backward_rnn", "causal")
OUTPUTS = ("log_var", "gaussian")
NAMINGS = ("dvae", "mixdvae")
# MixDVAE's names for the heads (``naming="mixdvae"``); its LinearStack layers are ``linear_0``, ``linear_1``, ...
_MIXDVAE_NAMES = {
    "inf_mean": "inf_z_mean",
    "inf_logvar": "inf_z_logvar",
    "prior_mean": "prior_z_mean",
    "prior_logvar": "prior_z_logvar",
    "gen_logvar": "gen_x",  # output="log_var"
    "gen_mean": "gen_x_mean",  # output="gaussian": gen_x_mean and gen_x_logvar
}


class SRNN(DVAEBase):
    """Stochastic RNN (Fraccaro et al. 2016), as the DVAE benchmark builds it; ``scheduled_sampling``
    gives DVAE_SE's ``SRNN_ss`` (same parameters); ``inference``, ``output`` and ``naming`` give
    MixDVAE's pre-trained SRNNs ([MixDVAE]; [Lin-thesis] App. A.1.2; presets ``mixdvae/*``).

    h = ``rnn_h``(``mlp_x_h``(x_{t-1})) forward (x_0 = 0). Inference, per step from z_0 = 0:
    q(z_t) = N(``inf_mean``, ``inf_logvar`` of ``mlp_gz_z``([g_t, z_{t-1}])), where
    g = ``rnn_g``(``mlp_hx_g``([h_t, x_t])) run backward in time (flipped, run, flipped back;
    ``inference="backward_rnn"``, the default) or g_t = [h_t, x_t] (``inference="causal"``: the encoder
    shares h_t with the decoder, q(z_t | x_{1:t}, z_{t-1}); no ``mlp_hx_g`` / ``rnn_g``, whose fields are
    then unused). Prior: N(``prior_mean``, ``prior_logvar`` of ``mlp_hz_z``([h_t, z_{t-1}])).
    Decoder: ``gen_logvar``(``mlp_hz_x``([h_t, z_t])) (``output="log_var"``: the log-variance of the
    speech power), or with ``output="gaussian"`` a real Gaussian N(``gen_mean``, exp(``gen_logvar``)) of
    x_t (MixDVAE's box tracks), the outputs then adding its ``mean`` [B, T, x_dim]. Outputs add ``h``
    [B, T, dim_rnn_h].

    ``scheduled_sampling`` (SRNN_ss): a second state h^gen_t = ``rnn_h`` stepped on
    ``mlp_x_h``(x^_{t-1}), where x^_{t-1} is the model's previous output (x^_0 = 0): the variance
    exp(y_{t-1}) for ``output="log_var"``, a sample mean + exp(log_var / 2) · e of the Gaussian for
    ``output="gaussian"`` (e: ``eps_x`` [B, T, x_dim] if given, else N(0, I) from the "sample" stream if
    ``sample``, else 0, i.e. the mean); the prior reads [h^gen_t, z_{t-1}]; the decoder reads h^gen_t at
    the steps where the prediction is used and h_t elsewhere: ``use_pred`` (a ``__call__`` argument) is
    the probability of using it at each step (0: teacher forcing, the default; 1: DVAE_SE's default
    forward; in between, one uniform draw per step from the "sample" stream, shared by the batch,
    decides as the authors' ``np.random.uniform() <= use_pred``). Outputs add ``h_gen``.

    ``naming``: the parameter names of the DVAE benchmark and DVAE_SE (``"dvae"``: ``linear0``,
    ``inf_mean``, ``prior_mean``, ``gen_logvar``; Gaussian: ``gen_mean`` / ``gen_logvar``) or of MixDVAE
    (``"mixdvae"``: ``linear_0``, ``inf_z_mean``, ``prior_z_mean``, ``gen_x``; Gaussian: ``gen_x_mean`` /
    ``gen_x_logvar``).

    ``generate`` feeds back, for ``output="gaussian"``, a sample of the Gaussian (``feedback="sample"``)
    or its mean (``feedback="mean"``); ``return_all`` then adds ``mean``.
    """

    dense_x_h: tuple[int, ...] = (256,)
    dim_rnn_h: int = 128
    dense_hx_g: tuple[int, ...] = (256,)
    dim_rnn_g: int = 128
    dense_gz_z: tuple[int, ...] = (64, 32)
    dense_hz_x: tuple[int, ...] = (256,)
    dense_hz_z: tuple[int, ...] = (64, 32)
    scheduled_sampling: bool = False
    inference: str = "backward_rnn"
    output: str = "log_var"
    naming: str = "dvae"

    def __post_init__(self):
        super().__post_init__()
        check_choice(self, "inference", INFERENCES)
        check_choice(self, "output", OUTPUTS)
        check_choice(self, "naming", NAMINGS)

    def setup(self):
        act = self.activation
        mix = self.naming == "mixdvae"
        names = _MIXDVAE_NAMES if mix else {}
        sep = "_" if mix else ""
        self.mlp_x_h = LinearStack(self.dense_x_h, act, sep=sep)
        self.rnn_h = LSTM(out_dim(self.x_dim, self.dense_x_h), self.dim_rnn_h)
        if self.inference == "backward_rnn":
            self.mlp_hx_g = LinearStack(self.dense_hx_g, act, sep=sep)
            self.rnn_g = LSTM(out_dim(self.dim_rnn_h + self.x_dim, self.dense_hx_g), self.dim_rnn_g, reverse=True)
        self.mlp_gz_z = LinearStack(self.dense_gz_z, act, sep=sep)
        self.inf_mean = dense(self.z_dim, names.get("inf_mean"))
        self.inf_logvar = dense(self.z_dim, names.get("inf_logvar"))
        self.mlp_hz_z = LinearStack(self.dense_hz_z, act, sep=sep)
        self.prior_mean = dense(self.z_dim, names.get("prior_mean"))
        self.prior_logvar = dense(self.z_dim, names.get("prior_logvar"))
        self.mlp_hz_x = LinearStack(self.dense_hz_x, act, sep=sep)
        if self.output == "gaussian":
            self.gen_mean = dense(self.x_dim, names.get("gen_mean"))
            self.gen_logvar = dense(self.x_dim, "gen_x_logvar" if mix else None)
        else:
            self.gen_logvar = dense(self.x_dim, names.get("gen_logvar"))

    def prior(self, h, z_tm1):
        p = self.mlp_hz_z(cat(h, z_tm1))
        return self.prior_mean(p), self.prior_logvar(p)

    def decode(self, h, z):
        """(mean, log_var) of p(x_t | ·); mean is None for ``output="log_var"``."""
        d = self.mlp_hz_x(cat(h, z))
        return (self.gen_mean(d) if self.output == "gaussian" else None), self.gen_logvar(d)

    def _fed_back(self, mean, log_var, noise):
        """x^_t, what the next step reads: exp(log_var) (times Exp(1) draws ``noise`` in ``generate``), or
        the Gaussian's sample mean + exp(log_var / 2) · noise (its mean when ``noise`` is None). A constant
        to the gradient, as in the authors' SRNN_ss (their VEM's first-step gradients match only so): training
        with scheduled sampling does not backpropagate through the model's own fed-back predictions."""
        mean = None if mean is None else jax.lax.stop_gradient(mean)
        log_var = jax.lax.stop_gradient(log_var)
        if self.output == "gaussian":
            return mean if noise is None else mean + jnp.exp(0.5 * log_var) * noise
        return jnp.exp(log_var) if noise is None else jnp.exp(log_var) * noise

    def __call__(self, x, *, sample: bool = True, eps=None, use_pred: float = 0.0, eps_x=None):
        xt = self._check_x(x)
        time, batch = xt.shape[:2]
        if eps_x is not None and not (self.output == "gaussian" and self.scheduled_sampling):
            raise ValueError(
                "SRNN: eps_x is the noise of the fed-back Gaussian sample; only a model with output='gaussian' "
                "and scheduled_sampling draws one"
            )
        noise = self._noise(eps, sample, time, batch, dtype=xt.dtype)
        h = self.rnn_h(self.mlp_x_h(shift_right(xt)))
        g = cat(h, xt) if self.inference == "causal" else self.rnn_g(self.mlp_hx_g(cat(h, xt)))

        def body(mdl, z_prev, inp):
            g_t, n_t = inp
            q = mdl.mlp_gz_z(cat(g_t, z_prev))
            mean, logvar = mdl.inf_mean(q), mdl.inf_logvar(q)
            z = reparameterize(mean, logvar, n_t)
            return z, (z, mean, logvar)

        _, (z, mean, logvar) = recurrent.scan(self, body, jnp.zeros((batch, self.z_dim), xt.dtype), (g, noise), time)
        z_tm1 = shift_right(z)
        if not self.scheduled_sampling:
            x_mean, log_var = self.decode(h, z)
            extra = {} if x_mean is None else {"mean": x_mean}
            return self._outputs(log_var, z, mean, logvar, *self.prior(h, z_tm1), h=h, **extra)
        noise_x = None
        if self.output == "gaussian":
            noise_x = self._noise(eps_x, sample, time, batch, self.x_dim, "eps_x", dtype=xt.dtype)
        x_mean, log_var, h_gen = self._generation_ss(h, z, use_pred, noise_x)
        extra = {} if x_mean is None else {"mean": x_mean}
        return self._outputs(log_var, z, mean, logvar, *self.prior(h_gen, z_tm1), h=h, h_gen=h_gen, **extra)

    def _generation_ss(self, h, z, use_pred, noise_x=None):
        """SRNN_ss's decoder: (mean or None, log_var, h_gen), time-major."""
        time, batch = z.shape[:2]
        if isinstance(use_pred, (int, float)) and use_pred <= 0:
            # Teacher forcing: y does not depend on h_gen, which is then an LSTM over x^_{t-1}.
            x_mean, log_var = self.decode(h, z)
            fed = self._fed_back(x_mean, log_var, noise_x)
            return x_mean, log_var, self.rnn_h(self.mlp_x_h(shift_right(fed)))
        if isinstance(use_pred, (int, float)) and use_pred >= 1:
            use = jnp.ones((time, batch, 1), bool)
        else:  # one draw per step, shared by the batch, as the authors' np.random.uniform() <= use_pred
            use = jax.random.uniform(self.make_rng(SAMPLE_RNG), (time, 1, 1)) <= use_pred
            use = jnp.broadcast_to(use, (time, batch, 1))

        def body(mdl, carry, inp):
            x_prev, state = carry
            h_t, z_t, use_t, n_t = inp
            state = _step(mdl.rnn_h, mdl.mlp_x_h(x_prev), state)
            x_mean, log_var = mdl.decode(jnp.where(use_t, state[0], h_t), z_t)
            return (mdl._fed_back(x_mean, log_var, n_t), state), (x_mean, log_var, state[0])

        carry = (jnp.zeros((batch, self.x_dim), z.dtype), _zero_state(batch, self.dim_rnn_h, z.dtype))
        _, (x_mean, log_var, h_gen) = recurrent.scan(self, body, carry, (h, z, use, noise_x), time)
        return x_mean, log_var, h_gen

    def generate(self, batch: int, num_frames: int, *, feedback: str = "sample", return_all: bool = False):
        if self.output == "gaussian":
            if feedback not in GAUSSIAN_FEEDBACKS:
                raise ValueError(f"SRNN.generate: feedback={feedback!r}: expected one of {GAUSSIAN_FEEDBACKS}")
            gain = None
            if feedback == "sample":
                gain = jax.random.normal(self.make_rng(SAMPLE_RNG), (num_frames, batch, self.x_dim))
        else:
            gain = self._feedback_noise(feedback, num_frames, batch)
        noise = jax.random.normal(self.make_rng(SAMPLE_RNG), (num_frames, batch, self.z_dim))

        def body(mdl, carry, inp):
            x_prev, z_prev, state = carry
            n_t, gain_t = inp
            state = _step(mdl.rnn_h, mdl.mlp_x_h(x_prev), state)
            z = reparameterize(*mdl.prior(state[0], z_prev), n_t)
            x_mean, log_var = mdl.decode(state[0], z)
            x_t = mdl._fed_back(x_mean, log_var, gain_t)
            return (x_t, z, state), (x_mean, log_var, z, x_t)

        carry = (jnp.zeros((batch, self.x_dim)), jnp.zeros((batch, self.z_dim)), _zero_state(batch, self.dim_rnn_h))
        _, (x_mean, log_var, z, x) = recurrent.scan(self, body, carry, (noise, gain), num_frames)
        extra = {} if x_mean is None else {"mean": jnp.swapaxes(x_mean, 0, 1)}
        return self._generated(log_var, z, x, return_all, **extra)
