"""SynthAV: procedural emotional audiovisual speech with known generative factors.

SynthAV is shaped like MEAD (8 emotions x 3 intensities, frontal aligned face crops,
16 kHz speech) so that every avrep model can be trained and evaluated without
downloading a corpus, and so that learned representations can be checked against
ground truth:

* static (per speaker / utterance): speaker identity (voice and face), emotion and
  intensity, lighting;
* dynamic, shared by audio and video: a phone sequence whose articulation sets both
  the formants F1-F3 and the mouth opening (~F1) and width (~F2 / lip rounding),
  with coarticulation; intonation (pitch accents also drive small nods and brow
  raises);
* dynamic, audio only: f0 micro-contour, jitter, shimmer, frication and bursts;
* dynamic, video only: blinks, head pose and gaze.

Speech comes from a Klatt-style source-filter synthesizer (`speech.py`), faces from
a vectorised anti-aliased renderer (`face.py`). Generation is deterministic: the
output depends only on the arguments of `synthesize_utterance`.

Per-frame ground truth is sampled at the video frame times t_k = k / fps, which are
also the centres of the audio STFT frames with hop sr / fps and center=True (the
MDVAE front end).
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import scipy.signal

from data_pipelines.synthav import face, speech

EMOTIONS = ("angry", "contempt", "disgusted", "fear", "happy", "neutral", "sad", "surprised")  # MEAD order
INTENSITY_LEVELS = 3
SETTINGS = {"mdvae": dict(image_size=64, fps=30), "vqmae": dict(image_size=96, fps=25)}
SAMPLE_RATE = speech.SAMPLE_RATE
PHONES = speech.PHONES  # phone-class inventory: index = id in the `phones` output
# How far each intensity level moves away from neutral (fraction of the full effect).
INTENSITY_SCALE = (0.4, 0.7, 1.0)


@dataclasses.dataclass(frozen=True)
class EmotionProfile:
    """Full-intensity effect of an emotion, relative to neutral.

    Fields marked (x) are multiplicative factors (raised to the intensity scale), all
    others are additive offsets (multiplied by it). Values follow the direction of
    the acoustic and facial-action findings in Banse & Scherer (1996), Scherer (2003),
    Juslin & Laukka (2003) and Ekman's FACS prototypes.
    """

    f0_st: float = 0.0  # mean f0 shift, semitones
    f0_range: float = 1.0  # (x) intonation range
    rate: float = 1.0  # (x) syllable rate
    gain_db: float = 0.0  # vocal effort; shows up as SNR against a fixed room noise
    open_quotient: float = 0.0  # glottal open quotient (lower = pressed, flatter spectrum)
    tilt: float = 0.0  # source low-pass coefficient (higher = steeper spectral tilt)
    jitter: float = 0.0  # extra cycle-to-cycle period perturbation (fraction)
    breathiness: float = 0.0  # aspiration noise level
    final_rise: float = 0.0  # utterance-final f0 rise, in units of the range
    artic: float = 1.0  # (x) articulation: jaw opening of vowels (hyper/hypo-articulation)
    jaw: float = 0.0  # jaw drop added to every non-bilabial phone (0..1 of the max opening)
    stretch: float = 0.0  # mouth width offset (smile, fear lip stretch)
    corner: float = 0.0  # lip-corner lift (+ up: AU12; - down: AU15)
    corner_asym: float = 0.0  # one-sided corner lift (contempt, AU14)
    lip_raise: float = 0.0  # upper-lip and nostril raise (disgust, AU9/10)
    brow_raise: float = 0.0  # whole-brow raise (AU1+2), - lowers
    brow_asym: float = 0.0  # one brow higher than the other
    furrow: float = 0.0  # brows lowered and drawn together (AU4)
    brow_inner: float = 0.0  # inner brow raise (AU1: sadness, fear)
    eye: float = 0.0  # eye aperture offset (AU5 widening +, squint -)
    cheek: float = 0.0  # cheek raise (AU6): lower lid up, deeper nasolabial fold
    head_pitch: float = 0.0  # head pitch offset, degrees (+ chin up)
    gaze_y: float = 0.0  # mean gaze offset (+ down)
    blink: float = 1.0  # (x) blink rate


EMOTION_PROFILES = {
    "angry": EmotionProfile(
        f0_st=3.5,
        f0_range=1.3,
        rate=1.1,
        gain_db=6.0,
        open_quotient=-0.15,
        tilt=-0.12,
        jitter=0.004,
        breathiness=-0.1,
        artic=1.15,
        corner=-0.3,
        lip_raise=0.3,
        brow_raise=-0.3,
        furrow=1.0,
        eye=0.15,
        head_pitch=-2.0,
        blink=0.8,
    ),
    "contempt": EmotionProfile(
        f0_st=-1.0,
        f0_range=0.85,
        rate=0.92,
        gain_db=-1.0,
        tilt=0.03,
        breathiness=0.05,
        artic=0.9,
        corner_asym=0.8,
        lip_raise=0.1,
        brow_raise=0.1,
        brow_asym=0.5,
        furrow=0.15,
        eye=-0.15,
        cheek=0.1,
        head_pitch=3.0,
        gaze_y=0.1,
    ),
    "disgusted": EmotionProfile(
        f0_st=-1.5,
        f0_range=0.85,
        rate=0.85,
        gain_db=-1.0,
        open_quotient=0.05,
        tilt=0.08,
        jitter=0.004,
        breathiness=0.1,
        artic=0.9,
        stretch=0.03,
        corner=-0.45,
        lip_raise=1.0,
        brow_raise=-0.25,
        furrow=0.7,
        eye=-0.3,
        cheek=0.5,
        head_pitch=-1.0,
        blink=1.1,
    ),
    "fear": EmotionProfile(
        f0_st=4.5,
        f0_range=1.1,
        rate=1.15,
        gain_db=1.0,
        open_quotient=0.05,
        tilt=0.05,
        jitter=0.02,
        breathiness=0.3,
        final_rise=0.2,
        jaw=0.08,
        stretch=0.2,
        corner=-0.3,
        brow_raise=0.6,
        furrow=0.5,
        brow_inner=0.6,
        eye=0.35,
        head_pitch=-1.0,
        blink=1.5,
    ),
    "happy": EmotionProfile(
        f0_st=3.0,
        f0_range=1.4,
        rate=1.05,
        gain_db=3.0,
        open_quotient=-0.05,
        tilt=-0.05,
        artic=1.1,
        jaw=0.05,
        stretch=0.18,
        corner=1.0,
        brow_raise=0.15,
        eye=-0.1,
        cheek=1.0,
        head_pitch=1.0,
    ),
    "neutral": EmotionProfile(),
    "sad": EmotionProfile(
        f0_st=-2.5,
        f0_range=0.55,
        rate=0.8,
        gain_db=-5.0,
        open_quotient=0.15,
        tilt=0.25,
        jitter=0.006,
        breathiness=0.4,
        artic=0.75,
        stretch=-0.05,
        corner=-0.8,
        brow_raise=-0.05,
        furrow=0.3,
        brow_inner=0.9,
        eye=-0.3,
        head_pitch=-5.0,
        gaze_y=0.35,
        blink=0.8,
    ),
    "surprised": EmotionProfile(
        f0_st=5.0,
        f0_range=1.6,
        gain_db=3.0,
        breathiness=0.1,
        final_rise=0.8,
        artic=1.15,
        jaw=0.2,
        stretch=-0.05,
        corner=0.1,
        brow_raise=1.0,
        brow_inner=0.3,
        eye=0.5,
        head_pitch=2.0,
        blink=0.6,
    ),
}
_MULTIPLICATIVE = ("f0_range", "rate", "artic", "blink")


@dataclasses.dataclass(frozen=True)
class Speaker:
    """Identity factors of one synthetic speaker (voice and face).

    Face geometry is in face coordinates: units of half the image side, x right,
    y down, origin at the image centre of a frontal, unrotated pose.
    """

    speaker_id: str  # e.g. "S007"
    gender: int  # 0 female, 1 male
    # Voice.
    f0_hz: float  # mean f0 of neutral speech
    f0_range_st: float  # pitch-accent height, semitones
    vtl_factor: float  # formant scaling relative to an adult male (shorter tract -> higher)
    rate: float  # speaking-rate factor (1 = 4.5 syllables/s)
    open_quotient: float  # glottal open quotient
    tilt: float  # source low-pass coefficient
    breathiness: float
    jitter: float  # cycle-to-cycle period perturbation (fraction)
    shimmer: float  # cycle-to-cycle amplitude perturbation (fraction)
    expressiveness: float  # scales every emotion effect
    blink_rate: float  # blinks per second
    # Face geometry.
    face_width: float  # half-width of the face oval
    face_height: float  # half-height of the face oval
    jaw_taper: float  # narrowing of the lower face
    eye_spacing: float  # half the distance between the eye centres
    eye_y: float
    eye_width: float  # eye half-width
    eye_height: float  # upper-lid opening
    brow_gap: float  # brow height above the eye centre
    brow_thickness: float
    brow_arch: float
    nose_length: float  # eye line to nose tip
    nose_width: float
    mouth_y: float
    mouth_width: float  # mouth half-width
    lip_upper: float  # lip thicknesses
    lip_lower: float
    # Appearance.
    skin_rgb: tuple[float, float, float]
    lip_rgb: tuple[float, float, float]
    hair_rgb: tuple[float, float, float]
    hair_style: int  # 0 short, 1 long, 2 receding, 3 fringe
    iris_rgb: tuple[float, float, float]
    background_rgb: tuple[float, float, float]
    clothing_rgb: tuple[float, float, float]
    beard: float  # 0 none .. 1 full stubble
    texture_seed: int  # per-speaker skin and hair texture


_SKIN_TONES = np.array([[0.96, 0.80, 0.69], [0.86, 0.66, 0.52], [0.70, 0.50, 0.36], [0.46, 0.31, 0.22]])
_HAIR_COLOURS = np.array(
    [
        [0.07, 0.06, 0.06],
        [0.20, 0.13, 0.09],
        [0.38, 0.25, 0.15],
        [0.50, 0.24, 0.12],
        [0.78, 0.64, 0.40],
        [0.62, 0.61, 0.60],
    ]
)
_IRIS_COLOURS = np.array(
    [[0.25, 0.14, 0.07], [0.40, 0.28, 0.14], [0.30, 0.42, 0.28], [0.30, 0.45, 0.65], [0.45, 0.50, 0.55]]
)


def _colour(x) -> tuple[float, float, float]:
    return tuple(float(v) for v in np.clip(x, 0.0, 1.0).round(4))


def _make_speaker(index: int, gender: int, seed: int) -> Speaker:
    rng = np.random.default_rng([seed, index])
    u = rng.uniform
    female = gender == 0
    tone = u(0, len(_SKIN_TONES) - 1)
    lo = int(min(tone, len(_SKIN_TONES) - 2))
    skin = _SKIN_TONES[lo] + (tone - lo) * (_SKIN_TONES[lo + 1] - _SKIN_TONES[lo]) + rng.normal(0, 0.02, 3)
    dark_skin = tone > 1.8
    hair_p = [0.4, 0.3, 0.15, 0.05, 0.0, 0.1] if dark_skin else [0.15, 0.25, 0.2, 0.1, 0.15, 0.15]
    hair = _HAIR_COLOURS[rng.choice(6, p=hair_p)] * u(0.85, 1.15)
    iris_p = [0.7, 0.2, 0.05, 0.0, 0.05] if dark_skin else [0.3, 0.2, 0.15, 0.25, 0.1]
    bg_hue = u(0, 2 * np.pi)
    bg = u(0.35, 0.8) * (1.0 + u(0.05, 0.3) * np.cos(bg_hue + np.array([0.0, 2.1, 4.2])))
    eye_y = u(-0.18, -0.08)
    nose_length = u(0.22, 0.3)
    return Speaker(
        speaker_id=f"S{index + 1:03d}",
        gender=gender,
        f0_hz=u(165, 255) if female else u(85, 155),
        f0_range_st=u(2.5, 4.5),
        vtl_factor=u(1.1, 1.22) if female else u(0.95, 1.05),
        rate=u(0.85, 1.15),
        open_quotient=u(0.6, 0.72) if female else u(0.5, 0.62),
        tilt=u(0.0, 0.15),
        breathiness=u(0.2, 0.5) if female else u(0.05, 0.3),
        jitter=u(0.003, 0.008),
        shimmer=u(0.02, 0.05),
        expressiveness=u(0.8, 1.2),
        blink_rate=u(0.2, 0.45),
        face_width=u(0.58, 0.68) if female else u(0.62, 0.72),
        face_height=u(0.8, 0.9),
        jaw_taper=u(0.25, 0.4) if female else u(0.12, 0.28),
        eye_spacing=u(0.26, 0.32),
        eye_y=eye_y,
        eye_width=u(0.105, 0.135),
        eye_height=u(0.05, 0.065) if female else u(0.042, 0.056),
        brow_gap=u(0.12, 0.17),
        brow_thickness=u(0.025, 0.04) if female else u(0.04, 0.06),
        brow_arch=u(0.01, 0.04),
        nose_length=nose_length,
        nose_width=u(0.07, 0.1),
        mouth_y=eye_y + nose_length + u(0.14, 0.2),
        mouth_width=u(0.18, 0.23),
        lip_upper=u(0.03, 0.045) if female else u(0.022, 0.035),
        lip_lower=u(0.04, 0.055) if female else u(0.03, 0.045),
        skin_rgb=_colour(skin),
        lip_rgb=_colour(skin * np.array([0.85, 0.62, 0.62]) + np.array([0.05, 0.0, 0.01]) * (1 + female)),
        hair_rgb=_colour(hair),
        hair_style=int(rng.choice(4, p=[0.2, 0.6, 0.0, 0.2] if female else [0.6, 0.05, 0.2, 0.15])),
        iris_rgb=_colour(_IRIS_COLOURS[rng.choice(5, p=iris_p)]),
        background_rgb=_colour(bg),
        clothing_rgb=_colour(rng.uniform(0.1, 0.8, 3)),
        beard=0.0 if female or u() < 0.65 else u(0.3, 1.0),
        texture_seed=int(rng.integers(2**31)),
    )


def make_speakers(num_speakers: int, seed: int, first_speaker: int = 0) -> list[Speaker]:
    """`num_speakers` speakers, genders alternating (balanced), ids S001, S002, ... (from S<first_speaker + 1>).

    Speaker i depends only on (seed, i), so a larger set extends a smaller one, and sets of the same seed
    whose index ranges do not overlap share no speaker (a pre-training corpus beside a labelled one).
    """
    first = int(np.random.default_rng(seed).integers(2))
    return [_make_speaker(i, (first + i) % 2, seed) for i in range(first_speaker, first_speaker + num_speakers)]


def split_speakers(speakers, fractions=(0.75, 0.15, 0.10), seed=0) -> dict[str, list[Speaker]]:
    """Speaker-disjoint train/validation/test split (MEAD protocol: 75/15/10 %).

    Validation and test get round(n * fraction) speakers, at least one each when
    n >= 3; train gets the rest. Speakers are drawn alternately from shuffled
    female and male lists, so every split is gender-balanced where counts allow.
    """
    n = len(speakers)
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split_speakers: fractions must be 3 numbers summing to 1, got {fractions}")
    n_val, n_test = (int(round(n * f)) for f in fractions[1:])
    if n >= 3:
        n_val, n_test = max(1, n_val), max(1, n_test)
        while n - n_val - n_test < 1:  # keep train non-empty
            n_val, n_test = (n_val - 1, n_test) if n_val >= n_test else (n_val, n_test - 1)
    rng = np.random.default_rng(seed)
    by_gender = [[s for s in speakers if s.gender == g] for g in (0, 1)]
    by_gender = [[group[i] for i in rng.permutation(len(group))] for group in by_gender]
    start = int(rng.integers(2))
    order = []
    while any(by_gender):
        for g in (start, 1 - start):
            if by_gender[g]:
                order.append(by_gender[g].pop(0))
    by_id = lambda group: sorted(group, key=lambda s: s.speaker_id)  # noqa: E731
    return {
        "train": by_id(order[n_test + n_val :]),
        "validation": by_id(order[n_test : n_test + n_val]),
        "test": by_id(order[:n_test]),
    }


def utterance_plan(speaker: Speaker, utterances_per_speaker: int = 24) -> list[tuple[int, int]]:
    """(emotion_index, intensity) per utterance, cycling through all 8 x 3 conditions.

    24 gives every condition once. Fewer keep emotions balanced (consecutive entries
    change emotion), starting at a speaker-dependent offset so that a small dataset
    still covers every condition across speakers; more repeat the cycle.
    """
    n_cond = len(EMOTIONS) * INTENSITY_LEVELS
    offset = zlib.crc32(speaker.speaker_id.encode()) % n_cond
    conds = [((k + offset) % n_cond) for k in range(utterances_per_speaker)]
    return [(c % len(EMOTIONS), (c // len(EMOTIONS)) % INTENSITY_LEVELS) for c in conds]


def _emotion_style(speaker: Speaker, emotion: int, intensity: int, rng: np.random.Generator) -> dict:
    """Effective emotion parameters for one utterance (with small take-to-take variation)."""
    profile = EMOTION_PROFILES[EMOTIONS[emotion]]
    s = INTENSITY_SCALE[intensity] * speaker.expressiveness * rng.uniform(0.9, 1.1)
    return {
        f.name: (getattr(profile, f.name) ** s if f.name in _MULTIPLICATIVE else getattr(profile, f.name) * s)
        for f in dataclasses.fields(profile)
    }


def _frame_rms_db(x: np.ndarray, centres: np.ndarray, width: int) -> np.ndarray:
    """RMS level in dBFS of `x` over `width` samples centred on each index (floor -100 dB)."""
    c = np.concatenate([[0.0], np.cumsum(x**2)])
    lo = np.clip(centres - width // 2, 0, len(x) - 1)
    hi = np.clip(lo + width, 1, len(x))
    rms = np.sqrt((c[hi] - c[lo]) / (hi - lo))
    return 20.0 * np.log10(np.maximum(rms, 1e-5))


def synthesize_utterance(
    speaker: Speaker,
    emotion: int,
    intensity: int,
    seed: int,
    image_size: int = 64,
    fps: int = 30,
    min_seconds: float = 1.5,
    max_seconds: float = 3.0,
    video: bool = True,
) -> dict:
    """Synthesize one audiovisual utterance.

    Returns a dict of numpy arrays (T = round(duration * fps), N = round(duration * 16000)):
      audio       int16 [N]   16 kHz mono, peak at 0.9 full scale, background noise at 25-40 dB SNR
      video       uint8 [T, image_size, image_size, 3]  RGB face crops
      f0          float32 [T] Hz of the intonation contour, 0 where unvoiced (jitter not included)
      voiced      float32 [T] 1 when the current phone is voiced
      formants    float32 [T, 3] F1-F3 (Hz) driving the vocal-tract filter
      loudness    float32 [T] dBFS RMS of the clean speech in `audio` over a 1/fps window
      mouth_open  float32 [T] lip separation, 0 closed .. 1 widest
      mouth_width float32 [T] mouth width relative to the speaker's neutral width
      eye_open    float32 [T] blink state, 1 open (at the emotion's aperture) .. 0 closed
      head_pose   float32 [T, 3] yaw, pitch, roll in degrees (yaw + turns the face to
                  image right, pitch + chin up, roll + rotates the face clockwise)
      gaze        float32 [T, 2] iris displacement, x right / y down, 1 = largest drawn
      phones      int32 [T]   phone class per frame, an index into PHONES
    `seed` must be a non-negative int. The content (phones, prosody, dynamics) does not
    depend on image_size or fps, only its sampling and rendering do. ``video=False`` returns
    ``{"audio": ...}`` only, the same samples, without drawing the face (about 8x faster).
    """
    if not 0 <= emotion < len(EMOTIONS):
        raise ValueError(f"synthesize_utterance: emotion must be in [0, {len(EMOTIONS)}), got {emotion}")
    if not 0 <= intensity < INTENSITY_LEVELS:
        raise ValueError(f"synthesize_utterance: intensity must be in [0, {INTENSITY_LEVELS}), got {intensity}")
    if not 1.0 <= min_seconds <= max_seconds:
        raise ValueError(
            f"synthesize_utterance: need 1 <= min_seconds <= max_seconds, got {min_seconds}, {max_seconds}"
        )
    key = [seed, zlib.crc32(repr(speaker).encode()), emotion, intensity]
    rng = np.random.default_rng(key + [0])  # content: phones, prosody, dynamics, noise
    render_rng = np.random.default_rng(key + [1])  # lighting

    duration = rng.uniform(min_seconds, max_seconds)
    n_samples = int(round(duration * SAMPLE_RATE))
    n_frames = int(round(duration * fps))
    n_ctrl = n_samples // speech.CTRL_HOP + 2
    style = _emotion_style(speaker, emotion, intensity, rng)

    # Shared articulation and intonation.
    syllable_rate = 4.5 * speaker.rate * style["rate"] * rng.uniform(0.92, 1.08)
    timeline = speech.plan_phones(rng, duration, syllable_rate)
    tracks = speech.articulation(timeline, n_ctrl, speaker.vtl_factor, style["artic"], style["jaw"], style["stretch"])
    base_f0 = speaker.f0_hz * 2.0 ** ((style["f0_st"] + rng.normal(0, 0.5)) / 12.0)
    f0, accent = speech.f0_contour(
        rng, timeline, n_ctrl, base_f0, speaker.f0_range_st * style["f0_range"], style["final_rise"]
    )

    # Audio: clean speech, then room noise at an SNR that grows with vocal effort.
    t_ctrl = np.arange(n_ctrl) / speech.CTRL_RATE
    speaking = np.flatnonzero(timeline.phones != speech.PHONE_ID["sil"])
    t0, t1 = timeline.starts[speaking[0]], timeline.ends[speaking[-1]]
    level_db = np.interp(t_ctrl, [t0, t1], [0.0, -4.0])  # amplitude declination
    clean = speech.synthesize(
        rng,
        tracks,
        f0,
        n_samples,
        open_quotient=float(np.clip(speaker.open_quotient + style["open_quotient"], 0.35, 0.85)),
        tilt=float(np.clip(speaker.tilt + style["tilt"], 0.0, 0.85)),
        breathiness=float(np.clip(speaker.breathiness + style["breathiness"], 0.0, 1.0)),
        jitter=speaker.jitter + style["jitter"],
        shimmer=speaker.shimmer,
        level_db=level_db,
    )
    white = rng.standard_normal(n_samples)
    noise = white + 0.2 * scipy.signal.lfilter([1.0], [1.0, -0.98], white)  # white + low-frequency rumble
    active = slice(int(t0 * SAMPLE_RATE), int(t1 * SAMPLE_RATE))
    snr_db = np.clip(rng.uniform(25.0, 40.0) + 0.5 * style["gain_db"], 20.0, 45.0)
    noise *= np.sqrt(np.mean(clean[active] ** 2) / np.mean(noise**2) / 10.0 ** (snr_db / 10.0))
    mix = clean + noise
    scale = 0.9 / np.max(np.abs(mix))
    audio = np.round(mix * scale * 32767.0).astype(np.int16)
    if not video:  # everything below draws from `rng` after the audio, so the audio does not change
        return dict(audio=audio)

    # Visual-only dynamics, then sample every control track at the frame times.
    vis = face.visual_dynamics(
        rng, n_ctrl, accent, speaker.blink_rate * style["blink"], style["head_pitch"], style["gaze_y"]
    )
    t_frames = np.arange(n_frames) / fps
    pos = t_frames * speech.CTRL_RATE
    at_frames = lambda x: np.interp(pos, np.arange(n_ctrl), x).astype(np.float32)  # noqa: E731
    voiced = tracks["voiced"][np.round(pos).astype(np.int64)].astype(np.float32)
    truth = dict(
        f0=at_frames(f0) * voiced,
        voiced=voiced,
        formants=np.stack([at_frames(f) for f in tracks["formants"][:3]], axis=1),
        loudness=_frame_rms_db(
            clean * scale, np.round(t_frames * SAMPLE_RATE).astype(np.int64), int(round(SAMPLE_RATE / fps))
        ).astype(np.float32),
        mouth_open=at_frames(tracks["mouth_open"]),
        mouth_width=at_frames(tracks["mouth_width"]),
        eye_open=at_frames(vis["eye_open"]),
        head_pose=np.stack([at_frames(x) for x in vis["head_pose"].T], axis=1),
        gaze=np.stack([at_frames(x) for x in vis["gaze"].T], axis=1),
        phones=speech.phone_at(timeline, t_frames).astype(np.int32),
    )
    face_style = dict(
        corner=style["corner"],
        corner_asym=style["corner_asym"],
        lip_raise=style["lip_raise"],
        brow_raise=style["brow_raise"],
        brow_asym=style["brow_asym"],
        furrow=style["furrow"],
        brow_inner=style["brow_inner"],
        eye_aperture=1.0 + style["eye"],
        cheek=style["cheek"],
    )
    frames = dict(truth, brow_accent=at_frames(accent))
    video = face.render_video(speaker, face_style, frames, image_size, render_rng)
    return dict(audio=audio, video=video, **truth)
