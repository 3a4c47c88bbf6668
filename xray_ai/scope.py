"""Is a view in the scope of the model that reads it? The scope gate of the analysis pipeline.

A classifier answers every input, confidently or not; an answer on an image it was never
meant to read is worse than none. So before a result carries a decision, each view is
checked, and a view is out of scope (not assessable) when:

- its DICOM Modality is not a projection radiograph: CR and DX are read; CT, MR, US, NM,
  PT, XA, MG, OT/SC and any other modality are refused, by name;
- it is a real colour image (a photograph, a colour Doppler frame), not gray in three
  channels (`metadata["colour"]`, set by the loader);
- the model's input check flags it as unlike its training images (xray_ai.serving.input_check);
- it is too small for the model: its shorter side under half the model's input;
- its body part is outside the condition's scope (the registry condition's `body_parts`):
  read from DICOM BodyPartExamined where that names a part, else from the model's
  auxiliary body-part head where it has one. A condition without `body_parts` reads any region.

Each reason is one plain sentence that names the file (its name, not its path). A study is assessable when at least
one of its views is (xray_ai.result.AnalysisResult). numpy-free, model-free: the pipeline
hands in what the model said.
"""

from __future__ import annotations

from collections.abc import Sequence

from xray_ai.images import XRay
from xray_ai.registry import Condition, InputSpec

__all__ = ["PROJECTION_MODALITIES", "view_scope_reasons", "dicom_body_parts"]

PROJECTION_MODALITIES = ("CR", "DX")

_MODALITY_NAMES = {
    "CT": "computed tomography",
    "MR": "magnetic resonance",
    "US": "ultrasound",
    "NM": "nuclear medicine",
    "PT": "positron emission tomography",
    "XA": "X-ray angiography",
    "RF": "fluoroscopy",
    "MG": "mammography",
    "OT": "other",
    "SC": "secondary capture",
    "IO": "intra-oral radiography",
    "PX": "panoramic dental radiography",
    "OP": "ophthalmic photography",
    "XC": "external-camera photography",
    "ES": "endoscopy",
    "SM": "slide microscopy",
}

# DICOM BodyPartExamined (PS3.16 CID 4031 code strings, and common variants) -> the body-part
# names the registry conditions use. Generic terms map to several parts: a view is in scope
# when all of them are, out when none is, and the body-part head decides when some are.
_UPPER_LIMB = ("shoulder", "humerus", "elbow", "forearm", "wrist", "hand", "finger")
_LOWER_LIMB = ("hip", "femur", "knee", "leg", "ankle", "foot")
_DICOM_PARTS: dict[str, tuple[str, ...]] = {
    "CHEST": ("chest",), "THORAX": ("chest",), "LUNG": ("chest",), "RIB": ("chest",),
    "SHOULDER": ("shoulder",), "CLAVICLE": ("shoulder",), "SCAPULA": ("shoulder",),
    "HUMERUS": ("humerus",), "ARM": ("humerus",), "UPPERARM": ("humerus",),
    "ELBOW": ("elbow",), "FOREARM": ("forearm",), "RADIUS": ("forearm",), "ULNA": ("forearm",),
    "WRIST": ("wrist",), "HAND": ("hand",), "FINGER": ("finger",), "THUMB": ("finger",),
    "HIP": ("hip",), "PELVIS": ("hip",), "FEMUR": ("femur",), "THIGH": ("femur",),
    "KNEE": ("knee",), "PATELLA": ("knee",), "LEG": ("leg",), "LOWERLEG": ("leg",),
    "TIBIA": ("leg",), "FIBULA": ("leg",), "ANKLE": ("ankle",), "FOOT": ("foot",), "TOE": ("foot",),
    "HEEL": ("foot",), "CALCANEUS": ("foot",),
    "SKULL": ("skull",), "HEAD": ("skull",), "FACE": ("skull",), "CSPINE": ("spine",),
    "TSPINE": ("spine",), "LSPINE": ("spine",), "SPINE": ("spine",), "ABDOMEN": ("abdomen",),
    "BREAST": ("breast",),
    "UPPEREXTREMITY": _UPPER_LIMB, "UPPERLIMB": _UPPER_LIMB, "UPEXM": _UPPER_LIMB,
    "LOWEREXTREMITY": _LOWER_LIMB, "LOWERLIMB": _LOWER_LIMB, "LOWEXM": _LOWER_LIMB,
    "EXTREMITY": _UPPER_LIMB + _LOWER_LIMB, "LIMB": _UPPER_LIMB + _LOWER_LIMB,
}


