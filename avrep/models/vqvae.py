"""Frame-wise audio and visual VQ-VAEs (stage-1 tokenisers), channels-last.

Sources (keys: docs/REFERENCES.md): [MDVAE] Sec. 3.2 and App. A.1 (MDVAE: visual
64×64 -> 8×8×32, 512 codes; audio 513 bins -> 64×8, 128 codes in the paper, 64 in
[code-mdvae]) and [Sadok-thesis] Sec. 5.3.1 (VQ-MAE: visual 96×96 -> 24×24×4, 512
codes; audio 256 codes with BatchNorm; layers from [code-vqmae-av]).

``arch`` selects between the two published descriptions of the networks
([MDVAE] Tables A.5–A.6, = [Sadok-thesis] Tables B.1–B.2, and [code-mdvae]):

* ``"code"`` (default): the authors' released PyTorch code ([code-mdvae],
  [code-vqmae-av]). Residual blocks are pre-activation bottlenecks
  ``x + Conv1x1(act(Conv3x3(act(x))))`` (no biases, width ``residual_hidden``); the visual
  encoder has an extra 3×3 conv before the residual stack; the decoder starts with a 3×3 conv. The layer feeding the
  encoder's residual stack is linear (the blocks start with the activation).
  This is the model behind the released checkpoint and the published numbers
  of VQ-MAE, it is ~2× smaller (visual 0.95 M vs 1.79 M parameters), and the
  throughput targets refer to it.
* ``"paper"``: the papers' appendix tables. Residual blocks are
  ``x + Conv3x3(act(Conv3x3(x)))`` at full width with biases, every
  downsampling conv is followed by its activation, no extra conv, and the
  decoder starts with a 1×1 (transposed) conv. The audio decoder keeps the
  code's kernel sizes (ConvT k4 then k3), because the table's give 127/514
  bins instead of 128/513 ([MDVAE] Table A.6).

Both archs end every residual stack with the activation (ReLU visual, Tanh
audio). ``impl`` picks how the convolutions are computed (see
``avrep.nn.layers``); it never changes the function or the parameters.

Variable collections: ``params``; ``vq_ema`` (codebook and EMA statistics, see
``avrep.nn.quantizer``); ``batch_stats`` (audio with ``batch_norm=True`` only).
Training applies with ``mutable=["vq_ema"]`` (+ ``"batch_stats"``).

BatchNorm statistics (``batch_norm=True``). Training (``train=True``) normalises with
the batch's statistics and updates the running ones. Inference (``train=False``) uses
``batch_stats_mode``:

* ``"running"`` (default, and what avrep's tokenizer path uses: ``load_checkpoint``'s
  ``apply_fn``, ``avrep.features.tokenizers``, evaluation): the stored running statistics.
  A frame's tokens then depend on that frame alone, not on which frames share its batch,
  so cached features, padded evaluation batches and any batch size give the same tokens.
* ``"batch"``: the statistics of the batch being encoded, without updating the stored
  ones. This is how the authors' VQ-MAE-S code tokenises (it never switches its
  VQ-VAE to eval mode); use it to reproduce their token sequences, batch by batch
  (a VQ-MAE run selects it for its frozen tokenizers with config key
  ``tokenizers.batch_stats_mode``).

``unbiased_running_var=True`` makes the running variance average the unbiased batch
variance, as PyTorch's BatchNorm does (flax's, the default, averages the biased one);
the importer of the authors' checkpoints (``avrep.convert.vqvae``) sets it, so that
training an imported model further follows their recipe.

Latents are channels-last: audio ``z_e`` is [B, 64, code_dim] (frequency
position, channel), visual ``z_e`` is [B, h, w, code_dim]. A PyTorch-ordered
flat vector (channel-major, as the MDVAE code flattens ``(8, 64)``) is
``z_e.transpose(0, 2, 1).reshape(B, -1)`` for audio.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from avrep.models.config import check_choice, module_from_config
from avrep.nn import layers
from avrep.nn.quantizer import VectorQuantizerEMA

ARCHS = ("code", "paper")
INPUT_TRANSFORMS = ("none", "log")
BATCH_STATS_MODES = ("running", "batch")
LOG_EPS = 1e-8  # input_transform="log" feeds log(x + LOG_EPS)


class ResidualStack(nn.Module):
    """``num_layers`` residual blocks, then the activation (see module doc)."""

    num_layers: int
    hidden: int
    arch: str
    act: Callable[[jax.Array], jax.Array]
    ndim: int
    impl: str

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        conv = lambda *a, **kw: layers.Conv(*a, ndim=self.ndim, impl=self.impl, **kw)
        for _ in range(self.num_layers):
            if self.arch == "code":
                h = conv(self.hidden, 3, padding=1, use_bias=False)(self.act(x))
                h = conv(width, 1, use_bias=False)(self.act(h))
            else:
                h = conv(width, 3, padding=1)(x)
                h = conv(width, 3, padding=1)(self.act(h))
            x = x + h
        return self.act(x)


@dataclasses.dataclass(frozen=True)
class _Layer:
    features: int
    kernel_size: int
    padding: int  # PyTorch padding; every resampling layer has stride 2


class _ConvNet(nn.Module):
    """Fields shared by the encoder and the decoder (set together by each VQ-VAE)."""

    residual_hidden: int
    num_residual_layers: int
    arch: str
    act: Callable[[jax.Array], jax.Array]
    batch_norm: bool
    ndim: int
    impl: str
    batch_stats_mode: str
    unbiased_running_var: bool

    def _batch_norm(self, x, train: bool):
        # PyTorch BatchNorm defaults: momentum 0.1 (flax: 0.9), eps 1e-5. Inference uses the running statistics,
        # or with batch_stats_mode="batch" the batch's without updating the stored ones (module doc).
        norm = layers.BatchNorm(momentum=0.9, epsilon=1e-5, unbiased_running_var=self.unbiased_running_var)
        return norm(x, use_running_average=not train and self.batch_stats_mode == "running", update_stats=train)


class _Encoder(_ConvNet):
    """Stride-2 convs, [extra 3×3 conv], residual stack, 1×1 to code_dim."""

    downsample: tuple[_Layer, ...]
    extra_conv: bool
    code_dim: int

    @nn.compact
    def __call__(self, x, train: bool):
        last = len(self.downsample) - 1
        for i, layer in enumerate(self.downsample):
            x = layers.Conv(layer.features, layer.kernel_size, 2, layer.padding, ndim=self.ndim, impl=self.impl)(x)
            if self.batch_norm:
                x = self._batch_norm(x, train)
            if self.arch == "paper" or i < last or self.extra_conv:
                x = self.act(x)
        if self.extra_conv:
            x = layers.Conv(x.shape[-1], 3, padding=1, ndim=self.ndim, impl=self.impl)(x)
        x = ResidualStack(self.num_residual_layers, self.residual_hidden, self.arch, self.act, self.ndim, self.impl)(x)
        return layers.Conv(self.code_dim, 1, ndim=self.ndim, impl=self.impl)(x)


class _Decoder(_ConvNet):
    """Input conv, residual stack, stride-2 transposed convs, linear output."""

    hidden: int
    upsample: tuple[_Layer, ...]

    @nn.compact
    def __call__(self, z, train: bool):
        k = 3 if self.arch == "code" else 1
        x = layers.Conv(self.hidden, k, padding=k // 2, ndim=self.ndim, impl=self.impl)(z)
        x = ResidualStack(self.num_residual_layers, self.residual_hidden, self.arch, self.act, self.ndim, self.impl)(x)
        last = len(self.upsample) - 1
        for i, layer in enumerate(self.upsample):
            x = layers.ConvTranspose(
                layer.features, layer.kernel_size, 2, layer.padding, ndim=self.ndim, impl=self.impl
            )(x)
            if i < last:
                if self.batch_norm:
                    x = self._batch_norm(x, train)
                x = self.act(x)
        return x


class _VQVAE(nn.Module):
    """Shared fields and encode / quantise / decode API; subclasses define the
    layers and the sizes (num_codes, code_dim, hidden, ...)."""

    arch: str = "code"
    commitment_cost: float = 0.25
    decay: float = 0.99
    epsilon: float = 1e-5
    restart_dead_codes: bool = False
    batch_norm: bool = False
    impl: str = "fast"
    batch_stats_mode: str = "running"  # BatchNorm statistics at inference: "running" | "batch" (module doc)
    unbiased_running_var: bool = False  # True: PyTorch's running variance (module doc)

    def __post_init__(self):
        # Validate at construction, so a bad config fails before init/apply.
        for field, choices in self._choices().items():
            check_choice(self, field, choices)
        super().__post_init__()

    def _choices(self):
        return {"arch": ARCHS, "impl": layers.IMPLS, "batch_stats_mode": BATCH_STATS_MODES}

    def _net_fields(self, act, ndim):
        """The ``_ConvNet`` fields shared by this model's encoder and decoder."""
        return dict(
            residual_hidden=self.residual_hidden,
            num_residual_layers=self.num_residual_layers,
            arch=self.arch,
            act=act,
            batch_norm=self.batch_norm,
            ndim=ndim,
            impl=self.impl,
            batch_stats_mode=self.batch_stats_mode,
            unbiased_running_var=self.unbiased_running_var,
        )

    def _quantizer(self):
        return VectorQuantizerEMA(
            self.num_codes, self.code_dim, self.decay, self.epsilon, self.commitment_cost, self.restart_dead_codes
        )

    def encode(self, x, train: bool = False):
        """Pre-quantisation latents ``z_e`` (what MDVAE consumes)."""
        return self.encoder(self._prepare(x), train)

    def quantize(self, z_e):
        """Nearest codes ``(z_q, indices)`` with the current (frozen) codebook."""
        indices = self.vq.lookup(z_e)
        return self.vq.quantize_indices(indices), indices

    def decode_indices(self, indices):
        return self.decode(self.vq.quantize_indices(indices))

    def __call__(self, x, train: bool):
        """Returns dict(recon, z_e, z_q, indices, commitment_loss, perplexity,
        usage) (+ log_recon for audio)."""
        z_e = self.encode(x, train)
        out = self.vq(z_e, train)
        out.update(self.decode(out["z_q"], train), z_e=z_e)
        return out


