"""Video in: tell a clip from a still image, decode it within limits, and sample the frames the detectors see.

Containers (MP4/MOV, WebM/Matroska, AVI, MPEG-TS) are decoded with PyAV (the FFmpeg libraries in its wheel);
animated GIF, WebP and APNG with Pillow, which reads all three (FFmpeg has no animated-WebP demuxer). Frames
are RGB `PIL.Image`s exactly as decoded: what the detectors see is never re-encoded lossily (the served model
sends them to the image ensemble as PNG). `VideoRejected` carries a stable reason, like `ImageRejected`.

Decoding runs in a child process of the Triton stub (`genguard_video`; genguard.triton_models.video_decode),
never in the gateway. Limits are checked from the container's header before any frame is decoded (bytes,
duration, frame size) and again while decoding (frames decoded, wall time); the child's address space is
capped (RLIMIT_AS) and it is killed at the wall-time limit, which also bounds a single packet's decode.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from PIL import Image

CONTAINERS = ("mp4", "mov", "webm", "avi", "mpegts")
ANIMATED = ("gif", "webp", "apng")
# ISO-BMFF brands of still images (HEIF/AVIF): an `ftyp` box alone does not make a video
_IMAGE_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"mif1", b"mif2", b"msf1", b"avif", b"avis", b"avci"}
_QUICKTIME_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}


class VideoRejected(ValueError):
    """A clip that can't be answered. `reason` is a stable code, str(self) a sentence."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class VideoLimits:
    """What `genguard_video` accepts (the gateway's synchronous route has lower limits of its own)."""

    max_bytes: int = 512 << 20
    max_duration_s: float = 3600.0
    max_pixels: int = 3840 * 2160          # per frame, from the stream header
    max_decoded_frames: int = 200_000      # frames decoded, sampled or not: a frame-count bomb stops here
    max_sampled_frames: int = 1200         # frames sent to the detectors, whatever the request asks
    decode_timeout_s: float = 300.0        # wall time for decoding and sampling one clip
    max_memory_mb: int = 4096              # address space of the process that decodes one clip (RLIMIT_AS)


@dataclass(frozen=True)
class Sampling:
    """Which frames are scored. The first frame always is; then one every 1/fps seconds (`rate`) or every
    keyframe (`keyframes`: only keyframes are decoded, much cheaper for long clips), up to max_frames."""

    fps: float = 1.0
    max_frames: int = 120
    mode: str = "rate"
    max_duration_s: float | None = None  # a request's own, lower duration limit (the gateway's synchronous one)

    def __post_init__(self) -> None:
        if self.mode not in ("rate", "keyframes"):
            raise ValueError(f"sampling mode {self.mode!r} is not one of: rate, keyframes")
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise ValueError(f"fps must be a positive number, not {self.fps!r}")
        if int(self.max_frames) != self.max_frames or self.max_frames < 1:
            raise ValueError(f"max_frames must be a whole number >= 1, not {self.max_frames!r}")
        if self.max_duration_s is not None and not (self.max_duration_s > 0 and math.isfinite(self.max_duration_s)):
            raise ValueError(f"max_duration_s must be a positive number, not {self.max_duration_s!r}")


@dataclass
class Frame:
    t: float             # seconds from the clip's first frame
    image: Image.Image   # RGB, as decoded
    keyframe: bool = True


@dataclass
class Clip:
    container: str
    codec: str
    width: int
    height: int
    duration_s: float | None
    fps: float | None
    frames: list[Frame] = field(default_factory=list)
    frames_decoded: int = 0
    tags: dict[str, str] = field(default_factory=dict)

    def facts(self) -> dict:
        """The answer's `video` block: container facts and what was decoded and sampled."""
        return {"container": self.container, "codec": self.codec, "width": self.width, "height": self.height,
                "duration_s": _round(self.duration_s), "fps": _round(self.fps), "frames_decoded": self.frames_decoded,
                "frames_sampled": len(self.frames)}


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


def sniff(data: bytes) -> str | None:
    """The container ("mp4", "mov", "webm", "avi", "mpegts") or animated format ("gif", "webp", "apng") of
    `data`, or None for a still image or anything else. Reads headers only."""
    head = data[:64]
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _IMAGE_BRANDS:
            return None
        return "mov" if brand == b"qt  " else "mp4"
    if head[4:8] in _QUICKTIME_ATOMS and len(data) >= 16:
        return "mov"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if len(data) > 376 and data[0] == 0x47 and data[188] == 0x47 and data[376] == 0x47:
        return "mpegts"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif" if _pillow_frames(data) > 1 else None
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        actl = data.find(b"acTL", 8, data.find(b"IDAT", 8) if b"IDAT" in data[:1 << 20] else 1 << 20)
        if actl > 0 and int.from_bytes(data[actl + 4:actl + 8], "big") > 1:
            return "apng"
        return None
    if head[:4] == b"RIFF" and head[8:16] == b"WEBPVP8X" and len(head) > 20 and head[20] & 0x02:
        return "webp"
    return None