def dicom_body_parts(body_part_examined: str | None) -> tuple[str, ...] | None:
    """The registry body-part names a DICOM BodyPartExamined value stands for; None when the
    value is empty or not a term this table knows (nothing can be concluded from it)."""
    if not body_part_examined:
        return None
    key = "".join(ch for ch in str(body_part_examined).upper() if ch.isalnum())
    return _DICOM_PARTS.get(key)


def view_scope_reasons(
    view: XRay,
    condition: Condition,
    model_inputs: Sequence[InputSpec],
    input_checks: Sequence[tuple[str, float, float]] = (),
    head_part: tuple[str, float] | None = None,
) -> tuple[str, ...]:
    """Why a view is out of scope, one plain sentence per reason naming the file; () when in scope.

    Args:
        view: the loaded image (its metadata: modality, colour, body part).
        condition: the registry condition the study is read for (`body_parts`: its scope).
        model_inputs: the input size of each model that reads the view (one, or an
            ensemble's members); too small means under half the largest of them.
        input_checks: (model id, distance, threshold) per model with an input check.
        head_part: (part, probability) from the model's body-part head, or None.
    """
    name = view.name or "image"  # the file's name, not its path: folders often carry patient names
    meta = view.metadata
    reasons: list[str] = []

    modality = str(meta.get("modality") or "").strip().upper()
    if modality and modality not in PROJECTION_MODALITIES:
        what = _MODALITY_NAMES.get(modality)
        label = f"{modality} ({what})" if what else modality
        reasons.append(f"{name}: DICOM modality {label} is not a projection radiograph; "
                       f"the model reads {' and '.join(PROJECTION_MODALITIES)} radiographs only.")

    if meta.get("colour"):
        reasons.append(f"{name}: a colour image, not a radiograph (radiographs are grayscale).")

    for model_id, distance, threshold in input_checks:
        if distance > threshold:
            reasons.append(f"{name}: unlike the images {model_id} was trained on (input-check distance "
                           f"{distance:.2f}, above its threshold {threshold:.2f}).")

    if model_inputs:
        need = max(min(spec.height, spec.width) for spec in model_inputs)
        height, width = view.pixels.shape[:2]
        if min(height, width) * 2 < need:
            reasons.append(f"{name}: {width} x {height} px is too small for the model, which reads "
                           f"{need} x {need} px (at least {(need + 1) // 2} px on the shorter side).")

    reason = _body_part_reason(name, condition, meta.get("body_part"), head_part)
    if reason:
        reasons.append(reason)
    return tuple(reasons)


def _body_part_reason(name: str, condition: Condition, body_part_examined: str | None,
                      head_part: tuple[str, float] | None) -> str | None:
    allowed = condition.body_parts
    if allowed is None:  # any region
        return None
    scope = f"{condition.name} is read on {', '.join(allowed)}"
    parts = dicom_body_parts(body_part_examined)
    if parts is not None:
        inside = [p for p in parts if p in allowed]
        if len(inside) == len(parts):
            return None
        if not inside:
            return (f"{name}: body part {str(body_part_examined).strip()} (DICOM BodyPartExamined) is outside "
                    f"the condition's scope: {scope}.")
        # a generic term (e.g. EXTREMITY) that covers parts inside and outside: ask the head
    elif body_part_examined and str(body_part_examined).strip():
        unknown = str(body_part_examined).strip()
        if unknown.lower() not in allowed and head_part is None:
            return (f"{name}: body part {unknown} (DICOM BodyPartExamined) is not one the condition is read "
                    f"on: {scope}.")
    if head_part is not None:
        part, probability = head_part
        if part not in allowed:
            return (f"{name}: the model's body-part head reads a {part} ({probability:.0%}), outside the "
                    f"condition's scope: {scope}.")
    return None
