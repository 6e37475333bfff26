"""The source-filter VAE's algorithms on a trained VAE's posteriors ([SF-VAE] = [Sadok-thesis] Ch. 3; keys:
docs/REFERENCES.md): pure functions of arrays (numpy in, numpy or jnp out; the per-frame maps are jittable).

* :func:`learn_subspace` (Eq. 3.5-3.10): PCA of the *biased aggregated posterior* of the frames where one factor
  f_i varies: covariance S = mean(mu mu^T + diag v) - m m^T (posterior means' covariance plus the mean posterior
  variance), basis U_i = its top-M_i eigenvectors, M_i the fewest components retaining ``retained`` (80 %) of
  the variance (Table 3.1).
* :func:`orthogonality` (Fig. 3.5): dot products between the basis vectors of several subspaces.
* :class:`PiecewiseLinear` / :func:`fit_piecewise_linear` (Eq. 3.11): y (Hz) -> subspace coordinates, continuous
  and piecewise-linear per coordinate. The authors fit each coordinate with the ``pwlf`` package (breakpoints
  optimised by differential evolution, 20 segments); here the knots are fixed at evenly spaced values of y
  (the labelled trajectories are evenly spaced) and the knot values are one linear least-squares solve for all
  coordinates at once: exact, deterministic and dependency-free. Outside the fitted range it holds the end value.
* :func:`transform` (Eq. 3.12, uncentred): z' = z - U U^T (z - m) + U g(y); its result has subspace coordinates
  exactly g(y) and is unchanged in the orthogonal complement, so several factors compose by applying it in turn.
* :func:`whisper` (Sec. 3.3.5): z - U_0 U_0^T z, the f0 subspace removed.
* :func:`estimate_f0` (Eq. 3.15-3.16): per frame, the label of the reference frame whose projected posterior is
  nearest in KL divergence, then a median filter of 5 frames; ``subspace=None`` is the "Proposed(z)" ablation
  (the full latent space).
* :func:`latent_arithmetic`: the VAE baseline of Hsu et al. 2017 (Table 3.3): z' = z - mu(y_src) + mu(y_trg),
  mu(.) the posterior mean of the labelled frames interpolated at a value.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


def _check_posteriors(mean, logvar, where: str) -> tuple[np.ndarray, np.ndarray]:
    mean, logvar = np.asarray(mean, np.float64), np.asarray(logvar, np.float64)
    if mean.ndim != 2 or mean.shape != logvar.shape or len(mean) < 2:
        raise ValueError(
            f"{where}: expected posterior means and log-variances [N >= 2, L], got {mean.shape}, {logvar.shape}"
        )
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(logvar))):
        raise ValueError(f"{where}: posterior means / log-variances hold NaN or inf")
    return mean, logvar


@dataclasses.dataclass(frozen=True)
class Subspace:
    """One factor's latent subspace: ``basis`` U [L, M] (orthonormal columns), ``centre`` m [L] (the mean
    posterior mean of its frames, Eq. 3.6), ``eigenvalues`` [L] of S (descending) and ``retained`` [L], the
    cumulative fraction of variance kept by the first 1, 2, ..., L components."""

    basis: np.ndarray
    centre: np.ndarray
    eigenvalues: np.ndarray

    @property
    def retained(self) -> np.ndarray:
        return np.cumsum(self.eigenvalues) / np.sum(self.eigenvalues)

    @property
    def dim(self) -> int:
        return self.basis.shape[1]


def aggregated_posterior_covariance(mean, logvar) -> tuple[np.ndarray, np.ndarray]:
    """(S [L, L], m [L]) of Eq. 3.9 / 3.6 for posteriors N(mean_n, diag exp(logvar_n)) [N, L]."""
    mean, logvar = _check_posteriors(mean, logvar, "aggregated_posterior_covariance")
    centre = mean.mean(axis=0)
    second = mean.T @ mean / len(mean) + np.diag(np.exp(logvar).mean(axis=0))
    return second - np.outer(centre, centre), centre


def components_for(retained: np.ndarray, fraction: float) -> int:
    """The fewest leading components whose cumulative retained variance reaches ``fraction``."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"retained-variance fraction {fraction}: expected 0 < fraction <= 1")
    return int(min(np.searchsorted(retained, fraction - 1e-12) + 1, len(retained)))


