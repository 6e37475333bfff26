"""Multimodal dynamical VAE (MDVAE / VQ-MDVAE) and its DSAE and JointMVAE baselines.

Sources (keys: docs/REFERENCES.md): [MDVAE] Sec. 2 (probabilistic model); [MDVAE] App. A.2
and [Sadok-thesis] Table B.3 (stage-2 architecture, block table B1-B11, from which the model
size is counted); where [MDVAE], [Sadok-thesis] and [code-mdvae] differ (below).

Inputs are per-frame feature sequences ``[batch, time, dim]``; the feature sizes are
fields, so the same module serves raw features (MDVAE) and the flattened
pre-quantisation VQ-VAE encoder outputs (VQ-MDVAE: audio 8×64 -> 512, visual
32×8×8 -> 2048, T = 30).

**MDVAE** ([MDVAE] Sec. 2.2–2.3; [Sadok-thesis] Table B.3). Per frame, r_a = x_a (B2,
identity) and r_v = MLP(x_v) (B1). The static latent w ~ q(w | x) comes from a
bidirectional GRU over [r_v, r_a] (B3; its final forward and backward states). Each
dynamical latent z_av, z_a, z_v has one GRU over its own past *posterior samples*, h_t =
GRU(z_{t-1}, h_{t-1}), h_1 = 0, whose state feeds both the learned prior
p(z_t | z_<t) = N(MLP(h_t)) and the posterior (B4-B9):

* q(z_av_t | h_t, w, x_a_t, x_v_t);
* q(z_a_t | h_t, w, x_a_t, z_av_t) and q(z_v_t | h_t, w, x_v_t, z_av_t), given the
  *sampled* z_av_t.

The posteriors see the current frame only (x_t in [Sadok-thesis] Sec. 4.2.3 and
[code-mdvae]; the x_{1:t-1} of [MDVAE] Sec. 2.3 is a typo), so everything but w is
causal. The decoders are per-frame MLPs on [z_a_t, w, z_av_t] (B11) and [z_v_t, w,
z_av_t] (B10); the observation models are unit-variance Gaussians. p(w) = N(0, I).

**How it is computed.** Only the truly recurrent parts run in ``nn.scan`` (a
``lax.scan``): the GRU hidden-state updates and the posterior MLPs (the sample z_t
feeds h_{t+1}). Everything else runs on all frames at once as [B*T, D] matmuls:
B1, the GRU input projections of B3, the priors (applied to the stacked states
h_{1:T} after the scan), the decoders, and the part of each posterior's first
layer that acts on x_t, w and z_av_t (``ConcatDense``: the first layer of a
posterior is one Linear on the concatenation [h, w, x..., z_av], computed as a sum
of per-input products). z_a and z_v are independent given z_av, so their chains
share one scan; the two directions of B3 share another. The noise of every frame
is drawn before the scans.

Parameter layout (for importing the authors' PyTorch checkpoint): the GRUs keep
PyTorch's parameters (``w_ih`` = ``weight_ih_l0.T``, ``w_hh``, ``b_ih``, ``b_hh``,
gate order r, z, n); each mean / log-variance pair of Linears is one Dense of
twice the width (``kernel = concat([W_mean.T, W_logvar.T], 1)``); posterior first
layers have rows ordered [h, w, inputs..., z_av] as in [Sadok-thesis] Table B.3. The
parameter count is therefore exactly the block table's: 8,489,704 with the paper's sizes
(≈ 8.49 M).

**Where [MDVAE], [Sadok-thesis] and [code-mdvae] differ, and the choices made here.**
Defaults follow our reading of [MDVAE]; each alternative is a field or an argument.

* Posterior conditioning ([Sadok-thesis] Sec. 4.2.3 vs [MDVAE] Sec. 2.3): current
  frame x_t (no alternative; the paper's x_{1:t-1} is a typo).
* z_av in the z_a / z_v posteriors ([MDVAE] Eqs. 9–10 vs the B7 / B9 sizes of
  [Sadok-thesis] Table B.3): included, as in the equations and the code
  (``zav_in_modal_posteriors=True``); ``False`` gives the table's input sizes (B7,
  B9 without l_av).
* Activations ([Sadok-thesis] Table B.3 vs [code-mdvae]): ``activations="paper"``
  (that table: ReLU in B4, B5, B6, B8, B9) or ``"code"`` (Tanh in those blocks). The
  decoders' last layers are linear (our choice: the targets are unbounded);
  ``decoder_output_activation=True`` applies the table's ReLU / Tanh there too.
* l_v: 8 as in [MDVAE] Sec. 3.2 (``dim_zv``); the [code-mdvae] config uses 4.
* Stage-2 loss ([MDVAE] Eqs. 11–12 vs [code-mdvae]): ``mdvae_loss(normalization="elbo")``
  (default) is the per-sequence negative ELBO of [MDVAE] Sec. 2.4 with unit-variance
  Gaussian NLLs (SSE/2 + const) averaged over the batch; ``"code"`` reproduces the
  code's scaling: SSE without 1/2 and dynamical KLs divided by B·T, KL_w divided by B
  only (KL_w weighted by T relative to the ELBO). ``beta`` scales every KL, as the code's
  ``beta``, for KL warm-up; the paper has none (beta = 1). The code's
  Itakura-Saito audio term on sign-indefinite VQ features is not offered (the IS
  divergence is undefined for non-positive values; the Gaussian term is used).
* Variances are log-variances everywhere (the code's parameterisation).
* The audio codebook size ([MDVAE] Sec. 3.2: 128, [code-mdvae]: 64) and the VQ-VAE
  differences concern ``avrep.models.vqvae``.

**Sampling, encoding, decoding.** Stochastic methods take their noise from the
``"sample"`` RNG stream (``apply(..., rngs={"sample": key})``); with
``sample=False`` they use means and need no RNG. ``encode`` returns the posterior
means, log-variances and samples of every latent (and, for the dynamical ones,
their prior parameters and the final GRU state); ``decode`` takes any w, z_av,
z_a, z_v (e.g. swapped between two sequences; w may also be per-frame, for
interpolation, [Sadok-thesis] App. B.3); ``generate`` samples the dynamical latents
from their learned priors, from the zero state or continuing an encoded sequence
([Sadok-thesis] App. B.4, conditional generation); ``continue_sequence`` does both.

**Baselines** ([MDVAE] Sec. 3.3 and 3.5; the paper gives no architectures for them):

* ``DSAE`` (Li & Mandt 2018): one modality, a static w and one dynamical z built
  from the same blocks: feature MLP (B1 for visual, identity for audio), B3, a
  z chain shaped like B4/B5 with posterior q(z_t | h_t, w, x_t), and the modality's
  decoder (B10 / B11) on [z_t, w]. ``DSAE_PRESETS`` has the audio and visual
  settings.
* ``JointMVAE`` (Suzuki et al. 2016, JMVAE-kl): one latent per frame, no temporal
  model, joint posterior q(z | x_a, x_v), unimodal posteriors q(z | x_a), q(z | x_v)
  for the alpha term of the loss (``jointmvae_loss``), prior N(0, I), the MDVAE
  decoders on z. The latent size defaults to MDVAE's per-frame latent size
  (84 + 16 + 8 + 8 = 116), my choice.

Outputs of every model: ``{"recon": {modality: [B, T, dim]}, "latents": {name:
{...}}}``, which ``mdvae_loss`` turns into the loss terms.

Input validation: sequences must be [batch, time, dim] with the configured dim, and
the modalities of one model must share batch and time; a ValueError names the
argument, the field and the expected shape. NaNs are the caller's business.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from avrep.models.config import check_choice
from avrep.nn import gaussian, recurrent
from avrep.nn.gaussian import GaussianHead
from avrep.nn.layers import ACTIVATIONS, ConcatDense, DenseStack
from avrep.nn.recurrent import GRUCell

# Hidden activations per block: [Sadok-thesis] Table B.3 ("paper") and the released
# code [code-mdvae] ("code").
BLOCK_ACTIVATIONS = {
    "paper": dict(
        audio_features="tanh",
        visual_features="relu",
        w_head="tanh",
        z_av_prior="relu",
        z_av_posterior="relu",
        z_a_prior="relu",
        z_a_posterior="tanh",
        z_v_prior="relu",
        z_v_posterior="relu",
        audio_decoder="tanh",
        visual_decoder="relu",
    ),
    "code": dict(
        audio_features="tanh",
        visual_features="relu",
        w_head="tanh",
        z_av_prior="tanh",
        z_av_posterior="tanh",
        z_a_prior="tanh",
        z_a_posterior="tanh",
        z_v_prior="tanh",
        z_v_posterior="tanh",
        audio_decoder="tanh",
        visual_decoder="relu",
    ),
}
NORMALIZATIONS = ("elbo", "code")
LIKELIHOODS = ("unit", "calibrated")
SAMPLE_RNG = "sample"


# ------------------------------------------------------------ building blocks ---


def _noise(module, shape, dtype=jnp.float32):
    # Drawn in float32, then rounded: the same draws under either computation dtype.
    return jax.random.normal(module.make_rng(SAMPLE_RNG), shape).astype(dtype)


class StaticEncoder(nn.Module):
    """q(w | x_{1:T}) (B3): bidirectional GRU over the frames; its final forward and
    backward states -> Dense + act -> mean, log-variance."""

    in_features: int
    gru_hidden: int
    head_hidden: int
    dim: int
    act: str = "tanh"

    def setup(self):
        self.forward_gru = GRUCell(self.in_features, self.gru_hidden)
        self.backward_gru = GRUCell(self.in_features, self.gru_hidden)
        self.hidden = nn.Dense(self.head_hidden)
        self.head = GaussianHead(self.dim)

    def __call__(self, r):
        """r [B, T, in_features] -> (mean, logvar), each [B, dim]."""
        batch, time = r.shape[:2]
        xs = recurrent.time_major((self.forward_gru.project(r), self.backward_gru.project(r)))
        xs = (xs[0], xs[1][::-1])  # the backward GRU reads frames T..1

        def body(mdl, h, x):
            return (mdl.forward_gru.step(x[0], h[0]), mdl.backward_gru.step(x[1], h[1])), None

        h0 = jnp.zeros((batch, self.gru_hidden), r.dtype)
        (h_fwd, h_bwd), _ = recurrent.scan(self, body, (h0, h0), xs, time)
        return self.head(ACTIVATIONS[self.act](self.hidden(jnp.concatenate([h_fwd, h_bwd], -1))))


class DynamicLatent(nn.Module):
    """One dynamical latent z_{1:T} with a learned autoregressive prior (B4+B5,
    B6+B7, B8+B9).

    The GRU over past samples is shared by the prior and the posterior: at frame t,
    p(z_t | z_<t) = N(prior(h_t)) and q(z_t | ...) = N(posterior([h_t, conds_t])),
    then h_{t+1} = GRU(z_t, h_t), h_1 = 0. ``cond_sizes`` are the sizes of the
    posterior's non-recurrent inputs, in order (per-frame or per-sequence).
    """

    dim: int
    gru_hidden: int
    prior_hidden: tuple[int, ...]
    posterior_hidden: tuple[int, ...]
    cond_sizes: tuple[int, ...]
    prior_act: str
    posterior_act: str

    def setup(self):
        self.gru = GRUCell(self.dim, self.gru_hidden)
        self.prior_mlp = DenseStack(self.prior_hidden, self.prior_act)
        self.prior_head = GaussianHead(self.dim)
        self.posterior_in = ConcatDense((self.gru_hidden,) + tuple(self.cond_sizes), self.posterior_hidden[0])
        self.posterior_mlp = DenseStack(self.posterior_hidden[1:], self.posterior_act)
        self.posterior_head = GaussianHead(self.dim)

    def condition(self, conds: Sequence[jax.Array]):
        """First posterior layer on the non-recurrent inputs, plus its bias.

        conds: arrays [B, T, n] (per frame) or [B, n] (per sequence, e.g. w), at
        least one per frame. Returns [B, T, posterior_hidden[0]].
        """
        pre = self.posterior_in.bias
        for i, c in enumerate(conds, start=1):
            p = self.posterior_in.part(i, c)
            pre = pre + (p if p.ndim == 3 else p[:, None])
        return pre

    def posterior_step(self, h, pre, eps):
        """One frame: q(z_t) from h_t and the precomputed ``pre``; z_t = mean if
        ``eps`` is None, else the sample; then h_{t+1}."""
        a = ACTIVATIONS[self.posterior_act](pre + self.posterior_in.part(0, h))
        mean, logvar = self.posterior_head(self.posterior_mlp(a))
        z = mean if eps is None else gaussian.reparameterize(mean, logvar, eps)
        return self.gru.step(self.gru.project(z), h), dict(h=h, mean=mean, logvar=logvar, sample=z)

    def prior(self, h):
        """p(z_t | z_<t) = N(mean, exp(logvar)) from GRU states h [..., gru_hidden]."""
        return self.prior_head(self.prior_mlp(h))

    def prior_step(self, h, eps):
        """One frame of ancestral sampling from the prior (its mean if eps is None)."""
        mean, logvar = self.prior(h)
        z = mean if eps is None else gaussian.reparameterize(mean, logvar, eps)
        return self.gru.step(self.gru.project(z), h), dict(prior_mean=mean, prior_logvar=logvar, sample=z)


def _infer_dynamics(module, conds: Mapping[str, Sequence[jax.Array]], sample: bool):
    """Posteriors of independent dynamical latents (submodules of ``module`` named
    by the keys of ``conds``), run together in one scan.

    Returns {name: {mean, logvar, prior_mean, prior_logvar, sample, state}}, all
    [B, T, ·] except the final GRU state ``state`` [B, gru_hidden] (h_{T+1}, to
    continue the sequence with ``generate``).
    """
    chains = {n: getattr(module, n) for n in conds}
    pres = {n: chains[n].condition(c) for n, c in conds.items()}
    batch, time = next(iter(pres.values())).shape[:2]
    dtype = next(iter(pres.values())).dtype  # the computation dtype (avrep.nn.precision) for carries and noise
    eps = {n: _noise(module, (batch, time, c.dim), dtype) if sample else None for n, c in chains.items()}

    def body(mdl, h, x):
        out = {n: getattr(mdl, n).posterior_step(h[n], *x[n]) for n in x}
        return {n: o[0] for n, o in out.items()}, {n: o[1] for n, o in out.items()}

    h0 = {n: jnp.zeros((batch, c.gru_hidden), dtype) for n, c in chains.items()}
    xs = recurrent.time_major({n: (pres[n], eps[n]) for n in chains})
    state, ys = recurrent.scan(module, body, h0, xs, time)
    ys = recurrent.time_major(ys)
    result = {}
    for n, y in ys.items():
        prior_mean, prior_logvar = chains[n].prior(y.pop("h"))  # all frames at once
        result[n] = dict(y, prior_mean=prior_mean, prior_logvar=prior_logvar, state=state[n])
    return result


def _sample_dynamics(
    module, names: Sequence[str], batch: int, steps: int, state: Mapping[str, jax.Array] | None, sample: bool
):
    """Ancestral sampling of independent dynamical latents from their priors.

    Starts from ``state`` ({name: [B, gru_hidden]}, zeros if None). Returns {name:
    {prior_mean, prior_logvar, sample ([B, steps, ·]), state}}.
    """
    chains = {n: getattr(module, n) for n in names}
    if state is None:
        state = {n: jnp.zeros((batch, c.gru_hidden)) for n, c in chains.items()}
    eps = {
        n: recurrent.time_major(_noise(module, (batch, steps, c.dim))) if sample else None for n, c in chains.items()
    }

    def body(mdl, h, x):
        out = {n: getattr(mdl, n).prior_step(h[n], x[n]) for n in x}
        return {n: o[0] for n, o in out.items()}, {n: o[1] for n, o in out.items()}

    state, ys = recurrent.scan(module, body, dict(state), eps, steps)
    return {n: dict(y, state=state[n]) for n, y in recurrent.time_major(ys).items()}


def _static_sample(module, mean, logvar, sample: bool):
    return gaussian.reparameterize(mean, logvar, _noise(module, mean.shape, mean.dtype)) if sample else mean


def _feature_dim(dim_in: int, hidden: tuple[int, ...]) -> int:
    return hidden[-1] if hidden else dim_in


def _check_sequence(owner: str, name: str, x, field: str, dim: int, like=None, like_name: str = ""):
    """[batch, time, dim] with the batch and time of ``like``, or ValueError."""
    shape = tuple(jnp.shape(x))
    if like is None:
        if len(shape) != 3 or shape[-1] != dim:
            raise ValueError(f"{owner}: {name} has shape {shape}; expected [batch, time, {field}={dim}]")
        return
    batch, time = jnp.shape(like)[:2]
    if shape != (batch, time, dim):
        raise ValueError(
            f"{owner}: {name} has shape {shape}; expected [{batch}, {time}, {field}={dim}] "
            f"(batch and time of {like_name})"
        )


def _check_static(owner: str, name: str, w, field: str, dim: int, batch: int | None = None, time: int | None = None):
    """w [batch, dim] (any batch if None), or also per-frame [batch, time, dim] if
    ``time`` is given; else ValueError."""
    shape = tuple(jnp.shape(w))
    ok = len(shape) == 2 and shape[1] == dim and batch in (None, shape[0])
    ok = ok or (time is not None and shape == (batch, time, dim))
    if not ok:
        expected = f"[{batch or 'batch'}, {field}={dim}]"
        if time is not None:
            expected += f" or [{batch}, {time}, {field}={dim}]"
        raise ValueError(f"{owner}: {name} has shape {shape}; expected {expected}")


def _broadcast_time(w, time: int):
    return jnp.broadcast_to(w[:, None], (w.shape[0], time, w.shape[-1])) if w.ndim == 2 else w


# ------------------------------------------------------------------- MDVAE ---


class MDVAE(nn.Module):
    """Multimodal dynamical VAE (see module doc). Defaults: VQ-MDVAE, paper sizes."""

    dim_audio: int = 512
    dim_visual: int = 2048
    dim_w: int = 84
    dim_zav: int = 16
    dim_za: int = 8
    dim_zv: int = 8  # [MDVAE] Sec. 3.2; the [code-mdvae] config uses 4
    audio_feature_hidden: tuple[int, ...] = ()  # B2: identity
    visual_feature_hidden: tuple[int, ...] = (1024, 512)  # B1
    w_gru_hidden: int = 256  # B3
    w_head_hidden: int = 256
    gru_hidden: int = 128  # h_av = h_a = h_v
    zav_prior_hidden: tuple[int, ...] = (64,)  # B4
    zav_posterior_hidden: tuple[int, ...] = (256, 128)  # B5
    za_prior_hidden: tuple[int, ...] = (32,)  # B6
    za_posterior_hidden: tuple[int, ...] = (128, 32)  # B7
    zv_prior_hidden: tuple[int, ...] = (64,)  # B8
    zv_posterior_hidden: tuple[int, ...] = (256, 128)  # B9
    audio_decoder_hidden: tuple[int, ...] = (128, 256)  # B11
    visual_decoder_hidden: tuple[int, ...] = (512, 1024)  # B10
    activations: str = "paper"  # [Sadok-thesis] Table B.3, or "code" ([code-mdvae])
    decoder_output_activation: bool = False  # True: the table's ReLU / Tanh on the last layer
    zav_in_modal_posteriors: bool = True  # False: the B7 / B9 input sizes of [Sadok-thesis] Table B.3

    def __post_init__(self):
        check_choice(self, "activations", BLOCK_ACTIVATIONS)
        super().__post_init__()

    def setup(self):
        act = BLOCK_ACTIVATIONS[self.activations]
        r_a = _feature_dim(self.dim_audio, self.audio_feature_hidden)
        r_v = _feature_dim(self.dim_visual, self.visual_feature_hidden)
        zav = (self.dim_zav,) if self.zav_in_modal_posteriors else ()
        self.audio_features = DenseStack(self.audio_feature_hidden, act["audio_features"])
        self.visual_features = DenseStack(self.visual_feature_hidden, act["visual_features"])
        self.w_encoder = StaticEncoder(r_v + r_a, self.w_gru_hidden, self.w_head_hidden, self.dim_w, act["w_head"])
        # cond_sizes follow the order of the conds passed in encode().
        self.z_av = DynamicLatent(
            self.dim_zav,
            self.gru_hidden,
            self.zav_prior_hidden,
            self.zav_posterior_hidden,
            (self.dim_w, r_a, r_v),
            act["z_av_prior"],
            act["z_av_posterior"],
        )
        self.z_a = DynamicLatent(
            self.dim_za,
            self.gru_hidden,
            self.za_prior_hidden,
            self.za_posterior_hidden,
            (self.dim_w, r_a) + zav,
            act["z_a_prior"],
            act["z_a_posterior"],
        )
        self.z_v = DynamicLatent(
            self.dim_zv,
            self.gru_hidden,
            self.zv_prior_hidden,
            self.zv_posterior_hidden,
            (self.dim_w, r_v) + zav,
            act["z_v_prior"],
            act["z_v_posterior"],
        )
        self.audio_decoder = DenseStack(
            self.audio_decoder_hidden + (self.dim_audio,),
            act["audio_decoder"],
            final_act=self.decoder_output_activation,
        )
        self.visual_decoder = DenseStack(
            self.visual_decoder_hidden + (self.dim_visual,),
            act["visual_decoder"],
            final_act=self.decoder_output_activation,
        )

    def _check_inputs(self, x_audio, x_visual):
        owner = type(self).__name__
        _check_sequence(owner, "x_audio", x_audio, "dim_audio", self.dim_audio)
        _check_sequence(owner, "x_visual", x_visual, "dim_visual", self.dim_visual, x_audio, "x_audio")

    def encode(self, x_audio, x_visual, *, sample: bool = True, w=None):
        """Posteriors of every latent.

        x_audio [B, T, dim_audio], x_visual [B, T, dim_visual]. Returns {"w": {mean,
        logvar, sample} ([B, dim_w]), "z_av" | "z_a" | "z_v": {mean, logvar,
        prior_mean, prior_logvar, sample} ([B, T, ·]) + state [B, gru_hidden]}.
        ``sample`` holds the reparameterised samples, or the means if
        ``sample=False``. ``w`` [B, dim_w], if given, replaces the w that conditions
        the dynamical posteriors (q(w | x) is still reported).
        """
        self._check_inputs(x_audio, x_visual)
        r_a = self.audio_features(x_audio)
        r_v = self.visual_features(x_visual)
        w_mean, w_logvar = self.w_encoder(jnp.concatenate([r_v, r_a], axis=-1))
        if w is None:
            w = _static_sample(self, w_mean, w_logvar, sample)
        else:
            _check_static(f"{type(self).__name__}.encode", "w", w, "dim_w", self.dim_w, x_audio.shape[0])
        latents = dict(w=dict(mean=w_mean, logvar=w_logvar, sample=w))
        latents.update(_infer_dynamics(self, {"z_av": (w, r_a, r_v)}, sample))
        zav = (latents["z_av"]["sample"],) if self.zav_in_modal_posteriors else ()
        latents.update(_infer_dynamics(self, {"z_a": (w, r_a) + zav, "z_v": (w, r_v) + zav}, sample))
        return latents

    def decode(self, w, z_av, z_a, z_v):
        """Means of p(x_a_t | w, z_av_t, z_a_t) and p(x_v_t | w, z_av_t, z_v_t).

        z_* [B, T, dim_z*]; w [B, dim_w] or per-frame [B, T, dim_w]. Returns
        {"audio": [B, T, dim_audio], "visual": [B, T, dim_visual]}.
        """
        owner = f"{type(self).__name__}.decode"
        _check_sequence(owner, "z_av", z_av, "dim_zav", self.dim_zav)
        _check_sequence(owner, "z_a", z_a, "dim_za", self.dim_za, z_av, "z_av")
        _check_sequence(owner, "z_v", z_v, "dim_zv", self.dim_zv, z_av, "z_av")
        _check_static(owner, "w", w, "dim_w", self.dim_w, *z_av.shape[:2])
        w = _broadcast_time(w, z_av.shape[1])
        return dict(
            audio=self.audio_decoder(jnp.concatenate([z_a, w, z_av], axis=-1)),
            visual=self.visual_decoder(jnp.concatenate([z_v, w, z_av], axis=-1)),
        )

    def __call__(self, x_audio, x_visual, *, sample: bool = True):
        """Encode then decode: {"recon": {"audio", "visual"}, "latents": encode(...)}."""
        latents = self.encode(x_audio, x_visual, sample=sample)
        s = {n: v["sample"] for n, v in latents.items()}
        return dict(recon=self.decode(s["w"], s["z_av"], s["z_a"], s["z_v"]), latents=latents)

    def generate(self, w, steps: int, *, state: Mapping[str, jax.Array] | None = None, sample: bool = True):
        """Samples z_av, z_a, z_v from their learned priors for ``steps`` frames and
        decodes them with w [B, dim_w].

        ``state``: {"z_av", "z_a", "z_v": [B, gru_hidden]} GRU states to continue
        from (``encode(...)[name]["state"]``); zeros, the start of a sequence, by
        default. ``sample=False`` follows the prior means. Returns {"recon",
        "latents": {name: {prior_mean, prior_logvar, sample, state}}}.
        """
        _check_static(f"{type(self).__name__}.generate", "w", w, "dim_w", self.dim_w)
        latents = _sample_dynamics(self, ("z_av", "z_a", "z_v"), w.shape[0], steps, state, sample)
        s = {n: v["sample"] for n, v in latents.items()}
        return dict(recon=self.decode(w, s["z_av"], s["z_a"], s["z_v"]), latents=latents)

    def continue_sequence(self, x_audio, x_visual, steps: int, *, sample: bool = True):
        """Analysis-resynthesis of the given frames, then ``steps`` frames generated
        from the priors, continuing their GRUs with the same w ([Sadok-thesis] App. B.4).
        Returns {"audio": [B, T + steps, dim_audio], "visual": [...]}."""
        out = self(x_audio, x_visual, sample=sample)
        latents = out["latents"]
        state = {n: latents[n]["state"] for n in ("z_av", "z_a", "z_v")}
        gen = self.generate(latents["w"]["sample"], steps, state=state, sample=sample)
        return {m: jnp.concatenate([out["recon"][m], gen["recon"][m]], axis=1) for m in out["recon"]}


# -------------------------------------------------------------------- loss ---


def _reduce(per_item, normalization: str):
    """Per-sequence [B] or per-frame [B, T] terms -> scalar. "elbo": sum over time,
    mean over batch; "code": mean over time and batch (the code's 1/(B·T))."""
    if per_item.ndim == 2:
        per_item = jnp.sum(per_item, 1) if normalization == "elbo" else jnp.mean(per_item, 1)
    return jnp.mean(per_item)


def _kl(latent, normalization: str):
    kl = gaussian.kl_divergence(
        latent["mean"], latent["logvar"], latent.get("prior_mean", 0.0), latent.get("prior_logvar", 0.0)
    )
    return _reduce(kl, normalization)


def likelihood_kinds(likelihood: str, modalities, normalization: str = "elbo") -> dict[str, str]:
    """{modality: "unit" | "calibrated"} from one kind for every modality ("calibrated") or per modality
    ("visual=calibrated[,audio=unit]"; modalities left out: "unit"); a ValueError says what is wrong."""
    if "=" not in likelihood:
        kinds, unknown = {m: likelihood for m in modalities}, []
    else:
        per_modality = {m.strip(): k.strip() for m, _, k in (p.partition("=") for p in likelihood.split(","))}
        kinds = {m: per_modality.get(m, "unit") for m in modalities}
        unknown = sorted(set(per_modality) - set(modalities))
    if unknown or any(k not in LIKELIHOODS for k in kinds.values()):
        raise ValueError(
            f"likelihood={likelihood!r}: expected one of {LIKELIHOODS}, or per modality "
            f"'modality=kind,...' with modalities from {sorted(modalities)}"
        )
    if normalization != "elbo" and set(kinds.values()) != {"unit"}:
        raise ValueError(f"likelihood={likelihood!r}: 'calibrated' needs normalization='elbo', got {normalization!r}")
    return kinds


def mdvae_loss(
    outputs: Mapping[str, Any],
    targets: Mapping[str, jax.Array],
    *,
    beta: float | jax.Array = 1.0,
    normalization: str = "elbo",
    likelihood: str = "unit",
) -> dict[str, jax.Array]:
    """Negative ELBO ([MDVAE] Sec. 2.4, Eqs. 11–12) of MDVAE / DSAE / JointMVAE outputs, and its terms.

    outputs: a model's ``{"recon": {modality: mean}, "latents": {name: {mean,
    logvar[, prior_mean, prior_logvar]}}}``; latents without a prior get N(0, I).
    targets: {modality: x} ([B, T, dim], the model's inputs).
    Returns {"loss", "recon_<modality>"..., "kl_<latent>"...}: loss = sum(recon) +
    beta * sum(kl). ``normalization``: "elbo" (default) per-sequence negative ELBO,
    unit-variance Gaussian NLL (SSE/2 + const), mean over the batch; "code" the
    authors' code: SSE and dynamical KLs / (B·T), static KLs / B ([code-mdvae]).
    ``likelihood``: "unit" (the papers) or "calibrated" (our option, "elbo" only: the modality's
    Gaussian variance is its batch mean squared error, held constant in the gradient, the optimal
    sigma of Rybkin et al. 2021, so its reconstruction is weighted by its own error), for every
    modality or per modality ("visual=calibrated"; see :func:`likelihood_kinds`).
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"mdvae_loss: normalization={normalization!r}: expected one of {NORMALIZATIONS}")
    kinds = likelihood_kinds(likelihood, outputs["recon"], normalization)
    terms = {}
    for m, x_hat in outputs["recon"].items():
        if m not in targets:
            raise ValueError(f"mdvae_loss: targets has no {m!r} entry; expected the keys {sorted(outputs['recon'])}")
        x = targets[m]
        if x.shape != x_hat.shape:
            raise ValueError(f"mdvae_loss: targets[{m!r}] has shape {x.shape}; expected {x_hat.shape}")
        if normalization == "elbo":
            logvar = (
                0.0 if kinds[m] == "unit" else jnp.log(jax.lax.stop_gradient(jnp.mean(jnp.square(x - x_hat))) + 1e-8)
            )
            per_frame = gaussian.gaussian_nll(x, x_hat, logvar)
        else:
            per_frame = jnp.sum(jnp.square(x - x_hat), axis=-1)
        terms[f"recon_{m}"] = _reduce(per_frame, normalization)
    for name, latent in outputs["latents"].items():
        terms[f"kl_{name}"] = _kl(latent, normalization)
    recon = sum(v for k, v in terms.items() if k.startswith("recon_"))
    kl = sum(v for k, v in terms.items() if k.startswith("kl_"))
    terms["loss"] = recon + beta * kl
    return terms


def jointmvae_loss(
    outputs: Mapping[str, Any],
    targets: Mapping[str, jax.Array],
    *,
    beta: float | jax.Array = 1.0,
    alpha: float | jax.Array = 1.0,
    normalization: str = "elbo",
    likelihood: str = "unit",
) -> dict[str, jax.Array]:
    """JMVAE-kl loss ([Sadok-thesis] Eq. 2.33; [MDVAE] Sec. 3.5): ``mdvae_loss`` plus alpha * sum_m
    KL(q(z | x_a, x_v) || q(z | x_m)), reported as "kl_unimodal_<modality>"."""
    terms = mdvae_loss(outputs, targets, beta=beta, normalization=normalization, likelihood=likelihood)
    joint = outputs["latents"]["z"]
    for m, q in outputs["unimodal"].items():
        kl = _kl(
            dict(mean=joint["mean"], logvar=joint["logvar"], prior_mean=q["mean"], prior_logvar=q["logvar"]),
            normalization,
        )
        terms[f"kl_unimodal_{m}"] = kl
        terms["loss"] = terms["loss"] + alpha * kl
    return terms


# -------------------------------------------------------------------- DSAE ---


DSAE_PRESETS = {
    # VQ-DSAE-visual: B1 features, B10 decoder (the field defaults).
    "visual": dict(modality="visual", dim_x=2048),
    # VQ-DSAE-audio: identity features (B2), B11 decoder.
    "audio": dict(modality="audio", dim_x=512, feature_hidden=(), decoder_hidden=(128, 256), decoder_act="tanh"),
}


class DSAE(nn.Module):
    """Disentangled sequential autoencoder (Li & Mandt 2018) on one modality (see
    module doc): static w ~ q(w | x_{1:T}) (B3), dynamical z with a learned
    autoregressive prior and q(z_t | h_t, w, x_t) (B4/B5 shapes), decoder
    p(x_t | z_t, w). ``modality`` names the input in outputs["recon"] and in the
    loss targets. Defaults: the visual setting; ``DSAE_PRESETS["audio"]``."""

    modality: str = "visual"
    dim_x: int = 2048
    feature_hidden: tuple[int, ...] = (1024, 512)
    feature_act: str = "relu"
    dim_w: int = 84
    w_gru_hidden: int = 256
    w_head_hidden: int = 256
    dim_z: int = 16
    gru_hidden: int = 128
    prior_hidden: tuple[int, ...] = (64,)
    posterior_hidden: tuple[int, ...] = (256, 128)
    prior_act: str = "relu"
    posterior_act: str = "relu"
    decoder_hidden: tuple[int, ...] = (512, 1024)
    decoder_act: str = "relu"
    decoder_output_activation: bool = False

    def __post_init__(self):
        for field in ("feature_act", "prior_act", "posterior_act", "decoder_act"):
            check_choice(self, field, ACTIVATIONS)
        super().__post_init__()

    def setup(self):
        r = _feature_dim(self.dim_x, self.feature_hidden)
        self.features = DenseStack(self.feature_hidden, self.feature_act)
        self.w_encoder = StaticEncoder(r, self.w_gru_hidden, self.w_head_hidden, self.dim_w)
        self.z = DynamicLatent(
            self.dim_z,
            self.gru_hidden,
            self.prior_hidden,
            self.posterior_hidden,
            (self.dim_w, r),
            self.prior_act,
            self.posterior_act,
        )
        self.decoder = DenseStack(
            self.decoder_hidden + (self.dim_x,), self.decoder_act, final_act=self.decoder_output_activation
        )

    def encode(self, x, *, sample: bool = True, w=None):
        """x [B, T, dim_x] -> {"w": {mean, logvar, sample}, "z": {mean, logvar,
        prior_mean, prior_logvar, sample, state}} (as ``MDVAE.encode``)."""
        owner = type(self).__name__
        _check_sequence(owner, "x", x, "dim_x", self.dim_x)
        r = self.features(x)
        w_mean, w_logvar = self.w_encoder(r)
        if w is None:
            w = _static_sample(self, w_mean, w_logvar, sample)
        else:
            _check_static(f"{owner}.encode", "w", w, "dim_w", self.dim_w, x.shape[0])
        latents = dict(w=dict(mean=w_mean, logvar=w_logvar, sample=w))
        latents.update(_infer_dynamics(self, {"z": (w, r)}, sample))
        return latents

    def decode(self, w, z):
        """z [B, T, dim_z], w [B, dim_w] or [B, T, dim_w] -> {modality: [B, T, dim_x]}."""
        owner = f"{type(self).__name__}.decode"
        _check_sequence(owner, "z", z, "dim_z", self.dim_z)
        _check_static(owner, "w", w, "dim_w", self.dim_w, *z.shape[:2])
        w = _broadcast_time(w, z.shape[1])
        return {self.modality: self.decoder(jnp.concatenate([z, w], axis=-1))}

    def __call__(self, x, *, sample: bool = True):
        latents = self.encode(x, sample=sample)
        return dict(recon=self.decode(latents["w"]["sample"], latents["z"]["sample"]), latents=latents)

    def generate(self, w, steps: int, *, state: jax.Array | None = None, sample: bool = True):
        """z from its prior for ``steps`` frames (from GRU state [B, gru_hidden], or
        zeros), decoded with w [B, dim_w]."""
        _check_static(f"{type(self).__name__}.generate", "w", w, "dim_w", self.dim_w)
        latents = _sample_dynamics(self, ("z",), w.shape[0], steps, None if state is None else {"z": state}, sample)
        return dict(recon=self.decode(w, latents["z"]["sample"]), latents=latents)


# --------------------------------------------------------------- JointMVAE ---


class JointMVAE(nn.Module):
    """Joint multimodal VAE (Suzuki et al. 2016), frame by frame (see module doc).

    Per frame: q(z | x_a, x_v) from an MLP on [r_a, r_v]; q(z | x_a), q(z | x_v)
    from MLPs on r_a, r_v; p(z) = N(0, I); decoders as MDVAE's (B10, B11) on z.
    Inputs are sequences like MDVAE's, but the frames are independent.
    """

    dim_audio: int = 512
    dim_visual: int = 2048
    dim_z: int = 116  # MDVAE's per-frame latent size (84 + 16 + 8 + 8), my choice
    audio_feature_hidden: tuple[int, ...] = ()
    visual_feature_hidden: tuple[int, ...] = (1024, 512)
    encoder_hidden: tuple[int, ...] = (256, 128)  # joint and unimodal encoders
    encoder_act: str = "relu"
    audio_decoder_hidden: tuple[int, ...] = (128, 256)
    visual_decoder_hidden: tuple[int, ...] = (512, 1024)
    decoder_output_activation: bool = False

    def __post_init__(self):
        check_choice(self, "encoder_act", ACTIVATIONS)
        super().__post_init__()

    def setup(self):
        act = BLOCK_ACTIVATIONS["paper"]
        self.audio_features = DenseStack(self.audio_feature_hidden, act["audio_features"])
        self.visual_features = DenseStack(self.visual_feature_hidden, act["visual_features"])
        self.joint_encoder = DenseStack(self.encoder_hidden, self.encoder_act)
        self.audio_encoder = DenseStack(self.encoder_hidden, self.encoder_act)
        self.visual_encoder = DenseStack(self.encoder_hidden, self.encoder_act)
        self.joint_head = GaussianHead(self.dim_z)
        self.audio_head = GaussianHead(self.dim_z)
        self.visual_head = GaussianHead(self.dim_z)
        self.audio_decoder = DenseStack(
            self.audio_decoder_hidden + (self.dim_audio,),
            act["audio_decoder"],
            final_act=self.decoder_output_activation,
        )
        self.visual_decoder = DenseStack(
            self.visual_decoder_hidden + (self.dim_visual,),
            act["visual_decoder"],
            final_act=self.decoder_output_activation,
        )

    def _features(self, x_audio, x_visual):
        owner = type(self).__name__
        if x_audio is not None:
            _check_sequence(owner, "x_audio", x_audio, "dim_audio", self.dim_audio)
        if x_visual is not None:
            like = (x_audio, "x_audio") if x_audio is not None else (None, "")
            _check_sequence(owner, "x_visual", x_visual, "dim_visual", self.dim_visual, *like)
        return (
            None if x_audio is None else self.audio_features(x_audio),
            None if x_visual is None else self.visual_features(x_visual),
        )

    def _posterior(self, r_audio, r_visual):
        """q(z | the modalities whose features are not None)."""
        if r_visual is None:
            return self.audio_head(self.audio_encoder(r_audio))
        if r_audio is None:
            return self.visual_head(self.visual_encoder(r_visual))
        return self.joint_head(self.joint_encoder(jnp.concatenate([r_audio, r_visual], -1)))

    def encode(self, x_audio=None, x_visual=None, *, sample: bool = True):
        """q(z | given modalities): joint if both are given, else unimodal (for
        cross-modal inference). Returns {mean, logvar, sample}, each [B, T, dim_z]."""
        if x_audio is None and x_visual is None:
            raise ValueError(f"{type(self).__name__}.encode: expected x_audio and/or x_visual, got neither")
        mean, logvar = self._posterior(*self._features(x_audio, x_visual))
        return dict(mean=mean, logvar=logvar, sample=_static_sample(self, mean, logvar, sample))

    def decode(self, z):
        """z [B, T, dim_z] -> {"audio": [B, T, dim_audio], "visual": [B, T, dim_visual]}."""
        _check_sequence(f"{type(self).__name__}.decode", "z", z, "dim_z", self.dim_z)
        return dict(audio=self.audio_decoder(z), visual=self.visual_decoder(z))

    def __call__(self, x_audio, x_visual, *, sample: bool = True):
        """{"recon", "latents": {"z": {mean, logvar, sample}}, "unimodal": {"audio",
        "visual": {mean, logvar}}} (the unimodal posteriors for ``jointmvae_loss``)."""
        if x_audio is None or x_visual is None:
            raise ValueError(f"{type(self).__name__}: expected both x_audio and x_visual")
        r_audio, r_visual = self._features(x_audio, x_visual)
        mean, logvar = self._posterior(r_audio, r_visual)
        z = dict(mean=mean, logvar=logvar, sample=_static_sample(self, mean, logvar, sample))
        unimodal = {}
        for m, r in (("audio", (r_audio, None)), ("visual", (None, r_visual))):
            mean, logvar = self._posterior(*r)
            unimodal[m] = dict(mean=mean, logvar=logvar)
        return dict(recon=self.decode(z["sample"]), latents=dict(z=z), unimodal=unimodal)
