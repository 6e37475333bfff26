"""Source-filter control of speech with a trained IS-VAE ([SF-VAE] = [Sadok-thesis] Ch. 3; keys:
docs/REFERENCES.md): learn the f0 / formant subspaces of a run, then change f0 or formants of a wav, whisper it,
or estimate its f0 from the latent space.

    python -m avrep.evaluation.source_filter --run RUN --wav in.wav --out out.wav [--f0 150] [--f1 700]
        [--f2 ...] [--f3 ...] [--whisper] [--estimate-f0 f0.csv]

``--f0`` etc. take a constant in Hz, or a trajectory (a .npy / .csv / .txt file of per-frame values, frame k at
16 ms * k, linearly resampled to the utterance's frame count). The waveform is rebuilt with the **original
phase** (the input's STFT phase under the new magnitude) when only formants change or for whispering, and with
**Griffin-Lim** (64 iterations) when f0 changes: the old phase keeps the old harmonics' periodicity, so pitch
trackers hear the old f0 or an octave of it (measured; ``--phase`` overrides).

A run is a ``source_filter`` run (``train.py --pipeline sourcefilter``, or the released WSJ0 weights imported
with ``python -m avrep.convert dvae``); :func:`load` learns its subspaces on first use from the labelled sweeps
(``data_pipelines.synthav.trajectories``) and keeps them in ``<run>/source_filter.npz``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from avrep import audio as audio_lib
from avrep import runs
from avrep.models import source_filter as sf
from avrep.models.dvae import VAE
from avrep.runs import CHECKPOINT_SUBDIR
from avrep.tasks import load_checkpoint
from data_pipelines.synthav import trajectories

SUBSPACES_FILE = "source_filter.npz"
FACTORS = trajectories.FACTORS
PHASE_METHODS = ("original", "griffin_lim")


@dataclasses.dataclass
class SourceFilterModel:
    """A trained IS-VAE (``loaded``: ``avrep.tasks.load_checkpoint``) with its factors' subspaces, regressions
    and labelled reference posteriors (``reference[factor] = (labels [R], mean [R, L], logvar [R, L])``)."""

    loaded: object
    subspaces: dict[str, sf.Subspace]
    regressions: dict[str, sf.PiecewiseLinear]
    reference: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]

    @property
    def audio(self) -> dict:
        return dict(self.loaded.config.audio)

    def stft(self, wav) -> jax.Array:
        """Complex STFT [N, bins] of a peak-normalised waveform with the run's front end."""
        a = self.audio
        return audio_lib.stft(
            jnp.asarray(wav, jnp.float32), int(a["n_fft"]), int(a["hop"]), str(a["window"]), True, str(a["pad_mode"])
        )

    def encode(self, power) -> tuple[np.ndarray, np.ndarray]:
        """Posterior (mean, log-variance) [N, L] of power frames [N, bins]."""
        out = self.loaded.apply_fn(self.loaded.variables, jnp.asarray(power, jnp.float32)[None], sample=False)
        return np.asarray(out["z_mean"][0]), np.asarray(out["z_logvar"][0])

    def decode(self, z) -> np.ndarray:
        """Power frames [N, bins] (the decoder's variance) of latent vectors [N, L]."""
        log_var = self.loaded.module.apply(self.loaded.variables, jnp.asarray(z, jnp.float32), method="decode")
        return np.asarray(jnp.exp(log_var))

    def edit_latents(self, z, targets: dict[str, object], *, whisper: bool = False) -> np.ndarray:
        """Eq. 3.12 for every factor in ``targets`` (Hz: scalar or per frame), then optionally whispering."""
        for factor in FACTORS:
            if targets.get(factor) is not None:
                z = sf.transform(z, self.subspaces[factor], self.regressions[factor], targets[factor])
        if whisper:
            z = sf.whisper(z, self.subspaces["f0"])
        return np.asarray(z)

    def resynthesize(self, z, phase, length: int, *, method: str = "original") -> np.ndarray:
        """Waveform of ``length`` samples from latent vectors [N, L] (their decoded power) and the input's phase
        [N, bins] (``method="original"``), or Griffin-Lim (``"griffin_lim"``: 64 fast iterations from random
        phases, fixed key), which the pitch needs: the old phase keeps the old harmonics' periodicity."""
        a = self.audio
        power = jnp.asarray(self.decode(z))
        if method == "griffin_lim":
            out = audio_lib.griffin_lim(
                power, 64, int(a["hop"]), str(a["window"]), length=length, key=jax.random.key(0),
                pad_mode=str(a["pad_mode"]),
            )  # fmt: skip
        elif method == "original":
            out = audio_lib.spectrogram_to_waveform(power, jnp.asarray(phase), int(a["hop"]), str(a["window"]), length)
        else:
            raise ValueError(f"resynthesis method {method!r}: expected one of {PHASE_METHODS}")
        return np.asarray(out, np.float64)

    def transform_wav(
        self, wav, targets: dict[str, object] | None = None, *, whisper: bool = False, method: str = "auto"
    ) -> np.ndarray:
        """A waveform with f0 / formants moved to ``targets`` (and / or whispered). ``method="auto"``: Griffin-Lim
        when f0 changes, else the original phase (formants and whispering keep the input's timing)."""
        targets = targets or {}
        if method == "auto":
            method = "griffin_lim" if targets.get("f0") is not None else "original"
        wav = np.asarray(wav, np.float64)
        spec = self.stft(wav / max(np.max(np.abs(wav)), 1e-12))
        mean, _ = self.encode(jnp.abs(spec) ** 2)
        z = self.edit_latents(mean, targets, whisper=whisper)
        return self.resynthesize(z, jnp.angle(spec), len(wav), method=method)

    def estimate_f0(self, wav, *, subspace: bool = True, median: int = 5) -> np.ndarray:
        """f0 per STFT frame (Hz) by the latent KL nearest neighbour (Eq. 3.15-3.16); ``subspace=False``: the
        "Proposed(z)" ablation in the full latent space. Voicing is not decided here."""
        wav = np.asarray(wav, np.float64)
        mean, logvar = self.encode(jnp.abs(self.stft(wav / max(np.max(np.abs(wav)), 1e-12))) ** 2)
        labels, ref_mean, ref_logvar = self.reference["f0"]
        f0, _ = sf.estimate_f0(
            mean, logvar, ref_mean, ref_logvar, labels, self.subspaces["f0"] if subspace else None, median=median
        )
        return np.asarray(f0)

    def baseline_latents(self, z, factor: str, source, target) -> np.ndarray:
        """The VAE baseline (Hsu et al.): latent arithmetic with this run's labelled frames as dictionary."""
        labels, mean, _ = self.reference[factor]
        return sf.latent_arithmetic(z, labels, mean, source, target)


