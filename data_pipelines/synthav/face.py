"""Face rendering and visual-only dynamics for SynthAV.

Coordinates: x right, y down, in units of half the image side, so the image spans
[-1, 1]^2 whatever its pixel size. A face is drawn in its own *face coordinates*
(u, v) and moved into the image by the head pose.

Rendering is split for speed (everything vectorised over [T, H, W]):

1. Per utterance, the static part of the head (hair, skin with texture, ears, neck,
   clothes, nose, eye sockets, cheeks, beard) is rendered once on a 2x
   supersampled map in face coordinates, together with its Lambertian shading
   under the utterance's light.
2. Per frame, that map is sampled bilinearly at the pose-transformed pixel grid
   (roll rotates, yaw/pitch shift it; a jaw warp lowers the chin as the mouth opens).
3. The dynamic parts (eyes with lids, iris and pupil, brows, lips and mouth
   interior) are drawn analytically with anti-aliased signed-distance edges on the
   image rows where they can appear, shifted further than the face outline by yaw
   and pitch (they are closer to the camera, so they show parallax).
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage

from data_pipelines.synthav import speech

_MAP_EXTENT = 1.3  # the head map covers face coordinates [-1.3, 1.3]^2
_PIVOT_Y = 0.1  # roll pivot and face-outline reference (face coordinates)
_OVAL_DEPTH = 0.22  # how far yaw/pitch move the outline (sin(angle) * depth)
_FEATURE_DEPTH = 0.2  # extra parallax of eyes, brows and mouth over the outline
_OVAL_CY = 0.08  # face-oval centre
_MAX_OPENING = 0.2  # lip separation at mouth_open = 1 (face units; 6.4 px at 64x64)
_SCLERA = np.array([0.93, 0.91, 0.88], np.float32)
_MOUTH_INTERIOR = np.array([0.2, 0.06, 0.06], np.float32)
_TONGUE = np.array([0.55, 0.25, 0.25], np.float32)
_TEETH = np.array([0.9, 0.88, 0.82], np.float32)


def _ramp(signed_dist, width):
    """Anti-aliased coverage of a shape from its signed distance (>0 inside)."""
    return np.clip(signed_dist / width + 0.5, 0.0, 1.0)


def _over(canvas, color, alpha):
    """Alpha-composite a colour (broadcastable to canvas) in place, alpha [..., H, W]."""
    canvas += alpha[..., None] * (color - canvas)


# --------------------------------------------------------------------------- dynamics


def visual_dynamics(
    rng: np.random.Generator,
    n_ctrl: int,
    accent: np.ndarray,
    blink_rate: float,
    pitch_offset_deg: float,
    gaze_y_offset: float,
) -> dict:
    """Control-rate blinks, head pose and gaze.

    eye_open: 1 open .. 0 closed, driven by blinks (~170 ms: 60 ms closing, 20 ms
    closed, 90 ms opening), Poisson at `blink_rate` per second after a 0.5 s refractory gap.
    head_pose: (yaw, pitch, roll) in degrees; smooth random walks plus small nods
    on pitch accents. gaze: (x, y) normalised iris displacement, +x image right,
    +y down, 1 = the largest displacement the renderer draws; fixations joined by
    fast saccades.
    """
    t = np.arange(n_ctrl) / speech.CTRL_RATE
    closure = np.zeros(n_ctrl)
    tb = -rng.uniform(0.0, 1.0 / blink_rate)
    while True:
        tb += 0.5 + rng.exponential(1.0 / blink_rate)
        if tb > t[-1]:
            break
        depth = rng.uniform(0.75, 1.0)
        x = t - tb
        profile = np.select(
            [(x >= 0) & (x < 0.06), (x >= 0.06) & (x < 0.08), (x >= 0.08) & (x < 0.17)],
            [0.5 - 0.5 * np.cos(np.pi * x / 0.06), 1.0, 0.5 + 0.5 * np.cos(np.pi * (x - 0.08) / 0.09)],
            0.0,
        )
        closure = np.maximum(closure, depth * profile)

    pose = np.stack(
        [
            rng.normal(0, 2.0) + 2.5 * speech.smooth_noise(rng, n_ctrl, 0.35),
            pitch_offset_deg + rng.normal(0, 1.5) + 1.5 * speech.smooth_noise(rng, n_ctrl, 0.3) - 1.5 * accent,
            rng.normal(0, 1.0) + 1.2 * speech.smooth_noise(rng, n_ctrl, 0.4),
        ],
        axis=1,
    )

    n_fix = 2 + int(t[-1] * 3)
    switch = np.sort(rng.uniform(0, t[-1], n_fix))
    targets = rng.normal([0.0, gaze_y_offset], [0.35, 0.2], size=(n_fix + 1, 2))
    gaze = targets[np.searchsorted(switch, t)]
    gaze = scipy.ndimage.gaussian_filter1d(gaze, 0.008 * speech.CTRL_RATE, axis=0, mode="nearest")
    gaze += 0.03 * np.stack([speech.smooth_noise(rng, n_ctrl, 0.2) for _ in range(2)], axis=1)
    return dict(eye_open=1.0 - closure, head_pose=pose, gaze=np.clip(gaze, -1.0, 1.0))


# --------------------------------------------------------------------------- static head map


def _head_map(sp, style: dict, light: dict, size: int) -> tuple[np.ndarray, int]:
    """Static head layer on a 2x map, shaded and premultiplied: [M*M, 16] packed RGBA, and M."""
    du = 1.0 / size  # half an image pixel
    m = int(round(2 * _MAP_EXTENT / du))
    c = -_MAP_EXTENT + (np.arange(m, dtype=np.float32) + 0.5) * du
    U, V = c[None, :], c[:, None]
    aU = np.abs(U)
    ramp = lambda d: _ramp(d, du)  # noqa: E731
    skin = np.array(sp.skin_rgb, np.float32)
    hair = np.array(sp.hair_rgb, np.float32)
    a, b = sp.face_width, sp.face_height
    albedo = np.zeros((m, m, 3), np.float32)
    cover = np.zeros((m, m), np.float32)

    def layer(color, alpha):
        _over(albedo, color, alpha)
        cover[:] = cover + alpha * (1.0 - cover)

    tex_rng = np.random.default_rng(sp.texture_seed)
    coarse = scipy.ndimage.gaussian_filter(tex_rng.standard_normal((m, m)), 6.0) * 17.0  # ~unit std
    fine = scipy.ndimage.gaussian_filter(tex_rng.standard_normal((m, m)), 0.7)
    texture = (1.0 + 0.03 * coarse + 0.03 * fine).astype(np.float32)[..., None]
    strands = (1.0 + 0.12 * np.sin(U * 70.0 + 4.0 * coarse) * (0.5 + 0.5 * fine)).astype(np.float32)[..., None]

    vn = (V - _OVAL_CY) / b
    a_eff = a * (1.0 - sp.jaw_taper * np.clip(vn, 0, 1) ** 2)
    face = ramp((1.0 - np.sqrt((U / a_eff) ** 2 + vn**2)) * min(a, b))
    head = ramp((1.0 - np.sqrt((U / (a + 0.07)) ** 2 + ((V - _OVAL_CY + 0.05) / (b + 0.1)) ** 2)) * a)
    long_hair = sp.hair_style == 1

    if long_hair:
        back = (1.0 - np.sqrt((U / (a + 0.22)) ** 2 + ((V - _OVAL_CY - 0.25) / (b + 0.4)) ** 2)) * a
        layer(hair * 0.8 * strands, ramp(back))
    neck_w = 0.55 * a
    layer(skin * 0.78 * texture, ramp(neck_w - aU) * ramp(V - 0.2))
    layer(np.array(sp.clothing_rgb, np.float32) * texture, ramp(V - (1.02 - 0.28 * U**2)))
    if not long_hair:
        ear = 1.0 - np.sqrt(((aU - 0.97 * a) / 0.075) ** 2 + ((V - sp.eye_y - 0.12) / 0.15) ** 2)
        layer(skin * 0.9 * texture, ramp(ear * 0.075))

    # Skin albedo: texture, cheek blush (raised by smiling), eye sockets, beard.
    ey, ex, ew = sp.eye_y, sp.eye_spacing, sp.eye_width
    cheek_y = sp.mouth_y - 0.2 - 0.03 * style["cheek"]
    blush = np.exp(-((aU - 0.33) ** 2 + (V - cheek_y) ** 2) / (2 * 0.09**2))
    redden = np.array([0.0, 0.2, 0.2], np.float32)  # blush lowers green and blue
    skin_map = skin * texture * (1.0 - (0.2 + 0.15 * style["cheek"]) * blush[..., None] * redden)
    socket = np.exp(-(((aU - ex) / 0.16) ** 2 + ((V - ey - 0.01) / 0.09) ** 2))
    skin_map *= (1.0 - 0.12 * socket)[..., None]
    if sp.beard > 0:
        # Stubble over the jaw, rising towards the ears, with a soft upper edge.
        edge = sp.mouth_y - 0.1 - 0.25 * (aU / a) ** 2
        beard = sp.beard * np.clip((V - edge) / 0.08, 0, 1)
        _over(skin_map, skin * 0.45 + hair * 0.55, beard * 0.5)
    layer(skin_map, face)

    # Upper-eyelid crease.
    xe = (aU - ex) / ew
    crease = ey - 1.7 * sp.eye_height - 0.012 * (1 - xe**2)
    _over(albedo, skin * 0.72, 0.45 * face * ramp(0.012 - np.abs(V - crease)) * ramp((1.0 - np.abs(xe)) * ew))

    # Nose: bridge side shadows (darker on the side away from the light), tip
    # highlight, alae and nostrils (raised and flared by disgust).
    tip = ey + sp.nose_length
    nw = sp.nose_width
    along = ramp(V - ey - 0.05) * ramp(tip - V)
    for side in (-1.0, 1.0):
        shadow = 0.06 + 0.1 * max(0.0, -side * light["x"])
        g = np.exp(-(((U - side * 0.45 * nw) / 0.025) ** 2)) * along
        _over(albedo, skin * 0.6, shadow * g * face)
    raise_ = 0.025 * style["lip_raise"]
    ala = np.exp(-(((aU - 0.75 * nw) / 0.045) ** 2 + ((V - tip + 0.005 + raise_) / 0.04) ** 2))
    _over(albedo, skin * 0.75, 0.35 * ala * face)
    nostril = 1.0 - np.sqrt(
        ((aU - 0.45 * nw * (1 + 0.2 * style["lip_raise"])) / 0.035) ** 2 + ((V - tip - 0.015 + raise_) / 0.018) ** 2
    )
    _over(albedo, skin * 0.3, ramp(nostril * 0.018) * face)
    highlight = np.exp(-((U / 0.04) ** 2 + ((V - tip + 0.035) / 0.04) ** 2))
    _over(albedo, np.minimum(skin * 1.25, 1.0), 0.35 * highlight * face)

    # Nasolabial folds, deepened by smiling and by the disgust lip raise.
    y0, y1 = tip, sp.mouth_y + 0.06
    frac = np.clip((V - y0) / (y1 - y0), 0, 1)
    fold_x = 0.75 * nw + 0.03 + (sp.mouth_width + 0.03 - 0.75 * nw) * frac**0.8
    fold = np.exp(-(((aU - fold_x) / 0.018) ** 2)) * ramp(V - y0) * ramp(y1 - V)
    _over(albedo, skin * 0.65, (0.12 + 0.25 * (style["cheek"] + style["lip_raise"])) * fold * face)

    # Hair in front of the face, above a style-dependent hairline.
    hairline = {0: (-0.55, 0.5), 1: (-0.55, 0.6), 2: (-0.8, 0.9), 3: (-0.38, 0.15)}[sp.hair_style]
    cap = ramp(hairline[0] + hairline[1] * U**2 - V)
    temples = (1.0 - face) * np.clip((sp.eye_y + 0.06 - V) / 0.1, 0, 1)  # above the ears, fading out
    layer(hair * strands, head * np.maximum(cap, temples))
    if long_hair:
        layer(hair * strands, head * ramp(aU - (a - 0.05)) * ramp(0.45 - V))

    # Bake the shading in, then pack each texel's 2x2 neighbourhood into one row so
    # that a bilinear lookup is a single gather.
    rgba = np.concatenate([albedo * (cover * _shade(U, V, sp, light))[..., None], cover[..., None]], axis=-1)
    rgba = np.pad(rgba, ((0, 1), (0, 1), (0, 0)), mode="edge")
    packed = np.concatenate([rgba[:-1, :-1], rgba[:-1, 1:], rgba[1:, :-1], rgba[1:, 1:]], axis=-1)
    return packed.reshape(m * m, 16).astype(np.float32), m


def _shade(U, V, sp, light):
    """Lambertian shading of a head-sized ellipsoid under the utterance's light."""
    nx = U / (sp.face_width + 0.15)
    ny = (V - _OVAL_CY) / (sp.face_height + 0.2)
    nz = np.sqrt(np.clip(1.0 - nx**2 - ny**2, 0.02, 1.0))
    lam = np.clip((nx * light["x"] + ny * light["y"] + nz * light["z"]) / np.sqrt(nx**2 + ny**2 + nz**2), 0, 1)
    return light["intensity"] * (light["ambient"] + (1 - light["ambient"]) * lam)


