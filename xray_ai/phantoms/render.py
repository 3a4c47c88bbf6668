"""Drawing primitives and the X-ray projection for the phantoms.

Anatomy is drawn into a :class:`Canvas` of path-length maps (pixels of material
crossed by the beam): soft tissue, cortical bone, medullary (trabecular) bone and
metal. :func:`project` turns them into a radiograph: Beer-Lambert attenuation,
heel effect, collimation, scatter, quantum noise, detector blur, a lead L/R marker
and a display window (bone bright).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import cv2
import numpy as np

__all__ = ["Canvas", "Bone", "Cut", "draw_bone", "draw_soft", "draw_tubes", "draw_blob",
           "move_bone", "trabecular_texture", "project"]


@dataclass
class Canvas:
    """Path-length maps, float32 S x S, in pixels crossed by the beam; mask uint8 0/1 (the
    finding); outlines: named anatomy masks (uint8 0/1, e.g. a chest's heart and thorax),
    posed with the image but drawing nothing."""

    size: int
    soft: np.ndarray = field(init=False)
    cort: np.ndarray = field(init=False)
    med: np.ndarray = field(init=False)
    metal: np.ndarray = field(init=False)
    mask: np.ndarray = field(init=False)
    outlines: dict = field(init=False)

    def __post_init__(self) -> None:
        s = (self.size, self.size)
        self.soft = np.zeros(s, np.float32)
        self.cort = np.zeros(s, np.float32)
        self.med = np.zeros(s, np.float32)
        self.metal = np.zeros(s, np.float32)
        self.mask = np.zeros(s, np.uint8)
        self.outlines = {}


@dataclass(frozen=True)
class Cut:
    """A fracture surface through a bone (units: fractions of the canvas).

    ``mode`` 'pos' keeps the side the normal points to, 'neg' the other side,
    'crack' keeps both and removes a line of width ``gap`` where the tangential
    coordinate exceeds ``qmin`` (an incomplete fracture or a nutrient canal).
    """

    point: tuple[float, float]
    normal: tuple[float, float]
    gap: float  # pixels
    mode: str = "pos"
    qmin: float = -1e9  # units along the tangent
    qmax: float = 1e9
    jag: float = 0.0  # pixels
    phase: float = 0.0
    band: float = 0.0  # pixels of mask either side; 0 = no mask


@dataclass(frozen=True)
class Bone:
    """A tubular bone: capsule from p0 to p1 with epiphyseal flares (units of the canvas)."""

    name: str
    p0: tuple[float, float]
    p1: tuple[float, float]
    r0: float
    r1: float
    flare0: float = 0.0
    flare1: float = 0.0
    flare_len: float = 0.06
    cortex: float = 0.32  # cortical share of the radius in the shaft
    density: float = 1.0
    cut: Cut | None = None


def _rot(p: np.ndarray, c: np.ndarray, ang: float) -> np.ndarray:
    ca, sa = np.cos(ang), np.sin(ang)
    d = p - c
    return c + np.array([ca * d[0] - sa * d[1], sa * d[0] + ca * d[1]])


def move_bone(b: Bone, center: tuple[float, float], angle: float, shift: tuple[float, float]) -> Bone:
    """Rigidly move a bone (and its cut) by a rotation about ``center`` then a shift."""
    c, sh = np.asarray(center, float), np.asarray(shift, float)
    p0 = _rot(np.asarray(b.p0, float), c, angle) + sh
    p1 = _rot(np.asarray(b.p1, float), c, angle) + sh
    cut = b.cut
    if cut is not None:
        pt = _rot(np.asarray(cut.point, float), c, angle) + sh
        n = _rot(np.asarray(cut.normal, float), np.zeros(2), angle)
        cut = replace(cut, point=tuple(pt), normal=tuple(n))
    return replace(b, p0=tuple(p0), p1=tuple(p1), cut=cut)


def _capsule(size: int, p0, p1, r0, r1, flare0, flare1, flare_len, pad: float):
    """Local grid around a capsule: slices, t (0..1 along axis), rho^2 and radius r (pixels)."""
    p0 = np.asarray(p0, np.float32) * size
    p1 = np.asarray(p1, np.float32) * size
    r0, r1 = r0 * size, r1 * size
    rmax = max(r0, r1) * (1 + max(flare0, flare1)) + pad
    x0 = int(max(min(p0[0], p1[0]) - rmax, 0))
    x1 = int(min(max(p0[0], p1[0]) + rmax + 1, size))
    y0 = int(max(min(p0[1], p1[1]) - rmax, 0))
    y1 = int(min(max(p0[1], p1[1]) + rmax + 1, size))
    if x1 <= x0 or y1 <= y0:
        return None
    xs = np.arange(x0, x1, dtype=np.float32)[None, :] - p0[0]
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] - p0[1]
    v = p1 - p0
    length = float(np.hypot(*v)) or 1e-3
    u = v / length
    t = (xs * u[0] + ys * u[1]) / length
    d = xs * -u[1] + ys * u[0]
    tc = np.clip(t, 0.0, 1.0)
    fl = max(flare_len * size / length, 1e-3)
    prof = np.zeros_like(tc)
    if flare0:
        prof = prof + flare0 * np.exp(-(tc / fl) ** 2)
    if flare1:
        prof = prof + flare1 * np.exp(-((1 - tc) / fl) ** 2)
    r = (r0 + (r1 - r0) * tc) * (1 + prof)
    ex = (t - tc) * length
    rho2 = d * d + ex * ex
    sl = (slice(y0, y1), slice(x0, x1))
    return sl, rho2, r, prof, (x0, y0)


def _cut_weight(size: int, cut: Cut, origin, shape):
    """Soft keep-weight (0..1) of a cut on a local grid, and its mask band (bool) or None."""
    x0, y0 = origin
    xs = np.arange(x0, x0 + shape[1], dtype=np.float32)[None, :] - cut.point[0] * size
    ys = np.arange(y0, y0 + shape[0], dtype=np.float32)[:, None] - cut.point[1] * size
    n = np.asarray(cut.normal, np.float32)
    n = n / (np.hypot(*n) or 1.0)
    s = xs * n[0] + ys * n[1]
    q = xs * -n[1] + ys * n[0]
    if cut.jag:
        s = s - cut.jag * (np.sin(q * 0.9 + cut.phase) + 0.6 * np.sin(q * 2.3 + 2 * cut.phase))
    half = cut.gap / 2.0
    if cut.mode == "pos":
        w = np.clip(s - half + 0.5, 0, 1)
    elif cut.mode == "neg":
        w = np.clip(-s - half + 0.5, 0, 1)
    else:
        qs = q / size
        inside = np.clip((qs - cut.qmin) * size + 0.5, 0, 1) * np.clip((cut.qmax - qs) * size + 0.5, 0, 1)
        w = 1 - np.clip(half - np.abs(s) + 0.5, 0, 1) * inside
    band = (np.abs(s) <= cut.band) if cut.band > 0 else None
    return w, band


def draw_bone(cv: Canvas, b: Bone) -> None:
    """Add a bone's cortical and medullary path lengths (and its fracture mask) to the canvas."""
    g = _capsule(cv.size, b.p0, b.p1, b.r0, b.r1, b.flare0, b.flare1, b.flare_len, 3.0)
    if g is None:
        return
    sl, rho2, r, prof, origin = g
    outer = 2 * np.sqrt(np.maximum(r * r - rho2, 0))
    pmax = max(b.flare0, b.flare1, 1e-3)
    ri = r * (1 - b.cortex * (1 - 0.65 * np.minimum(prof / pmax, 1)))
    inner = 2 * np.sqrt(np.maximum(ri * ri - rho2, 0))
    if b.cut is not None:
        w, band = _cut_weight(cv.size, b.cut, origin, outer.shape)
        outer, inner = outer * w, inner * w
        if band is not None:
            cv.mask[sl] |= (band & (r * r - rho2 > 0)).astype(np.uint8)
    cv.cort[sl] += b.density * (outer - inner)
    cv.med[sl] += b.density * inner


def draw_soft(cv: Canvas, p0, p1, r0, r1, flare0=0.0, flare1=0.0, flare_len=0.08, add=False) -> None:
    """Soft-tissue capsule (elliptical cross-section); union with what is there (max)."""
    g = _capsule(cv.size, p0, p1, r0, r1, flare0, flare1, flare_len, 2.0)
    if g is None:
        return
    sl, rho2, r, _, _ = g
    th = 2 * np.sqrt(np.maximum(r * r - rho2, 0))
    if add:
        cv.soft[sl] += th
    else:
        np.maximum(cv.soft[sl], th, out=cv.soft[sl])


def draw_tubes(cv: Canvas, lines: list[np.ndarray], width: float, cortex: float = 0.35,
               density: float = 1.0) -> None:
    """Thin tubular bones (ribs, clavicles) along polylines given in canvas units."""
    if not lines:
        return
    m = np.zeros((cv.size, cv.size), np.uint8)
    pts = [np.round(np.asarray(p) * cv.size * 4).astype(np.int32) for p in lines]
    wpx = max(int(round(width * cv.size)), 2)
    cv2.polylines(m, pts, False, 1, thickness=wpx, lineType=cv2.LINE_8, shift=2)
    dt = cv2.distanceTransform(m, cv2.DIST_L2, 3)
    rad = wpx / 2.0
    rho = np.maximum(rad - dt, 0)
    outer = 2 * np.sqrt(np.maximum(rad * rad - rho * rho, 0)) * (m > 0)
    ri = rad * (1 - cortex)
    inner = 2 * np.sqrt(np.maximum(ri * ri - rho * rho, 0)) * (m > 0)
    cv.cort += density * (outer - inner)
    cv.med += density * inner


def draw_blob(mask: np.ndarray, depth: float, edge: float) -> np.ndarray:
    """Smooth path-length profile (pixels) of a filled uint8 mask: rises over ``edge`` px."""
    dt = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
    return (depth * np.sqrt(np.clip(dt / max(edge, 1.0), 0, 1))).astype(np.float32)


def trabecular_texture(rng: np.random.Generator, size: int, sparsity: float = 0.0) -> np.ndarray:
    """Trabecular pattern multiplier, float32 S x S, mean about 1 - 0.45 * sparsity."""
    n = rng.standard_normal((size, size)).astype(np.float32)
    n = cv2.GaussianBlur(n, (0, 0), 0.8 + 0.6 * sparsity)
    n /= n.std() + 1e-6
    thr = -0.8 + 1.4 * sparsity
    tex = 1.0 / (1.0 + np.exp(-(n - thr) * (1.2 + 1.5 * sparsity)))
    return (tex * 1.15).astype(np.float32)


_FONT = cv2.FONT_HERSHEY_SIMPLEX


def project(cv: Canvas, rng: np.random.Generator, *, mu_soft: float = 2.2, mu_cort: float = 30.0,
            mu_med: float = 5.0, lead_marker: bool = True) -> np.ndarray:
    """Radiograph from path-length maps (already in the detector frame).

    Returns:
        float32 S x S in [0, 1], bone bright.
    """
    s = cv.size
    inv = 1.0 / s
    att = (mu_soft * inv) * cv.soft + (mu_cort * inv) * cv.cort + (mu_med * inv) * cv.med \
        + (60.0 * inv) * cv.metal
    # Lead marker: an 'L' or 'R' near a corner, opaque.
    if lead_marker:
        ch = "L" if rng.random() < 0.5 else "R"
        scale = s / 256 * rng.uniform(0.7, 1.0)
        x = int(rng.uniform(0.05, 0.8) * s)
        y = int(rng.choice([rng.uniform(0.1, 0.16), rng.uniform(0.9, 0.95)]) * s)
        mk = np.zeros((s, s), np.uint8)
        cv2.rectangle(mk, (x - 2, y - int(22 * scale)), (x + int(20 * scale), y + 3), 1, -1)
        att += mk * 0.35
        mk[:] = 0
        cv2.putText(mk, ch, (x, y), _FONT, scale * 0.8, 1, max(int(2 * scale), 1), cv2.LINE_AA)
        att += mk * 3.0
    # Heel effect: primary intensity falls off along the anode-cathode axis.
    yy, xx = np.ogrid[0:s, 0:s]
    ang = rng.uniform(0, 2 * np.pi)
    heel = 1.0 + rng.uniform(0.05, 0.2) * ((xx * np.cos(ang) + yy * np.sin(ang)) * inv - 0.5)
    # Collimation: a slightly rotated rectangle of open field.
    field_ = np.zeros((s, s), np.uint8)
    if rng.random() < 0.7:
        m = rng.uniform(0.0, 0.07, 4) * s
        c = (s / 2 + (m[1] - m[0]) / 2, s / 2 + (m[3] - m[2]) / 2)
        box = cv2.boxPoints((c, (s - m[0] - m[1], s - m[2] - m[3]), rng.uniform(-4, 4)))
        cv2.fillPoly(field_, [np.round(box).astype(np.int32)], 1)
    else:
        field_[:] = 1
    prim = heel * (0.02 + 0.98 * field_) * np.exp(-att)
    # Scatter: a broad blur of the transmitted fluence, cheaply at low resolution.
    small = cv2.resize(prim.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)
    scat = cv2.resize(cv2.GaussianBlur(small, (0, 0), 3.0), (s, s), interpolation=cv2.INTER_LINEAR)
    sf = rng.uniform(0.05, 0.3)
    total = (1 - sf) * prim + sf * scat
    # Quantum noise: Poisson-like, relative size set by the exposure (photons per pixel).
    n0 = rng.uniform(400, 4000)
    noisy = total + np.sqrt(np.maximum(total, 1e-4) / n0) * rng.standard_normal((s, s)).astype(np.float32)
    noisy = cv2.GaussianBlur(noisy.astype(np.float32), (0, 0), rng.uniform(0.4, 0.8))
    logsig = -np.log(np.maximum(noisy, 1e-3))
    # Display window from percentiles of the open field (as CR/DX processing does).
    sub = logsig[::3, ::3][field_[::3, ::3] > 0]
    lo, hi = np.percentile(sub, [rng.uniform(0.2, 3), rng.uniform(97.0, 99.9)])
    img = (logsig - lo) / max(hi - lo, 1e-3)
    img = np.clip(img, 0, 1) ** rng.uniform(0.75, 1.35)
    if rng.random() < 0.5:  # unsharp-mask edge enhancement
        img = img + rng.uniform(0.2, 0.7) * (img - cv2.GaussianBlur(img, (0, 0), 2.0))
    # Tone processing, as CR/DX consoles do: blend with a histogram-equalised rendering.
    # It also keeps global brightness from giving the label away.
    eq = cv2.equalizeHist(np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)).astype(np.float32) / 255
    a = rng.uniform(0.4, 0.85)
    img = (1 - a) * np.clip(img, 0, 1) + a * eq
    if rng.random() < 0.3:  # some processors blacken the shutter
        img = img * (field_ > 0)
    return np.clip(img, 0, 1).astype(np.float32)