def is_video(data: bytes) -> bool:
    """True for what goes to `genguard_video` rather than the image ensemble."""
    return sniff(data) is not None


def _pillow_frames(data: bytes) -> int:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return 2 if getattr(image, "is_animated", False) else 1
    except Exception:  # noqa: BLE001 - unreadable: the image path says why
        return 1


def decode(data: bytes, limits: VideoLimits = VideoLimits(), sampling: Sampling = Sampling()) -> Clip:
    """Decode `data` and keep its sampled frames in `clip.frames`, or raise VideoRejected (never anything else
    for bad input). For long clips prefer open_clip(), which holds one frame at a time."""
    clip, frames = open_clip(data, limits, sampling)
    clip.frames = list(frames)
    return clip


def open_clip(data: bytes, limits: VideoLimits = VideoLimits(),
              sampling: Sampling = Sampling()) -> tuple[Clip, Iterator[Frame]]:
    """The clip's facts, checked against the limits from its header, and an iterator of its sampled frames
    (decoded as it is read; raises VideoRejected mid-way for a corrupt stream or a limit passed). When the
    iterator ends, `clip.frames_decoded` is final."""
    size = len(data)
    if size == 0:
        raise VideoRejected("empty", "empty input: no video bytes were sent")
    if size > limits.max_bytes:
        raise VideoRejected("too_large", f"video is {size} bytes, over the limit of {limits.max_bytes} bytes")
    max_frames = min(int(sampling.max_frames), limits.max_sampled_frames)
    if sampling.max_duration_s is not None:  # a request may lower the duration limit, never raise it
        limits = dataclasses.replace(limits, max_duration_s=min(limits.max_duration_s, sampling.max_duration_s))
    kind = sniff(data)
    if kind in ANIMATED:
        return _open_animated(data, kind, limits, _Sampler(sampling, max_frames, limits))
    return _open_container(data, kind, limits, _Sampler(sampling, max_frames, limits))


def _check_frame_size(width: int, height: int, limits: VideoLimits) -> None:
    if width < 1 or height < 1:
        raise VideoRejected("corrupt", f"the video stream has no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise VideoRejected("too_many_pixels", f"frames are {width}x{height}, over the limit of "
                                               f"{limits.max_pixels} pixels per frame")


def _check_duration(duration: float | None, limits: VideoLimits) -> None:
    if duration is not None and duration > limits.max_duration_s:
        raise VideoRejected("too_long", f"video lasts {duration:.1f} s, over the limit of "
                                        f"{limits.max_duration_s:g} s")


class _Sampler:
    """Keeps the first frame, then the first frame at or after each next sampling time; counts and times
    every decoded frame against the limits."""

    def __init__(self, sampling: Sampling, max_frames: int, limits: VideoLimits):
        self.sampling, self.max_frames, self.limits = sampling, max_frames, limits
        self.kept = 0
        self.decoded = 0
        self.deadline = time.monotonic() + limits.decode_timeout_s
        self._start: float | None = None

    def due(self, t: float) -> float | None:
        """Count one decoded frame at `t` seconds; its time from the first frame if it is to be kept."""
        self.decoded += 1
        if self.decoded > self.limits.max_decoded_frames:
            raise VideoRejected("too_many_frames", f"more than {self.limits.max_decoded_frames} frames decoded: "
                                                   "over the frame limit")
        if time.monotonic() > self.deadline:
            raise VideoRejected("decode_timeout", f"decoding took longer than {self.limits.decode_timeout_s:g} s")
        if self._start is None:
            self._start = t
        rel = max(0.0, t - self._start)
        if rel > self.limits.max_duration_s:
            raise VideoRejected("too_long", f"frames run past {self.limits.max_duration_s:g} s, over the limit")
        if self.kept and self.sampling.mode == "rate" and rel + 1e-6 < self.kept / self.sampling.fps:
            return None
        self.kept += 1
        return round(rel, 6)

    @property
    def full(self) -> bool:
        return self.kept >= self.max_frames


