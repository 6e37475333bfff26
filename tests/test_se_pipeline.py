"""The speech-enhancement pipeline: noisy test sets, the evaluation tables ([Lin-thesis] Tables 6.1-6.3 form)."""

import csv
import dataclasses
import json
import os
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_python

from avrep.evaluation import enhancement, metrics
from avrep.models.enhancement import nmf
from configs import se_pipeline
from data_pipelines import registry


@pytest.fixture(scope="module")
def plan_dir(speech_smoke_data_dir, tmp_path_factory):
    """A workdir whose plan names the smoke noisy sets and no trained prior (rows: noisy and oracle only)."""
    workdir = tmp_path_factory.mktemp("se")
    plan = se_pipeline.get_plan(str(workdir), "smoke")
    plan["data_dir"] = speech_smoke_data_dir
    # No audiovisual rows either, whether or not another module built the _av set in the shared data dir.
    del plan["av"]
    for condition in plan["conditions"].values():
        registry.prepare(condition["dataset"], speech_smoke_data_dir)
    with open(workdir / enhancement.PLAN_FILE, "w") as f:
        json.dump(plan, f)
    return workdir, plan


def test_noisy_and_oracle_rows(plan_dir):
    workdir, plan = plan_dir
    logged = []
    written = enhancement.evaluate_plan(str(workdir), str(workdir / "eval"), log=logged.append)
    assert set(written) == {"se_results", "se_by_snr"}  # no prior trained: no RTF table
    assert sum("no trained prior" in line for line in logged) == 2 * len(se_pipeline.PRIORS)
    with open(workdir / "eval" / "se_per_utterance.csv") as f:
        rows = list(csv.DictReader(f))
    noisy = [r for r in rows if r["method"] == "Noisy mixture"]
    oracle = {(r["condition"], r["utterance_id"]): r for r in rows if r["method"] == "Wiener filter (oracle)"}
    assert len(noisy) == 2 * plan["limit"]
    for r in noisy:
        # Noise independent of the speech: the mixture's SI-SDR is close to its SNR, and the oracle far above it.
        assert float(r["si_sdr"]) == pytest.approx(float(r["snr_db"]), abs=1.0)
        assert float(oracle[(r["condition"], r["utterance_id"])]["si_sdr"]) > float(r["si_sdr"]) + 8
    # The first records of a condition cover its SNRs (the builder's order).
    assert {float(r["snr_db"]) for r in noisy if r["condition"] == "wsj0_qut_like"} == {-5.0, 0.0, 5.0}
    assert os.path.getsize(workdir / "eval" / "se_wsj0_qut_like_spectrograms.png") > 10_000
    wavs = sorted(os.listdir(workdir / "eval" / "se_audio" / "vb_dmd_like"))
    assert len(wavs) == 3 and any(w.endswith("_noisy.wav") for w in wavs) and any("oracle" in w for w in wavs)


def test_one_method_with_different_settings_gives_rows_of_their_own(plan_dir, tmp_path, monkeypatch):
    """Two plan entries of VEM at NMF ranks 2 and 4 (and one at the defaults) are three rows, each over every
    mixture, with the settings named in the results and RTF tables (not one row averaged over both)."""
    _, plan = plan_dir
    prior_dir = tmp_path / "prior"
    os.makedirs(prior_dir / enhancement.CHECKPOINT_SUBDIR)
    model = types.SimpleNamespace(
        task=types.SimpleNamespace(module=None, display_name="Fake"), variables={"params": {}}
    )
    monkeypatch.setattr(enhancement, "_load_prior", lambda run_dir: (model, 7))

    def scaled(module, variables, batch, iterations, key, nmf_rank=25):
        return batch.X * (nmf_rank / 10)

    fake_vem = dataclasses.replace(enhancement.METHODS["vem"], enhance=scaled, unsupported=lambda module, params: None)
    monkeypatch.setitem(enhancement.METHODS, "vem", fake_vem)
    iterations = {c: 1 for c in plan["conditions"]}
    entries = [
        dict(method="vem", priors=["fake"], iterations=iterations, settings=s)
        for s in ({"nmf_rank": 2}, {"nmf_rank": 4}, {})
    ]
    workdir = tmp_path / "w"
    os.makedirs(workdir)
    with open(workdir / enhancement.PLAN_FILE, "w") as f:
        json.dump(dict(plan, priors={"fake": str(prior_dir)}, methods=entries), f)
    enhancement.evaluate_plan(str(workdir), str(workdir / "eval"), log=lambda line: None)
    with open(workdir / "eval" / "se_results.csv") as f:
        vem = [r for r in csv.DictReader(f) if r["method"] == "Fake-VEM" and r["condition"] == "wsj0_qut_like"]
    assert sorted(r["settings"] for r in vem) == ["-", "nmf_rank=2", "nmf_rank=4"]
    assert all(r["n"] == str(plan["limit"]) and r["run"] == "prior@7" for r in vem)
    with open(workdir / "eval" / "se_rtf.csv") as f:
        assert sum(r["settings"] == "nmf_rank=4" for r in csv.DictReader(f)) == len(plan["conditions"])


