"""Evaluates trained runs and writes metric tables and figures into <workdir>/eval/.

python evaluate.py --workdir W          # every run under W (e.g. the default pipeline's stages)
python evaluate.py --workdir W/vqvae_audio --limit 20
python evaluate.py --workdir W --emotion_corpus ravdess/mdvae --emotion_data_dir D   # w of MEAD-trained runs on RAVDESS
python evaluate.py --workdir W --split validation   # resynthesis tables on validation speakers, to choose settings
"""

from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string("workdir", None, "A run directory, or a directory of runs.", required=True)
_LIMIT = flags.DEFINE_integer("limit", None, "Evaluate at most this many test utterances per run.")
_GL_ITERS = flags.DEFINE_integer("griffin_lim_iters", 32, "Griffin-Lim iterations (librosa's default is 32).")
_EMOTION_SPLITS = flags.DEFINE_list(
    "emotion_splits",
    ["train", "validation", "test"],
    "Splits whose utterances the emotion-recognition table uses (w of MDVAE/DSAE runs).",
)
_EMOTION_CORPUS = flags.DEFINE_string(
    "emotion_corpus",
    None,
    "Cross-corpus emotion recognition: the dataset (e.g. ravdess/mdvae, built in the runs' setting) whose utterances "
    "the emotion table uses, instead of each run's training corpus (default).",
)
_EMOTION_DATA_DIR = flags.DEFINE_string(
    "emotion_data_dir", None, "Where --emotion_corpus is built (default: each run's data.data_dir)."
)
_SWAP_COUNT = flags.DEFINE_integer(
    "swap_count",
    8,
    "Transformation experiment: donor/recipient sequences (count * (count - 1) ordered pairs; the paper uses 50 x 50).",
)
_DENOISE_COUNT = flags.DEFINE_integer("denoise_count", 24, "Denoising experiment: test sequences.")
_SPLIT = flags.DEFINE_enum(
    "split",
    "test",
    ["test", "validation"],
    "Split of the per-run resynthesis tables (tokenizers, MDVAE family, DVAE family). 'validation' is for choosing "
    "settings: its tables are written as <table>_validation.md/.csv, titled with the split; other tables read test.",
)


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)  # Orbax logs every file operation (and read-only opens)
    from avrep.evaluation.runner import evaluate_workdir

    evaluate_workdir(
        _WORKDIR.value,
        limit=_LIMIT.value,
        griffin_lim_iters=_GL_ITERS.value,
        emotion_splits=tuple(_EMOTION_SPLITS.value),
        emotion_corpus=_EMOTION_CORPUS.value,
        emotion_data_dir=_EMOTION_DATA_DIR.value,
        swap_count=_SWAP_COUNT.value,
        denoise_count=_DENOISE_COUNT.value,
        split=_SPLIT.value,
    )


if __name__ == "__main__":
    app.run(main)
