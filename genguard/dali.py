"""The GPU targets' preprocessing: a DALI pipeline compiled from the same InputSpecs as the CPU one.

Two steps, because one undecodable image makes a DALI pipeline throw for its whole batch:

  validate (python backend, CPU)  screen(): the CPU target's own header checks (genguard.preprocess:
                                  size limits, zero padding stripped, truncation, format, pixel count,
                                  all before decoding). A refused image is replaced by a tiny valid
                                  placeholder and marked FAILURE in IMAGE_INFO, so DALI never sees it.
                                  Formats or modes DALI decodes differently from Pillow (GIF, TIFF, CMYK,
                                  16-bit, ...) are decoded here with Pillow and handed on as PNG.
  preprocess (DALI backend, GPU)  define(): decode on the GPU ("mixed", nvJPEG), then per input spec
                                  resize (Pillow-style antialiased bilinear/bicubic), centre crop with
                                  anchors computed here like torchvision (round half to even), and
                                  normalise to float32 CHW. Parameters come from pipeline_parameters().

What DALI cannot match exactly (measured on CPU against genguard.preprocess, see tests/test_gpu_targets.py
and docker/README.md): its resampling kernels differ from Pillow's by a few levels (bilinear ~1 level
inside, more at borders; bicubic more), and a colour a PNG/GIF marks transparent is not whitened for
"drop_then_white" specs (OpenSDI) — DALI drops alpha like Pillow's convert("RGB").

A well-framed image whose compressed data is corrupt (right markers, garbage entropy data) passes the
header checks and can still fail its DALI batch; `verify="decode"` closes that hole at a CPU decode per
image. The preprocess model runs without dynamic batching, so such a failure stays within the one request
that sent the image and never reaches another client's request.

Nothing here imports nvidia.dali at module level: the validate step runs where DALI isn't installed.
"""

from __future__ import annotations

import io
import json
import sys
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from genguard import specs
from genguard.preprocess import DecodeLimits, ImageRejected, open_checked, to_rgb

# The DALI model's input: validated encoded images (UINT8 [-1], rows zero-padded).
DALI_INPUT = "ENCODED"
# Formats whose decoders in DALI (nvJPEG, libpng/OpenCV, libwebp) give Pillow's pixels; anything
# else (GIF: DALI rejects animations; TIFF: compression variants; BMP: palette/RLE variants) is decoded
# by Pillow in the validate step and handed on as PNG.
DALI_NATIVE_FORMATS = ("JPEG", "MPO", "PNG", "WEBP")
# Pillow modes whose RGB conversion DALI reproduces (greyscale replicated, alpha dropped, palette
# expanded). CMYK/YCCK JPEG, 16-bit and float modes are converted by Pillow here.
DALI_NATIVE_MODES = ("RGB", "RGBA", "L", "LA", "P", "PA")
_INTERP = {"bilinear": "INTERP_LINEAR", "bicubic": "INTERP_CUBIC"}


# ---------------------------------------------------------------------------------------------------
# Geometry, as torchvision/timm compute it (reference: genguard.preprocess.prepare)


def shorter_side_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """(new_w, new_h): the shorter side becomes `shorter`, the longer one floor(shorter * long / short).

    Integer arithmetic, the form the DALI graph evaluates; equal to torchvision's int(s * long / short)
    for every size the limits admit."""
    if width <= height:
        return shorter, shorter * height // width
    return shorter * width // height, shorter


