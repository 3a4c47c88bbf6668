"""Overlay and PDF report speed on realistic sizes (these run on every slider move / download).

Run:  python benchmarks/render_speed.py
Prints medians; the overlay should stay well under 100 ms at 2000 x 2000 so the intensity
slider feels immediate, and a two-view report well under a second.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import numpy as np  # noqa: E402

from test_report import NOW, make_result  # noqa: E402  (the report tests' result builder)
from xray_ai.outputs.overlay import Marker, render_overlay  # noqa: E402
from xray_ai.outputs.report import build_report  # noqa: E402


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    rng = np.random.default_rng(0)
    markers = [Marker(0.2, 0.3, "a"), Marker(0.7, 0.8, "b")]
    heat = np.zeros((7, 7), np.float32)
    heat[2:4, 3:5] = 1.0
    for size in (512, 2000):
        image = rng.random((size, size), np.float32)
        plain = median_ms(lambda: render_overlay(image, heat, 0.6, annotate=False), 20)
        full = median_ms(lambda: render_overlay(image, heat, 0.6, finding="finding", probability=0.9, markers=markers,
                                                      placeholder=True), 20)
        print(f"overlay {size}x{size}: colour only {plain:6.1f} ms, + annotations/markers/watermark {full:6.1f} ms")
    for size in (512, 2000):
        result = make_result(2, size=size)
        ms = median_ms(lambda: build_report(result, now=NOW), 5)
        print(f"PDF report, two {size} px views: {ms:6.1f} ms")


if __name__ == "__main__":
    main()