def _sample_map(packed, m, U, V, size):
    """Bilinear lookup of the packed head map at face coordinates U, V ([T, H, W] each)."""
    du = 1.0 / size
    fu = (U + _MAP_EXTENT) / du - 0.5
    fv = (V + _MAP_EXTENT) / du - 0.5
    iu = np.clip(np.floor(fu), 0, m - 2)
    iv = np.clip(np.floor(fv), 0, m - 2)
    wu = np.clip(fu - iu, 0, 1)
    wv = np.clip(fv - iv, 0, 1)
    taps = packed[(iv * m + iu).astype(np.int32)].reshape(*U.shape, 4, 4)
    weights = np.stack([(1 - wu) * (1 - wv), wu * (1 - wv), (1 - wu) * wv, wu * wv], axis=-1)
    return np.einsum("...k,...kc->...c", weights, taps)


# --------------------------------------------------------------------------- frames


def _rows(lo, hi, size):
    """Image row slice covering y in [lo, hi] (image coordinates)."""
    r0 = int(np.clip(np.floor((lo + 1.0) * size / 2), 0, size))
    r1 = int(np.clip(np.ceil((hi + 1.0) * size / 2), 0, size))
    return slice(r0, r1)


def _draw_eyes_and_brows(canvas, U, V, sp, style, frames, px):
    T = U.shape[0]
    col = lambda x: np.asarray(x, np.float32).reshape(T, 1, 1)  # noqa: E731  per-frame scalar
    side = np.sign(U)
    ex, ey, ew, eh = sp.eye_spacing, sp.eye_y, sp.eye_width, sp.eye_height
    xe = np.abs(U) - ex  # both eyes at once, mirrored: xe > 0 towards the temple
    p = 1.0 - (xe / ew) ** 2

    # Lids: the lower lid rises with the cheeks (smile); the upper lid opens to the
    # emotion's aperture and descends onto the lower lid during blinks.
    lower = ey + 0.6 * eh * (1.0 - 0.35 * style["cheek"]) * p
    upper_open = ey - eh * style["eye_aperture"] * p
    open_t = col(frames["eye_open"])
    upper = upper_open * open_t + lower * (1.0 - open_t)
    sclera = _ramp(V - upper, px) * _ramp(lower - V, px)
    _over(canvas, _SCLERA * (0.75 + 0.25 * np.clip(p, 0, 1))[..., None], sclera)

    gx, gy = col(frames["gaze"][:, 0]), col(frames["gaze"][:, 1])
    r_iris = 0.85 * eh
    dx = xe - side * gx * 0.45 * ew
    dy = V - (ey - 0.15 * eh + gy * 0.35 * eh)
    d = np.sqrt(dx**2 + dy**2)
    iris = np.array(sp.iris_rgb, np.float32) * (1.0 - 0.5 * np.clip(d / r_iris, 0, 1) ** 2)[..., None]
    _over(canvas, iris, _ramp(r_iris - d, px) * sclera)
    _over(canvas, np.float32(0.03), _ramp(0.42 * r_iris - d, px) * sclera)
    glint = np.sqrt((dx + 0.3 * r_iris) ** 2 + (dy + 0.35 * r_iris) ** 2)
    _over(canvas, np.float32(1.0), 0.8 * _ramp(0.2 * r_iris - glint, px) * sclera)

    # Lash line on the upper lid margin: when the eye closes it stays as a dark line.
    lash = _ramp(0.018 - np.abs(V - upper + 0.006), px) * _ramp((1.08 - np.abs(xe / ew)) * ew, px)
    _over(canvas, np.array(sp.hair_rgb, np.float32) * 0.4, 0.85 * lash)

    # Brows: raised (surprise), lowered and pulled together (anger), inner ends raised
    # (sadness), one brow higher (contempt); small raises on pitch accents.
    xb_raw = xe + 0.1 * ew + 0.03 * style["furrow"]
    bw = 1.25 * ew
    xb = xb_raw / bw
    inner = np.clip(-xb, 0, 1)
    raise_ = 0.05 * style["brow_raise"] + 0.04 * style["brow_asym"] * side + col(0.012 * frames["brow_accent"])
    yb = (
        ey
        - sp.brow_gap
        - sp.brow_arch * (1 - xb**2)
        - raise_
        + inner * (0.04 * style["furrow"] - 0.05 * style["brow_inner"])
    )
    thick = sp.brow_thickness * (1.0 - 0.45 * np.clip(xb, 0, 1))
    brow = _ramp(0.5 * thick - np.abs(V - yb), px) * _ramp((1.0 - np.abs(xb)) * bw, px)
    _over(canvas, np.array(sp.hair_rgb, np.float32) * 0.7 + np.array(sp.skin_rgb, np.float32) * 0.15, 0.9 * brow)


