"""VQ-MAE parity with the authors' PyTorch models (VQ-MAE-AV's CMDMAE, VQ-MAE-S's MAE) on their golden
files (random weights, stored token permutations; tests/parity.py finds them), the importer of their
state_dicts (avrep.convert.vqmae), and the ``:paper`` parameter counts against their classes'."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from parity import load_fixture, max_abs_diff, parity_dir, tolerance

from avrep.convert import vqmae as convert_vqmae
from avrep.convert.state_dict import load_state_dict
from avrep.models import vqmae
from avrep.tasks.vqmae import build_model
from configs import vqmae as vqmae_configs

AV_FIXTURES = {"vqmae_av/saf_saf": ("saf", 12, 4), "vqmae_av/caf_caf_2x1": ("caf", 2, 1)}
SUFFIX = {"audio": "a", "visual": "v"}


def _target_logprob(logits, targets):
    """log_softmax(logits)[target] evaluated in float64, as the fixtures store it."""
    logp = jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1)
    return np.take_along_axis(np.asarray(logp), np.asarray(targets)[..., None], -1)[..., 0]


class _Checker:
    """Compares arrays with a fixture's golden outputs within its noise floor (tests/parity.py)."""

    def __init__(self, fixture, meta, golden):
        self.fixture, self.golden, self.checked, self.ratios = fixture, golden, set(), {}
        self.floors = meta["noise_floor_fp64"]["arrays"]

    def close(self, name, ours):
        diff, tol = max_abs_diff(ours, self.golden[name]), tolerance(self.floors[name])
        assert diff <= tol, f"{self.fixture} {name}: max |diff| {diff:.3g} > {tol:.3g} ({self.floors[name]})"
        self.checked.add(name)
        self.ratios[name] = diff / tol

    def equal(self, name, ours, allowed_flips=0):
        flips = int(np.sum(np.asarray(ours) != self.golden[name]))
        assert flips <= allowed_flips, f"{self.fixture} {name}: {flips} entries differ"
        self.checked.add(name)

    def argmax(self, name, logits):
        # Their float32-vs-float64 run flips none; allow a near-tie or two among tens of thousands.
        self.equal(name, np.argmax(np.asarray(logits), -1), allowed_flips=self.golden[name].size // 10_000)

    def all_checked(self):
        assert self.checked == set(self.golden), f"not compared: {sorted(set(self.golden) - self.checked)}"
        worst = max(self.ratios, key=self.ratios.get)
        ratio = self.ratios[worst]
        print(f"\n{self.fixture}: {len(self.checked)} arrays; largest |diff| / tolerance {ratio:.2f} ({worst})")


def _forward(model, variables, inputs, **kwargs):
    """One jitted forward of every token's logits, capturing the encoder's outputs."""

    def run(variables, inputs):
        return model.apply(
            variables,
            *inputs,
            all_logits=True,
            capture_intermediates=lambda module, method: module.name == "encoder",
            mutable=["intermediates"],
            **kwargs,
        )

    out, state = jax.jit(run)(variables, inputs)
    return out, state["intermediates"]["encoder"]["__call__"][0]


def test_tubing_matches_the_authors_token_layout():
    # The fixtures' x* are their einops tubing of the raw grids (b (t1 t2) (c1 l1) -> b (t1 c1) (l1 t2), and the
    # visual b (t1 t2) (c1 l1 c2 l2) -> b (t1 c1 c2) (l1 l2 t2)); avrep's tokenizers must give the same tokens.
    _, _, inputs, _ = load_fixture("vqmae_av/saf_saf")
    np.testing.assert_array_equal(vqmae.tokenize_audio(inputs["raw_a"]), inputs["x_a"])
    np.testing.assert_array_equal(vqmae.tokenize_visual(inputs["raw_v"].reshape(2, 50, 24, 24)), inputs["x_v"])
    _, _, inputs, _ = load_fixture("vqmae_s/mae")
    np.testing.assert_array_equal(vqmae.tokenize_audio(inputs["raw"]), inputs["x"])


@pytest.mark.parametrize("fixture", sorted(AV_FIXTURES))
def test_vqmae_av_parity(fixture):
    path, meta, inputs, golden = load_fixture(fixture)
    model, variables = convert_vqmae.load_vqmae(os.path.join(path, "weights.npz"))
    fusion, encoder_depth, decoder_depth = AV_FIXTURES[fixture]
    assert (model.encoder_fusion, model.decoder_fusion, model.encoder_depth, model.decoder_depth) == (
        fusion,
        fusion,
        encoder_depth,
        decoder_depth,
    )
    assert not model.attention_bias and model.caf_form == ("authors" if fusion == "caf" else "corrected")
    assert vqmae.count_params(variables["params"]) == meta["weights"]["parameters"] - (
        822_080 if fusion == "caf" else 0  # their decoder.cross_attention_a, never called, is not imported
    )
    check = _Checker(fixture, meta, golden)
    # Their permutations ((T, B): token forward[r, b] at shuffled rank r), the first round(T / 2) ranks kept.
    maskings = {}
    for name, s in SUFFIX.items():
        order = golden[f"perm.forward_{s}"].T
        maskings[name] = vqmae.masking_from_order(order, order.shape[1] // 2)
        check.equal(f"perm.forward_{s}", np.asarray(maskings[name].order).T)
        check.equal(f"perm.backward_{s}", np.asarray(maskings[name].restore).T)
    grids = (inputs["raw_a"], inputs["raw_v"].reshape(2, 50, 24, 24))
    out, (z, _, _) = _forward(model, variables, grids, maskings=maskings)
    _, terms = vqmae.vqmae_loss(out)
    for name, s in SUFFIX.items():
        check.close(f"enc.z_{s}", np.asarray(z[name]).swapaxes(0, 1))  # theirs time-major, kept tokens in rank order
        o = out[name]
        check.equal(f"dec.mask_{s}", np.broadcast_to(np.asarray(o["masked"])[..., None], golden[f"dec.mask_{s}"].shape))
        check.close(f"dec.logits_{s}.target_logprob", _target_logprob(o["logits"], inputs[f"x_{s}"]))
        check.argmax(f"dec.logits_{s}.argmax", o["logits"])
        check.close(f"dec.logits_{s}.full_b0_first1", o["logits"][:1, 0])
        check.close(f"loss.{name}", terms[f"ce_{name}"])
    check.close("loss.total", terms["ce_audio"] + terms["ce_visual"])
    check.all_checked()


def test_vqmae_av_corrected_caf_differs_from_the_authors():
    # The corrected decoder (each modality its own cross-attention; theirs runs audio through the visual one) with
    # their otherwise unused decoder.cross_attention_a: the visual stream is unchanged, the audio one is not.
    path, meta, inputs, golden = load_fixture("vqmae_av/caf_caf_2x1")
    model, variables = convert_vqmae.load_vqmae(os.path.join(path, "weights.npz"), caf_form="corrected")
    assert vqmae.count_params(variables["params"]) == meta["weights"]["parameters"]
    orders = {name: golden[f"perm.forward_{s}"].T for name, s in SUFFIX.items()}
    maskings = {name: vqmae.masking_from_order(order, order.shape[1] // 2) for name, order in orders.items()}
    out, _ = _forward(model, variables, (inputs["raw_a"], inputs["raw_v"].reshape(2, 50, 24, 24)), maskings=maskings)
    floors = meta["noise_floor_fp64"]["arrays"]
    visual = _target_logprob(out["visual"]["logits"], inputs["x_v"])
    assert max_abs_diff(visual, golden["dec.logits_v.target_logprob"]) <= tolerance(
        floors["dec.logits_v.target_logprob"]
    )
    audio = _target_logprob(out["audio"]["logits"], inputs["x_a"])
    assert max_abs_diff(audio, golden["dec.logits_a.target_logprob"]) > 1.0


def test_vqmae_s_parity_and_the_loss_mask():
    path, meta, inputs, golden = load_fixture("vqmae_s/mae")
    model, variables = convert_vqmae.load_vqmae(os.path.join(path, "weights.npz"), loss_mask="authors")
    assert (model.encoder_depth, model.decoder_depth, model.mlp_ratio, model.attention_bias) == (6, 4, 4.0, False)
    assert vqmae.count_params(variables["params"]) == meta["weights"]["parameters"]
    check = _Checker("vqmae_s/mae", meta, golden)
    order = golden["perm.forward"].T
    masking = vqmae.masking_from_order(order, order.shape[1] // 2)  # int(320 (1 - 0.5)) = 160 kept
    check.equal("perm.forward", np.asarray(masking.order).T)
    check.equal("perm.backward", np.asarray(masking.restore).T)
    out, (cls, z, _) = _forward(model, variables, (inputs["raw"],), masking=masking)
    check.close("enc.features", np.concatenate([np.asarray(cls)[:, None], np.asarray(z)], 1).swapaxes(0, 1))
    o = out["audio"]
    check.close("dec.logits.target_logprob", _target_logprob(o["logits"], inputs["x"]))
    check.argmax("dec.logits.argmax", o["logits"])
    check.close("dec.logits.full_b0_first1", o["logits"][:1, 0])
    # Their loss mask scores 159 of the 160 tokens the encoder did not see; loss_mask="authors" reproduces it ...
    assert np.asarray(o["target_mask"]).sum(1).tolist() == [159, 159]
    check.equal("dec.mask", np.broadcast_to(np.asarray(o["target_mask"])[..., None], golden["dec.mask"].shape))
    check.close("loss.authors", vqmae.vqmae_loss(out)[0])
    # ... avrep's default scores all of them (the corrected variant).
    check.equal("mask_not_seen_by_encoder", np.asarray(o["masked"]))
    o = dict(o, target_mask=o["masked"])
    check.close("loss.all_unseen", vqmae.vqmae_loss({"audio": o})[0])
    check.all_checked()


def test_authors_loss_mask_on_the_gathered_targets():
    # Without all_logits the targets are the masked tokens in shuffle order; "authors" drops the first of them.
    model = vqmae.VQMAES(width=16, num_heads=2, encoder_depth=1, decoder_depth=1, audio_code_dim=1, audio_frames=20)
    model = model.clone(mask_unit="patch", mask_ratio=0.5)
    grid = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 20, 64)), jnp.int32)
    rngs = {"params": jax.random.key(0), "mask": jax.random.key(1)}
    variables = jax.jit(model.init)(rngs, grid)
    ours = jax.jit(model.apply)(variables, grid, rngs=rngs)["audio"]
    theirs = jax.jit(model.clone(loss_mask="authors").apply)(variables, grid, rngs=rngs)["audio"]
    assert np.asarray(ours["target_mask"]).sum(1).tolist() == [16, 16]  # 2 x 16 tokens, half masked
    assert np.asarray(theirs["target_mask"]).tolist() == [[False] + [True] * 15] * 2


def test_importer_names_what_does_not_fit():
    path = parity_dir("vqmae_s/mae")
    sd = load_state_dict(os.path.join(path, "weights.npz"))
    model = convert_vqmae.build_vqmae(convert_vqmae.infer_vqmae_config(sd))
    with pytest.raises(ValueError, match=r"encoder\.extra\.weight: no avrep counterpart"):
        convert_vqmae.vqmae_variables({**sd, "encoder.extra.weight": np.zeros((2, 2))}, model)
    missing = {k: v for k, v in sd.items() if k != "decoder.head.bias"}
    with pytest.raises(ValueError, match=r"missing decoder/head/bias"):
        convert_vqmae.vqmae_variables(missing, model)
    with pytest.raises(ValueError, match="not an authors' VQ-MAE"):
        convert_vqmae.infer_vqmae_config({"encoder.foo.weight": np.zeros((2, 2))})
    bad = dict(sd, **{"encoder.transformer.0.attn.qkv.weight": np.zeros((960, 32), np.float32)})
    with pytest.raises(ValueError, match=r"encoder\.transformer\.0\.attn\.qkv\.weight: shape \(960, 32\)"):
        convert_vqmae.vqmae_variables(bad, model)


# ---------------------------------------------------------------------------- parameter counts ---


def _block_params(weights, prefix):
    return sum(v.size for k, v in weights.items() if k.startswith(prefix))


def _config_params(arg):
    """Parameters of configs/vqmae.py:<arg>'s model without the attention poolings (the global tokens)."""
    c = vqmae_configs.get_config(arg)
    fields = dict(c.model)
    model = build_model(fields.pop("kind"), fields, arg)
    audio = jax.ShapeDtypeStruct((2, model.audio_frames, model.audio_bins), jnp.int32)
    inputs = [audio]
    if isinstance(model, vqmae.VQMAEAV):
        inputs.append(jax.ShapeDtypeStruct((2, model.visual_frames, 24, 24), jnp.int32))
    rngs = {"params": jax.random.key(0), "mask": jax.random.key(1)}
    params = jax.eval_shape(lambda *x: model.init(rngs, *x), *inputs)["params"]
    return model, vqmae.count_params({k: v for k, v in params.items() if not k.endswith("_pool")})


def test_paper_parameter_counts_equal_the_authors_classes():
    # SAF-SAF at the thesis's 12 / 4 blocks: the fixture's weights are the authors' class at that size.
    saf = load_state_dict(os.path.join(parity_dir("vqmae_av/saf_saf"), "weights.npz"))
    _, count = _config_params("paper")
    assert count == sum(v.size for v in saf.values()) == 13_492_160  # the 13.49 M
    # CAF-CAF: the fixture has 2 / 1 blocks per stack (each stack a pair: visual and audio) at the thesis's widths,
    # so add the 10 + 3 missing pairs' blocks; the count includes their unused decoder.cross_attention_a.
    caf = load_state_dict(os.path.join(parity_dir("vqmae_av/caf_caf_2x1"), "weights.npz"))
    block = _block_params(caf, "encoder.transformer_v.0.")
    assert block == _block_params(saf, "encoder.transformer.0.") == 821_760
    model, count = _config_params("caf,paper")
    missing_blocks = 2 * (model.encoder_depth - 2) + 2 * (model.decoder_depth - 1)
    assert count == sum(v.size for v in caf.values()) + missing_blocks * block == 29_929_280  # 29.93 M
    # VQ-MAE-S: the fixture is the authors' MAE at 6 / 4 blocks with the thesis's widths, MLP ratio 4 and 200-frame
    # clips (320 tokens); the thesis's VQ-MAE-S has 12 / 4: 6 blocks more.
    s = load_state_dict(os.path.join(parity_dir("vqmae_s/mae"), "weights.npz"))
    model, count = _config_params("audio,paper")
    assert (model.encoder_depth, model.decoder_depth, model.audio_frames, model.mlp_ratio) == (12, 4, 200, 4.0)
    block = _block_params(s, "encoder.transformer.0.")
    assert block == 1_232_000
    assert count == sum(v.size for v in s.values()) + (model.encoder_depth - 6) * block == 19_922_752
