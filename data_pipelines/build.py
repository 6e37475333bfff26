"""Builds a real corpus from your local copy into a TFDS (ArrayRecord) dataset that avrep trains on.

  python -m data_pipelines.build mead --config mdvae --manual_dir ~/data/MEAD --data_dir ~/tensorflow_datasets
  python -m data_pipelines.build speech_folder --config wsj0 --option speaker_level=2 --manual_dir ~/data/wsj0
  python -m data_pipelines.build voxceleb2 --config vqmae --manual_dir ~/data/vox2 --data_dir gs://bucket/tfds \\
      --beam_runner DataflowRunner --beam_option=--project=P --beam_option=--region=R ...

Then train with ``--config.data.name=mead/mdvae --config.data.data_dir=~/tensorflow_datasets``. Files
that cannot be used are listed, with the reason, in ``<data_dir>/<corpus>/<config>/<version>/manifest.json``.
``--option key=value`` changes a field of the corpus's first config into a custom config, which needs a name
of its own (``--config``): the dataset is then ``<corpus>/<that name>``, its options in its metadata.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any, Mapping

import tensorflow_datasets as tfds

from data_pipelines.corpora import CORPORA, builder_class


def custom_config(cls, name: str, options: Mapping[str, Any]):
    """A copy of ``cls``'s first builder config named ``name`` with ``options`` (values, or strings as given on
    the command line: ``none`` is None, tuples are comma-separated) replacing its fields."""
    base = cls.BUILDER_CONFIGS[0]
    names = [c.name for c in cls.BUILDER_CONFIGS]
    if name in names:
        raise ValueError(f"{cls.name}: options make a custom config, which needs a new name, not one of {names}")
    inherited = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
    fields = {
        f.name: getattr(base, f.name)
        for f in dataclasses.fields(base)
        if f.name not in inherited and isinstance(getattr(base, f.name), (bool, int, float, str, tuple, type(None)))
    }
    values = {}
    for key, value in options.items():
        if key not in fields:
            raise ValueError(f"{cls.name}: unknown option {key!r}; expected one of {sorted(fields)}")
        values[key] = _parse_option(value, fields[key]) if isinstance(value, str) else value
    description = f"custom config: {base.name} with " + ", ".join(f"{k}={v!r}" for k, v in sorted(values.items()))
    return dataclasses.replace(base, name=name, description=description, **values)


def _parse_option(value: str, default: Any) -> Any:
    if value.lower() in ("none", "null"):
        return None
    if isinstance(default, bool):
        return value.lower() in ("1", "true", "yes")
    if isinstance(default, (int, float)):
        return type(default)(value)
    if isinstance(default, tuple):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if default is None:  # an optional number left unset by default
        return float(value)
    return value


def build(
    corpus: str,
    config: str,
    manual_dir: str,
    data_dir: str,
    *,
    options: Mapping[str, Any] | None = None,
    num_workers: int | None = None,
    beam_runner: str = "DirectRunner",
    beam_options: list[str] | None = None,
) -> str:
    """Prepares ``corpus/config`` into ``data_dir``; returns the dataset directory (holding manifest.json).

    ``options`` (field -> value) make ``config`` a custom config: the corpus's first config with those fields.
    """
    cls = builder_class(corpus)
    names = [c.name for c in cls.BUILDER_CONFIGS]
    if options:
        config = custom_config(cls, config, options)
    elif config not in names:
        raise ValueError(f"{corpus}: unknown config {config!r}; expected one of {names} (or give --option)")
    manual_dir = cls.check_manual_dir(os.path.expanduser(manual_dir))  # fail before TFDS, naming the layout
    builder = cls(
        config=config, data_dir=os.path.expanduser(data_dir), file_format="array_record", num_workers=num_workers
    )
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    if cls.BEAM:
        from apache_beam.options.pipeline_options import PipelineOptions

        options = [f"--runner={beam_runner}", *(beam_options or [])]
        if beam_runner == "DirectRunner" and not any(o.startswith("--direct_num_workers") for o in options):
            options += [
                f"--direct_num_workers={num_workers or os.cpu_count() or 1}",
                "--direct_running_mode=multi_processing"
                if (num_workers or os.cpu_count() or 1) > 1
                else "--direct_running_mode=in_memory",
            ]
        download_config.beam_options = PipelineOptions(options)
    builder.download_and_prepare(download_config=download_config)
    return builder.data_dir


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", choices=sorted(CORPORA))
    parser.add_argument("--config", default=None, help="builder config (default: the corpus's first, e.g. mdvae)")
    parser.add_argument("--manual_dir", required=True, help="your local copy of the corpus, in its own layout")
    parser.add_argument("--data_dir", default="~/tensorflow_datasets", help="where the dataset is written")
    parser.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="a custom config's field (repeatable)"
    )
    parser.add_argument("--num_workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--beam_runner", default="DirectRunner", help="Beam runner (VoxCeleb2 only)")
    parser.add_argument("--beam_option", action="append", default=[], help="extra Beam pipeline option")
    args = parser.parse_args(argv)
    config = args.config or builder_class(args.corpus).BUILDER_CONFIGS[0].name
    options = {}
    for option in args.option:
        key, sep, value = option.partition("=")
        if not sep:
            parser.error(f"--option {option!r}: expected KEY=VALUE")
        options[key.strip()] = value.strip()
    build(
        args.corpus,
        config,
        args.manual_dir,
        args.data_dir,
        options=options,
        num_workers=args.num_workers,
        beam_runner=args.beam_runner,
        beam_options=args.beam_option,
    )


if __name__ == "__main__":
    main()
