"""What reading provenance costs per image, in-process, on the same real photos with and without an
embedded C2PA manifest, against the ensemble's time per image.

    python -m genguard.benchmarks.provenance                       # ensemble time from results/compare-fp32.json
    python -m genguard.benchmarks.provenance --ensemble-ms 943     # or a figure you measured

Images: the scikit-image photos the parity checks use, as JPEG (quality 90) and PNG, each also signed
with a C2PA manifest (c2pa-python's Builder, ES256, a test CA made for the run; needs `cryptography`,
a test dependency) and validated against that CA as the trust anchor. Each image is extracted `--repeats`
times (after one warm-up pass), timed as preprocess/validate call it (the image's extent found, then
extracted); per-call times give median and p99. Share = median extraction time /
ensemble time per image (the served full-size ensemble's best throughput, from the committed
`compare-fp32.json` unless --ensemble-ms). Target: <= 2 % for images without C2PA.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from . import machine, report

RESULTS = Path(__file__).resolve().parent / "results"


def ensemble_ms_from_results() -> float:
    """1000 / the served ensemble's best images per second in the committed compare-fp32 run."""
    data = json.loads((RESULTS / "compare-fp32.json").read_text())
    row = next(r for r in data["summary"] if r["detector"] == "ensemble")
    return 1000.0 / float(row["served_images_per_s"])


def images() -> tuple[dict[str, dict[str, bytes]], str]:
    from PIL import Image

    from genguard.export import samples
    from genguard.provenance.testing import make_ca, sign

    ca = make_ca("GenGuard Benchmark")
    sets: dict[str, dict[str, bytes]] = {"no C2PA": {}, "C2PA": {}}
    for name, data in list(samples.photos().items())[:8]:
        rgb = Image.open(io.BytesIO(data)).convert("RGB")
        for fmt, mime in (("JPEG", "image/jpeg"), ("PNG", "image/png")):
            buf = io.BytesIO()
            rgb.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
            sets["no C2PA"][f"{name}.{fmt.lower()}"] = buf.getvalue()
            sets["C2PA"][f"{name}.{fmt.lower()}"] = sign(buf.getvalue(), mime, ca.signer())
    return sets, ca.pem


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def measure(repeats: int) -> dict:
    from genguard.preprocess import encoded_extent
    from genguard.provenance import Extractor, ProvenanceConfig

    sets, anchors = images()
    extractor = Extractor(ProvenanceConfig(trust_anchors=anchors))
    out = {}
    for label, imgs in sets.items():
        for data in imgs.values():  # warm-up (imports, the c2pa context)
            extractor.extract(data)
        times = []
        for _ in range(repeats):
            for data in imgs.values():
                start = time.perf_counter()  # as the served steps call it: the image's extent, then extract
                extractor.extract(encoded_extent(data))
                times.append((time.perf_counter() - start) * 1000)
        states = {(r["c2pa"] or {}).get("state") or "absent" for r in map(extractor.extract, imgs.values())}
        out[label] = {"images": len(imgs), "calls": len(times), "median_ms": statistics.median(times),
                      "p99_ms": percentile(times, 99), "mean_ms": statistics.fmean(times),
                      "mean_bytes": statistics.fmean(len(d) for d in imgs.values()), "c2pa_states": sorted(states)}
    return out


def markdown(result: dict) -> str:
    lines = ["# Provenance extraction cost", "",
             f"Command: `{result['command']}`  ",
             f"Run: {result['started']}; {result['repeats']} repeats of each image after a warm-up pass; "
             f"ensemble time per image {result['ensemble_ms']:.0f} ms ({result['ensemble_source']}).", "",
             "## Machine", "", machine.describe_markdown(result["machine"]), "",
             "## Per image", ""]
    rows = []
    for label, row in result["sets"].items():
        share = row["median_ms"] / result["ensemble_ms"]
        rows.append({**row, "label": label, "kib": row["mean_bytes"] / 1024, "states": ", ".join(row["c2pa_states"]),
                     "share": share, "target": ("≤ 2 %: " + ("met" if share <= 0.02 else "NOT met"))
                     if label == "no C2PA" else "—"})
    columns = [("label", "images", ""), ("images", "count", "int"), ("kib", "mean size KiB", ".0f"),
               ("states", "C2PA state", ""), ("median_ms", "median ms", ".3f"), ("p99_ms", "p99 ms", ".3f"),
               ("share", "share of ensemble (median)", "pct"), ("target", "target", "")]
    return "\n".join([*lines, report.markdown_table(rows, columns)]) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genguard.benchmarks.provenance", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--ensemble-ms", type=float, default=None,
                        help="ensemble time per image (default: from results/compare-fp32.json)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.ensemble_ms:
        ensemble_ms, source = args.ensemble_ms, "--ensemble-ms"
    else:
        ensemble_ms, source = ensemble_ms_from_results(), "served full-size ensemble, results/compare-fp32.json"
    result = {"command": "python -m genguard.benchmarks.provenance " + " ".join(argv or sys.argv[1:]),
              "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"), "repeats": args.repeats,
              "ensemble_ms": ensemble_ms, "ensemble_source": source, "machine": machine.describe(),
              "sets": measure(args.repeats)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "provenance.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "provenance.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
