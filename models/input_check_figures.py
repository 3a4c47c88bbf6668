"""The input-check figures of README "Input check": each shipped model on 100 fresh phantoms of
its own condition, the two real example radiographs, and a normal knee, chest and hand phantom.

    python models/input_check_figures.py
"""

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from xray_ai import XRay, analyze, load_image, phantoms  # noqa: E402
from xray_ai.serving.manager import ModelManager  # noqa: E402

manager = ModelManager(REPO / "model_registry.json", backend="tensorflow")
others = {
    "knee phantom": phantoms.generate("osteoporosis", abnormal=False, seed=777_001, size=224).image,
    "chest phantom": phantoms.generate("pneumonia", abnormal=False, seed=777_002, size=224).image,
    "hand phantom": phantoms.generate("msk_abnormality", abnormal=False, seed=777_003, size=224,
                                      body_part="hand").image,
}
real = {name: load_image(REPO / "examples" / f"{name}.png") for name in ("rg1_chest", "rg3_tibia")}
for mid, entry in manager.registry.models.items():
    loaded = manager.get(model_id=mid)
    check = loaded.input_check
    own = [XRay(phantoms.generate(entry.condition, abnormal=bool(i % 2), seed=800_000 + i, size=224).image)
           for i in range(100)]
    d = []
    for k in range(0, 100, 16):
        d += [v.input_checks[0][1] for v in analyze(own[k:k + 16], None, manager=manager, model_id=mid).views]
    parts = [f"{mid}: threshold {check.threshold:.2f}; 100 fresh own phantoms: median {np.median(d):.2f}, "
             f"flagged {sum(x > check.threshold for x in d)}/100"]
    for name, img in {**real, **{k: XRay(v) for k, v in others.items()}}.items():
        r = analyze(img, None, manager=manager, model_id=mid)
        bp = f", part {r.views[0].body_part.part}" if r.views[0].body_part else ""
        parts.append(f"{name} {r.views[0].input_checks[0][1]:.2f} (p={r.probability:.3f}{bp})")
    print("; ".join(parts), flush=True)
