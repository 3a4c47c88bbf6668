"""The scope figures of README "Scope": how many real and non-radiograph images still get a
decision from the shipped models (target 0), and how many fresh in-scope phantoms of each
condition are assessable (target at least 98 of 100).

    python models/scope_figures.py
"""

import sys
from pathlib import Path

from pydicom.data import get_testdata_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from xray_ai import XRay, analyze, load_image, phantoms  # noqa: E402
from xray_ai.result import NOT_ASSESSABLE  # noqa: E402
from xray_ai.serving.manager import ModelManager  # noqa: E402

manager = ModelManager(REPO / "model_registry.json")
conditions = list(manager.registry.active_models)

# Real radiographs no model here was trained on (pydicom-data, MIT) and non-radiographs
# (pydicom's test files: CT, MR, ultrasound, RGB secondary capture), under every condition.
outside = [REPO / "examples" / "rg1_chest.dcm", REPO / "examples" / "rg3_tibia.dcm",
           REPO / "examples" / "rg1_chest.png", REPO / "examples" / "rg3_tibia.png"]
outside += [Path(get_testdata_file(n)) for n in ("CT_small.dcm", "MR_small.dcm", "US1_J2KR.dcm", "SC_rgb.dcm")]
decided = []
for path in outside:
    image = load_image(path)
    for condition in conditions:
        result = analyze(image, condition, manager=manager)
        if result.decision != NOT_ASSESSABLE:
            decided.append(f"{path.name} / {condition}: {result.decision} ({result.probability:.3f})")
print(f"real and non-radiograph images: {len(decided)} of {len(outside) * len(conditions)} results carry a decision"
      + "".join(f"\n  {d}" for d in decided), flush=True)

# Fresh in-scope phantoms (seeds no training, validation or test split used), one study each.
for condition in conditions:
    fresh = [XRay(phantoms.generate(condition, abnormal=bool(i % 2), seed=900_000 + i, size=224).image,
                  filename=f"{condition}-{i}.png") for i in range(100)]
    out = []
    for k in range(0, 100, 16):  # 16 views at a time; each view's scope is its own
        out += analyze(fresh[k:k + 16], condition, manager=manager).views
    reasons = sorted({r.split(": ", 1)[1].split(" (")[0] for v in out for r in v.scope_reasons})
    print(f"{condition}: {sum(v.assessable for v in out)}/100 fresh phantoms assessable"
          + (f"; reasons: {reasons}" if reasons else ""), flush=True)
