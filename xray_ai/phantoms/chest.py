"""PA chest: thorax, lungs, heart, mediastinum, ribs, clavicles, spine, diaphragm.

Findings: pneumonia (patchy consolidation in one lung zone) and cardiomegaly
(cardiothoracic ratio above 0.5; normal hearts spread between about 0.36 and 0.49).
Normal variants that mimic them: vessel markings, breast shadows, a prominent
pericardial fat pad, a gastric bubble.
"""

from __future__ import annotations

import cv2
import numpy as np

from .render import Bone, Canvas, draw_blob, draw_bone, draw_tubes

__all__ = ["render_chest", "chest_params", "normal_ctr"]


def normal_ctr(rng: np.random.Generator) -> float:
    """A normal adult PA cardiothoracic ratio (mean 0.44, sd 0.035, below 0.495)."""
    return float(np.clip(rng.normal(0.44, 0.035), 0.35, 0.495))


def chest_params(rng: np.random.Generator) -> dict:
    # Wide normal ranges of thorax width, inspiration (apex, diaphragm), habitus (body,
    # air), heart shape and mediastinal width: how much of the film is lung versus dense
    # soft tissue varies among normals as much as a large heart changes it, so cardiomegaly
    # is told by the heart's width relative to the thorax, not by more white pixels.
    return {
        "tw": rng.uniform(0.30, 0.42), "apex": rng.uniform(0.05, 0.17), "dia": rng.uniform(0.62, 0.88),
        "body": rng.uniform(0.3, 0.8), "air": rng.uniform(0.24, 0.48), "ctr": normal_ctr(rng),
        "breast": rng.random() < 0.4, "fatpad": rng.random() < 0.3, "bubble": rng.random() < 0.5,
        "hh": rng.uniform(0.65, 1.0), "ribw": rng.uniform(0.014, 0.02), "density": rng.uniform(0.85, 1.15),
        "mw": rng.uniform(0.04, 0.085),  # mediastinal half-width
    }


def _lung(side: int, p: dict) -> np.ndarray:
    """Lung outline (canvas units); side -1 = image left (patient right)."""
    tw, ap, dia = p["tw"], p["apex"], p["dia"] + (0.02 if side > 0 else 0)
    xl = 0.5 + side * tw  # lateral costal margin
    xm = 0.5 + side * (0.045 if side < 0 else 0.05)
    pts = [(xm, ap + 0.05), (0.5 + side * tw * 0.55, ap), (0.5 + side * tw * 0.85, ap + 0.08),
           (xl, 0.45), (xl + side * 0.005, dia + 0.02), (0.5 + side * tw * 0.75, dia - 0.04),
           (0.5 + side * tw * 0.35, dia - 0.08), (xm, dia - 0.06)]
    return np.array(pts)


