"""avrep.evaluation.manipulation: the denoising regions sit on the mouth and the eyes of SynthAV faces."""

import numpy as np
import pytest

from avrep.evaluation.manipulation import region_mask
from data_pipelines.synthav import generator as g


def _utterance_with_blink(speaker):
    for seed in range(40):
        utt = g.synthesize_utterance(
            speaker, g.EMOTIONS.index("neutral"), 0, seed=seed, min_seconds=3.0, max_seconds=3.0
        )
        k = int(np.argmin(utt["eye_open"]))
        if utt["eye_open"][k] < 0.3 and 1 <= k < len(utt["eye_open"]) - 1:
            return utt, k
    raise AssertionError(f"no blink for {speaker.speaker_id}")


@pytest.mark.parametrize("seed", [1, 2])
def test_denoising_regions_cover_the_moving_mouth_and_eyes(seed):
    utt, blink = _utterance_with_blink(g.make_speakers(4, seed=seed)[seed])
    mouth, eyes = region_mask(utt["video"], "mouth"), region_mask(utt["video"], "eyes")
    assert not np.any(mouth & eyes) and mouth.mean() < 0.2 and eyes.mean() < 0.2
    assert np.argwhere(mouth)[:, 0].min() > np.argwhere(eyes)[:, 0].max()  # the mouth box is below the eyes
    luma = utt["video"].astype(np.float64).mean(-1)
    # Mouth: the box darkens as the mouth opens, and at the widest opening the darkest pixels of the
    # central lower face (the open mouth) are inside it.
    assert np.corrcoef(luma[:, mouth].mean(1), utt["mouth_open"])[0, 1] < -0.3
    widest = luma[int(np.argmax(utt["mouth_open"]))]
    lower = np.zeros_like(mouth)
    lower[np.argwhere(eyes)[:, 0].max() + 1 : 54, 20:44] = True  # between the eyes and the chin
    darkest = np.argsort(np.where(lower, widest, np.inf).ravel())[:10]
    assert mouth.ravel()[darkest].mean() >= 0.8, mouth.ravel()[darkest].mean()
    # Eyes: above the mouth, the row that changes most at a blink (against the frames around it) crosses
    # the box.
    change = sum(np.abs(luma[blink] - luma[blink + d]) for d in (-1, 1))
    upper = np.argwhere(mouth)[:, 0].min()
    assert eyes[np.argmax(change[:upper].sum(1))].any(), np.argmax(change[:upper].sum(1))