def learn_subspace(mean, logvar, *, retained: float = 0.8, num_components: int | None = None) -> Subspace:
    """Eq. 3.7-3.10: the top eigenvectors of S; ``num_components`` None: as many as retain ``retained``."""
    cov, centre = aggregated_posterior_covariance(mean, logvar)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1]
    values, vectors = np.clip(values[order], 0.0, None), vectors[:, order]
    # A sign convention, so that a basis (and the regression onto it) does not flip between runs.
    vectors = vectors * np.where(vectors[np.abs(vectors).argmax(axis=0), np.arange(len(values))] < 0, -1.0, 1.0)
    space = Subspace(vectors, centre, values)
    m = components_for(space.retained, retained) if num_components is None else int(num_components)
    if not 1 <= m <= len(values):
        raise ValueError(f"num_components={m}: expected 1 <= M <= L={len(values)}")
    return Subspace(vectors[:, :m], centre, values)


def orthogonality(bases: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """(G, labels): G = B^T B for B the columns of every basis side by side (``{"f0": U_0, ...}``); labels
    name each column, e.g. ``"f1.1"``. Orthogonal subspaces give an identity matrix."""
    columns = np.concatenate([np.asarray(b) for b in bases.values()], axis=1)
    labels = [f"{name}.{j + 1}" for name, b in bases.items() for j in range(np.shape(b)[1])]
    return columns.T @ columns, labels


@dataclasses.dataclass(frozen=True)
class PiecewiseLinear:
    """A continuous piecewise-linear map R -> R^M: value ``values[k]`` [K + 1, M] at ``knots[k]`` [K + 1],
    linear in between, constant outside [knots[0], knots[-1]]."""

    knots: np.ndarray
    values: np.ndarray

    def __call__(self, y):
        """y [...] -> [..., M] (jittable)."""
        return jnp.asarray(_hat_basis(jnp.asarray(y, jnp.float32), jnp.asarray(self.knots, jnp.float32))) @ (
            jnp.asarray(self.values, jnp.float32)
        )


def _hat_basis(y, knots):
    """Linear-interpolation weights [..., K + 1] of each y on the knots (clamped to the end knots)."""
    weights = jax.vmap(lambda unit: jnp.interp(y, knots, unit))(jnp.eye(knots.shape[0], dtype=y.dtype))
    return jnp.moveaxis(weights, 0, -1)


def fit_piecewise_linear(y, targets, segments: int = 20) -> PiecewiseLinear:
    """Least-squares continuous piecewise-linear fit of ``targets`` [N, M] against ``y`` [N], every coordinate
    independently (Eq. 3.11), knots evenly spaced over [min y, max y]."""
    y = np.asarray(y, np.float64).ravel()
    targets = np.asarray(targets, np.float64)
    if targets.ndim != 2 or len(targets) != len(y):
        raise ValueError(f"fit_piecewise_linear: targets must be [N={len(y)}, M], got {targets.shape}")
    if segments < 1 or len(np.unique(y)) < segments + 1:
        raise ValueError(f"fit_piecewise_linear: {segments} segments need >= {segments + 1} distinct y values")
    knots = np.linspace(y.min(), y.max(), segments + 1)
    basis = np.asarray(_hat_basis(jnp.asarray(y), jnp.asarray(knots)), np.float64)
    values, *_ = np.linalg.lstsq(basis, targets, rcond=None)
    return PiecewiseLinear(knots, values)


def coordinates(z, subspace: Subspace):
    """U^T (z - m): the centred coordinates [..., M] of latent vectors z [..., L] in ``subspace``."""
    return (jnp.asarray(z) - jnp.asarray(subspace.centre, jnp.float32)) @ jnp.asarray(subspace.basis, jnp.float32)


def transform(z, subspace: Subspace, regression: PiecewiseLinear, y):
    """Eq. 3.12, uncentred: z [..., L] with f_i set to ``y`` [...] (Hz, per frame or a scalar)."""
    basis = jnp.asarray(subspace.basis, jnp.float32)
    target = regression(jnp.broadcast_to(jnp.asarray(y, jnp.float32), jnp.shape(z)[:-1]))
    return jnp.asarray(z) + (target - coordinates(z, subspace)) @ basis.T


def whisper(z, subspace: Subspace):
    """z - U_0 U_0^T z ([Sadok-thesis] Sec. 3.3.5, the first two terms of Eq. 3.12): the f0 subspace removed."""
    basis = jnp.asarray(subspace.basis, jnp.float32)
    z = jnp.asarray(z)
    return z - (z @ basis) @ basis.T


def gaussian_kl(mean1, cov1, mean2, cov2):
    """KL(N(mean1, cov1) || N(mean2, cov2)) for every pair: means [A, M], [B, M], covariances [A, M, M],
    [B, M, M] -> [A, B]."""
    prec2 = jnp.linalg.inv(cov2)
    _, logdet1 = jnp.linalg.slogdet(cov1)
    _, logdet2 = jnp.linalg.slogdet(cov2)
    trace = jnp.einsum("bij,aji->ab", prec2, cov1)
    diff = mean2[None, :, :] - mean1[:, None, :]
    maha = jnp.einsum("abi,bij,abj->ab", diff, prec2, diff)
    return 0.5 * (trace + maha - mean1.shape[-1] + logdet2[None, :] - logdet1[:, None])


def projected_posteriors(mean, logvar, subspace: Subspace | None):
    """Eq. 3.15: q(p|x) = N(U^T (mu - m), U^T diag(v) U) per frame: ([N, M], [N, M, M]); ``subspace`` None: the
    full latent space (mean, diag v)."""
    mean, var = jnp.asarray(mean, jnp.float32), jnp.exp(jnp.asarray(logvar, jnp.float32))
    if subspace is None:
        return mean, jax.vmap(jnp.diag)(var)
    basis = jnp.asarray(subspace.basis, jnp.float32)
    return coordinates(mean, subspace), jnp.einsum("li,nl,lj->nij", basis, var, basis)


def median_filter(x, width: int = 5):
    """Running median over ``width`` (odd) frames along the first axis, the ends padded by repetition."""
    if width < 1 or width % 2 == 0:
        raise ValueError(f"median filter width {width}: expected an odd positive number of frames")
    x = jnp.asarray(x)
    half = width // 2
    padded = jnp.concatenate([jnp.repeat(x[:1], half, 0), x, jnp.repeat(x[-1:], half, 0)])
    windows = jnp.stack([padded[k : k + len(x)] for k in range(width)])
    return jnp.median(windows, axis=0)


def estimate_f0(
    mean,
    logvar,
    reference_mean,
    reference_logvar,
    reference_f0,
    subspace: Subspace | None,
    *,
    median: int = 5,
    chunk: int = 512,
):
    """Eq. 3.16 + median filter: (f0 [N] in Hz, minimum KL [N]) for test posteriors [N, L], given the labelled
    reference frames (posteriors [R, L], f0 labels [R]); the minimum KL can serve as a voicing score."""
    ref_mean, ref_cov = projected_posteriors(reference_mean, reference_logvar, subspace)
    test_mean, test_cov = projected_posteriors(mean, logvar, subspace)
    labels = jnp.asarray(reference_f0, jnp.float32)
    nearest, best = [], []
    for start in range(0, test_mean.shape[0], chunk):  # bounded memory: [chunk, R] KLs at a time
        kl = gaussian_kl(test_mean[start : start + chunk], test_cov[start : start + chunk], ref_mean, ref_cov)
        nearest.append(jnp.argmin(kl, axis=1))
        best.append(jnp.min(kl, axis=1))
    f0 = labels[jnp.concatenate(nearest)]
    return (median_filter(f0, median) if median > 1 else f0), jnp.concatenate(best)


def latent_arithmetic(z, labels, means, source, target):
    """The VAE baseline (Hsu et al. 2017): z - mu(source) + mu(target), mu(y) the labelled frames' posterior means
    ``means`` [R, L] interpolated at y along their sorted ``labels`` [R]; source / target: scalars or [...]."""
    labels = np.asarray(labels, np.float64)
    order = np.argsort(labels)
    labels, means = labels[order], np.asarray(means, np.float64)[order]

    def lookup(y):
        y = np.asarray(y, np.float64)
        return np.stack([np.interp(y, labels, means[:, j]) for j in range(means.shape[1])], axis=-1)

    return np.asarray(z) - lookup(source) + lookup(target)


__all__ = [
    "PiecewiseLinear",
    "Subspace",
    "aggregated_posterior_covariance",
    "components_for",
    "coordinates",
    "estimate_f0",
    "fit_piecewise_linear",
    "gaussian_kl",
    "latent_arithmetic",
    "learn_subspace",
    "median_filter",
    "orthogonality",
    "projected_posteriors",
    "transform",
    "whisper",
]
