"""Face crops for the corpus builders: offline Haar-cascade detection, temporal smoothing, margin, resize.

The VQ-MAE-AV authors cropped their emotion corpora with OpenCV's frontal-face Haar cascade
(scaleFactor 1.05, minNeighbors 20, a 30 px margin, [code-vqmae-av]). We keep the detector (it ships
inside ``opencv-python-headless``, so preparation works offline) and add what their script lacked:
detection on a downscaled copy every few frames (speed), interpolation over frames where the
detector misses, temporal smoothing of the box (no jitter in the crops), and a margin relative to the
face size (resolution independent). Users with their own aligned crops (e.g. OpenFace on MEAD) skip
detection with ``precropped`` configs: frames are then only centre-cropped and resized.
"""

from __future__ import annotations

import dataclasses
import functools

import cv2
import numpy as np
import scipy.ndimage

from data_pipelines.media import MediaError


@dataclasses.dataclass(frozen=True)
class FaceOptions:
    """How faces are found and cropped (stored in each builder config, so a build is reproducible)."""

    scale_factor: float = 1.1  # the authors: 1.05 (slower, a few more detections)
    min_neighbors: int = 5  # the authors: 20 (on full-resolution frames)
    min_face_fraction: float = 0.1  # smallest face side, as a fraction of the frame's shorter side
    detect_side: int = 320  # detection runs on frames scaled to this longer side
    detect_every: int = 3  # detect on every n-th frame; boxes are interpolated in between
    min_detected: float = 0.5  # skip a clip whose probed frames show a face less often than this
    smooth_seconds: float = 0.2  # Gaussian smoothing (std) of box centre and size over time
    margin: float = 0.25  # added on each side, as a fraction of the box side
    center_crop: float = 1.0  # pre-cropped frames: keep this central fraction before resizing


@functools.lru_cache(maxsize=1)
def _cascade() -> cv2.CascadeClassifier:
    path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"cannot load OpenCV's Haar cascade from {path}; reinstall opencv-python-headless")
    return cascade


def detect(image: np.ndarray, options: FaceOptions = FaceOptions()) -> np.ndarray | None:
    """The most confident face in an RGB image as (x, y, w, h) in its pixels, or None."""
    h, w = image.shape[:2]
    scale = min(1.0, options.detect_side / max(h, w))
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
        gray = cv2.resize(gray, (int(round(w * scale)), int(round(h * scale))), interpolation=cv2.INTER_AREA)
    side = max(12, int(options.min_face_fraction * min(gray.shape)))
    boxes, _, weights = _cascade().detectMultiScale3(
        gray,
        scaleFactor=options.scale_factor,
        minNeighbors=options.min_neighbors,
        minSize=(side, side),
        outputRejectLevels=True,
    )
    if len(boxes) == 0:
        return None
    best = boxes[int(np.argmax(np.ravel(weights)))]  # the most confident detection, not the largest
    return np.asarray(best, np.float64) / scale


def track(frames: np.ndarray, fps: float, options: FaceOptions, path: str = "?") -> np.ndarray:
    """Smoothed square boxes [T, 3] (centre x, centre y, side) with the margin, one per frame."""
    n = len(frames)
    probes = np.arange(0, n, max(1, options.detect_every))
    if probes[-1] != n - 1:
        probes = np.append(probes, n - 1)
    found, boxes = [], []
    for i in probes:
        box = detect(frames[i], options)
        if box is not None:
            found.append(i)
            boxes.append([box[0] + box[2] / 2, box[1] + box[3] / 2, max(box[2], box[3])])
    if len(found) < max(1, options.min_detected * len(probes)):
        raise MediaError(path, f"no face: detected in only {len(found)} of {len(probes)} probed frames")
    boxes = np.asarray(boxes)
    t = np.arange(n)
    track = np.stack([np.interp(t, found, boxes[:, j]) for j in range(3)], axis=1)
    sigma = options.smooth_seconds * fps
    if sigma > 0 and n > 1:
        track = scipy.ndimage.gaussian_filter1d(track, sigma, axis=0, mode="nearest")
    track[:, 2] *= 1.0 + 2.0 * options.margin
    return track


def crop(frames: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Square crops (centre x, centre y, side) resized to ``size``; parts outside the frame replicate the edge."""
    out = np.empty((len(frames), size, size, 3), np.uint8)
    h, w = frames.shape[1:3]
    for i, (image, (cx, cy, side)) in enumerate(zip(frames, boxes)):
        side = max(2, int(round(side)))
        x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        pad = max(0, -x0, -y0, x0 + side - w, y0 + side - h)
        if pad:
            image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        roi = image[y0 + pad : y0 + pad + side, x0 + pad : x0 + pad + side]
        interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR  # area averaging: no aliasing
        out[i] = cv2.resize(roi, (size, size), interpolation=interp)
    return out


def centre_crop_resize(frames: np.ndarray, size: int, fraction: float = 1.0) -> np.ndarray:
    """Pre-cropped faces: the central square (times ``fraction``) of each frame, resized to ``size``."""
    h, w = frames.shape[1:3]
    side = min(h, w) * fraction
    boxes = np.tile([[w / 2, h / 2, side]], (len(frames), 1))
    return crop(frames, boxes, size)


def face_crops(
    frames: np.ndarray, fps: float, size: int, options: FaceOptions, precropped: bool, path: str = "?"
) -> np.ndarray:
    """uint8 [T, size, size, 3] face crops of ``frames`` (detected, or the pre-cropped frames resized)."""
    if precropped:
        return centre_crop_resize(frames, size, options.center_crop)
    return crop(frames, track(frames, fps, options, path), size)
