"""The phantom generator: one synthetic radiograph and its lesion mask from a seed.

`generate` draws the anatomy (:mod:`.limbs`, :mod:`.chest`), applies the condition's
finding (:mod:`.findings`), poses the canonical maps into the detector frame and projects
them (:mod:`.render`). Also the vocabulary the writers share: `CONDITIONS`, `LABELS`,
`MURA_PARTS`, `GENERATOR_VERSION` and the condition -> body part -> view lookups.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from .chest import chest_params, render_chest
from .findings import MSK_FINDINGS, add_nutrient_canal, apply_finding, osteoporosis
from .limbs import PART_VIEWS, build_limb, patient_params, render_scene
from .render import Canvas, project, trabecular_texture

__all__ = ["GENERATOR_VERSION", "CONDITIONS", "LABELS", "MURA_PARTS", "SUBTLE_SHARE", "Phantom", "generate",
           "check_condition", "body_parts", "views_for", "sample_severity"]

GENERATOR_VERSION = "phantoms-1.0"
MURA_PARTS = ("elbow", "finger", "forearm", "hand", "humerus", "shoulder", "wrist")
CONDITIONS = ("msk_abnormality", "fracture", "osteoporosis", "arthritis", "pneumonia", "cardiomegaly")
#: (negative, positive) folder names; the registry owns the labels, these match it.
LABELS = {
    "msk_abnormality": ("normal", "abnormal"), "fracture": ("no_fracture", "fracture"),
    "osteoporosis": ("normal", "osteoporosis"), "arthritis": ("normal", "arthritis"),
    "pneumonia": ("normal", "pneumonia"), "cardiomegaly": ("normal", "cardiomegaly"),
}
_PARTS = {"msk_abnormality": MURA_PARTS, "fracture": MURA_PARTS, "osteoporosis": ("knee",),
          "arthritis": ("knee",), "pneumonia": ("chest",), "cardiomegaly": ("chest",)}
SUBTLE_SHARE = 0.3  # share of abnormal cases drawn with severity below 0.35


@dataclass(frozen=True)
class Phantom:
    """One synthetic radiograph.

    Attributes:
        image: float32 H x W in [0, 1], bone bright.
        mask: bool H x W, the finding's pixels; all False for a normal image.
        condition, abnormal, body_part, view: what was drawn.
        severity: 0 for normal images, else in (0, 1]; below 0.35 counts as subtle.
        finding: e.g. 'fracture', 'lytic_lesion', 'implant', 'dislocation', or None.
        ctr: a chest's true cardiothoracic ratio (the generator's parameter: cardiac over
            internal thoracic width; cardiomegaly above 0.50), None for other parts.
        outlines: a chest's posed anatomy masks, bool H x W: "heart" (cardiac silhouette)
            and "thorax" (internal thorax); empty for other parts.
    """

    image: np.ndarray
    mask: np.ndarray
    condition: str
    abnormal: bool
    body_part: str
    severity: float
    finding: str | None
    view: str
    ctr: float | None = None
    outlines: dict = field(default_factory=dict)


def check_condition(condition: str) -> None:
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; valid: {', '.join(CONDITIONS)}")


def body_parts(condition: str) -> tuple[str, ...]:
    check_condition(condition)
    return _PARTS[condition]


def views_for(body_part: str) -> tuple[str, ...]:
    return ("PA",) if body_part == "chest" else PART_VIEWS[body_part]


def sample_severity(rng: np.random.Generator) -> float:
    return float(rng.uniform(0.05, 0.35) if rng.random() < SUBTLE_SHARE else rng.uniform(0.35, 1.0))


def generate(condition: str, *, abnormal: bool, seed: int, size: int = 256, body_part: str | None = None,
             severity: float | None = None, view: str | None = None, view_index: int = 0,
             finding: str | None = None) -> Phantom:
    """Draw one phantom, deterministically from ``seed``.

    The patient (anatomy, proportions, finding and its place) depends on ``seed`` only;
    the exposure (pose, collimation, dose, window) on ``seed`` and ``view_index``, so
    the views of one study show the same patient and the same finding.

    Args:
        condition: one of :data:`CONDITIONS`.
        abnormal: draw the condition's finding (and mark its mask).
        seed: any int >= 0.
        size: output side in pixels (square).
        body_part: for msk_abnormality/fracture one of :data:`MURA_PARTS` (random if None);
            'knee' for osteoporosis/arthritis, 'chest' for pneumonia/cardiomegaly.
        severity: 0..1 (random, with a :data:`SUBTLE_SHARE` of subtle cases, if None).
        view: e.g. 'PA', 'AP', 'lateral', 'oblique' (random among the part's views if None).
        view_index: which exposure of the study.
        finding: msk_abnormality only: force one of :data:`findings.MSK_FINDINGS`.

    Returns:
        A :class:`Phantom`.
    """
    parts = body_parts(condition)
    rp = np.random.default_rng([int(seed), 11])  # patient
    rf = np.random.default_rng([int(seed), 13])  # finding
    rv = np.random.default_rng([int(seed), 17, int(view_index)])  # exposure
    # Beam quality (kVp, filtration) scales bone contrast against soft tissue; a stream of
    # its own so the other exposure draws stay as they were.
    beam = float(np.random.default_rng([int(seed), 19, int(view_index)]).uniform(0.75, 1.25))
    part = body_part or parts[int(rp.integers(len(parts)))]
    if part not in parts:
        raise ValueError(f"body part {part!r} does not fit {condition!r}; valid: {', '.join(parts)}")
    vs = views_for(part)
    view = view or vs[int(rv.integers(len(vs)))]
    sev = 0.0
    if abnormal:
        sev = float(np.clip(severity, 0.01, 1.0)) if severity is not None else sample_severity(rf)
    canon = int(round(size * 1.15))  # draw a little larger: rotation must not reveal edges
    cv = Canvas(canon)
    label = None
    ctr = None
    if part == "chest":
        p = chest_params(rp)
        ctr = p["ctr"]
        cons = None
        if abnormal and condition == "cardiomegaly":
            ctr = 0.505 + 0.2 * sev + rf.uniform(0, 0.02)
            label = "cardiomegaly"
        elif abnormal:
            cons = {"side": rf.choice([-1, 1]), "zone": ("upper", "middle", "lower")[int(rf.integers(3))],
                    "severity": sev}
            label = "consolidation"
        render_chest(cv, p, rp, ctr=ctr, consolidation=cons, mark_heart=label == "cardiomegaly")
        texture = trabecular_texture(rp, canon, 0.1)
    else:
        pp = patient_params(rp)
        sc = build_limb(part, view, pp)
        sparsity = pp["sparsity"]
        post = None
        if pp["nutrient"]:
            add_nutrient_canal(sc, pp)
        if abnormal:
            if condition == "osteoporosis":
                label = "osteoporosis"
                post = osteoporosis(sc, sev)
                sparsity = 0.3 + 0.6 * sev
            elif condition == "arthritis":
                label = "arthritis"
                post = apply_finding(sc, "arthritis", sev, rf, canon)
            elif condition == "fracture":
                label = "fracture"
                post = apply_finding(sc, "fracture", sev, rf, canon)
            else:
                label = finding or MSK_FINDINGS[int(rf.integers(len(MSK_FINDINGS)))]
                post = apply_finding(sc, label, sev, rf, canon)
        render_scene(sc, cv)
        if post is not None:
            post(cv)
        texture = trabecular_texture(rp, canon, sparsity)
    cv.med *= texture
    for attempt in range(6):  # re-pose if the pose pushed the whole finding out of the field
        image, mask, outlines = _expose(cv, rv, size, upright=part == "chest", mu_soft=4.0 if part == "chest" else 2.2,
                                        beam=beam, tame=attempt > 2)
        if mask.any() or not abnormal:
            break
        rv = np.random.default_rng([int(seed), 17, int(view_index), attempt + 1])
    return Phantom(image, mask, condition, bool(abnormal), part, sev, label, view,
                   None if ctr is None else float(ctr), outlines)


def _expose(cv: Canvas, rng: np.random.Generator, size: int, upright: bool,
            mu_soft: float, beam: float = 1.0, tame: bool = False) -> tuple[np.ndarray, np.ndarray, dict]:
    """Pose (rotation, scale, shift) the canonical maps into the detector frame, then project:
    (image, finding mask, posed outlines as bool masks).

    ``beam`` scales the bone attenuation coefficients (beam quality), 1 = nominal.
    """
    c = cv.size / 2
    ang = rng.uniform(-25, 25) if rng.random() < 0.85 else rng.choice([-90, 90]) + rng.uniform(-10, 10)
    if upright:  # chest films are taken upright and displayed so
        ang = ang / 6 if abs(ang) < 30 else ang / 20
    scale = size / cv.size * (1.0 if tame else rng.uniform(0.95, 1.25))
    M = cv2.getRotationMatrix2D((c, c), float(ang), float(scale))
    M[:, 2] += (size / 2 - c) + rng.uniform(-0.06, 0.06, 2) * size * (0 if tame else 1)
    stack = np.dstack([cv.soft, cv.cort, cv.med, cv.metal])
    w = cv2.warpAffine(stack, M, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    m = cv2.warpAffine(cv.mask, M, (size, size), flags=cv2.INTER_NEAREST, borderValue=0)
    # Outlines warped bilinearly as 0/1 maps, then cut at one half: their edges land where
    # the canonical edges map to, to better than nearest-neighbour sampling's pixel.
    outlines = {name: cv2.warpAffine(o.astype(np.float32), M, (size, size), flags=cv2.INTER_LINEAR,
                                     borderValue=0) > 0.5 for name, o in cv.outlines.items()}
    out = Canvas(size)
    k = size / cv.size  # path lengths were in canonical pixels
    out.soft, out.cort, out.med, out.metal = (np.ascontiguousarray(w[..., i]) * k for i in range(4))
    return project(out, rng, mu_soft=mu_soft, mu_cort=30.0 * beam, mu_med=5.0 * beam), m.astype(bool), outlines