def test_batched_enhancement_returns_estimates_in_order_and_times_without_compiling(plan_dir):
    """A method that halves the noisy STFT: every estimate is half its own mixture, whatever the batch order."""
    _, plan = plan_dir
    mixtures = enhancement.load_mixtures(plan["conditions"]["wsj0_qut_like"]["dataset"], plan["data_dir"], 3)
    assert len({m["noisy"].size for m in mixtures}) == 3  # different lengths: sorting and padding matter
    halve = jax.jit(lambda X: X * 0.5)
    method = enhancement.Method("half", "-", lambda module, variables, batch, iterations, key: halve(batch.X), None)
    model = types.SimpleNamespace(task=types.SimpleNamespace(module=None), variables={"params": {}})
    estimates, seconds, compiled = enhancement.enhance_all(method, model, mixtures, batch=2, iterations=1, seed=0)
    for m, est in zip(mixtures, estimates):
        assert est.shape == m["noisy"].shape
        assert metrics.si_sdr(0.5 * m["noisy"], est) > 60
    assert compiled > 0 and seconds >= 0


def test_plan_and_stages():
    plan = se_pipeline.get_plan("/w")
    assert plan["conditions"]["wsj0_qut_like"] == {"dataset": "noisy_speech/wsj0_qut_like"}
    vem = next(m for m in plan["methods"] if m["method"] == "vem")
    assert vem["iterations"] == {"wsj0_qut_like": 300, "vb_dmd_like": 100}  # [Lin-thesis] Table 6.3
    assert {m["method"] for m in plan["methods"]} <= set(enhancement.METHODS)
    unda = next(m for m in plan["methods"] if m["method"] == "unda_lv")
    assert unda["iterations"] == {"wsj0_qut_like": 190, "vb_dmd_like": 25}  # [Lin-thesis] Table 6.3
    assert enhancement.METHODS["und_lv"].config == "U-ND" and enhancement.METHODS["unda_lv"].trains == "LV"
    assert plan["av"]["dataset"] == "noisy_speech/wsj0_qut_like_av" and 0 < plan["av"]["alpha"] < 1
    # every NMF noise model of the plan at the rank chosen for VEM (a prior without harmonics loses its speech at 25)
    mcem = next(m for m in plan["methods"] if m["method"] == "mcem")
    assert mcem["settings"] == se_pipeline.NMF_SETTINGS and plan["av"]["nmf_rank"] == 2
    stages = {name: config for name, _, config in se_pipeline.get_stages("/w")}
    assert list(stages) == ["vae", "dkf", "rvae", "srnn"]
    # the headline priors train long enough to decode harmonics; the others as the DVAE pipeline
    assert [stages[n].train.num_steps for n in stages] == [6000, 1000, 6000, 1000]
    assert stages["rvae"].optimizer.learning_rate == 1e-3 and stages["dkf"].optimizer.learning_rate == 2e-3
    assert {c.model.preset for _, _, c in se_pipeline.get_stages("/w", "smoke")} == {
        "dvae/VAE",
        "dvae/DKF",
        "dvae/RVAE-Causal",
        "dvae/SRNN",
    }