def half_to_even(diff: int) -> int:
    """round(diff / 2) with Python's (and torchvision CenterCrop's) round-half-to-even, for diff >= 0,
    in the integer form the DALI graph evaluates: q = diff // 2, plus one when diff is odd and q is odd."""
    q = diff // 2
    return q + (diff - 2 * q) * (q - 2 * (q // 2))


@dataclass(frozen=True)
class DaliInput:
    """One pipeline output, derived from one InputSpec (see pipeline_parameters)."""

    name: str
    size: tuple[int, int]           # (height, width) of the output
    resize: str                     # "squash" | "shorter_crop"
    resize_to: tuple[int, int]      # squash: the output size; shorter_crop: (shorter side, shorter side)
    interp: str                     # DALI DALIInterpType member name
    mean: tuple[float, float, float]  # in 0..255 units: DALI normalises the uint8 resize output
    std: tuple[float, float, float]
    exif_transpose: bool
    alpha: str


def pipeline_parameters(inputs: dict[str, specs.InputSpec]) -> list[DaliInput]:
    """The DALI pipeline's parameters, derived from the input specs (in the order of `inputs`)."""
    out = []
    for name, spec in inputs.items():
        if spec.resize == "shorter_crop":
            scale_h, scale_w = (int(s / spec.crop_pct) for s in spec.size)  # math.floor for positive sizes
            if scale_h != scale_w:
                raise ValueError(f"{name}: shorter_crop with a non-square crop is not supported by the DALI "
                                 "pipeline")  # timm would resize to (scale_w, scale_h) then; no spec does
            resize_to = (scale_h, scale_w)
        else:
            resize_to = tuple(spec.size)
        out.append(DaliInput(
            name=name, size=tuple(spec.size), resize=spec.resize, resize_to=resize_to,
            interp=_INTERP[spec.interpolation],
            mean=tuple(255.0 * m for m in spec.mean), std=tuple(255.0 * s for s in spec.std),
            exif_transpose=spec.exif_transpose, alpha=spec.alpha,
        ))
    return out


def parameters_json(params: list[DaliInput]) -> str:
    return json.dumps([asdict(p) for p in params], indent=1)


def parameters_from_json(text: str) -> list[DaliInput]:
    return [DaliInput(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}) for d in json.loads(text)]


# ---------------------------------------------------------------------------------------------------
# Version-dependent operator arguments
#
# The graph is serialized by the DALI inside the server image (docker/Dockerfile, DALI_VERSION), which is
# not necessarily the DALI the tests run. An argument an operator's schema does not define fails the
# whole pipeline (and with it the server's start), so version-dependent arguments are passed only where
# the running DALI's schema has them (nvidia.dali.backend.GetSchema(...).HasArgument). Measured: in DALI
# 2.1.1 (tritonserver 26.06) neither decoders.image nor peek_image_shape has `adjust_orientation`, and
# neither applies EXIF orientation; DALI 2.4 has it (default True, so it must be passed False there).

DECODER_SCHEMA = "decoders__Image"
PEEK_SCHEMA = "PeekImageShape"


def has_argument(schema: str, argument: str) -> bool:
    """Whether the installed DALI's operator `schema` defines `argument`."""
    from nvidia.dali import backend

    return bool(backend.GetSchema(schema).HasArgument(argument))


def orientation_arguments(schema: str, exif_transpose: bool) -> dict:
    """`adjust_orientation` where the schema has it. Without it, DALI's decoders keep the stored
    orientation: right for exif_transpose=False (every spec), impossible for True (refused here rather
    than served silently unrotated)."""
    if has_argument(schema, "adjust_orientation"):
        return {"adjust_orientation": exif_transpose}
    if exif_transpose:
        import nvidia.dali

        raise ValueError(f"DALI {nvidia.dali.__version__}'s {schema} has no adjust_orientation: an input spec "
                         "with exif_transpose=True can't be served by this DALI")
    return {}


def decoder_arguments(exif_transpose: bool) -> dict:
    """fn.decoders.image's version-dependent arguments: orientation, and libjpeg-turbo's chroma
    upsampling on the mixed (nvJPEG) backend where the schema has `jpeg_fancy_upsampling` (the CPU
    decoder and Pillow upsample that way)."""
    arguments = orientation_arguments(DECODER_SCHEMA, exif_transpose)
    if has_argument(DECODER_SCHEMA, "jpeg_fancy_upsampling"):
        arguments["jpeg_fancy_upsampling"] = True
    return arguments


# ---------------------------------------------------------------------------------------------------
# How close DALI comes to the reference preprocessing (genguard.preprocess), in 8-bit levels of the
# normalised tensor (|Δ| x std x 255). Measured on CPU with DALI 2.1.1 (and 2.4: the same figures) on
# the 23 sample images; tests/test_gpu_targets.py asserts them, `make gpu-check` applies them on the GPU.

LEVEL_EPS = 1e-3  # float32 rounding of (x - mean) / std, in levels (a 1-level step may read 1.00001)
# max: anywhere; inside: 2-pixel border excluded (DALI's and Pillow's kernels differ most at borders);
# mean: over the tensor. Bicubic (upscaled 32x32 images) differs by more than bilinear.
LEVELS = {"bilinear": {"max": 12.0, "inside": 1.0, "mean": 0.3},
          "bicubic": {"max": 11.0, "inside": 11.0, "mean": 0.3}}
# Looser bounds for the two sample images whose differences are of another kind (measured, rounded up):
# grey16.png is a 16-bit ramp that Pillow clips to a near-binary image, whose hard edges amplify the
# kernel differences at a few pixels (the mean stays below 0.07 levels); palette.png marks a colour
# transparent, which the OpenSDI spec (siglip224) whitens and DALI keeps (up to 9 levels at those pixels).
LEVEL_EXCEPTIONS = {
    ("siglip224", "grey16.png"): {"max": 16.0, "inside": 1.0, "mean": 0.02},
    ("imagenet224", "grey16.png"): {"max": 16.0, "inside": 1.0, "mean": 0.02},
    ("eva02_448", "grey16.png"): {"max": 29.0, "inside": 29.0, "mean": 0.1},
    ("effb4_320", "grey16.png"): {"max": 21.0, "inside": 21.0, "mean": 0.1},
    ("siglip224", "palette.png"): {"max": 9.0, "inside": 9.0, "mean": 0.3},
}


def level_bounds(input_name: str, interpolation: str, image_name: str) -> dict[str, float]:
    """The bound for one input spec on one sample image (the general one for any other image)."""
    return LEVEL_EXCEPTIONS.get((input_name, image_name), LEVELS[interpolation])


# ---------------------------------------------------------------------------------------------------
# The DALI graph


def define(params: list[DaliInput], *, device: str = "gpu"):
    """Build the graph inside a @pipeline_def function; returns its outputs (one per DaliInput, in order).

    device="gpu": decode with "mixed" (nvJPEG; Triton's target). device="cpu": every operator on the CPU
    (tests on machines without a GPU; DALI's CPU decoder gives Pillow's pixels).
    """
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types

    encoded = fn.external_source(name=DALI_INPUT, device="cpu", dtype=types.UINT8, ndim=1)
    decoded, shapes = {}, {}
    outputs = []
    for p in params:
        if p.exif_transpose not in decoded:
            decoded[p.exif_transpose] = fn.decoders.image(
                encoded, device="mixed" if device == "gpu" else "cpu", output_type=types.RGB,
                **decoder_arguments(p.exif_transpose))
            # [H, W, C] from the header, on the CPU: sizes and anchors are argument inputs
            shapes[p.exif_transpose] = fn.peek_image_shape(
                encoded, dtype=types.INT64, **orientation_arguments(PEEK_SCHEMA, p.exif_transpose))
        image, shape = decoded[p.exif_transpose], shapes[p.exif_transpose]
        out_h, out_w = p.size
        interp = getattr(types.DALIInterpType, p.interp)
        if p.resize == "squash":
            resized = fn.resize(image, resize_x=float(out_w), resize_y=float(out_h), interp_type=interp,
                                antialias=True, dtype=types.UINT8)
            crop_x = crop_y = 0.5  # no crop: output size == crop size
        else:
            height, width = shape[0], shape[1]
            shorter = p.resize_to[0]
            # shorter_side_size() in graph arithmetic: integer floor division, so no float rounding
            wide = width > height
            new_w = wide * (shorter * width // height) + (1 - wide) * shorter
            new_h = wide * shorter + (1 - wide) * (shorter * height // width)
            resized = fn.resize(image, resize_x=fn.cast(new_w, dtype=types.FLOAT),
                                resize_y=fn.cast(new_h, dtype=types.FLOAT), interp_type=interp,
                                antialias=True, dtype=types.UINT8)
            # DALI's crop_pos is relative and rounds half away from zero; torchvision rounds half to even.
            # So compute the integer anchor here and hand DALI anchor/(W - crop), which it rounds back to
            # exactly that integer (max(.., 1) keeps an exact fit from dividing by zero).
            crop_x = _relative_anchor(new_w - out_w, fn, types)
            crop_y = _relative_anchor(new_h - out_h, fn, types)
        outputs.append(fn.crop_mirror_normalize(
            resized, dtype=types.FLOAT, output_layout="CHW", crop=(out_h, out_w),
            crop_pos_x=crop_x, crop_pos_y=crop_y, rounding="round",
            mean=list(p.mean), std=list(p.std)))
    return tuple(outputs)


def _relative_anchor(diff, fn, types):
    q = diff // 2
    anchor = q + (diff - 2 * q) * (q - 2 * (q // 2))  # half_to_even(), in graph arithmetic
    denominator = diff + (diff < 1)  # max(diff, 1) for diff >= 0
    return fn.cast(anchor, dtype=types.FLOAT) / fn.cast(denominator, dtype=types.FLOAT)


def pipeline(params: list[DaliInput], *, device: str = "gpu", batch_size: int = 16, num_threads: int = 4,
             device_id: int | None = 0, prefetch_queue_depth: int = 2):
    """A built-ready DALI Pipeline object for `params` (tests, serialization, benchmarks)."""
    from nvidia.dali import pipeline_def

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                  prefetch_queue_depth=prefetch_queue_depth)
    def genguard_preprocess():
        return define(params, device=device)

    return genguard_preprocess()


def run_cpu(params: list[DaliInput], images: list[bytes], num_threads: int = 2) -> list:
    """Run the pipeline on the CPU (device_id=None): one list of float32 CHW arrays per DaliInput."""
    import numpy as np

    pipe = pipeline(params, device="cpu", batch_size=len(images), num_threads=num_threads, device_id=None,
                    prefetch_queue_depth=1)
    pipe.build()
    pipe.feed_input(DALI_INPUT, [np.frombuffer(b, dtype=np.uint8) for b in images])
    outs = pipe.run()
    return [[np.asarray(out[i]) for i in range(len(images))] for out in outs]


# ---------------------------------------------------------------------------------------------------
# The validate step: what DALI may see


@dataclass
class Screened:
    info: dict       # IMAGE_INFO: {"ok": True, width, height, format} or {"ok": False, reason, message}
    payload: bytes   # what DALI decodes: the image's own bytes, a Pillow-made PNG, or the placeholder


@lru_cache(maxsize=1)
def placeholder() -> bytes:
    """A tiny valid image DALI decodes in place of a refused one (its pixels are never answered)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (128, 128, 128)).save(buf, "PNG")
    return buf.getvalue()


@lru_cache(maxsize=1)
def warmup_jpeg() -> bytes:
    """A small JPEG for the DALI model's warm-up request (initialises the nvJPEG path)."""
    import numpy as np
    from PIL import Image

    ramp = np.add.outer(np.arange(64), np.arange(96)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.stack([ramp, ramp[::-1], 255 - ramp], -1)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _refuse(reason: str, message: str) -> Screened:
    return Screened({"ok": False, "reason": reason, "message": message}, placeholder())


def screen(data: bytes, limits: DecodeLimits = DecodeLimits(), verify: str = "header") -> Screened:
    """One request row -> what DALI may decode, never raising.

    verify="header": genguard.preprocess.open_checked, the checks the cpu target makes before decoding (byte
    limit, zero padding, truncation markers, format, pixel count, Pillow's header parse); "decode": also
    decode fully with Pillow (catches corrupt compressed data, at a CPU decode per image).
    """
    try:
        image, data = open_checked(data, limits)  # the cpu target's checks; text chunks dropped
    except ImageRejected as exc:
        return _refuse(exc.reason, str(exc))
    width, height = image.size
    info = {"ok": True, "width": width, "height": height, "format": image.format}
    native = image.format in DALI_NATIVE_FORMATS and image.mode in DALI_NATIVE_MODES
    if native and verify == "header":
        return Screened(info, data)
    try:
        image.seek(0)
        image.load()
    except Exception as exc:
        return _refuse("corrupt", f"image data is corrupt or truncated: {exc}")
    if native:
        return Screened(info, data)
    try:
        rgb = to_rgb(image, "drop")  # every spec's first step; DALI then sees plain RGB
        buf = io.BytesIO()
        rgb.save(buf, "PNG", compress_level=1)
    except Exception as exc:
        return _refuse("unconvertible", f"image could not be converted to RGB: {exc}")
    return Screened(info, buf.getvalue())


def pack(payloads: list[bytes]):
    """Payloads -> the UINT8 [N, L] tensor DALI takes (rows zero-padded, as the wire protocol)."""
    from genguard.protocol import pack_images

    return pack_images(payloads)


def write_model(folder: Path, params: list[DaliInput]) -> None:
    """Write the DALI model's version folder: dali.py (autoserialized by the server) + pipeline.json."""
    from genguard import triton_models

    version = folder / "1"
    version.mkdir(parents=True, exist_ok=True)
    (version / "pipeline.json").write_text(parameters_json(params) + "\n")
    source = Path(triton_models.__file__).parent / "dali_preprocess.py"
    (version / "dali.py").write_text(source.read_text())


def serialize(params: list[DaliInput] | None = None, *, device: str = "gpu") -> bytes:
    """Build the GPU graph with the installed DALI and serialize it, as the DALI backend's autoserialize
    does at model load (device_id=None: no GPU needed). Fails on any operator or argument this DALI's
    schema lacks, so `docker build` fails instead of the server's first start."""
    if params is None:
        params = pipeline_parameters(specs.distinct_inputs(specs.DETECTORS.values()))
    return pipeline(params, device=device, batch_size=DEFAULT_SERIALIZE_BATCH, device_id=None).serialize()


DEFAULT_SERIALIZE_BATCH = 16


def main(argv=None) -> int:
    """python -m genguard.dali serialize [--out FILE]: the build-time check of docker/Dockerfile."""
    import argparse

    import nvidia.dali

    parser = argparse.ArgumentParser(prog="python -m genguard.dali")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serialize", help="build and serialize the GPU preprocess graph with this DALI")
    s.add_argument("--out", type=Path, default=None)
    s.add_argument("--expect-version", default=None, help="fail unless nvidia.dali.__version__ is this")
    args = parser.parse_args(argv)
    version = nvidia.dali.__version__
    if args.expect_version and version != args.expect_version:
        print(f"error: DALI {version} here, expected {args.expect_version} (docker/Dockerfile DALI_VERSION)",
              file=sys.stderr)
        return 1
    data = serialize()
    if args.out:
        args.out.write_bytes(data)
    print(f"DALI {version}: the GPU preprocess pipeline builds and serializes ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