def learn(loaded, settings) -> SourceFilterModel:
    """Encodes the labelled sweeps and learns every factor's subspace (Eq. 3.10) and regression (Eq. 3.11)."""
    hop = int(loaded.config.audio["hop"])
    sweeps = trajectories.labelled_trajectories(
        hop=hop, scale=float(settings["trajectory_scale"]), seed=int(settings["seed"])
    )
    model = SourceFilterModel(loaded, {}, {}, {})
    for factor, s in sweeps.items():
        power = jnp.abs(model.stft(s["wav"])) ** 2
        mean, logvar = model.encode(power[: len(s["labels"])])
        space = sf.learn_subspace(mean, logvar, retained=float(settings["retained_variance"]))
        target = np.asarray(sf.coordinates(mean, space))
        model.subspaces[factor] = space
        model.regressions[factor] = sf.fit_piecewise_linear(s["labels"], target, int(settings["segments"]))
        model.reference[factor] = (s["labels"], mean, logvar)
    return model


def save(model: SourceFilterModel, path: str) -> None:
    arrays = {}
    for f in FACTORS:
        space, reg, (labels, mean, logvar) = model.subspaces[f], model.regressions[f], model.reference[f]
        arrays.update(
            {
                f"{f}.basis": space.basis,
                f"{f}.centre": space.centre,
                f"{f}.eigenvalues": space.eigenvalues,
                f"{f}.knots": reg.knots,
                f"{f}.values": reg.values,
                f"{f}.labels": labels,
                f"{f}.mean": mean,
                f"{f}.logvar": logvar,
            }
        )
    np.savez(path, **arrays)


def _read(loaded, path: str) -> SourceFilterModel:
    with np.load(path, allow_pickle=False) as a:
        missing = [f"{f}.{k}" for f in FACTORS for k in ("basis", "knots", "mean") if f"{f}.{k}" not in a.files]
        if missing:
            raise ValueError(f"{path}: not a source-filter subspace file (missing {missing}); delete it to relearn")
        return SourceFilterModel(
            loaded,
            {f: sf.Subspace(a[f"{f}.basis"], a[f"{f}.centre"], a[f"{f}.eigenvalues"]) for f in FACTORS},
            {f: sf.PiecewiseLinear(a[f"{f}.knots"], a[f"{f}.values"]) for f in FACTORS},
            {f: (a[f"{f}.labels"], a[f"{f}.mean"], a[f"{f}.logvar"]) for f in FACTORS},
        )


