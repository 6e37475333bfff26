"""Random access to the records of a prepared TFDS dataset, with errors that name the record."""

from __future__ import annotations

import os

from data_pipelines.spec import DataError


class CheckedSource:
    """A random-access source whose read errors name the dataset, split and record."""

    def __init__(self, name: str, split: str, data_dir: str | None):
        # The resolved path: feature caches fingerprint the description, and runs that reach the same data
        # through a symlink must share them.
        where = os.path.realpath(data_dir) if data_dir else "the TFDS default data_dir"
        self.description = f"{name}[{split}] in {where}"
        import tensorflow_datasets as tfds  # deferred: loading a trained model needs no TFDS

        try:
            self._source = tfds.data_source(name, split=split, data_dir=data_dir)
        except Exception as e:  # TFDS raises several types for a missing/incomplete dataset.
            raise DataError(f"cannot open dataset {self.description}: {e}") from e
        if len(self._source) == 0:
            raise DataError(f"dataset {self.description} is empty: expected at least one record")

    def manifest(self) -> dict:
        """What identifies the split's content without reading it (feature caches are keyed on it): the number of
        records and each file's name, size and modification time (a rebuilt dataset has new ones)."""
        files = self._source.dataset_info.splits[self._source.split].filepaths
        stats = {os.path.basename(os.fspath(p)): os.stat(os.fspath(p)) for p in files}
        return {
            "records": len(self),
            "files": {name: [st.st_size, st.st_mtime_ns] for name, st in sorted(stats.items())},
        }

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        try:
            return self._source[index]
        except Exception as e:
            raise DataError(f"{self.description}: record {index} cannot be decoded ({type(e).__name__}: {e})") from e


def open_source(name: str, split: str, data_dir: str | None) -> CheckedSource:
    return CheckedSource(name, split, data_dir)