def render_chest(cv: Canvas, p: dict, rng: np.random.Generator, *, ctr: float,
                 consolidation: dict | None, mark_heart: bool) -> None:
    """Draw a PA chest into ``cv``; marks the consolidation or (if ``mark_heart``) the heart."""
    S = cv.size
    xx = (np.arange(S, dtype=np.float32) / S - 0.5) / (p["tw"] + 0.1)
    body = p["body"] * S * np.sqrt(np.clip(1 - xx ** 2, 0, 1))
    cv.soft += body[None, :]
    # Lungs: air replaces tissue with a smooth profile toward the pleural margins.
    lungs = np.zeros((S, S), np.uint8)
    cv2.fillPoly(lungs, [np.round(_lung(s, p) * S).astype(np.int32) for s in (-1, 1)], 1)
    lungs = cv2.GaussianBlur(lungs * 255, (0, 0), 1.5) > 127
    lungs = lungs.astype(np.uint8)
    air = draw_blob(lungs, p["air"] * S, 0.1 * S)
    # Heart: width = ctr x internal thoracic width, two-thirds to the patient's left.
    wt = 2 * p["tw"]
    wh = ctr * wt
    xr, xl = 0.5 - 0.36 * wh, 0.5 + 0.64 * wh
    # An enlarged heart widens (the CTR) more than it grows in height.
    hh = wt * (0.44 + 0.3 * (ctr - 0.44)) * 0.5 * p["hh"]
    cy = p["dia"] - hh * 0.55
    heart = np.zeros((S, S), np.uint8)
    cv2.ellipse(heart, (((xr + xl) / 2 * S, cy * S), (wh * S, 2 * hh * S), 0.0), 1, -1)
    cv2.ellipse(heart, ((0.535 * S, (cy - hh * 0.9) * S), (0.07 * S, 0.06 * S), 0.0), 1, -1)  # aortic knob
    med = np.zeros((S, S), np.uint8)
    cv2.rectangle(med, (int((0.5 - p["mw"]) * S), 0), (int((0.505 + p["mw"]) * S), int(cy * S)), 1, -1)
    hprof = draw_blob(heart | med, 0.5 * S, 0.06 * S)
    if p["fatpad"]:
        fp = np.zeros((S, S), np.uint8)
        cv2.ellipse(fp, ((xl * S, (p["dia"] - 0.02) * S), (0.08 * S, 0.06 * S), 0.0), 1, -1)
        hprof = np.maximum(hprof, draw_blob(fp, 0.12 * S, 0.04 * S))
    air = np.maximum(air - hprof, 0)
    # Vessel markings: branching lines from the hila, soft-tissue dense, fading laterally.
    ves = np.zeros((S, S), np.float32)
    for side in (-1, 1):
        hil = np.array([0.5 + side * 0.1, 0.42])
        for _ in range(14):
            pts = [hil.copy()]
            a = rng.uniform(-1.2, 1.2) + (np.pi / 2 if side > 0 else -np.pi / 2)
            for k in range(5):
                a += rng.uniform(-0.35, 0.35)
                pts.append(pts[-1] + np.array([np.sin(a), -np.cos(a) * 0.8]) * rng.uniform(0.03, 0.06))
            for k in range(5):
                cv2.line(ves, tuple((pts[k] * S * 4).astype(int)), tuple((pts[k + 1] * S * 4).astype(int)),
                         float(0.03 * S * (1 - k / 6)), max(1, int(S / 150 * (3 - k / 2))), cv2.LINE_AA, shift=2)
    ves = cv2.GaussianBlur(ves, (0, 0), 0.8) * lungs
    soft_extra = ves
    if p["breast"]:
        br = np.zeros((S, S), np.uint8)
        for side in (-1, 1):
            cv2.ellipse(br, (((0.5 + side * 0.22) * S, (p["dia"] - 0.02) * S), (0.3 * S, 0.26 * S), 0.0), 1, -1)
        soft_extra = soft_extra + draw_blob(br, 0.12 * S, 0.12 * S)
    if consolidation is not None:
        soft_extra = soft_extra + _consolidate(cv, lungs, air, consolidation, rng)
    if p["bubble"]:
        gb = np.zeros((S, S), np.uint8)
        cv2.ellipse(gb, ((0.62 * S, (p["dia"] + 0.07) * S), (0.08 * S, 0.05 * S), 0.0), 1, -1)
        air = air + draw_blob(gb, 0.05 * S, 0.02 * S)
    cv.soft += soft_extra - air + 0.0
    np.maximum(cv.soft, 0, out=cv.soft)
    if mark_heart:
        cv.mask |= heart
    # The outlines the cardiothoracic ratio is measured on: the cardiac silhouette (heart
    # and aortic knob; its widest horizontal diameter is `wh` = ctr x wt by construction)
    # and the internal thorax (the lung fields with the mediastinum between them, inside
    # the inner rib margins at 0.5 +/- tw, so its widest diameter is wt).
    cv.outlines["heart"] = heart
    cv.outlines["thorax"] = _internal_thorax(p, S)
    # Bones.
    d = p["density"]
    ribs_p, ribs_a = [], []
    for i in range(11):
        y0 = p["apex"] + 0.015 + i * 0.062
        for side in (-1, 1):
            t = np.linspace(0, 1, 10)
            x = 0.5 + side * (0.04 + (p["tw"] + 0.015) * np.sin(t * np.pi / 2) ** 0.7)
            y = y0 - 0.035 * np.sin(t * np.pi * 0.8) + 0.09 * t ** 2
            ribs_p.append(np.stack([x, y], 1))
            t2 = np.linspace(0, 1, 6)
            xa = 0.5 + side * (p["tw"] + 0.01 - 0.25 * t2)
            ya = y[-1] + 0.02 + 0.13 * t2 + 0.03 * t2 ** 2
            if i < 7:
                ribs_a.append(np.stack([xa, ya], 1))
    draw_tubes(cv, ribs_p, p["ribw"], density=0.9 * d)
    draw_tubes(cv, ribs_a, p["ribw"] * 1.1, cortex=0.3, density=0.45 * d)
    for side in (-1, 1):
        cl = np.array([[0.5 + side * 0.04, 0.14], [0.5 + side * 0.15, 0.12], [0.5 + side * 0.3, 0.08],
                       [0.5 + side * 0.42, 0.07]])
        draw_tubes(cv, [cl + [0, p["apex"] - 0.08]], 0.026, density=d)
    for k in range(18):  # vertebral bodies
        y = -0.02 + k * 0.058
        draw_bone(cv, Bone(f"v{k}", (0.48, y), (0.52, y), 0.022, 0.022, cortex=0.3, density=0.3 * d))