def _open_container(data: bytes, kind: str | None, limits: VideoLimits,
                    sampler: _Sampler) -> tuple[Clip, Iterator[Frame]]:
    import av

    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except av.FFmpegError as exc:
        reason = "not_a_video" if kind is None else "unreadable"
        raise VideoRejected(reason, f"not a readable video: {_ffmpeg_message(exc)}") from None
    try:
        if not container.streams.video:
            raise VideoRejected("no_video_stream", "the file has no video stream (audio-only or data only)")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if ctx is None or ctx.codec is None:  # FFmpeg has no decoder for it
            raise VideoRejected("unsupported_codec", "the video stream's codec has no decoder here: "
                                                     "send H.264, H.265, VP8, VP9, AV1 or MPEG-4")
        _check_frame_size(ctx.width, ctx.height, limits)
        duration = container.duration / av.time_base if container.duration else (
            float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None)
        _check_duration(duration, limits)
    except BaseException:
        container.close()
        raise
    rate = float(stream.average_rate) if stream.average_rate else None
    stream.thread_type = "AUTO"
    if sampler.sampling.mode == "keyframes":
        ctx.skip_frame = "NONKEY"
    tags = {k: str(v) for k, v in {**container.metadata, **stream.metadata}.items()}
    clip = Clip(container=kind or container.format.name.split(",")[0], codec=ctx.codec.canonical_name,
                width=ctx.width, height=ctx.height, duration_s=duration, fps=rate, tags=tags)

    def frames() -> Iterator[Frame]:
        with container:
            try:
                for frame in container.decode(stream):
                    if frame.width * frame.height > limits.max_pixels:
                        _check_frame_size(frame.width, frame.height, limits)
                    t = frame.time if frame.time is not None else sampler.decoded / (rate or 1.0)
                    rel = sampler.due(t)
                    clip.frames_decoded = sampler.decoded
                    if rel is not None:
                        yield Frame(rel, frame.to_image().convert("RGB"), bool(frame.key_frame))
                        if sampler.full:
                            return
            except av.FFmpegError as exc:
                raise VideoRejected("corrupt", f"the video stream is corrupt at frame {sampler.decoded + 1}: "
                                               f"{_ffmpeg_message(exc)}") from None
            if not sampler.kept:
                raise VideoRejected("no_frames", "no frame could be decoded (truncated or corrupt stream)")

    return clip, frames()


def _ffmpeg_message(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def _open_animated(data: bytes, kind: str, limits: VideoLimits, sampler: _Sampler) -> tuple[Clip, Iterator[Frame]]:
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        count = getattr(image, "n_frames", 1)
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for malformed headers
        raise VideoRejected("corrupt", f"unreadable {kind.upper()} header: {exc}") from None
    try:
        _check_frame_size(width, height, limits)
    except VideoRejected:
        image.close()
        raise
    clip = Clip(container=kind, codec=kind, width=width, height=height, duration_s=None, fps=None)

    def frames() -> Iterator[Frame]:
        t = 0.0
        with image:
            try:
                for index in range(count):
                    image.seek(index)
                    image.load()  # WebP sets the frame's duration when it is loaded
                    rel = sampler.due(t)
                    clip.frames_decoded = sampler.decoded
                    t += max(0, image.info.get("duration") or 0) / 1000.0
                    if rel is not None:
                        yield Frame(rel, image.convert("RGB"), True)
                        if sampler.full:
                            break
            except VideoRejected:
                raise
            except Exception as exc:  # noqa: BLE001 - a broken frame fails the clip, with its index
                raise VideoRejected("corrupt", f"frame {sampler.decoded} of the {kind.upper()} is corrupt: "
                                               f"{exc}") from None
        if clip.frames_decoded == count and t:
            clip.duration_s, clip.fps = t, count / t

    return clip, frames()


def png(image: Image.Image) -> bytes:
    """A frame as lossless PNG, the form in which `genguard_video` sends it to the image ensemble."""
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def parse_options(text: str | bytes | None, defaults: Sampling = Sampling()) -> Sampling:
    """A request's OPTIONS JSON ({"fps", "max_frames", "sampling", "max_duration_s"}) over the served defaults;
    ValueError naming the bad field."""
    if not text:
        return defaults
    raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError("video options must be a JSON object")
    known = {"fps", "max_frames", "sampling", "max_duration_s"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"unknown video option(s) {', '.join(unknown)}: known are {', '.join(sorted(known))}")
    values = {"fps": raw.get("fps", defaults.fps), "max_frames": raw.get("max_frames", defaults.max_frames),
              "mode": raw.get("sampling", defaults.mode),
              "max_duration_s": raw.get("max_duration_s", defaults.max_duration_s)}
    for name in ("fps", "max_duration_s"):
        value = values[name]
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"{name} must be a number, not {value!r}")
    return dataclasses.replace(defaults, **values)
