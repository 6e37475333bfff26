"""Importing the authors' released weights: the speech VQ-VAE converter (layouts against NumPy transcriptions of
PyTorch's layers, a round trip, its checks), parity of the four released speech VQ-VAEs with their PyTorch outputs
(golden files; skipped when absent), and ``python -m avrep.convert`` writing runs that ``avrep.load_checkpoint`` and
``evaluate.py`` accept."""

import configparser
import csv
import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_python
from parity import load_fixture, max_abs_diff, parity_dir, tolerance

import avrep
from avrep.convert import importing
from avrep.convert import state_dict as convert_sd
from avrep.convert import vqvae as convert_vqvae
from avrep.models import dvae, vqvae
from avrep.nn import layers
from configs import dvae as dvae_configs
from configs import vqvae_audio

SPEECH_VQVAES = [
    "speech_vqvae/vqmae_s_2022-12-27_21-42",
    "speech_vqvae/vqmae_s_2022-12-15_19-45",
    "speech_vqvae/vqmae_s_2022-12-24_23-42",
    "speech_vqvae/code_mdvae_speech_Y2022M3D5",
]
VQMAE_S = SPEECH_VQVAES[0]
TINY = dict(num_codes=16, code_dim=4, hidden=8, residual_hidden=6, num_residual_layers=2)

# ------------------------------------------------------------------------- layouts against PyTorch's layers ---


def _np_conv1d(x, w, b, stride, padding):
    """torch.nn.functional.conv1d: x (N, C, L), w (out, in, k)."""
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding)))
    k = w.shape[-1]
    length = (xp.shape[-1] - k) // stride + 1
    cols = np.stack([xp[:, :, t * stride : t * stride + k] for t in range(length)], axis=2)  # (N, C, T, k)
    return np.einsum("nctk,ock->not", cols, w) + b[:, None]