def _internal_thorax(p: dict, S: int) -> np.ndarray:
    """The thorax inside the ribs: each row filled between the lungs' outer margins, cut at
    the inner rib margins (x = 0.5 +/- tw), uint8 0/1 on the S x S canvas."""
    lungs = np.zeros((S, S), np.uint8)
    cv2.fillPoly(lungs, [np.round(_lung(s, p) * S).astype(np.int32) for s in (-1, 1)], 1)
    thorax = np.zeros_like(lungs)
    for row in np.flatnonzero(lungs.any(axis=1)):
        cols = np.flatnonzero(lungs[row])
        thorax[row, cols[0]:cols[-1] + 1] = 1
    left, right = int(round((0.5 - p["tw"]) * S)), int(round((0.5 + p["tw"]) * S))
    thorax[:, :left] = 0
    thorax[:, right:] = 0
    return thorax


def _consolidate(cv: Canvas, lungs: np.ndarray, air: np.ndarray, c: dict,
                 rng: np.random.Generator) -> np.ndarray:
    """Patchy alveolar opacity in one lung zone; returns added soft-tissue path and marks the mask."""
    S = cv.size
    side, zone, sev = c["side"], c["zone"], c["severity"]
    ys = {"upper": (0.18, 0.35), "middle": (0.35, 0.52), "lower": (0.52, 0.72)}[zone]
    region = np.zeros((S, S), np.uint8)
    region[int(ys[0] * S):int(ys[1] * S), :S // 2] = 1 if side < 0 else 0
    region[int(ys[0] * S):int(ys[1] * S), S // 2:] = 1 if side > 0 else 0
    cand = np.argwhere(region & lungs & (air > 0.15 * S))
    if len(cand) == 0:
        cand = np.argwhere(lungs)
    cy, cx = cand[int(rng.integers(len(cand)))]
    rad = (0.05 + 0.12 * sev) * S
    n = rng.standard_normal((S // 8 + 1, S // 8 + 1)).astype(np.float32)
    n = cv2.resize(cv2.GaussianBlur(n, (0, 0), 1.0), (S, S))
    n /= n.std() + 1e-6
    yy, xx = np.ogrid[0:S, 0:S]
    r2 = ((xx - cx) ** 2 + ((yy - cy) * 1.2) ** 2) / rad ** 2
    env = np.exp(-r2)
    field_ = env * (1.3 + 0.7 * n) - 0.5
    m = (((field_ > 0) | (env > 0.6)) & (lungs > 0)).astype(np.uint8)  # the core is always opaque
    dens = np.clip(field_ * 2, 0, 1) * m
    dens = cv2.GaussianBlur(dens.astype(np.float32), (0, 0), 1.5)
    # Air bronchograms: thin lucent branches inside the opacity.
    br = np.zeros((S, S), np.float32)
    for _ in range(3):
        a = rng.uniform(0, 2 * np.pi)
        p0 = np.array([cx, cy], float)
        p1 = p0 + rad * 0.8 * np.array([np.cos(a), np.sin(a)])
        cv2.line(br, tuple(p0.astype(int)), tuple(p1.astype(int)), 1.0, 1, cv2.LINE_AA)
    fill = (0.45 + 0.55 * sev) * dens * (1 - 0.6 * br)
    cv.mask |= m
    return (fill * np.minimum(air, 0.36 * S)).astype(np.float32)
