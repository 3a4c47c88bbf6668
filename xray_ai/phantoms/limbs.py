"""Limb anatomy: the seven MURA upper-extremity parts and the knee.

Each builder returns a :class:`Scene` in canvas units (0..1, y down) before the
global rotation/scale/shift of the exposure. Per-patient proportions come from a
dict ``pp`` drawn once per patient, so all views of a study show the same person.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from .render import Bone, Canvas, Cut, draw_blob, draw_bone, draw_soft, draw_tubes

__all__ = ["Scene", "Joint", "build_limb", "render_scene", "patient_params", "PART_VIEWS"]

PART_VIEWS = {
    "finger": ("PA", "lateral", "oblique"),
    "hand": ("PA", "oblique", "lateral"),
    "wrist": ("PA", "lateral", "oblique"),
    "forearm": ("AP", "lateral"),
    "elbow": ("AP", "lateral"),
    "humerus": ("AP", "lateral"),
    "shoulder": ("AP", "axial"),
    "knee": ("AP", "lateral"),
}
_SPREAD = {"PA": 1.0, "AP": 1.0, "oblique": 0.6, "lateral": 0.25, "axial": 0.8}


@dataclass
class Joint:
    center: tuple[float, float]
    distal: tuple[str, ...]  # bone names that move when the joint dislocates
    radius: float


@dataclass
class Scene:
    part: str
    view: str
    bones: list[Bone] = field(default_factory=list)
    soft: list[tuple] = field(default_factory=list)  # draw_soft arguments
    tubes: list[tuple] = field(default_factory=list)  # (polylines, width, density)
    air: list[np.ndarray] = field(default_factory=list)  # polygons of lung air
    joints: dict[str, Joint] = field(default_factory=dict)
    shafts: list[str] = field(default_factory=list)  # bones fit for fracture/lesion/implant

    def bone(self, name: str) -> Bone:
        return next(b for b in self.bones if b.name == name)


def patient_params(rng: np.random.Generator) -> dict:
    """Per-patient proportions (normal variation).

    Bone density spans 0.65-1.35 so that it overlaps what osteoporosis does to it: global
    brightness must not tell osteoporotic knees from normal ones, cortical thickness
    relative to shaft width and the trabecular pattern must.
    """
    return {
        "rad": rng.uniform(0.85, 1.15), "len": rng.uniform(0.92, 1.08),
        "soft": rng.uniform(0.7, 1.5), "density": rng.uniform(0.65, 1.35),
        "cortex": rng.uniform(0.24, 0.42), "sparsity": rng.uniform(0.0, 0.3),
        "gap": rng.uniform(0.85, 1.25), "finger": int(rng.integers(0, 5)),
        "bend": rng.uniform(-0.08, 0.08, 20), "nutrient": rng.random() < 0.35,
        "nutrient_t": rng.uniform(0.3, 0.7), "nutrient_side": rng.choice([-1, 1]),
        "sesamoid": rng.random() < 0.5,
    }


def _chain(sc: Scene, prefix: str, start, ang: float, lengths, radii, flares, bends, gap=0.018):
    """Bones end to end from ``start`` along angle ``ang`` (radians, 0 = up); joints between."""
    p = np.asarray(start, float)
    for i, (ln, r) in enumerate(zip(lengths, radii)):
        ang += bends[i]
        d = np.array([np.sin(ang), -np.cos(ang)])
        q = p + d * ln
        name = f"{prefix}{i}"
        sc.bones.append(Bone(name, tuple(p), tuple(q), r, r * 0.85, flare0=flares[i][0],
                             flare1=flares[i][1], flare_len=ln * 0.18))
        if i + 1 < len(lengths):
            jc = q + d * gap / 2
            sc.joints[name] = Joint(tuple(jc), tuple(f"{prefix}{k}" for k in range(i + 1, len(lengths))),
                                    r * 1.8)
        p = q + d * gap
    return p


def _hand(pp: dict, view: str) -> Scene:
    sc = Scene("hand", view)
    sp, R, Lf = _SPREAD[view], pp["rad"], pp["len"]
    X = lambda x: 0.48 + (x - 0.48) * sp  # noqa: E731  bones side by side overlap in lateral views
    sc.bones += [Bone("radius", (X(0.40), 1.3), (X(0.40), 0.935), 0.042 * R, 0.045 * R, flare1=0.55, flare_len=0.05),
                 Bone("ulna", (X(0.57), 1.3), (X(0.565), 0.955), 0.026 * R, 0.026 * R, flare1=0.3, flare_len=0.03)]
    carp = [("scaphoid", 0.405, 0.87, 0.03, 0.5), ("lunate", 0.465, 0.88, 0.024, 0.0),
            ("triquetrum", 0.52, 0.865, 0.022, 0.2), ("pisiform", 0.545, 0.855, 0.015, 0.0),
            ("trapezium", 0.365, 0.805, 0.022, 0.3), ("trapezoid", 0.415, 0.80, 0.018, 0.0),
            ("capitate", 0.465, 0.80, 0.024, 1.4), ("hamate", 0.52, 0.80, 0.022, 1.2)]
    for name, x, y, r, e in carp:
        dy = 0.012 * e
        sc.bones.append(Bone(name, (X(x), y - dy), (X(x), y + dy), r * R, r * R, cortex=0.25))
    bases = [(0.375, 0.775), (0.425, 0.755), (0.47, 0.75), (0.515, 0.755), (0.555, 0.77)]
    angs = [-0.75, -0.14, -0.02, 0.1, 0.24]
    mlen = [0.17, 0.25, 0.24, 0.22, 0.20]
    plen = [(0.10, 0.0, 0.07), (0.14, 0.085, 0.06), (0.155, 0.095, 0.065), (0.145, 0.09, 0.06), (0.115, 0.07, 0.055)]
    for f in range(5):
        b = pp["bend"][4 * f:4 * f + 4] * 0.5
        L = [mlen[f] * Lf] + [v * Lf for v in plen[f] if v]
        radii = [0.017 * R, 0.016 * R, 0.0135 * R, 0.0115 * R][:len(L)]
        flares = [(0.25, 0.45), (0.35, 0.3), (0.3, 0.25), (0.3, 0.4)][:len(L)]
        if f == 0:
            radii = [0.019 * R, 0.017 * R, 0.014 * R]
            flares = [(0.3, 0.4), (0.35, 0.3), (0.3, 0.4)]
        a = angs[f] * (0.5 + 0.5 * sp)
        end = _chain(sc, f"ray{f}_", (X(bases[f][0]), bases[f][1]), a, L, radii, flares, b)
        start = np.array([X(bases[f][0]), bases[f][1]])
        sc.soft.append((tuple(start), tuple(end), 0.034 * R * (1.2 if f == 0 else 1), 0.026 * R))
        sc.shafts += [f"ray{f}_0", f"ray{f}_1"]
    sc.soft += [((0.47, 1.3), (0.47, 0.9), 0.13, 0.12), ((0.47, 0.92), (X(0.49), 0.55), 0.12, 0.135 * sp + 0.03)]
    sc.joints["radiocarpal"] = Joint((X(0.44), 0.90), tuple(n for n, *_ in carp)
                                     + tuple(b.name for b in sc.bones if b.name.startswith("ray")), 0.06)
    sc.shafts += ["radius"]
    if pp["sesamoid"]:
        sc.bones.append(Bone("sesamoid", (X(0.29), 0.605), (X(0.29), 0.61), 0.008, 0.008, cortex=0.4))
    return sc


def _zoom(sc: Scene, center, factor: float, part: str, keep_shafts=None) -> Scene:
    """Magnify a scene about ``center`` onto the canvas centre (wrist and finger views of a hand)."""
    c = np.asarray(center, float)
    f = lambda p: tuple((np.asarray(p) - c) * factor + 0.5)  # noqa: E731
    out = Scene(part, sc.view)
    out.bones = [replace(b, p0=f(b.p0), p1=f(b.p1), r0=b.r0 * factor, r1=b.r1 * factor,
                         flare_len=b.flare_len * factor) for b in sc.bones]
    out.soft = [(f(a), f(b), r0 * factor, r1 * factor) for a, b, r0, r1 in sc.soft]
    out.joints = {k: Joint(f(j.center), j.distal, j.radius * factor) for k, j in sc.joints.items()}
    out.shafts = keep_shafts if keep_shafts is not None else sc.shafts
    return out


def build_limb(part: str, view: str, pp: dict) -> Scene:
    """Scene for ``part`` in ``view`` for the patient ``pp``."""
    R, S = pp["rad"], pp["soft"]
    sp = _SPREAD[view]
    X = lambda x: 0.5 + (x - 0.5) * sp  # noqa: E731
    if part == "hand":
        sc = _hand(pp, view)
    elif part == "wrist":
        sc = _zoom(_hand(pp, view), (0.47, 0.83), 1.9, "wrist")
        sc.shafts = ["radius", "ulna", "scaphoid", "ray1_0", "ray2_0"]
        sc.joints = {k: v for k, v in sc.joints.items() if k == "radiocarpal"}
    elif part == "finger":
        f = 1 + pp["finger"] % 4
        h = _hand(pp, view)
        b0, b3 = h.bone(f"ray{f}_0"), h.bone(f"ray{f}_3" if f else "ray0_2")
        mid = (np.asarray(b0.p1) * 0.7 + np.asarray(b3.p1) * 0.3)
        sc = _zoom(h, mid, 2.3, "finger", [f"ray{f}_{k}" for k in range(4)])
        sc.joints = {k: v for k, v in sc.joints.items() if k.startswith(f"ray{f}_")}
    elif part == "forearm":
        sc = Scene(part, view)
        sc.bones += [Bone("radius", (X(0.42), 0.0), (X(0.38), 0.98), 0.022 * R, 0.03 * R, 0.35, 0.5, 0.05),
                     Bone("ulna", (X(0.57), -0.04), (X(0.6), 0.98), 0.03 * R, 0.02 * R, 0.5, 0.3, 0.05)]
        sc.soft += [((0.5, -0.2), (0.5, 1.2), 0.16 * S, 0.12 * S)]
        sc.shafts = ["radius", "ulna"]
        sc.joints["radial_head"] = Joint((X(0.42), 0.0), ("radius",), 0.05)
    elif part == "elbow":
        sc = Scene(part, view)
        sc.bones.append(Bone("humerus", (0.5, -0.3), (0.5, 0.42), 0.042 * R, 0.045 * R, 0, 0.95 * sp + 0.3, 0.1))
        c, a = np.array([0.5, 0.5]), (0.0 if view == "AP" else 1.35)
        rot = lambda p: tuple(c + np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ (np.asarray(p) - c))  # noqa: E731
        sc.bones += [Bone("radius", rot((X(0.43), 0.535)), rot((X(0.40), 1.3)), 0.032 * R, 0.028 * R, 0.4, 0, 0.04),
                     Bone("ulna", rot((X(0.545), 0.47)), rot((X(0.57), 1.3)), 0.04 * R, 0.027 * R, 0.45, 0, 0.06)]
        sc.soft += [((0.5, -0.3), (0.5, 0.5), 0.2 * S, 0.21 * S), (rot((0.5, 0.5)), rot((0.5, 1.3)), 0.2 * S, 0.16 * S)]
        sc.joints["elbow"] = Joint((0.5, 0.49), ("radius", "ulna"), 0.09)
        sc.shafts = ["humerus", "radius", "ulna"]
    elif part == "humerus":
        sc = Scene(part, view)
        sc.bones += [Bone("humerus", (0.5, 0.1), (0.52, 0.9), 0.038 * R, 0.04 * R, 1.15, 0.8 * sp + 0.2, 0.08),
                     Bone("scapula", (0.3, 0.0), (0.33, 0.35), 0.04, 0.025, 0.6, 0, 0.05, cortex=0.2, density=0.6)]
        sc.soft += [((0.5, -0.1), (0.52, 1.1), 0.19 * S, 0.16 * S), ((0.1, -0.2), (0.15, 0.6), 0.3, 0.2)]
        sc.joints["shoulder"] = Joint((0.45, 0.1), ("humerus",), 0.09)
        sc.shafts = ["humerus"]
    elif part == "shoulder":
        sc = Scene(part, view)
        sc.bones += [Bone("humerus", (0.57, 0.43), (0.64, 1.3), 0.055 * R, 0.05 * R, 0.95, 0, 0.07),
                     Bone("glenoid", (0.45, 0.37), (0.45, 0.49), 0.028, 0.03, 0.3, 0.3, 0.03, cortex=0.3),
                     Bone("scapula", (0.42, 0.45), (0.25, 1.05), 0.07, 0.03, 0, 0, cortex=0.15, density=0.5),
                     Bone("acromion", (0.42, 0.27), (0.64, 0.29), 0.03, 0.025, 0.2, 0.3, 0.04, density=0.8),
                     Bone("clavicle", (-0.1, 0.12), (0.45, 0.25), 0.035, 0.03, 0, 0.4, 0.04),
                     Bone("coracoid", (0.42, 0.34), (0.5, 0.33), 0.018, 0.015, 0.2, 0.2, 0.02)]
        ribs = [np.array([[-0.05, 0.25 + 0.14 * i], [0.15, 0.22 + 0.14 * i], [0.3, 0.3 + 0.14 * i]]) for i in range(6)]
        sc.tubes.append((ribs, 0.022, 0.7))
        sc.air.append(np.array([[-0.1, 0.3], [0.28, 0.28], [0.34, 0.7], [0.3, 1.1], [-0.1, 1.1]]))
        sc.soft += [((0.3, -0.3), (0.3, 1.3), 0.55, 0.55), ((0.6, 0.3), (0.66, 1.3), 0.2 * S, 0.17 * S)]
        sc.joints["glenohumeral"] = Joint((0.52, 0.43), ("humerus",), 0.09)
        sc.shafts = ["humerus", "clavicle"]
    elif part == "knee":
        sc = Scene(part, view)
        g = 0.045 * pp["gap"]
        y_pl = 0.51 + g
        lat = view == "lateral"
        sc.bones += [Bone("femur", (0.5, -0.3), (0.5, 0.40), 0.065 * R, 0.07 * R, 0, 0.55, 0.08),
                     Bone("condyle_m", (X(0.415), 0.40), (X(0.415), 0.44), 0.07 * R, 0.07 * R, cortex=0.18),
                     Bone("condyle_l", (X(0.585), 0.40), (X(0.585), 0.44), 0.066 * R, 0.066 * R, cortex=0.18),
                     Bone("tibia", (0.5, y_pl + 0.005), (0.5, 1.3), 0.07 * R, 0.05 * R, 0.75, 0, 0.09,
                          cut=_flat(y_pl)),
                     Bone("plateau", (0.5 - 0.13 * R, y_pl + 0.004), (0.5 + 0.13 * R, y_pl + 0.004), 0.006, 0.006, cortex=1.0),
                     Bone("spine_m", (0.485, y_pl), (0.485, y_pl - 0.012), 0.008, 0.006, cortex=0.5),
                     Bone("spine_l", (0.515, y_pl), (0.515, y_pl - 0.01), 0.008, 0.006, cortex=0.5),
                     Bone("fibula", (X(0.67), y_pl + 0.06), (X(0.665), 1.3), 0.025 * R, 0.018 * R, 0.5, 0, 0.04),
                     Bone("patella", (0.32 if lat else 0.5, 0.32), (0.32 if lat else 0.5, 0.42), 0.05, 0.05,
                          cortex=0.2, density=0.75)]
        sc.soft += [((0.5, -0.3), (0.5, 1.3), 0.25 * S, 0.2 * S, 0, 0, 0.1)]
        sc.joints["knee"] = Joint((0.5, 0.51 + g / 2), ("tibia", "plateau", "spine_m", "spine_l", "fibula"), 0.16)
        sc.shafts = ["femur", "tibia", "fibula"]
    else:
        raise ValueError(f"unknown body part {part!r}")
    sc.bones = [replace(b, density=b.density * pp["density"], cortex=pp["cortex"] * b.cortex / 0.32)
                if b.cortex < 0.99 else b for b in sc.bones]
    return sc


def _flat(y: float):
    return Cut((0.5, y), (0.0, 1.0), 0.0, "pos")


def render_scene(sc: Scene, cv: Canvas) -> None:
    """Draw the scene's soft tissue, air, thin tubes and bones into the canvas."""
    for args in sc.soft:
        draw_soft(cv, *args)
    if sc.air:
        m = np.zeros((cv.size, cv.size), np.uint8)
        cv2.fillPoly(m, [np.round(a * cv.size).astype(np.int32) for a in sc.air], 1)
        cv.soft -= np.minimum(draw_blob(m, 0.3 * cv.size, 0.08 * cv.size), cv.soft * 0.8)
    for lines, width, dens in sc.tubes:
        draw_tubes(cv, lines, width, density=dens)
    for b in sc.bones:
        draw_bone(cv, b)