def _np_conv_transpose1d(x, w, b, stride, padding):
    """torch.nn.functional.conv_transpose1d: x (N, C, L), w (in, out, k); output (L - 1) s - 2p + k."""
    n, _, length = x.shape
    k, out = w.shape[-1], w.shape[1]
    full = np.zeros((n, out, (length - 1) * stride + k))
    for t in range(length):
        full[:, :, t * stride : t * stride + k] += np.einsum("nc,cok->nok", x[:, :, t], w)
    return full[:, :, padding : full.shape[-1] - padding] + b[:, None]


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("k, stride, padding, length", [(4, 2, 1, 513), (3, 2, 1, 128), (3, 1, 1, 64), (3, 2, 0, 256)])
def test_kernel_layouts_match_pytorch(transposed, k, stride, padding, length):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, length))
    if transposed:
        w, ref = rng.standard_normal((5, 3, k)), _np_conv_transpose1d
        layer, kernel = layers.ConvTranspose, convert_vqvae.conv_transpose_kernel(w)
    else:
        w, ref = rng.standard_normal((3, 5, k)), _np_conv1d
        layer, kernel = layers.Conv, convert_vqvae.conv_kernel(w)
    b = rng.standard_normal(3)
    want = ref(x, w, b, stride, padding)
    module = layer(3, k, stride, padding)
    variables = {"params": {"kernel": jnp.asarray(kernel, jnp.float32), "bias": jnp.asarray(b, jnp.float32)}}
    got = module.apply(variables, jnp.asarray(x.transpose(0, 2, 1), jnp.float32))
    np.testing.assert_allclose(np.asarray(got).transpose(0, 2, 1), want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------- converter round trip ---


def _torch_state_dict(variables, num_layers: int, batch_norm: bool) -> dict[str, np.ndarray]:
    """avrep variables -> the authors' state_dict (names and layouts of their SpeechVQVAE), written from their
    class independently of the converter."""
    p = jax.tree.map(np.asarray, variables["params"])
    conv = lambda q: np.transpose(q["kernel"], (2, 1, 0))
    conv_t = lambda q: np.transpose(q["kernel"][::-1], (1, 2, 0))
    enc, dec = p["encoder"], p["decoder"]
    sd = {}
    for i in range(3):
        sd[f"_encoder._conv_{i + 1}.weight"], sd[f"_encoder._conv_{i + 1}.bias"] = (
            conv(enc[f"Conv_{i}"]),
            enc[f"Conv_{i}"]["bias"],
        )
    for side, q in (("_encoder", enc), ("_decoder", dec)):
        for j in range(num_layers):
            sd[f"{side}._residual_stack._layers.{j}._block.1.weight"] = conv(q["ResidualStack_0"][f"Conv_{2 * j}"])
            sd[f"{side}._residual_stack._layers.{j}._block.3.weight"] = conv(q["ResidualStack_0"][f"Conv_{2 * j + 1}"])
    sd["_pre_vq_conv.weight"], sd["_pre_vq_conv.bias"] = conv(enc["Conv_3"]), enc["Conv_3"]["bias"]
    vq = jax.tree.map(np.asarray, variables["vq_ema"]["vq"])
    sd["_vq_vae._ema_w"], sd["_vq_vae._ema_cluster_size"] = vq["embed_sum"], vq["cluster_size"]
    sd["_vq_vae._embedding.weight"] = vq["codebook"]
    sd["_decoder._conv_1.weight"], sd["_decoder._conv_1.bias"] = conv(dec["Conv_0"]), dec["Conv_0"]["bias"]
    for i, name in enumerate(("_conv_trans_1", "_conv_trans_2_bis", "_conv_trans_2")):
        sd[f"_decoder.{name}.weight"] = conv_t(dec[f"ConvTranspose_{i}"])
        sd[f"_decoder.{name}.bias"] = dec[f"ConvTranspose_{i}"]["bias"]
    if batch_norm:
        stats = jax.tree.map(np.asarray, variables["batch_stats"])
        names = [("_encoder.norm1", "encoder", 0), ("_encoder.norm2", "encoder", 1), ("_encoder.norm3", "encoder", 2)]
        names += [("_decoder.norm1_dec", "decoder", 0), ("_decoder.norm2_dec", "decoder", 1)]
        for torch_name, side, i in names:
            sd[f"{torch_name}.weight"] = p[side][f"BatchNorm_{i}"]["scale"]
            sd[f"{torch_name}.bias"] = p[side][f"BatchNorm_{i}"]["bias"]
            sd[f"{torch_name}.running_mean"] = stats[side][f"BatchNorm_{i}"]["mean"]
            sd[f"{torch_name}.running_var"] = stats[side][f"BatchNorm_{i}"]["var"]
            sd[f"{torch_name}.num_batches_tracked"] = np.array(7, np.int64)
    return sd


def _tiny_vqvae(batch_norm: bool, seed: int = 0):
    model = vqvae.AudioVQVAE(**TINY, batch_norm=batch_norm, unbiased_running_var=batch_norm)
    variables = model.init(jax.random.key(seed), jnp.ones((2, 513)), train=False)
    # Non-trivial statistics and counts, so that a swapped leaf shows.
    keys = iter(jax.random.split(jax.random.key(seed + 1), 64))
    variables = {
        c: jax.tree.map(lambda a: a + jax.random.uniform(next(keys), a.shape), v) if c != "params" else v
        for c, v in variables.items()
    }
    return model, variables


@pytest.mark.parametrize("batch_norm", [True, False])
def test_converter_round_trip_and_inferred_config(batch_norm):
    model, variables = _tiny_vqvae(batch_norm)
    sd = _torch_state_dict(variables, TINY["num_residual_layers"], batch_norm)
    cfg = convert_vqvae.infer_speech_vqvae_config(sd)
    assert {k: cfg[k] for k in TINY} == TINY and cfg["batch_norm"] is batch_norm
    assert cfg["input_transform"] == "none" and cfg["restart_dead_codes"] is False
    converted = convert_vqvae.speech_vqvae_variables(sd, vqvae.build_vqvae(cfg))
    jax.tree.map(np.testing.assert_array_equal, converted, jax.tree.map(np.asarray, dict(variables)))


def test_converter_errors_name_the_tensor():
    model, variables = _tiny_vqvae(True)
    sd = _torch_state_dict(variables, 2, True)
    bad = dict(sd, **{"_decoder._conv_trans_1.weight": np.zeros((8, 4, 4), np.float32)})
    with pytest.raises(
        ValueError, match=r"_decoder\._conv_trans_1\.weight has torch shape \(8, 4, 4\).*expects \(4, 8, 8\)"
    ):
        convert_vqvae.speech_vqvae_variables(bad, model)
    bad = dict(sd, **{"_encoder.norm2.running_var": np.ones(5, np.float32)})
    with pytest.raises(ValueError, match=r"_encoder\.norm2\.running_var has torch shape \(5,\).*expects \(8,\)"):
        convert_vqvae.speech_vqvae_variables(bad, model)
    missing = {k: v for k, v in sd.items() if k != "_vq_vae._ema_w"}
    with pytest.raises(ValueError, match=r"missing vq_ema/vq/embed_sum \(expected shape \(16, 4\)\)"):
        convert_vqvae.speech_vqvae_variables(missing, model)
    with pytest.raises(ValueError, match=r"_decoder\.norm3_dec\.weight: not a tensor of the authors' speech VQ-VAE"):
        convert_vqvae.speech_vqvae_variables(dict(sd, **{"_decoder.norm3_dec.weight": np.ones(4)}), model)
    visual = dict(sd, **{"_encoder._conv_1.weight": np.zeros((4, 3, 4, 4), np.float32)})
    with pytest.raises(ValueError, match="not a Conv1d weight.*visual"):
        convert_vqvae.infer_speech_vqvae_config(visual)
    with pytest.raises(ValueError, match="not a speech VQ-VAE"):
        convert_vqvae.infer_speech_vqvae_config({"inf_mean.weight": np.zeros((3, 4))})


# ------------------------------------------------------------------------------- parity with the releases ---


def _golden_loss(z_e, codebook, indices, beta=0.25) -> float:
    """The commitment loss beta * mean((z_e - e_index)^2) in float64 (z_e [N, L, D], indices [N, L])."""
    q = np.asarray(codebook, np.float64)[np.asarray(indices)]
    return beta * float(np.mean((np.asarray(z_e, np.float64) - q) ** 2))


@pytest.mark.parametrize("fixture", SPEECH_VQVAES)
def test_speech_vqvae_parity_with_released_models(fixture):
    path, meta, inputs, golden = load_fixture(fixture)
    sd = convert_sd.load_state_dict(os.path.join(path, "weights.npz"))
    cfg = convert_vqvae.infer_speech_vqvae_config(sd)
    arch = meta["architecture"]
    assert (cfg["num_codes"], cfg["code_dim"], cfg["hidden"], cfg["batch_norm"]) == (
        arch["num_embeddings"],
        arch["embedding_dim"],
        arch["num_hiddens"],
        arch["batch_norm"],
    )
    assert (cfg["residual_hidden"], cfg["num_residual_layers"]) == (
        arch["num_residual_hiddens"],
        arch["num_residual_layers"],
    )
    model = vqvae.build_vqvae(cfg)
    variables = convert_vqvae.speech_vqvae_variables(sd, model)
    codebook = np.asarray(variables["vq_ema"]["vq"]["codebook"])
    floors = meta["noise_floor_fp64"]["arrays"]
    report, checked = [], set()

    def check(name, ours, explained=0.0):
        """ours against golden[name]; ``explained``: the part of a loss's difference that its z_e difference
        accounts for (z_e is checked against its own floor), removed before comparing."""
        want, floor = golden[name], floors[name]
        if "n_different_fp32_vs_fp64" in floor:
            flips = int(np.sum(np.asarray(ours) != want))
            report.append(f"{name:58s} {flips} index flips (allowed {floor['n_different_fp32_vs_fp64']})")
            assert flips <= floor["n_different_fp32_vs_fp64"], f"{fixture} {name}: {flips} indices differ"
        else:
            raw = max_abs_diff(ours, want)
            diff, tol = (
                abs(float(np.asarray(ours, np.float64)) - float(want) - explained) if explained else raw,
                tolerance(floor),
            )
            note = f" (raw {raw:.3g}; z_e accounts for {explained:.3g})" if explained else ""
            ratio = diff / floor["max_abs_fp32_vs_fp64"] if floor["max_abs_fp32_vs_fp64"] else float("nan")
            report.append(f"{name:58s} {diff:10.3g} = {ratio:5.2f} x floor, {diff / tol:4.2f} x tolerance{note}")
            assert diff <= tol, f"{fixture} {name}: max |diff| {diff:.3g} > {tol:.3g} (floor {floor})"
        checked.add(name)

    with jax.default_matmul_precision("highest"):  # a no-op on CPU; keeps GPUs off TF32
        for prefix in ("speech", "expscaled"):
            x = jnp.asarray(inputs[f"{prefix}.power"])
            # Inference: running statistics (eval) and, for BatchNorm, the authors' batch statistics (trainbn).
            for mode, stats in (("eval", "running"), ("trainbn", "batch")):
                if f"{prefix}.{mode}.z_e" not in golden:
                    continue
                m = model.clone(batch_stats_mode=stats)
                z_e = m.apply(variables, x, method="encode")
                z_q, indices = m.apply(variables, z_e, method="quantize")
                check(f"{prefix}.{mode}.z_e", np.asarray(z_e).transpose(0, 2, 1))
                check(f"{prefix}.{mode}.indices", indices)
                same = np.asarray(indices) == golden[f"{prefix}.{mode}.indices"]
                theirs = codebook[golden[f"{prefix}.{mode}.indices"]]
                np.testing.assert_array_equal(np.asarray(z_q)[same], theirs[same])  # the quantised vectors
                check(f"{prefix}.{mode}.recon", m.apply(variables, z_q, method="decode")["recon"])
                if mode == "eval":
                    out = m.apply(variables, x, False)
                    z_golden = golden[f"{prefix}.eval.z_e"].transpose(0, 2, 1)
                    explained = _golden_loss(out["z_e"], codebook, indices) - _golden_loss(z_golden, codebook, indices)
                    check(f"{prefix}.eval.forward_loss", out["commitment_loss"], explained)
                    check(f"{prefix}.eval.forward_perplexity", out["perplexity"])
            # One training step of the imported model (EMA codebook, BatchNorm running statistics).
            out, state = model.apply(variables, x, True, mutable=[c for c in variables if c != "params"])
            mode = "trainbn" if f"{prefix}.trainbn.z_e" in golden else "eval"  # the step's z_e, as the golden's
            z_golden = golden[f"{prefix}.{mode}.z_e"].transpose(0, 2, 1)
            explained = _golden_loss(out["z_e"], codebook, out["indices"]) - _golden_loss(
                z_golden, codebook, out["indices"]
            )
            check(f"{prefix}.train_step.loss", out["commitment_loss"], explained)
            check(f"{prefix}.train_step.perplexity", out["perplexity"])
            for name in golden:
                if name.startswith(f"{prefix}.train_step.state."):
                    key = name[len(f"{prefix}.train_step.state.") :]
                    (collection, *where), _ = convert_vqvae.variable_path(key, golden[name].shape)
                    ours = state[collection]
                    for p in where:
                        ours = ours[p]
                    check(name, ours)
    assert checked == set(golden), f"not reproduced: {sorted(set(golden) - checked)}"
    print(f"\n{fixture}:\n  " + "\n  ".join(report))


# ----------------------------------------------------------------------------- run directories and command ---


def _schema(config, reference) -> None:
    """``config`` has the blocks and keys of the family's config file (``model`` may hold more fields)."""
    assert set(config) == set(reference) | {"source"}
    for block in reference:
        if isinstance(reference[block], type(reference)) and block != "model":
            assert set(config[block]) == set(reference[block]), block
    assert set(reference.model) - {"preset"} <= set(config.model)


def _compare(fixture_outputs, floors, pairs):
    for name, ours in pairs:
        diff, tol = max_abs_diff(ours, fixture_outputs[name]), tolerance(floors[name])
        assert diff <= tol, f"{name}: {diff:.3g} > {tol:.3g}"


def test_import_command_speech_vqvae_reproduces_the_release(tmp_path):
    path, meta, inputs, golden = load_fixture(VQMAE_S)
    weights, run = os.path.join(path, "weights.npz"), tmp_path / "vqmae_s"
    proc = run_python(["-m", "avrep.convert", "vqvae", "--weights", weights, "--out", str(run)])
    assert f"wrote {run}" in proc.stdout
    model = avrep.load_checkpoint(run)
    config = model.config
    _schema(config, vqvae_audio.get_config("vqmae"))
    assert config.task == "vqvae" and config.name == "vqmae_s" and config.data.name == "synthav/speech"
    assert config.audio.to_dict() == dict(sample_rate=16000, n_fft=1024, hop=320, window="hann", pad_mode="constant")
    with open(weights, "rb") as f:
        assert config.source.sha256 == hashlib.sha256(f.read()).hexdigest()
    assert config.source.weights == os.path.abspath(weights) and config.source.family == "speech_vqvae"
    assert config.model.batch_stats_mode == "running" and config.model.unbiased_running_var is True
    floors = meta["noise_floor_fp64"]["arrays"]
    x = jnp.asarray(inputs["speech.power"])
    out = model.apply_fn(model.variables, x)
    np.testing.assert_array_equal(out["indices"], golden["speech.eval.indices"])
    _compare(golden, floors, [("speech.eval.z_e", np.asarray(out["z_e"]).transpose(0, 2, 1))])
    # The authors' tokenisation (batch statistics) through the API.
    run = importing.import_speech_vqvae(weights, tmp_path / "batch", batch_stats_mode="batch")
    model = avrep.load_checkpoint(run)
    out = model.apply_fn(model.variables, x)
    np.testing.assert_array_equal(out["indices"], golden["speech.trainbn.indices"])
    _compare(golden, floors, [("speech.trainbn.z_e", np.asarray(out["z_e"]).transpose(0, 2, 1))])
    with pytest.raises(FileExistsError, match="already holds a run"):
        importing.import_speech_vqvae(weights, tmp_path / "batch")


def test_code_mdvae_import_uses_its_stft(tmp_path):
    path, meta, inputs, golden = load_fixture("speech_vqvae/code_mdvae_speech_Y2022M3D5")
    model = avrep.load_checkpoint(importing.import_speech_vqvae(os.path.join(path, "weights.npz"), tmp_path / "m"))
    assert model.config.audio.hop == 533 and model.config.source.preset == "mdvae" and not model.module.batch_norm
    assert "batch_stats" not in model.variables
    out = model.apply_fn(model.variables, jnp.asarray(inputs["speech.power"]))
    _compare(golden, meta["noise_floor_fp64"]["arrays"], [("speech.eval.recon", out["recon"])])


def test_import_command_dvae_reproduces_the_release(tmp_path):
    path, meta, inputs, golden = load_fixture("dvae/SRNN")
    parser = configparser.ConfigParser()
    parser["Network"] = meta["architecture"]["config"]
    ini = tmp_path / "config.ini"
    with open(ini, "w") as f:
        parser.write(f)
    weights, run = os.path.join(path, "weights.npz"), tmp_path / "srnn"
    run_python(["-m", "avrep.convert", "dvae", "--weights", weights, "--config-ini", str(ini), "--out", str(run)])
    model = avrep.load_checkpoint(run)
    _schema(model.config, dvae_configs.get_config("srnn_tf"))
    assert model.config.audio.to_dict() == dict(
        sample_rate=16000, n_fft=512, hop=256, window="sine", pad_mode="reflect"
    )
    assert model.config.model.model == "SRNN" and model.config.source.config_ini == str(ini)
    out = model.apply_fn(model.variables, jnp.asarray(inputs["x"].swapaxes(1, 2)))
    floors = meta["noise_floor_fp64"]["arrays"]
    _compare(golden, floors, [("y", np.exp(out["log_var"]).swapaxes(1, 2)), ("z_mean", out["z_mean"].swapaxes(1, 2))])


def test_import_dvae_se_with_a_preset(tmp_path):
    path, meta, inputs, golden = load_fixture("dvae_se/wsj_srnn")
    weights = os.path.join(path, "weights.npz")
    with pytest.raises(ValueError, match=r"wsj_srnn/weights\.npz does not match preset dvae/SRNN: x_dim"):
        importing.import_dvae(weights, tmp_path / "bad", preset="dvae/SRNN")
    model = avrep.load_checkpoint(importing.import_dvae(weights, tmp_path / "srnn", preset="dvae_se/SRNN"))
    assert model.config.audio.n_fft == 1024 and model.task.display_name == "SRNN (SS)"
    out = model.apply_fn(model.variables, jnp.asarray(inputs["x"].swapaxes(0, 1)), use_pred=1.0)
    _compare(golden, meta["noise_floor_fp64"]["arrays"], [("y", out["log_var"].swapaxes(0, 1))])


def _tiny_dvae_state_dict() -> dict[str, np.ndarray]:
    model = dvae.build_model(dict(model="VAE", x_dim=12, z_dim=3, dense_x_z=(9,)))
    params = model.init({"params": jax.random.key(0), "sample": jax.random.key(1)}, jnp.ones((1, 2, 12)))["params"]
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {
        ".".join(p.key for p in path[:-1]) + (".weight" if path[-1].key == "kernel" else ".bias"): np.asarray(
            v.T if path[-1].key == "kernel" else v
        )
        for path, v in flat
    }


def test_wrong_family_and_bad_tensors_name_the_file(tmp_path):
    _, variables = _tiny_vqvae(True)
    vq_file, dvae_file = tmp_path / "speech_vqvae.npz", tmp_path / "vae.npz"
    np.savez(vq_file, **_torch_state_dict(variables, 2, True))
    np.savez(dvae_file, **_tiny_dvae_state_dict())
    proc = run_python(
        ["-m", "avrep.convert", "dvae", "--weights", str(vq_file), "--out", str(tmp_path / "r")], check=False
    )
    assert proc.returncode == 1 and not os.path.exists(tmp_path / "r")
    assert f"{vq_file}: expected the state_dict of a DVAE-family model" in proc.stderr
    assert "holds a speech VQ-VAE (import it with `python -m avrep.convert vqvae`)" in proc.stderr
    with pytest.raises(ValueError, match=rf"{dvae_file}: expected the state_dict of a speech VQ-VAE.*DVAE-family"):
        importing.import_speech_vqvae(dvae_file, tmp_path / "r")
    other = tmp_path / "other.npz"
    np.savez(other, **{"backbone.weight": np.zeros((2, 2))})
    with pytest.raises(
        ValueError, match=rf"{other}: expected .* holds neither; its top-level modules are \['backbone'\]"
    ):
        importing.import_dvae(other, tmp_path / "r")
    bad = tmp_path / "bad.npz"
    np.savez(bad, **dict(_torch_state_dict(variables, 2, True), **{"_pre_vq_conv.bias": np.zeros(5, np.float32)}))
    with pytest.raises(ValueError, match=rf"{bad}: .*_pre_vq_conv\.bias has torch shape \(5,\).*expects \(4,\)"):
        importing.import_speech_vqvae(bad, tmp_path / "r")
    sd = _tiny_dvae_state_dict()
    np.savez(bad, **dict(sd, **{"inf_mean.weight": np.zeros((3, 8), np.float32)}))
    with pytest.raises(ValueError, match=rf"{bad}: .*inf_mean\.weight has torch shape \(3, 8\).*expects \(9, 3\)"):
        importing.import_dvae(bad, tmp_path / "r")
    with pytest.raises(FileNotFoundError, match="no such weight file"):
        importing.import_dvae(tmp_path / "absent.npz", tmp_path / "r")
    assert not os.path.exists(tmp_path / "r")


def test_torch_weight_files(tmp_path):
    _, variables = _tiny_vqvae(False)
    sd = _torch_state_dict(variables, 2, False)
    try:
        import torch
    except ImportError:
        (tmp_path / "model_checkpoint").write_bytes(b"")
        with pytest.raises(ImportError, match="needs PyTorch"):
            importing.import_speech_vqvae(tmp_path / "model_checkpoint", tmp_path / "r")
        return
    # The authors' container: torch.save({"model": state_dict, "optimizer": ..., "epoch": ...}).
    torch.save({"model": {k: torch.from_numpy(v) for k, v in sd.items()}, "epoch": 3}, tmp_path / "model_checkpoint")
    model = avrep.load_checkpoint(importing.import_speech_vqvae(tmp_path / "model_checkpoint", tmp_path / "r"))
    jax.tree.map(np.testing.assert_array_equal, model.variables, jax.tree.map(np.asarray, dict(variables)))


def test_evaluate_scores_an_imported_tokenizer(tmp_path):
    from data_pipelines import registry

    path = parity_dir(VQMAE_S)
    data_dir = str(tmp_path / "data")
    registry.prepare("synthav/speech_smoke", data_dir)
    run = tmp_path / "vqmae_s"
    argv = ["--weights", os.path.join(path, "weights.npz"), "--out", str(run), "--dataset", "synthav/speech_smoke"]
    run_python(["-m", "avrep.convert", "vqvae", *argv, "--data-dir", data_dir])
    run_python(["evaluate.py", "--workdir", str(run), "--limit", "2", "--griffin_lim_iters", "4"])
    with open(run / "eval" / "analysis_resynthesis_audio.csv") as f:
        rows = {r["condition"]: r for r in csv.DictReader(f) if r["model"] == "vqmae_s"}
    assert rows["original phase"]["n"] == "2" and float(rows["original phase"]["stoi"]) > 0.8