def _draw_mouth(canvas, U, V, sp, style, frames, px):
    T = U.shape[0]
    col = lambda x: np.asarray(x, np.float32).reshape(T, 1, 1)  # noqa: E731
    hw = sp.mouth_width * col(frames["mouth_width"])
    xm = U / hw
    pq = np.sqrt(np.clip(1.0 - xm**2, 0, 1))
    side = np.sign(U)
    # Corner lift (>0 up: smile) with a one-sided component (contempt).
    y0 = sp.mouth_y - (0.05 * style["corner"] + 0.04 * style["corner_asym"] * side) * xm**2
    open_h = _MAX_OPENING * col(frames["mouth_open"])
    inner_top = y0 - 0.3 * open_h * pq - 0.02 * style["lip_raise"] * pq
    inner_bot = y0 + 0.7 * open_h * pq
    taper = 0.3 + 0.7 * pq
    outer_top = inner_top - sp.lip_upper * taper / np.sqrt(col(frames["mouth_width"]))
    outer_bot = inner_bot + sp.lip_lower * taper / np.sqrt(col(frames["mouth_width"]))
    horiz = _ramp((1.0 - np.abs(xm)) * hw, px)

    lips = _ramp(V - outer_top, px) * _ramp(outer_bot - V, px) * horiz
    lip = np.array(sp.lip_rgb, np.float32)
    lip_col = lip * (1.0 + np.float32(0.12) * (V > y0))[..., None]  # lower lip catches more light
    _over(canvas, lip_col, lips)

    gap = inner_bot - inner_top
    interior = _ramp(V - inner_top, px) * _ramp(inner_bot - V, px) * horiz
    # The dark interior shows the tongue low in wide openings and the upper teeth
    # just under the upper lip.
    tongue = np.clip((V - inner_top) / np.maximum(gap, 1e-3) - 0.55, 0, 1) * np.clip(gap / 0.12, 0, 1)
    _over(canvas, _MOUTH_INTERIOR + tongue[..., None] * (_TONGUE - _MOUTH_INTERIOR), interior)
    teeth = _ramp(inner_top + 0.035 - V, px) * _ramp((0.6 - np.abs(xm)) * hw, px) * interior
    _over(canvas, _TEETH, teeth * np.clip(gap / 0.04, 0, 1))
    # Closed lips still show a dark seam.
    _over(canvas, lip * 0.35, 0.7 * _ramp(0.6 * px - np.abs(V - y0), px) * horiz * np.clip(1 - gap / px, 0, 1))


