"""Video end to end: frames per second of `genguard_video` on a 60-second 720p clip at 1 and 5 sampled frames
per second, and decode + sampling as a share of the total.

    python -m genguard.benchmarks.video --build BUILD [--seconds 60] [--out benchmarks/results/video-NAME]

The clip is made at run time with PyAV from the sample photos (H.264 in MP4, 1280x720, 25 fps, each photo
held for 5 s and panned a pixel a frame, so every frame is coded; nothing downloaded). BUILD's cpu repository
is rendered and served by the real tritonserver; for each rate:

  end to end      Client.detect(clip, video_options={"fps": rate}): the clip sent over gRPC, decoded and sampled
                  in genguard_video's child process, every sampled frame answered by the `genguard` ensemble, the
                  clip's answer back. Frames/s = sampled frames / wall time.
  decode+sampling the same decode in the same bounded child (genguard.triton_models.video_decode.open_bounded:
                  process start, PyAV decode of every frame, sampling, PNG of each sampled frame), alone.
  share           decode+sampling / end to end.

One run per rate after a warm-up clip (a shared machine: see the figures' load average). Writes <out>.json, <out>.md.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

from genguard import protocol
from genguard.benchmarks import machine, report

SIZE, CLIP_FPS, HOLD_S = (1280, 720), 25, 5


def make_clip(seconds: int) -> bytes:
    import av
    from PIL import Image

    from genguard.export import samples

    photos = [Image.open(io.BytesIO(p)).convert("RGB") for p in samples.photos().values()]
    wide = [p.resize((SIZE[0] + 2 * CLIP_FPS * HOLD_S, SIZE[1])) for p in photos]  # room to pan
    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=CLIP_FPS)
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        for i in range(seconds * CLIP_FPS):
            source, step = wide[(i // (CLIP_FPS * HOLD_S)) % len(wide)], i % (CLIP_FPS * HOLD_S)
            frame = av.VideoFrame.from_image(source.crop((2 * step, 0, 2 * step + SIZE[0], SIZE[1])))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def decode_seconds(clip: bytes, rate: float) -> tuple[float, int]:
    from genguard import video
    from genguard.triton_models.video_decode import open_bounded

    started = time.perf_counter()
    _, frames = open_bounded(clip, sampling=video.Sampling(fps=rate, max_frames=1200))
    count = sum(1 for _ in frames)
    return time.perf_counter() - started, count


def end_to_end(url: str, clip: bytes, rate: float) -> tuple[float, dict]:
    from genguard.client import Client

    with Client(url, timeout=3600) as client:
        started = time.perf_counter()
        result = client.detect(clip, video_options={"fps": rate, "max_frames": 1200})[0]
        seconds = time.perf_counter() - started
    if not result.ok:
        raise RuntimeError(f"the clip failed: {result.error}")
    return seconds, result.video


def main(argv=None) -> int:
    from genguard import server
    from genguard.export import layout
    from genguard.export.repository import render

    parser = argparse.ArgumentParser(prog="python -m genguard.benchmarks.video", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    layout.add_build_arguments(parser, "every exported one")
    parser.add_argument("--seconds", type=int, default=60, help="clip length (default 60)")
    parser.add_argument("--rates", default="1,5", help="sampled frames per second to measure (default 1,5)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/video"))
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    about = machine.describe()
    started = time.perf_counter()
    clip = make_clip(args.seconds)
    print(f"clip: {len(clip)} bytes, {args.seconds} s 720p H.264 ({time.perf_counter() - started:.1f} s to encode)",
          flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="genguard-video-bench-") as tmp:
        repository = render("cpu", args.build, Path(tmp) / "repository",
                            detectors=[n for n in args.detectors.split(",") if n] or None)
        ports = server.Ports(*server.free_ports(3))
        log = Path(tmp) / "tritonserver.log"
        process = server.start(repository, Path(tmp) / "home", ports=ports, log_file=log)
        try:
            server.wait_ready(process, ports, timeout=600, log_file=log)
            url = f"{protocol.HOST}:{ports.grpc}"
            end_to_end(url, make_clip(2), 1.0)  # warm-up: first-run allocations in every model
            for rate in rates:
                decode_s, sampled = decode_seconds(clip, rate)
                try:
                    total_s, facts = end_to_end(url, clip, rate)
                except RuntimeError as exc:  # recorded, with the server's last words, and the other rates still run
                    tail = log.read_text(errors="replace").splitlines()[-15:]
                    print(f"rate {rate:g}: {exc}\n" + "\n".join(tail), flush=True)
                    rows.append({"rate": rate, "decode_sampling_s": round(decode_s, 2), "error": str(exc)[:300]})
                    continue
                row = {"rate": rate, "frames_sampled": facts["frames_sampled"], "frames_decoded": facts["frames_decoded"],
                       "end_to_end_s": round(total_s, 2), "frames_per_s": round(facts["frames_sampled"] / total_s, 3),
                       "decode_sampling_s": round(decode_s, 2), "decode_share": round(decode_s / total_s, 4)}
                assert sampled == facts["frames_sampled"], (sampled, facts)
                print(json.dumps(row), flush=True)
                rows.append(row)
        finally:
            server.stop_pid(process.pid)
    weights = {layout.read_parity(layout.onnx_folder(args.build, n))["weights"] for n in layout.exported(args.build)}
    meta = {"build": str(args.build), "clip": {"seconds": args.seconds, "size": list(SIZE), "fps": CLIP_FPS,
                                               "codec": "h264", "bytes": len(clip)},
            "weights": "/".join(sorted(weights)), "machine": about}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))
    return 0


def markdown(rows: list[dict], meta: dict) -> str:
    columns = [("rate", "sampled fps", "sig3"), ("frames_sampled", "frames", "int"),
               ("end_to_end_s", "end to end s", "sig3"), ("frames_per_s", "frames/s", "sig3"),
               ("decode_sampling_s", "decode+sampling s", "sig3"), ("decode_share", "decode+sampling share", "pct")]
    clip = meta["clip"]
    return "\n".join([
        f"# genguard_video end to end, cpu target ({meta['build']})", "",
        f"A {clip['seconds']} s {clip['size'][0]}x{clip['size'][1]} H.264 clip at {clip['fps']} fps "
        f"({clip['bytes']} bytes), made from the sample photos; {meta['weights']} weights.", "",
        report.markdown_table(rows, columns), "",
        *[f"- {row['rate']:g} sampled fps did not finish: {row['error']}" for row in rows if row.get("error")],
        "", machine.describe_markdown(meta["machine"]), ""])


if __name__ == "__main__":
    sys.exit(main())