@pytest.mark.slow
def test_se_pipeline_smoke_end_to_end(speech_smoke_data_dir, tmp_path):
    """train.py --pipeline se then evaluate.py: VEM rows for every prior, the RTF table (about 8 CPU minutes)."""
    workdir = tmp_path / "w"
    shutil.copytree(speech_smoke_data_dir, workdir / "data")
    run_python(["train.py", "--workdir", str(workdir), "--pipeline", "se", "--variant", "smoke"], timeout=1200)
    run_python(["evaluate.py", "--workdir", str(workdir)], timeout=1200)
    with open(workdir / "eval" / "se_results.csv") as f:
        rows = list(csv.DictReader(f))
    methods = {(r["condition"], r["method"]) for r in rows}
    for condition in ("wsj0_qut_like", "vb_dmd_like"):
        expected = ("Noisy mixture", "Wiener filter (oracle)", "VAE-VEM", "DKF-VEM", "RVAE-Causal-VEM", "VAE-MCEM")
        for method in expected + ("RVAE-Causal-LV",):
            assert (condition, method) in methods
        configs = {r["config"] for r in rows if r["condition"] == condition and r["method"] == "RVAE-Causal-LV"}
        assert configs == {"U-NA", "U-ND", "U-NDA"}
    assert {("wsj0_qut_like", "A-CVAE-MCEM"), ("wsj0_qut_like", "AV-CVAE-MCEM")} <= methods
    assert os.path.exists(workdir / "eval" / "se_av.md")
    for r in rows:
        assert r["n"] == "3" and np.isfinite(float(r["si_sdr"])) and 0 <= float(r["estoi"]) <= 1
    with open(workdir / "eval" / "se_rtf.csv") as f:
        rtf = list(csv.DictReader(f))
    assert len(rtf) == 2 * (len(se_pipeline.PRIORS) + 4) + 2 and all(float(r["rtf"]) >= 0 for r in rtf)


def test_narrow_band_pesq(plan_dir):
    """P.862 narrow band: the clean reference scores the scale's top (4.55 MOS-LQO), a -5 dB mixture far less."""
    _, plan = plan_dir
    mixtures = enhancement.load_mixtures(plan["conditions"]["wsj0_qut_like"]["dataset"], plan["data_dir"], 3)
    worst = min(mixtures, key=lambda m: m["snr_db"])
    assert worst["snr_db"] == pytest.approx(-5.0, abs=0.01)
    assert metrics.pesq_nb(worst["clean"], worst["clean"]) == pytest.approx(4.55, abs=0.05)
    assert metrics.pesq_nb(worst["clean"], worst["noisy"]) < 3.0
    with pytest.raises(ValueError, match="pesq_nb: narrow-band PESQ needs 8 or 16 kHz"):
        metrics.pesq_nb(worst["clean"], worst["noisy"], 22050)


def _harmonic_mixture(seed: int, frames: int = 80, bins: int = 129):
    """Complex STFTs of harmonic 'speech' (a pitch comb under a falling envelope, one 10-frame segment in four
    silent) and stationary coloured noise, and the speech variance of a prior that knows the envelope but not the
    harmonics (the clean power smoothed over 19 bins: what a CPU-trained SynthAV prior decodes)."""
    rng = np.random.default_rng(seed)
    f = np.arange(bins)
    envelope = 30.0 / (1 + (f / 15.0) ** 2)
    speech_var = np.zeros((frames, bins))
    for start in range(0, frames, 10):
        pitch = rng.uniform(4, 9)
        comb = sum(np.exp(-0.5 * ((f - k * pitch) / 0.7) ** 2) for k in range(1, int(bins / pitch) + 1))
        speech_var[start : start + 10] = envelope * (comb + 1e-3) if start // 10 % 4 != 3 else envelope * 1e-4
    noise_var = np.broadcast_to(3.0 / (1 + f / 40.0), (frames, bins))

    def draw(v):
        return np.sqrt(v / 2) * (rng.standard_normal(v.shape) + 1j * rng.standard_normal(v.shape))

    S, N = draw(speech_var), draw(noise_var)
    smooth = np.stack([np.convolve(np.abs(s) ** 2, np.ones(19) / 19, mode="same") for s in S]) + 1e-6
    return S, N, smooth