def render_video(sp, style: dict, frames: dict, size: int, rng: np.random.Generator) -> np.ndarray:
    """Render [T, size, size, 3] uint8 RGB frames.

    sp: a Speaker (geometry and colours). style: static emotion face parameters.
    frames: per-frame arrays mouth_open, mouth_width, eye_open, gaze [T, 2],
    head_pose [T, 3] (degrees), brow_accent.
    """
    T = frames["mouth_open"].shape[0]
    light_az, light_el = rng.uniform(-0.7, 0.7), rng.uniform(-0.15, 0.5)
    light = dict(
        x=np.sin(light_az) * np.cos(light_el),
        y=-np.sin(light_el),
        z=np.cos(light_az) * np.cos(light_el),
        intensity=rng.uniform(0.85, 1.15),
        ambient=rng.uniform(0.35, 0.55),
    )
    head_map, m = _head_map(sp, style, light, size)

    px = np.float32(2.0 / size)
    grid = -1.0 + (np.arange(size, dtype=np.float32) + 0.5) * px
    X, Y = grid[None, None, :], grid[None, :, None]
    yaw, pitch, roll = (np.deg2rad(frames["head_pose"][:, i]).astype(np.float32).reshape(T, 1, 1) for i in range(3))
    sy, sp_ = np.sin(yaw), np.sin(pitch)
    xr = X - _OVAL_DEPTH * sy
    yr = Y - _PIVOT_Y + _OVAL_DEPTH * sp_
    cr, srl = np.cos(roll), np.sin(roll)
    U = cr * xr + srl * yr
    V = -srl * xr + cr * yr + _PIVOT_Y

    # Jaw warp: below the mouth the map is sampled higher up, so the chin drops with
    # the lower lip; the warp fades out over the neck.
    chin = _OVAL_CY + sp.face_height
    jaw = (0.75 * _MAX_OPENING * frames["mouth_open"]).astype(np.float32).reshape(T, 1, 1)
    w = np.clip((V - sp.mouth_y) / (chin - sp.mouth_y), 0, 1) * np.clip((chin + 0.35 - V) / 0.35, 0, 1)
    sampled = _sample_map(head_map, m, U, V - jaw * w, size)

    bg = np.array(sp.background_rgb, np.float32) * light["intensity"]
    bg = bg * (0.9 + 0.1 * np.clip(light["x"] * X[0] - 0.5 * Y[0], -1, 1))[..., None]  # [H, W, 3]
    canvas = bg * (1.0 - sampled[..., 3:4]) + sampled[..., :3]

    # Features are drawn in albedo space: un-shade their rows (where the head covers
    # the background), draw, and shade again.
    Uf, Vf = U - _FEATURE_DEPTH * sy, V + _FEATURE_DEPTH * sp_
    for draw, lo, hi in (
        (_draw_eyes_and_brows, sp.eye_y - 0.4, sp.eye_y + 0.16),
        (_draw_mouth, sp.mouth_y - 0.16, sp.mouth_y + 0.34),
    ):
        rows = _rows(lo, hi, size)
        band = canvas[:, rows]
        shade = 1.0 + sampled[:, rows, :, 3:4] * (_shade(U[:, rows], V[:, rows], sp, light)[..., None] - 1.0)
        band /= shade
        draw(band, Uf[:, rows], Vf[:, rows], sp, style, frames, px)
        band *= shade
    return np.clip(canvas * 255.0 + 0.5, 0, 255).astype(np.uint8)
