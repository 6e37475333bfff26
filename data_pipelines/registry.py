"""Dataset preparation by name: SynthAV is generated on demand; other corpora must be built first."""

from __future__ import annotations

import os


def is_prepared(name: str, data_dir: str) -> bool:
    """True when ``data_dir/<name>/<version>/dataset_info.json`` exists (TFDS layout)."""
    root = os.path.join(data_dir, *name.split("/"))
    return os.path.isdir(root) and any(
        os.path.isfile(os.path.join(root, v, "dataset_info.json")) for v in os.listdir(root)
    )


def prepare(name: str, data_dir: str, manual_dir: str | None = None, **build_kwargs) -> None:
    """Makes sure dataset ``name`` (e.g. 'synthav/mdvae', 'synthav/speech') is ready in ``data_dir``; a real
    corpus (e.g. 'speech_folder/speech') is built from ``manual_dir``, your copy of it, when given, with
    ``build_kwargs`` (``options``, ``num_workers``) passed to ``data_pipelines.build.build``."""
    if is_prepared(name, data_dir):
        return
    builder, _, config = name.partition("/")
    if builder == "synthav":
        from data_pipelines.synthav.builder import build

        print(f"[avrep] generating {name} into {data_dir} ...", flush=True)
        build(config or "mdvae", data_dir)
        return
    if builder == "noisy_speech":  # clean speech (and faces) mixed with noise: its sources are prepared first
        from data_pipelines import noisy_speech

        for source, source_dir in noisy_speech.sources_of(config, data_dir):
            prepare(source, source_dir)
        print(f"[avrep] mixing {name} into {data_dir} ...", flush=True)
        noisy_speech.build(config, data_dir, manual_dir)
        return
    from data_pipelines.corpora import CORPORA, builder_class

    if builder in CORPORA and manual_dir is not None:
        from data_pipelines.build import build as build_corpus

        print(f"[avrep] building {name} from {manual_dir} into {data_dir} ...", flush=True)
        build_corpus(
            builder, config or builder_class(builder).BUILDER_CONFIGS[0].name, manual_dir, data_dir, **build_kwargs
        )
        return
    if builder in CORPORA:
        raise FileNotFoundError(
            f"dataset {name!r} is not prepared in data_dir {data_dir!r}; build it once from your copy of the "
            f"corpus: python -m data_pipelines.build {builder} --config {config or '<config>'} "
            f"--manual_dir <your {builder} folder> --data_dir {data_dir} (layouts: README, 'Training on real corpora')"
        )
    raise FileNotFoundError(
        f"dataset {name!r} is not prepared in data_dir {data_dir!r} (expected "
        f"{os.path.join(data_dir, *name.split('/'))}/<version>/dataset_info.json); build it first with "
        f"its TFDS builder (see README, 'Training on real corpora')"
    )


# Corpus names as the papers write them, for table titles.
TITLES = {
    "synthav": "SynthAV",
    "mead": "MEAD",
    "ravdess": "RAVDESS",
    "cremad": "CREMA-D",
    "enterface05": "eNTERFACE05",
    "voxceleb2": "VoxCeleb2",
    "emodb": "EmoDB",
    "iemocap": "IEMOCAP",
}


def title(name: str) -> str:
    """A dataset's corpus as the papers write it: 'ravdess/mdvae' -> 'RAVDESS' (unknown builders as they are)."""
    builder = name.partition("/")[0]
    return TITLES.get(builder, builder)