def _m_steps_only(S, N, Vs, rank: int, iterations: int = 300):
    """VEM's M-step (NMF and gain) with a fixed speech variance: (SDR of the Wiener estimate in dB, mean log10 g)."""
    X = S + N
    power, mask = jnp.asarray(np.abs(X) ** 2, jnp.float32), jnp.ones(X.shape[0], bool)
    W, H, g = (a[0] for a in nmf.init_nmf(jax.random.key(0), 1, X.shape[0], rank, X.shape[1]))
    Vs = jnp.asarray(Vs, jnp.float32)

    def iteration(carry, _):
        return nmf.m_step(power, mask, *carry, Vs)[:3], None

    (W, H, g), _ = jax.jit(lambda c: jax.lax.scan(iteration, c, None, length=iterations))((W, H, g))
    speech = np.asarray(g)[:, None] * np.asarray(Vs)
    S_hat = speech / (speech + np.asarray(nmf.noise_variance(W, H))) * X
    return 10 * np.log10(np.sum(np.abs(S) ** 2) / np.sum(np.abs(S - S_hat) ** 2)), float(np.log10(np.asarray(g)).mean())


def test_vem_nmf_rank_keeps_the_speech_of_a_prior_without_harmonics():
    """Why RVAE-VEM made SynthAV mixtures worse (issue 17): with a speech variance that has the envelope but not the
    harmonics, the authors' rank-25 NMF, fitted to the utterance, explains the speech better than g·V_s, the gain g
    collapses and the estimate goes to zero (SDR 0 dB); the plan's rank leaves the speech to the prior. With the
    true speech variance every rank keeps it."""
    S, N, smooth = _harmonic_mixture(0)
    rank = se_pipeline.NMF_SETTINGS["nmf_rank"]
    sdr_25, log_g_25 = _m_steps_only(S, N, smooth, 25)
    sdr_plan, log_g_plan = _m_steps_only(S, N, smooth, rank)
    assert log_g_25 < -4 and sdr_25 < 0.5  # collapsed: the estimate is (almost) nothing
    assert log_g_plan > -1.5 and sdr_plan > sdr_25 + 1.0
    sdr_true, log_g_true = _m_steps_only(S, N, np.abs(S) ** 2 + 1e-6, 25)
    assert log_g_true > -1.5 and sdr_true > 5  # the NMF alone is not to blame: a sharp prior keeps the speech


def test_plan_settings_reach_the_method_and_are_checked():
    plan = se_pipeline.get_plan("/w")
    vem = next(m for m in plan["methods"] if m["method"] == "vem")
    assert enhancement.method_options(vem) == se_pipeline.NMF_SETTINGS
    seen = {}

    def record(module, variables, batch, iterations, key, **options):
        seen.update(options)
        return batch.X

    method = dataclasses.replace(enhancement.METHODS["vem"], enhance=record)
    rng = np.random.default_rng(0)
    mixtures = [dict(noisy=rng.standard_normal(n).astype(np.float32)) for n in (2000, 3000)]
    model = types.SimpleNamespace(task=types.SimpleNamespace(module=None), variables={"params": {}})
    enhancement.enhance_all(method, model, mixtures, batch=2, iterations=1, seed=0, options={"nmf_rank": 3})
    assert seen == {"nmf_rank": 3}
    with pytest.raises(ValueError, match=r"se_plan.json: method 'vem' settings: unknown field\(s\) \['rank'\]"):
        enhancement.method_options(dict(vem, settings={"rank": 4}))
    with pytest.raises(ValueError, match="nmf_rank"):
        enhancement.method_options(dict(vem, settings={"nmf_rank": 0}))
    with pytest.raises(ValueError, match="method 'una_lv' settings: this method takes no settings"):
        enhancement.method_options(dict(method="una_lv", priors=["rvae"], iterations={}, settings={"nmf_rank": 4}))
