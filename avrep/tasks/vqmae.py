"""Training tasks for the masked autoencoders over VQ tokens ([Sadok-thesis] Ch. 5 and App. C).

``task: vqmae``: masked pre-training of VQ-MAE-AV (``model.kind: av``), VQ-MAE-S (``audio``, the
audio-only model with a [CLS] token) or VQ-MAE-V (``visual``) on the frozen tokenizers' index grids.
``task: vqmae_finetune``: speech emotion recognition from a pre-trained encoder (``finetune.pretrained``: its run
directory; empty = the same architecture from scratch, the "no pre-training" row of [Sadok-thesis] Table 5.2) on one
fold of a speaker-independent k-fold cross-validation.

Inputs. The frozen VQ-VAEs are frame-wise, so the index grids of every utterance are computed once into
a cache per split (``avrep.features.cache.build_feature_cache`` with ``outputs="indices"``; audio
[2n, 64] at 50 Hz beside video [n, 24, 24] at 25 fps) and training reads random windows of
``data.frames_per_example`` video frames (and twice as many audio frames) from it. An utterance shorter
than one token window (``visual_patch_time`` frames) is skipped and listed in the cache index; a longer
one that is shorter than the window is wrap-padded, as the authors' code does.

Audio-only models (VQ-MAE-S) read no video: only the audio tokenizer is loaded, the cache holds the audio
index grids alone, and ``data.frames_per_example`` counts audio frames at the model's own rate (VQ-MAE-S: hop
256 at 16 kHz, 62.5 Hz, 200-frame clips), so the hop need not divide the video frame period and audio-only
corpora (1x1 placeholder frames) never reach a face model.

Folds (``fold_assignment``). The speakers of every split listed in ``finetune.splits`` are sorted,
shuffled with ``finetune.fold_seed`` and dealt into ``finetune.num_folds`` groups (sizes differ by at most
one, so every speaker is tested exactly once; the authors' code left the remainder untested). For fold
i, group i is the test set, ``finetune.validation_speakers`` of the other speakers (the next ones in the
shuffled order) are the validation set used for model selection, and the rest are trained on. The
assignment is written to ``<workdir>/fold.json``.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from avrep import runs
from avrep.features.cache import FeatureSource, SourceView, feature_cache_dir, shared_feature_cache
from avrep.features.tokenizers import FrozenTokenizers
from avrep.models.config import module_from_config
from avrep.models.vqmae import VQMAEAV, VQMAES, VQMAEV, VQMAEClassifier, masked_accuracy, vqmae_loss
from avrep.nn.losses import asymmetric_loss
from avrep.tasks.base import Task
from data_pipelines.sources import open_source
from data_pipelines.spec import DataError, PipelineSpec, feature_field

MODELS = {"av": VQMAEAV, "audio": VQMAES, "visual": VQMAEV}
KIND_NAMES = {"av": "VQ-MAE-AV", "audio": "VQ-MAE-A", "visual": "VQ-MAE-V"}
# Fields that fix the token layout: a fine-tuned encoder must see tokens laid out as in pre-training.
LAYOUT_FIELDS = (
    "audio_bins",
    "visual_height",
    "visual_width",
    "audio_patch_time",
    "audio_patch_freq",
    "visual_patch_time",
    "visual_patch_size",
    "audio_codes",
    "audio_code_dim",
    "visual_codes",
    "visual_code_dim",
    "width",
)
FOLD_FILE = "fold.json"


def audio_rate(config, modalities: tuple[str, ...] = ("audio", "visual")) -> int:
    """Audio frames per clock frame: per video frame (2 in the VQ-MAE setting: hop 320 at 16 kHz = 50 Hz, video
    25 fps), or 1 for a model without video, whose clock is its own audio frame rate (VQ-MAE-S: hop 256, 62.5 Hz)."""
    if "visual" not in modalities:
        return 1
    rate = int(config["audio"]["sample_rate"]) / int(config["audio"]["hop"]) / int(config["data"]["fps"])
    if abs(rate - round(rate)) > 1e-6 or round(rate) < 1:
        raise ValueError(
            f"config keys audio.sample_rate / audio.hop / data.fps give {rate:.3f} audio frames per "
            f"video frame; VQ-MAE with video needs a whole number (hop 320 at 16 kHz with 25 fps gives 2)"
        )
    return int(round(rate))


def build_model(kind: str, fields: dict, owner: str):
    if kind not in MODELS:
        raise ValueError(f"{owner}: model.kind must be one of {sorted(MODELS)}, got {kind!r}")
    return module_from_config(MODELS[kind], fields, owner)


def model_fields(model_cfg) -> tuple[str, dict]:
    fields = dict(model_cfg)
    return str(fields.pop("kind", "av")), fields


class _IndexInputs(Task):
    """What both VQ-MAE tasks share: the index caches, the modalities a model reads, its batch shapes."""

    def _setup_inputs(self, config, kind: str, grid_module):
        """Checks the model's grids (``grid_module``: the VQ-MAE module) against the tokenizers and the window."""
        self.kind = kind
        self.rate = audio_rate(config, self.inputs)
        self.tokenizers = FrozenTokenizers(config, self.inputs)  # only the tokenizers this model reads
        t = int(config["data"]["frames_per_example"])  # clock frames: video, or audio for an audio-only model
        expected, patch_frames = {}, []
        if "audio" in self.inputs:
            expected["audio"] = (self.rate * t, grid_module.audio_bins)
            patch_frames.append(-(-grid_module.audio_patch_time // self.rate))
            if (self.rate * t) % grid_module.audio_patch_time:
                what = (
                    "audio frames (an audio-only model counts audio frames; the 'audio' variant of the configs sets "
                    "them)"
                    if "visual" not in self.inputs
                    else f"video frames ({self.rate * t} audio frames)"
                )
                raise ValueError(
                    f"config key data.frames_per_example={t} {what} is not a whole number of audio tokens of "
                    f"model.audio_patch_time={grid_module.audio_patch_time} frames"
                )
        if "visual" in self.inputs:
            expected["visual"] = (t, grid_module.visual_height, grid_module.visual_width)
            patch_frames.append(grid_module.visual_patch_time)
        self.min_frames = max(patch_frames)  # video frames of one token window: shorter utterances are skipped
        for m in self.inputs:
            grid = self.tokenizers.latent_shapes[m][:-1]  # [positions..., channels] -> positions
            if tuple(grid) != expected[m][1:]:
                raise ValueError(
                    f"config key tokenizers.{m}: its index grid is {tuple(grid)} per frame, but "
                    f"config key model expects {expected[m][1:]} (audio_bins / visual_height, "
                    f"visual_width)"
                )
            codes = self.tokenizers.num_codes[m]
            if codes != getattr(grid_module, f"{m}_codes"):
                raise ValueError(
                    f"config key model.{m}_codes={getattr(grid_module, f'{m}_codes')} but the "
                    f"{m} tokenizer ({self.tokenizers.paths[m]}) has {codes} codes"
                )
            frames_field = f"{m}_frames"
            if expected[m][0] > getattr(grid_module, frames_field):
                raise ValueError(
                    f"config key data.frames_per_example={t} needs model.{frames_field} >= "
                    f"{expected[m][0]}, got {getattr(grid_module, frames_field)}"
                )
        self._shapes = expected

    @property
    def display_name(self) -> str:
        """VQ-MAE-AV (SAF-SAF), VQ-MAE-A, VQ-MAE-V."""
        model_cfg = self.config["model"]
        name = KIND_NAMES[self.kind]
        if self.kind == "av":
            name += (
                f" ({model_cfg.get('encoder_fusion', 'caf').upper()}-{model_cfg.get('decoder_fusion', 'caf').upper()})"
            )
        return name

    @property
    def inputs(self) -> tuple[str, ...]:
        return {"av": ("audio", "visual"), "audio": ("audio",), "visual": ("visual",)}[self.kind]

    def _spec(self, labels: tuple[str, ...] = ()) -> PipelineSpec:
        return self._pipeline_from_config(
            "feature_windows", tuple(map(feature_field, self.inputs)), labels=labels, wrap_short=True
        )

    def index_cache(self, workdir: str, split: str, source=None) -> FeatureSource:
        """The index grids of every utterance of ``split`` (built once, shared by process 0)."""
        d = self.config["data"]
        if source is None:
            source = open_source(str(d["name"]), split, str(d["data_dir"]))
        return shared_feature_cache(
            feature_cache_dir(self.config, workdir, split),
            self.tokenizers,
            source,
            min_frames=self.min_frames,
            outputs="indices",
            audio_rate=self.rate,
        )

    def dummy_batch(self) -> dict:
        return {feature_field(m): np.zeros((2, *self._shapes[m]), np.int16) for m in self.inputs}

    def model_inputs(self, batch) -> tuple[jax.Array, ...]:
        return tuple(batch[feature_field(m)].astype(jnp.int32) for m in self.inputs)


class VQMAEPretrainTask(_IndexInputs):
    def __init__(self, config):
        super().__init__(config)
        kind, fields = model_fields(config["model"])
        self._module = build_model(kind, fields, "vqmae config (config key model)")
        self._setup_inputs(config, kind, self._module)
        loss = config.get("loss", {})
        self.temperature = float(loss.get("temperature", 0.5))
        self.contrastive_weight = float(loss.get("contrastive_weight", 1.0))
        self.modality_weights = {m: float(loss.get(f"{m}_weight", 1.0)) for m in ("audio", "visual")}

    @property
    def module(self):
        return self._module

    @property
    def pipeline(self) -> PipelineSpec:
        return self._spec()

    def training_source(self, source, workdir: str):
        return self.index_cache(workdir, str(self.config["data"]["train_split"]), source)

    def init_variables(self, rng, batch):
        params_rng, mask_rng = jax.random.split(rng)
        x = self.model_inputs({k: jnp.asarray(v) for k, v in batch.items()})
        return dict(self._module.init({"params": params_rng, "mask": mask_rng}, *x))

    def loss(self, params, model_state, batch, rng, step):
        (compute_params,) = self.computation(params)
        out = self._module.apply({"params": compute_params}, *self.model_inputs(batch), rngs={"mask": rng})
        out = self.outputs_float32(out)
        loss, terms = vqmae_loss(
            out,
            temperature=self.temperature,
            contrastive_weight=self.contrastive_weight,
            modality_weights=self.modality_weights,
        )
        metrics = dict(terms)
        for m in self.inputs:
            metrics[f"accuracy_{m}"] = masked_accuracy(out[m])
            metrics[f"mask_fraction_{m}"] = jnp.mean(out[m]["mask_fraction"])
        return loss, (metrics, dict(model_state))

    def apply_fn(self, variables, *args, **kwargs):
        """The pre-training forward pass (needs ``rngs={"mask": key}``); ``module.apply(..., method="encode")``
        gives the unmasked encoder outputs."""
        return self._module.apply(variables, *args, **kwargs)


# ------------------------------------------------------------------------------------------ fine-tuning


def fold_assignment(
    speakers: list[str], num_folds: int, fold: int, validation_speakers: int, seed: int
) -> dict[str, list[str]]:
    """{"train", "validation", "test"}: speaker lists of ``fold`` (see the module doc)."""
    unique = sorted(set(speakers))
    if not 2 <= num_folds <= len(unique):
        raise ValueError(
            f"config key finetune.num_folds={num_folds}: expected 2 to {len(unique)} (the number of speakers)"
        )
    if not 0 <= fold < num_folds:
        raise ValueError(f"config key finetune.fold={fold}: expected 0 to {num_folds - 1}")
    order = [unique[i] for i in np.random.default_rng(seed).permutation(len(unique))]
    groups = np.array_split(np.arange(len(order)), num_folds)
    test = [order[i] for i in groups[fold]]
    rest = order[groups[fold][-1] + 1 :] + order[: groups[fold][0]]  # the speakers after the test group first
    if not 0 < validation_speakers < len(rest):
        raise ValueError(
            f"config key finetune.validation_speakers={validation_speakers}: expected 1 to "
            f"{len(rest) - 1} (fold {fold} leaves {len(rest)} speakers for training and validation)"
        )
    return {
        "train": sorted(rest[validation_speakers:]),
        "validation": sorted(rest[:validation_speakers]),
        "test": sorted(test),
    }


class VQMAEFinetuneTask(_IndexInputs):
    """Speech emotion recognition: a VQ-MAE encoder with a pooling head (``finetune.pooling``), the
    asymmetric loss (``loss.gamma_pos / gamma_neg / label_smoothing``), the whole encoder trained or frozen
    (``finetune.freeze_encoder``)."""

    def __init__(self, config):
        super().__init__(config)
        ft = config["finetune"]
        self.pretrained = str(ft.get("pretrained", ""))
        kind, fields = model_fields(config["model"])
        if self.pretrained and (os.path.isdir(self.pretrained) or not fields):
            kind, fields = self._pretrained_model(config, kind, fields)
        self.backbone = build_model(kind, fields, "vqmae_finetune config (config key model)")
        self.num_classes = int(ft["num_classes"])
        self._module = module_from_config(
            VQMAEClassifier,
            dict(
                backbone=self.backbone,
                num_classes=self.num_classes,
                pooling=str(ft["pooling"]),
                **dict(ft.get("head", {})),
            ),
            "vqmae_finetune config (config keys finetune.pooling, finetune.head)",
        )
        self._setup_inputs(config, kind, self.backbone)
        self.label = str(ft.get("label", "emotion"))
        self.freeze = bool(ft.get("freeze_encoder", False))
        loss = config["loss"]
        self.asl = dict(
            gamma_pos=float(loss["gamma_pos"]), gamma_neg=float(loss["gamma_neg"]), eps=float(loss["label_smoothing"])
        )

    def _pretrained_model(self, config, kind: str, fields: dict) -> tuple[str, dict]:
        """The pre-training run's model (``config.model`` may only repeat its token layout) and tokenizers;
        both are written into ``config`` so that the fine-tuned checkpoint describes itself."""
        pre = runs.read_config(self.pretrained)
        if pre.get("task") != "vqmae":
            raise ValueError(
                f"config key finetune.pretrained={self.pretrained} is a {pre.get('task')!r} run; expected "
                f"a VQ-MAE pre-training run (task 'vqmae')"
            )
        pre_kind, pre_fields = model_fields(pre.model)
        pre_module = build_model(pre_kind, pre_fields, f"pre-training run {self.pretrained} (config key model)")
        changed = sorted(f for f in LAYOUT_FIELDS if f in fields and fields[f] != getattr(pre_module, f, fields[f]))
        # mask_unit names the pre-training's masking (a row of [Sadok-thesis] Table C.3): it must be that run's.
        if "mask_unit" in fields and fields["mask_unit"] != getattr(pre_module, "mask_unit", None):
            raise ValueError(
                f"config key model.mask_unit={fields['mask_unit']!r}, but the pre-training run {self.pretrained} "
                f"masked by {getattr(pre_module, 'mask_unit', None)!r}: fine-tune a run pre-trained with that masking"
            )
        if changed or (fields and kind != pre_kind):
            raise ValueError(
                f"config key model differs from the pre-training run {self.pretrained} in its token "
                f"layout ({changed or 'model.kind'}): the fine-tuned encoder must read tokens laid "
                f"out as in pre-training"
            )
        fields = {**pre_fields, **fields}
        config["model"] = {"kind": pre_kind, **fields}
        for m in ("audio", "visual"):
            if not config["tokenizers"][m]:
                config["tokenizers"][m] = pre.tokenizers[m]
        # The tokens must be the pre-training's: its BatchNorm statistics option too, unless this config sets one.
        if not config["tokenizers"].get("batch_stats_mode") and pre.tokenizers.get("batch_stats_mode"):
            config["tokenizers"]["batch_stats_mode"] = pre.tokenizers.batch_stats_mode
        return pre_kind, fields

    @property
    def module(self):
        return self._module

    @property
    def pipeline(self) -> PipelineSpec:
        return self._spec(labels=(self.label,))

    # ---------------------------------------------------------------- data
    def split_caches(self, workdir: str) -> list[FeatureSource]:
        return [self.index_cache(workdir, split) for split in self.config["finetune"]["splits"]]

    def folds(self, caches: list[FeatureSource]) -> dict[str, list[str]]:
        ft = self.config["finetune"]
        speakers = [u.get("speaker") for c in caches for u in c.index["utterances"]]
        if None in speakers:
            raise DataError(f"{caches[0].description}: speaker-independent folds need a 'speaker' for every utterance")
        return fold_assignment(
            speakers, int(ft["num_folds"]), int(ft["fold"]), int(ft["validation_speakers"]), int(ft.get("fold_seed", 0))
        )

    def fold_source(self, caches: list[FeatureSource], speakers: list[str], description: str) -> SourceView:
        wanted = set(speakers)
        pairs = [
            (s, i) for s, c in enumerate(caches) for i, u in enumerate(c.index["utterances"]) if u["speaker"] in wanted
        ]
        for s, i in pairs:
            label = caches[s].index["utterances"][i].get(self.label)
            if label is None or not 0 <= int(label) < self.num_classes:
                raise DataError(
                    f"{caches[s].description}: utterance {i} has {self.label}={label}; expected "
                    f"0..{self.num_classes - 1} (config key finetune.num_classes)"
                )
        return SourceView(caches, pairs, description)

    def training_source(self, source, workdir: str):
        caches = self.split_caches(workdir)
        folds = self.folds(caches)
        if jax.process_index() == 0:
            with open(os.path.join(workdir, FOLD_FILE), "w") as f:
                json.dump(folds, f, indent=1)
        ft = self.config["finetune"]
        return self.fold_source(caches, folds["train"], f"fold {ft['fold']}/{ft['num_folds']} training speakers")

    # ---------------------------------------------------------------- model
    def init_variables(self, rng, batch):
        x = self.model_inputs({k: jnp.asarray(v) for k, v in batch.items()})
        return dict(self._module.init({"params": rng}, *x))

    def warm_start(self, variables):
        """The pre-trained encoder (and global-token pooling) in place of the freshly initialised ones."""
        if self.pretrained:
            pre = runs.read_config(self.pretrained)
            module = build_model(*model_fields(pre.model), f"pre-training run {self.pretrained} (config key model)")
            x = self.model_inputs(self.dummy_batch())
            abstract = jax.eval_shape(lambda k: dict(module.init({"params": k, "mask": k}, *x)), jax.random.key(0))
            params = dict(variables["params"])
            backbone = dict(params["backbone"])
            for name, tree in runs.restore_variables(self.pretrained, abstract)["params"].items():
                if name in backbone:
                    expected = jax.tree.map(jnp.shape, backbone[name])
                    if jax.tree.map(jnp.shape, tree) != expected:
                        raise ValueError(
                            f"config key finetune.pretrained={self.pretrained}: the shapes of its '{name}' "
                            f"parameters differ from this model's (another token layout or size)"
                        )
                    backbone[name] = tree
            params["backbone"] = backbone
            variables["params"] = params
        return variables

    def optimizer(self, tx: optax.GradientTransformation) -> optax.GradientTransformation:
        """With ``finetune.freeze_encoder``, the pre-trained encoder gets no updates (nor weight decay)."""
        if not self.freeze:
            return tx

        def labels(params):
            flat = traverse_util.flatten_dict(params)
            return traverse_util.unflatten_dict(
                {k: "frozen" if k[:2] == ("backbone", "encoder") else "train" for k in flat}
            )

        return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)

    def logits(self, variables, batch) -> jax.Array:
        return self._module.apply(variables, *self.model_inputs(batch))

    def loss(self, params, model_state, batch, rng, step):
        (compute_params,) = self.computation(params)
        logits = self.outputs_float32(self.logits({"params": compute_params}, batch))
        labels = batch[self.label]
        loss = asymmetric_loss(logits, labels, **self.asl)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
        return loss, ({"asymmetric_loss": loss, "train_accuracy": accuracy}, dict(model_state))

    def apply_fn(self, variables, *args, **kwargs):
        """Index grids (audio [B, 2T, 64][, visual [B, T, 24, 24]]) -> emotion logits [B, num_classes]."""
        return self._module.apply(variables, *args, **kwargs)