def load(run_dir: str, *, refit: bool = False) -> SourceFilterModel:
    """A run's IS-VAE (the checkpoint with the lowest validation loss where there is one) with its subspaces,
    learnt (and saved to ``<run>/source_filter.npz``) if absent or ``refit``."""
    run_dir = os.path.abspath(run_dir)
    loaded = load_checkpoint(run_dir)
    best = runs.best_step(run_dir)
    if best is not None and best != loaded.step:
        loaded = load_checkpoint(os.path.join(run_dir, CHECKPOINT_SUBDIR, str(best)))
    if not isinstance(loaded.module, VAE) or loaded.module.x_dim != 513:
        raise ValueError(
            f"{run_dir}: expected a source_filter run (a frame-wise 513-bin IS-VAE), got task "
            f"{loaded.config.get('task')!r} with a {type(loaded.module).__name__} of {loaded.module.x_dim} bins"
        )
    path = os.path.join(run_dir, SUBSPACES_FILE)
    if os.path.exists(path) and not refit:
        return _read(loaded, path)
    settings = loaded.config.get("source_filter") or _default_settings()
    model = learn(loaded, settings)
    save(model, path)
    return model


def _default_settings() -> dict:
    from configs import source_filter  # deferred: a dvae-task run has no source_filter block

    return dict(source_filter.get_config().source_filter)


def _target(text: str | None, frames: int):
    """A --f0 / --f1 value: None, a constant (Hz) or a trajectory file resampled to ``frames``."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    if not os.path.isfile(text):
        raise ValueError(f"{text}: neither a number (Hz) nor a trajectory file (.npy, .csv, .txt)")
    values = (
        np.load(text) if text.endswith(".npy") else np.loadtxt(text, delimiter="," if text.endswith(".csv") else None)
    )
    values = np.asarray(values, np.float64).ravel()
    if len(values) < 1 or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"{text}: expected positive finite per-frame values in Hz")
    return np.interp(np.linspace(0, len(values) - 1, frames), np.arange(len(values)), values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m avrep.evaluation.source_filter", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--run", required=True, help="a source_filter run directory")
    parser.add_argument("--wav", required=True, help="input speech (resampled to the run's rate if needed)")
    parser.add_argument("--out", help="the wav to write")
    for f in FACTORS:
        parser.add_argument(f"--{f}", default=None, help=f"target {f} (Hz) or a per-frame trajectory file")
    parser.add_argument("--whisper", action="store_true", help="remove the f0 subspace (whispered speech)")
    parser.add_argument(
        "--phase",
        default="auto",
        choices=("auto", *PHASE_METHODS),
        help="auto: Griffin-Lim when f0 changes, else the input's phase",
    )
    parser.add_argument("--estimate-f0", default=None, help="write the latent f0 estimate per frame to this CSV")
    args = parser.parse_args(argv)
    import librosa
    import soundfile

    try:
        model = load(args.run)
        rate = int(model.audio["sample_rate"])
        wav, _ = librosa.load(args.wav, sr=rate, mono=True)
        if not np.any(wav):
            raise ValueError(f"{args.wav}: silent or empty")
        frames = 1 + len(wav) // int(model.audio["hop"])
        targets = {f: _target(getattr(args, f), frames) for f in FACTORS}
        if args.out:
            out = model.transform_wav(wav, targets, whisper=args.whisper, method=args.phase)
            soundfile.write(args.out, (0.9 * out / max(np.max(np.abs(out)), 1e-12)).astype(np.float32), rate)
            print(f"[avrep] wrote {args.out}")
        if args.estimate_f0:
            f0 = model.estimate_f0(wav)
            t = np.arange(len(f0)) * int(model.audio["hop"]) / rate
            np.savetxt(args.estimate_f0, np.column_stack([t, f0]), delimiter=",", header="time_s,f0_hz", comments="")
            print(f"[avrep] wrote {args.estimate_f0}")
        if not args.out and not args.estimate_f0:
            parser.error("nothing to do: give --out and / or --estimate-f0")
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
