"""The `genguard_video` model's decoding child: one clip decoded and sampled in its own process, bounded.

open_bounded() starts `python -m genguard.triton_models.video_decode`, which caps its own address space
(RLIMIT_AS, VideoLimits.max_memory_mb) and CPU time before it reads the clip, then streams the clip's facts and
each sampled frame as PNG (genguard.video.png: lossless) back over its stdout. The parent kills it when it has
had decode_timeout_s (+ a grace for start-up) to decode: wall time less the time the parent held its frames
(sending them to the detectors), during which the child waits on the full pipe. A decoder that loops inside one packet, balloons
or crashes therefore fails its clip (decode_timeout, decode_memory, decoder_crashed) and never the model, the
stub, or another clip. The in-process checks of genguard.video still run in the child and name the reason
first where they can.

Wire format, child -> parent: one JSON line per message; a frame's line is followed by its PNG bytes.
  {"clip": {...}}  {"t", "keyframe", "size"} + PNG ...  {"end": {...}}    or    {"error": {"reason", "message"}}
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

from genguard import video

GRACE_S = 10.0          # start-up (interpreter, imports) on a loaded machine, beyond decode_timeout_s
_STDERR_KEEP = 4096     # the child's last words kept for the failure message
# what running into RLIMIT_AS looks like when it happens outside the child's own MemoryError handler
_OUT_OF_MEMORY = ("MemoryError", "Cannot allocate memory", "failed to map segment", "bad_alloc")


def _send(out, message: dict, payload: bytes = b"") -> None:
    out.write(json.dumps(message).encode() + b"\n")
    if payload:
        out.write(payload)
    out.flush()


def _child() -> int:
    header = json.loads(sys.stdin.buffer.readline())
    limits = video.VideoLimits(**header["limits"])
    sampling = video.Sampling(**header["sampling"])
    cap = limits.max_memory_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    cpu = int((limits.decode_timeout_s + GRACE_S) * max(1, len(os.sched_getaffinity(0))))  # decoder threads add up
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    out = sys.stdout.buffer
    try:
        data = sys.stdin.buffer.read()
        # the time limit counts decoding and sampling, not the time spent waiting for the parent to take frames
        # (it sends each batch to the detectors first): timed here, and by the parent's watchdog
        clip, frames = video.open_clip(data, dataclasses.replace(limits, decode_timeout_s=float("inf")), sampling)
        del data
        _send(out, {"clip": {k: getattr(clip, k) for k in ("container", "codec", "width", "height", "duration_s",
                                                           "fps", "tags")}})
        busy, started = 0.0, time.monotonic()
        for frame in frames:
            png = video.png(frame.image)
            busy += time.monotonic() - started
            if busy > limits.decode_timeout_s:
                raise video.VideoRejected("decode_timeout", f"decoding took longer than {limits.decode_timeout_s:g} s")
            _send(out, {"t": frame.t, "keyframe": frame.keyframe, "size": len(png)}, png)
            started = time.monotonic()
        _send(out, {"end": {"frames_decoded": clip.frames_decoded, "duration_s": clip.duration_s, "fps": clip.fps}})
    except video.VideoRejected as exc:
        _send(out, {"error": {"reason": exc.reason, "message": str(exc)}})
    except MemoryError:
        _send(out, {"error": {"reason": "decode_memory", "message": f"decoding needed more than the "
                                                                    f"{limits.max_memory_mb} MB it may use"}})
    return 0


class _Child:
    def __init__(self, data: bytes, limits: video.VideoLimits, sampling: video.Sampling):
        self.limits = limits
        env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1"}  # glibc arenas count against AS
        self.proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env)
        self.killed_at_deadline = False
        self.started, self.paused, self.pause_start = time.monotonic(), 0.0, None
        self.done = threading.Event()
        threading.Thread(target=self._watchdog, daemon=True).start()
        self.stderr = b""
        header = json.dumps({"limits": dataclasses.asdict(limits), "sampling": dataclasses.asdict(sampling)}).encode()
        threading.Thread(target=self._feed, args=(header + b"\n", data), daemon=True).start()
        threading.Thread(target=self._drain, daemon=True).start()

    def active_s(self) -> float:
        """Seconds the child has had to decode: wall time less the time the caller held its frames."""
        now = time.monotonic()
        return now - self.started - self.paused - (now - self.pause_start if self.pause_start is not None else 0.0)

    def pause(self) -> None:
        self.pause_start = time.monotonic()

    def resume(self) -> None:
        self.paused += time.monotonic() - self.pause_start
        self.pause_start = None

    def _watchdog(self) -> None:
        while not self.done.wait(0.25):
            if self.active_s() > self.limits.decode_timeout_s + GRACE_S:
                self.killed_at_deadline = True
                self.proc.kill()
                return

    def _feed(self, header: bytes, data: bytes) -> None:
        try:
            self.proc.stdin.write(header)
            self.proc.stdin.write(data)
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):  # the child died (limits): its exit says why
            pass

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.stderr = (self.stderr + line)[-_STDERR_KEEP:]

    def read(self) -> tuple[dict, bytes]:
        line = self.proc.stdout.readline()
        if not line:
            raise self._died()
        message = json.loads(line)
        if "error" in message:
            raise video.VideoRejected(message["error"]["reason"], message["error"]["message"])
        payload = self.proc.stdout.read(message["size"]) if "size" in message else b""
        if "size" in message and len(payload) != message["size"]:
            raise self._died()
        return message, payload

    def _died(self) -> video.VideoRejected:
        code = self.proc.wait()
        if self.killed_at_deadline or code == -signal.SIGXCPU:
            return video.VideoRejected("decode_timeout", f"decoding took longer than {self.limits.decode_timeout_s:g} "
                                                         "s: the decoder was stopped")
        last = self.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        if any(word in last[0] for word in _OUT_OF_MEMORY):
            return video.VideoRejected("decode_memory", f"decoding needed more than the {self.limits.max_memory_mb} MB "
                                                        f"it may use: {last[0][:200]}")
        return video.VideoRejected("decoder_crashed", f"the decoder stopped (exit status {code}): {last[0][:200]}")

    def close(self) -> None:
        self.done.set()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()


def open_bounded(data: bytes, limits: video.VideoLimits = video.VideoLimits(),
                 sampling: video.Sampling = video.Sampling()) -> tuple[video.Clip, Iterator[tuple[video.Frame, bytes]]]:
    """genguard.video.open_clip() in a bounded child process: the clip's facts, and an iterator of (frame,
    its PNG) with frame.image None. Raises VideoRejected, from the facts or mid-way; closing the iterator (or
    reaching its end) ends the child."""
    if not data:  # refused before a process is started
        raise video.VideoRejected("empty", "empty input: no video bytes were sent")
    if len(data) > limits.max_bytes:
        raise video.VideoRejected("too_large", f"video is {len(data)} bytes, over the limit of {limits.max_bytes} bytes")
    child = _Child(data, limits, sampling)
    try:
        message, _ = child.read()
    except BaseException:
        child.close()
        raise
    clip = video.Clip(**message["clip"])

    def frames() -> Iterator[tuple[video.Frame, bytes]]:
        try:
            while True:
                message, png = child.read()
                if "end" in message:
                    clip.frames_decoded = message["end"]["frames_decoded"]
                    clip.duration_s = message["end"]["duration_s"]
                    clip.fps = message["end"]["fps"]
                    return
                child.pause()  # the caller's time with the frame (the detectors) is not decoding time
                try:
                    yield video.Frame(message["t"], None, message["keyframe"]), png
                finally:
                    child.resume()
        finally:
            child.close()

    return clip, frames()


if __name__ == "__main__":
    sys.exit(_child())
