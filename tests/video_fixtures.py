"""Test clips made at run time with PyAV (and Pillow for animated images) from the sample photos: no downloads.

`clip(photos, ...)` shows each photo for `seconds_each`, so a clip's content (and its detectors' answers) changes
exactly at known times; `codecs_here()` says which (container, codec) pairs this machine's PyAV can encode.
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
from PIL import Image

# (name, container format, codec, pixel format, file suffix)
CODECS = [
    ("h264.mp4", "mp4", "libx264", "yuv420p"),
    ("h264.mov", "mov", "libx264", "yuv420p"),
    ("hevc.mp4", "mp4", "libx265", "yuv420p"),
    ("vp8.webm", "webm", "libvpx", "yuv420p"),
    ("vp9.webm", "webm", "libvpx-vp9", "yuv420p"),
    ("av1.webm", "webm", "libsvtav1", "yuv420p"),
    ("mpeg4.avi", "avi", "mpeg4", "yuv420p"),
]


def codecs_here() -> list[tuple[str, str, str, str]]:
    out = []
    for entry in CODECS:
        try:
            av.codec.Codec(entry[2], "w")
        except Exception:  # noqa: BLE001 - not in this PyAV wheel
            continue
        out.append(entry)
    return out


def frames_of(photos: list[bytes], size=(160, 128), seconds_each: float = 1.0, fps: int = 4) -> list[Image.Image]:
    images = [Image.open(io.BytesIO(p)).convert("RGB").resize(size) for p in photos]
    return [img for img in images for _ in range(round(seconds_each * fps))]


def clip(photos: list[bytes], fmt: str = "mp4", codec: str = "libx264", pix_fmt: str = "yuv420p",
         size=(160, 128), seconds_each: float = 1.0, fps: int = 4, metadata: dict | None = None,
         audio: bool = False) -> bytes:
    out = io.BytesIO()
    with av.open(out, mode="w", format=fmt) as container:
        container.metadata.update(metadata or {})
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], pix_fmt
        if codec == "libsvtav1":
            stream.options = {"preset": "12"}
        for image in frames_of(photos, size, seconds_each, fps):
            for packet in stream.encode(av.VideoFrame.from_image(image)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio:
            _add_silence(container)
    return out.getvalue()


def audio_only(seconds: float = 1.0) -> bytes:
    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        _add_silence(container, seconds)
    return out.getvalue()


def _add_silence(container, seconds: float = 1.0) -> None:
    stream = container.add_stream("aac", rate=16000)
    stream.layout = "mono"
    samples = int(16000 * seconds)
    for start in range(0, samples, 1024):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, min(1024, samples - start)), dtype=np.float32), format="fltp",
                                           layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 16000, start, Fraction(1, 16000)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def animated(photos: list[bytes], fmt: str, size=(96, 80), seconds_each: float = 1.0, fps: int = 2) -> bytes:
    """Animated GIF, WEBP or PNG (APNG) through Pillow."""
    frames = frames_of(photos, size, seconds_each, fps)
    out = io.BytesIO()
    frames[0].save(out, format=fmt, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0,
                   **({"lossless": True} if fmt == "WEBP" else {}))
    return out.getvalue()


def corrupt_middle(data: bytes) -> bytes:
    """The clip with a run of bytes in its middle overwritten (the container's header stays intact)."""
    body = bytearray(data)
    mid = len(body) // 2
    body[mid:mid + 2048] = bytes(range(256)) * 8
    return bytes(body)


def _matroska(codec: str, size=(300, 260), frames: int = 4, fps: int = 4) -> bytes:
    out = io.BytesIO()
    with av.open(out, mode="w", format="matroska") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_image(Image.new("RGB", size, (i * 50 % 256, 90, 160))).reformat(format="yuv420p")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def unknown_codec() -> bytes:
    """A Matroska file whose video track's codec id no FFmpeg knows (FFV1's, renamed)."""
    data = _matroska("ffv1")
    assert data.count(b"V_FFV1") == 1
    return data.replace(b"V_FFV1", b"V_GGV1")


def absurd_dimensions() -> bytes:
    """A Matroska FFV1 track whose header claims 16000 x 16000 pixels per frame (its PixelWidth/PixelHeight
    elements rewritten in place: 300 x 260 are two-byte values, as 16000 is; FFmpeg itself refuses sizes past
    about 16 000 x 16 000, and reports 0 x 0 for them)."""
    data = _matroska("ffv1")
    width, height = b"\xb0\x82\x01\x2c", b"\xba\x82\x01\x04"
    assert data.count(width) == 1 and data.count(height) == 1
    return data.replace(width, b"\xb0\x82\x3e\x80").replace(height, b"\xba\x82\x3e\x80")


def frame_bomb(frames: int = 3000) -> bytes:
    """Many tiny identical frames (1000 fps, 16 x 16): tens of kilobytes that decode to `frames` frames."""
    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=1000)
        stream.width = stream.height = 16
        stream.pix_fmt, stream.options = "yuv420p", {"preset": "ultrafast"}
        frame = av.VideoFrame.from_image(Image.new("RGB", (16, 16)))
        for i in range(frames):
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()