class VisualVQVAE(_VQVAE):
    """[B, H, W, 3] images in [-0.5, 0.5] -> [B, H/2^n, W/2^n, code_dim]."""

    num_codes: int = 512
    code_dim: int = 32
    hidden: int = 128
    residual_hidden: int = 32
    num_residual_layers: int = 2
    num_downsamples: int = 3
    out_channels: int = 3

    def setup(self):
        h, n = self.hidden, self.num_downsamples
        common = self._net_fields(act=nn.relu, ndim=2)
        self.encoder = _Encoder(
            downsample=tuple(_Layer(h // 2 if i == 0 else h, 4, 1) for i in range(n)),
            extra_conv=self.arch == "code",
            code_dim=self.code_dim,
            **common,
        )
        self.vq = self._quantizer()
        self.decoder = _Decoder(
            hidden=h,
            upsample=tuple(_Layer(h // 2, 4, 1) for _ in range(n - 1)) + (_Layer(self.out_channels, 4, 1),),
            **common,
        )

    def _prepare(self, x):
        return x

    def decode(self, z_q, train: bool = False):
        """Reconstruction dict ``{"recon": [B, H, W, 3]}`` (linear output)."""
        return dict(recon=self.decoder(z_q, train))


class AudioVQVAE(_VQVAE):
    """[B, 513] power-spectrum frames -> [B, 64, code_dim] -> exp() output."""

    num_codes: int = 64
    code_dim: int = 8
    hidden: int = 32
    residual_hidden: int = 16
    num_residual_layers: int = 1
    input_transform: str = "none"

    def _choices(self):
        return {**super()._choices(), "input_transform": INPUT_TRANSFORMS}

    def setup(self):
        h = self.hidden
        common = self._net_fields(act=jnp.tanh, ndim=1)
        self.encoder = _Encoder(
            downsample=(_Layer(h // 2, 4, 1), _Layer(h, 4, 1), _Layer(h, 3, 1)),
            extra_conv=False,
            code_dim=self.code_dim,
            **common,
        )
        self.vq = self._quantizer()
        self.decoder = _Decoder(hidden=h, upsample=(_Layer(h, 4, 1), _Layer(h // 2, 4, 1), _Layer(1, 3, 0)), **common)

    def _prepare(self, x):
        if self.input_transform == "log":
            x = jnp.log(x + LOG_EPS)
        return x[..., None]

    def decode(self, z_q, train: bool = False):
        """``{"log_recon", "recon"}``, each [B, 513]; recon = exp(log_recon)."""
        log_recon = self.decoder(z_q, train)[..., 0]
        return dict(log_recon=log_recon, recon=jnp.exp(log_recon))


MODALITIES = {"audio": AudioVQVAE, "visual": VisualVQVAE}

# Published settings (configs for build_vqvae). MDVAE audio: the released code
# and checkpoint ([code-mdvae]) use 64 codes, the paper 128 ([MDVAE] Sec. 3.2).
SETTINGS = {
    "mdvae_audio": dict(modality="audio", num_codes=64),
    "mdvae_visual": dict(modality="visual"),
    "vqmae_audio": dict(modality="audio", num_codes=256, residual_hidden=32, batch_norm=True),
    # The released VQ-MAE-S speech VQ-VAE ([code-vqmae-s], checkpoint 2022-12-27/21-42, the one every VQ-MAE-S
    # script loads): 2 residual layers, linear power in (no log); import it with ``python -m avrep.convert vqvae``.
    "vqmae_s_audio": dict(
        modality="audio",
        num_codes=256,
        residual_hidden=32,
        num_residual_layers=2,
        batch_norm=True,
        input_transform="none",
    ),
    "vqmae_visual": dict(modality="visual", code_dim=4, residual_hidden=64, num_downsamples=2),
}


def build_vqvae(cfg: Mapping[str, Any]) -> _VQVAE:
    """Builds a VQ-VAE from ``{"modality": "audio"|"visual", **fields}``.

    Raises ValueError naming the offending key: unknown keys, a bad modality,
    or a bad value of ``arch`` / ``impl`` / ``input_transform`` (checked by the
    module at construction).
    """
    cfg = dict(cfg)
    modality = cfg.pop("modality", None)
    if modality not in MODALITIES:
        raise ValueError(f"vqvae config: modality={modality!r}: expected one of {tuple(MODALITIES)}")
    return module_from_config(MODALITIES[modality], cfg, f"vqvae config ({modality})")
