"""Convert the input-check files `models/<id>.features.npz` from the old format (the full
1280 x 1280 float32 precision matrix, 6.1 MB) to the factored one (serving.input_check,
FactoredPrecision, ~1.3 MB), and measure what that changes. The figures of README
"Input-check files":

    python models/shrink_features.py                 # convert in place, then measure
    python models/shrink_features.py --dry-run       # measure only (writes to a temp dir)

Nothing is refitted: the mean and metadata (threshold included) are copied verbatim and the
stored precision matrix is factored. Per model it prints the old and new size, the
eigen-directions kept exactly, and, on (a) the images in examples/ (real radiographs and
phantoms of every condition, PNG and DICOM) and (b) `--phantoms` fresh phantoms of the
model's own condition (`python -m xray_ai phantoms`, a seed no training set used), the
largest relative change in distance (new / old - 1) and how many decisions (distance >
threshold) flip. A file already converted is compared against its last old-format version
in git history. Exit status 1 if a decision flips or a change exceeds `--tolerance`.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from xray_ai import load_image  # noqa: E402
from xray_ai.serving import input_check  # noqa: E402
from xray_ai.serving.artifacts import input_check_path  # noqa: E402

PHANTOM_SEED = 9001  # image k: seed 9001 * 1_000_003 + k; the shipped models' data used seeds 102-116


def _is_old_format(data: bytes) -> bool:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return "precision" in npz.files


def old_format_bytes(path: Path) -> tuple[bytes, str]:
    """The file's old-format content and where it came from: the file itself, else its latest
    old-format version in git history.

    Raises:
        LookupError: no old-format version anywhere.
    """
    data = path.read_bytes()
    if _is_old_format(data):
        return data, "working tree"
    rel = path.resolve().relative_to(REPO).as_posix()
    commits = subprocess.run(["git", "log", "--format=%H", "--", rel], cwd=REPO, check=True,
                             capture_output=True, text=True).stdout.split()
    for commit in commits:
        shown = subprocess.run(["git", "show", f"{commit}:{rel}"], cwd=REPO, capture_output=True)
        if shown.returncode == 0 and _is_old_format(shown.stdout):
            return shown.stdout, f"git {commit[:10]}"
    raise LookupError(f"{rel}: no old-format version in the working tree or git history")


def convert(old: bytes, out: Path) -> None:
    """Write the factored form of an old-format file's content to `out` (meta verbatim)."""
    with np.load(io.BytesIO(old), allow_pickle=False) as data:
        meta = str(data["meta"])
        mean = data["mean"]
        precision = data["precision"].astype(np.float64)
    info = json.loads(meta)
    dist = input_check.FeatureDistribution(mean, precision, float(info["threshold"]), float(info["percentile"]),
                                           int(info["n_fit"]), int(info["n_calibration"]), info["model_sha256"],
                                           str(info.get("source", "")))
    input_check.save(dist, out, meta=meta)


def example_images() -> dict[str, np.ndarray]:
    files = sorted(p for p in (REPO / "examples").iterdir() if p.suffix.lower() in (".png", ".dcm"))
    return {p.name: load_image(p).pixels for p in files}


def fresh_phantoms(condition: str, count: int, size: int, tmp: Path) -> list[np.ndarray]:
    from xray_ai.cli import main

    out = tmp / f"phantoms-{condition}"
    args = ["phantoms", "--condition", condition, "--count", str(count), "--out", str(out), "--layout", "folders",
            "--seed", str(PHANTOM_SEED), "--size", str(size)]
    if main(args) != 0:
        raise RuntimeError(f"python -m xray_ai {' '.join(args)} failed")
    images = sorted(p for p in out.rglob(f"{condition}_*.png") if p.stem[len(condition) + 1:].isdigit())  # no masks
    return [load_image(p).pixels for p in images]


def measure(reference: input_check.FeatureDistribution, new: input_check.FeatureDistribution,
            features: np.ndarray) -> tuple[float, int, float, float]:
    """(largest |new / old - 1|, decisions flipped, smallest |old - threshold| / threshold,
    relative change of the distances' `percentile`-th percentile: what a threshold set on
    these images would move by)."""
    old_d, new_d = reference.distances(features), new.distances(features)
    flips = int(np.sum((old_d > reference.threshold) != (new_d > new.threshold)))
    pct = reference.percentile
    return (float(np.max(np.abs(new_d / old_d - 1))), flips,
            float(np.min(np.abs(old_d - reference.threshold)) / reference.threshold),
            float(abs(np.percentile(new_d, pct) / np.percentile(old_d, pct) - 1)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", help="model ids (default: every registered model with a features file)")
    parser.add_argument("--phantoms", type=int, default=100, help="fresh phantoms of each model's condition")
    parser.add_argument("--dry-run", action="store_true", help="write the converted files to a temp dir only")
    parser.add_argument("--backend", default=None, help="ModelManager backend (default: its default)")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="largest relative change in distance accepted")
    args = parser.parse_args(argv)

    from xray_ai.analysis import pooled_features
    from xray_ai.serving.manager import ModelManager

    manager = ModelManager(backend=args.backend)
    examples = example_images()
    ok = True
    total_old = total_new = 0
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for model_id, entry in manager.registry.models.items():
            if args.models and model_id not in args.models or not entry.path:
                continue
            path = input_check_path(entry.resolve_path(manager.registry.base_dir))
            if not path.is_file():
                continue
            old, origin = old_format_bytes(path)
            target = tmp / path.name if args.dry_run else path
            convert(old, target)
            (tmp / "old.npz").write_bytes(old)
            reference, why_old = input_check.load(tmp / "old.npz", entry.sha256)
            new, why_new = input_check.load(target, entry.sha256)
            if reference is None or new is None:
                print(f"{model_id}: {why_old or why_new}", flush=True)
                ok = False
                continue
            loaded = manager.get(model_id=model_id)
            own = fresh_phantoms(entry.condition, args.phantoms, entry.input.height, tmp)
            ex = measure(reference, new, pooled_features(loaded, list(examples.values())))
            ph = measure(reference, new, pooled_features(loaded, own))
            new_size = target.stat().st_size
            total_old, total_new = total_old + len(old), total_new + new_size
            worst = max(ex[0], ph[0])
            ok &= worst <= args.tolerance and ex[1] == ph[1] == 0 and new.threshold == reference.threshold
            print(f"{model_id}: {len(old) / 1e6:.2f} MB ({origin}) -> {new_size / 1e6:.2f} MB, "
                  f"{len(new.precision.eigenvalues)} directions exact; threshold {new.threshold:.4f} "
                  f"(unchanged: {new.threshold == reference.threshold}); examples ({len(examples)}): max rel change "
                  f"{ex[0]:.1e}, {ex[1]} flips, closest {ex[2]:.2%} from the threshold; {len(own)} fresh "
                  f"{entry.condition} phantoms: max rel change {ph[0]:.1e}, {ph[1]} flips, closest {ph[2]:.2%}, "
                  f"their {reference.percentile:g}th percentile moves {ph[3]:.1e}",
                  flush=True)
            manager.clear()
    print(f"total: {total_old / 1e6:.1f} MB -> {total_new / 1e6:.1f} MB; "
          f"{'all within' if ok else 'NOT all within'} {args.tolerance:g} and no flips")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
