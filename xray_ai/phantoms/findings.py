"""Musculoskeletal findings and normal variants, each abnormal one with its pixel mask.

Scene edits (fracture, dislocation, arthritis, osteoporosis) change bones before they
are drawn; canvas edits (lytic lesion, implant) change the path-length maps after.
Masks are written into ``Canvas.mask`` in the canonical frame and warped with the image.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import cv2
import numpy as np

from .limbs import Scene
from .render import Bone, Canvas, Cut, move_bone

__all__ = ["MSK_FINDINGS", "apply_finding", "add_nutrient_canal"]

MSK_FINDINGS = ("fracture", "lytic_lesion", "implant", "dislocation")
PostOp = Callable[[Canvas], None]


def _axis(b: Bone):
    p0, p1 = np.asarray(b.p0, float), np.asarray(b.p1, float)
    d = p1 - p0
    L = float(np.hypot(*d))
    return p0, p1, d / L, L


def _pick(sc: Scene, rng: np.random.Generator, lo: float, hi: float) -> tuple[Bone, float]:
    """A shaft bone and a place along it (0..1) that lies well inside the canvas."""
    for _ in range(40):
        b = sc.bone(sc.shafts[int(rng.integers(len(sc.shafts)))])
        t0 = rng.uniform(lo, hi)
        p = np.asarray(b.p0) + t0 * (np.asarray(b.p1) - np.asarray(b.p0))
        if (0.15 < p).all() and (p < 0.85).all():
            return b, t0
    return b, t0


def _fracture(sc: Scene, sev: float, rng: np.random.Generator, size: int) -> None:
    b, t0 = _pick(sc, rng, 0.25, 0.8)
    p0, p1, u, L = _axis(b)
    pb = p0 + t0 * L * u
    phi = rng.uniform(-0.7, 0.7)  # transverse .. oblique
    n = np.array([u[0] * np.cos(phi) - u[1] * np.sin(phi), u[0] * np.sin(phi) + u[1] * np.cos(phi)])
    rpx = (b.r0 + (b.r1 - b.r0) * t0) * size
    jag, ph = rng.uniform(0.3, 1.2) * (0.5 + sev), rng.uniform(0, 6.3)
    sc.bones.remove(b)
    if sev < 0.35:  # incomplete hairline crack from one cortex
        frac = 0.35 + 0.65 * sev / 0.35
        r_u = rpx / size / max(np.cos(phi), 0.5)
        side = rng.choice([-1.0, 1.0])
        qmin = r_u * (1 - 2 * frac)
        cut = Cut(tuple(pb), tuple(n * side), 0.7 + 1.8 * sev, "crack", qmin=qmin, jag=jag * 0.5, phase=ph,
                  band=max(3.0, 0.35 * rpx))
        sc.bones.append(replace(b, cut=cut))
        return
    gap = 1.0 + 4.0 * sev
    band = gap / 2 + max(3.0, 0.35 * rpx)
    prox = replace(b, cut=Cut(tuple(pb), tuple(n), gap, "neg", jag=jag, phase=ph, band=band))
    dist = replace(b, cut=Cut(tuple(pb), tuple(n), gap, "pos", jag=jag, phase=ph, band=band))
    delta = rng.choice([-1, 1]) * (sev - 0.3) * rng.uniform(0.3, 1.4) * rpx / size * 2
    L_d = (1 - t0) * L
    ang = delta / max(L_d, 1e-3)  # rotate the distal fragment about its far end: angulation + shift
    short = -u * max(sev - 0.6, 0) * rpx / size * 1.5  # overriding fragments when severe
    dist = move_bone(dist, tuple(p1), float(ang), tuple(short))
    sc.bones += [prox, dist]
    # Soft-tissue swelling at the break.
    sc.soft.append((tuple(pb - u * 0.02), tuple(pb + u * 0.02), rpx / size * (2.2 + sev), rpx / size * 2.2))


def _dislocation(sc: Scene, sev: float, rng: np.random.Generator, size: int) -> PostOp:
    names = sorted(sc.joints)
    j = sc.joints[names[int(rng.integers(len(names)))]]
    ang = rng.uniform(0, 2 * np.pi)
    mag = j.radius * (0.35 + 0.6 * sev)
    shift = (mag * np.cos(ang), mag * np.sin(ang))
    rot = rng.uniform(-0.25, 0.25) * sev
    sc.bones = [move_bone(b, j.center, rot, shift) if b.name in j.distal else b for b in sc.bones]
    c0 = np.asarray(j.center) * size
    c1 = c0 + np.asarray(shift) * size

    def post(cv: Canvas) -> None:
        m = np.zeros_like(cv.mask)
        rad = int(round(j.radius * size * 0.9))
        for c in (c0, c1):
            cv2.circle(m, (int(c[0]), int(c[1])), rad, 1, -1)
        cv.mask |= m & (cv.cort > 0.3).astype(np.uint8)
    return post


def _lytic(sc: Scene, sev: float, rng: np.random.Generator, size: int) -> PostOp:
    b, t0 = _pick(sc, rng, 0.2, 0.85)
    p0, p1, u, L = _axis(b)
    r = (b.r0 + (b.r1 - b.r0) * t0) * size
    c = (p0 + t0 * L * u) * size + np.array([-u[1], u[0]]) * r * rng.uniform(-0.3, 0.3)
    ax = (max(r * rng.uniform(0.45, 0.8) * (0.6 + 0.4 * sev), 2.0), max(r * rng.uniform(0.8, 2.2) * (0.5 + 0.5 * sev), 2.5))
    angle = float(np.degrees(np.arctan2(u[1], u[0])))
    depth = 0.55 + 0.4 * sev
    rim = rng.random() < 0.5

    def post(cv: Canvas) -> None:
        m = np.zeros_like(cv.mask)
        cv2.ellipse(m, (tuple(float(v) for v in c), (2 * ax[1], 2 * ax[0]), angle), 1, -1)
        hole = cv2.GaussianBlur(m.astype(np.float32), (0, 0), 1.0)
        if rim:  # thin sclerotic margin of a slow-growing lesion
            ring = cv2.dilate(m, np.ones((3, 3), np.uint8)) - m
            cv.cort += ring * (cv.med > 0) * 1.5
        cv.med *= 1 - depth * hole
        cv.cort *= 1 - 0.5 * depth * hole
        cv.mask |= m & ((cv.cort + cv.med) > 0.3).astype(np.uint8)
    return post


def _implant(sc: Scene, sev: float, rng: np.random.Generator, size: int) -> PostOp:
    b, t0 = _pick(sc, rng, 0.3, 0.7)
    p0, p1, u, L = _axis(b)
    w = np.array([-u[1], u[0]])
    r = (b.r0 + (b.r1 - b.r0) * t0) * size
    c = (p0 + t0 * L * u) * size
    thin = r < 0.03 * size * 1.5 or rng.random() < 0.25
    items = []  # (p, q, width px, path px)
    if thin:  # K-wires across the bone / joint
        for _ in range(int(rng.integers(1, 3))):
            a = rng.uniform(-0.4, 0.4)
            d = u * np.cos(a) + w * np.sin(a)
            half = L * size * rng.uniform(0.25, 0.45)
            off = w * rng.uniform(-0.3, 0.3) * r
            items.append((c + off - d * half, c + off + d * half, max(1.5, 0.15 * r), 0.03 * size))
    else:  # plate on one cortex with screws across
        side = rng.choice([-1, 1])
        half = L * size * rng.uniform(0.12, 0.25) * (0.8 + 0.4 * sev)
        pc = c + side * w * r * 1.05
        items.append((pc - u * half, pc + u * half, 0.28 * r, 0.02 * size))
        k = int(rng.integers(2, 4))
        for s in np.linspace(-0.8, 0.8, 2 * k):
            q = pc + u * half * s
            items.append((q - side * w * 0.05 * r, q - side * w * 2.1 * r, 0.2 * r, 0.035 * size))

    def post(cv: Canvas) -> None:
        m = np.zeros((cv.size, cv.size), np.float32)
        for p, q, wd, path in items:
            tmp = np.zeros_like(m)
            cv2.line(tmp, tuple(int(v * 4) for v in p), tuple(int(v * 4) for v in q), 1.0,
                     max(int(round(wd)), 1), cv2.LINE_AA, shift=2)
            m = np.maximum(m, tmp * path)
        cv.metal += m
        cv.mask |= cv2.dilate((m > 0).astype(np.uint8), np.ones((5, 5), np.uint8))
    return post


def _arthritis(sc: Scene, sev: float, rng: np.random.Generator, size: int) -> PostOp:
    j = sc.joints["knee"]
    gap = (sc.bone("tibia").p0[1] - 0.005) - 0.51
    medial_left = rng.random() < 0.5
    narrow = gap * (0.25 + 0.6 * sev)
    tilt = (0.02 + 0.06 * sev) * (1 if medial_left else -1)
    sc.bones = [move_bone(b, j.center, tilt, (0.0, -narrow)) if b.name in j.distal else b for b in sc.bones]
    yj = 0.51 + (gap - narrow) / 2
    xs = []
    n_os = 1 + int(sev * 3.5)
    for k in range(n_os):  # osteophytes at the joint margins, femoral and tibial
        sx = rng.choice([-1, 1])
        x = 0.5 + sx * (0.125 + rng.uniform(0, 0.02))
        y = yj + rng.choice([-1, 1]) * rng.uniform(0.015, 0.035)
        ln = 0.012 + 0.03 * sev * rng.uniform(0.5, 1)
        sc.bones.append(Bone(f"osteophyte{k}", (x - sx * 0.01, y), (x + sx * ln, y + rng.uniform(-0.01, 0.01)),
                             0.012 * (0.5 + sev), 0.004, cortex=0.6, density=1.2))
        xs.append(x + sx * ln)
    scl = 0.4 + 1.2 * sev  # subchondral sclerosis: dense bands both sides of the joint line
    x0 = 0.5 - (0.09 if medial_left else -0.01)
    sc.bones.append(Bone("sclerosis_t", (x0, yj + 0.02), (x0 + 0.08, yj + 0.02), 0.012, 0.012, cortex=1.0, density=scl))
    sc.bones.append(Bone("sclerosis_f", (x0, yj - 0.025), (x0 + 0.08, yj - 0.025), 0.01, 0.01, cortex=1.0, density=scl * 0.8))
    xl, xr = min(xs + [0.36]) - 0.02, max(xs + [0.64]) + 0.02

    def post(cv: Canvas) -> None:
        box = np.array([[xl, yj - 0.06], [xr, yj - 0.06], [xr, yj + 0.06], [xl, yj + 0.06]]) * size
        m = np.zeros_like(cv.mask)
        cv2.fillPoly(m, [np.round(box).astype(np.int32)], 1)
        cv.mask |= m
    return post


def osteoporosis(sc: Scene, sev: float) -> PostOp:
    """Thin cortex in a wider shaft, slightly lower density; the caller sets the texture
    sparsity (sparse, coarse trabeculae). Mask: the bones.

    The shafts widen as the cortex thins (endosteal resorption, periosteal apposition), so
    the cortical index (cortex over shaft width) falls while the bone's overall mass, hence
    the image's global histogram, stays within the normal range (see ``patient_params``).
    """
    def edit(b: Bone) -> Bone:
        k = 1 + 0.15 * sev if b.name in sc.shafts else 1.0
        return replace(b, cortex=b.cortex * (1 - 0.5 * sev), density=b.density * (1 - 0.1 * sev),
                       r0=b.r0 * k, r1=b.r1 * k)
    sc.bones = [edit(b) if b.cortex < 0.99 else b for b in sc.bones]

    def post(cv: Canvas) -> None:
        cv.mask |= ((cv.cort + cv.med) > 0.5).astype(np.uint8)
    return post


def apply_finding(sc: Scene, finding: str, sev: float, rng: np.random.Generator, size: int) -> PostOp | None:
    """Edit the scene for ``finding``; returns a canvas edit to run after drawing, or None."""
    if finding == "fracture":
        _fracture(sc, sev, rng, size)
        return None
    fn = {"dislocation": _dislocation, "lytic_lesion": _lytic, "implant": _implant, "arthritis": _arthritis}[finding]
    return fn(sc, sev, rng, size)


def add_nutrient_canal(sc: Scene, pp: dict) -> None:
    """Normal variant mimicking a hairline fracture: an oblique lucent line through one cortex only."""
    if not sc.shafts:
        return
    b = sc.bone(sc.shafts[0])
    if b.cut is not None:
        return
    p0, p1, u, L = _axis(b)
    t0 = pp["nutrient_t"]
    pb = p0 + t0 * L * u
    r = b.r0 + (b.r1 - b.r0) * t0
    side = pp["nutrient_side"]
    w = np.array([-u[1], u[0]]) * side
    phi = 1.25  # very oblique to the axis
    n = np.array([u[0] * np.cos(phi) - u[1] * np.sin(phi), u[0] * np.sin(phi) + u[1] * np.cos(phi)])
    pc = pb + w * r * (1 - b.cortex / 2)
    # The crack spans only the cortex: a short stretch of the cut line around pc.
    span = b.cortex * r * 1.6
    sc.bones[sc.bones.index(b)] = replace(b, cut=Cut(tuple(pc), tuple(n), 0.9, "crack", qmin=-span, qmax=span))
