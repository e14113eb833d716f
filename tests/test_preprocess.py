"""GenGuard's Pillow+numpy preprocessing is bit-exact with each card's reference transform.

- parity: every distinct InputSpec x every sample image (real photos and edge cases), max |d| == 0,
  references built from the tiny random checkpoints through export.checkpoints.load;
- decode(): refusals with stable reason codes, padding, animated GIFs;
- to_rgb(): alpha and EXIF handling against transformers / Pillow;
- geometry helpers against torchvision, and a Hypothesis property test against timm.
"""

from __future__ import annotations

import dataclasses
import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from conftest import checkpoint_path
from genguard import specs
from genguard.export import samples
from genguard.preprocess import (
    MAX_INTERMEDIATE_PIXELS,
    DecodeLimits,
    ImageRejected,
    center_crop_box,
    decode,
    prepare,
    preprocess_bytes,
    shorter_side_size,
    to_rgb,
)

INPUTS = specs.distinct_inputs(specs.DETECTORS.values())
IMAGES = samples.all_images()
# one detector per distinct input: its reference transform is the yardstick for that input
OWNER = {name: next(s for s in specs.DETECTORS.values() if s.input.name == name) for name in INPUTS}


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def photo(name: str = "astronaut.png") -> Image.Image:
    return Image.open(io.BytesIO(samples.photos()[name])).convert("RGB")


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    assert a.dtype == b.dtype == np.float32, (a.dtype, b.dtype)
    return float(np.abs(a - b).max())


# ---------------------------------------------------------------------------------------------------
# parity with the reference transforms


@pytest.fixture(scope="module")
def references(tiny_build):
    """input name -> the owning detector's reference transform (PIL RGB -> torch CHW)."""
    from genguard.export.checkpoints import load
    from genguard.export.reference import reference_transform

    transforms = {}
    for name, spec in OWNER.items():
        source = checkpoint_path(tiny_build, spec.name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random-weights warning
            module = load(spec, source)
        transforms[name] = reference_transform(spec, module, str(source))
    return transforms


def test_samples_cover_the_edge_cases():
    """The parity test below is only as good as its images: check they are what they claim."""
    opened = {n: Image.open(io.BytesIO(b)) for n, b in IMAGES.items()}
    assert len(samples.photos()) >= 10
    modes = {im.mode for im in opened.values()}
    assert {"RGB", "L", "RGBA", "P", "CMYK", "I;16"} <= modes, modes
    assert {"JPEG", "PNG", "WEBP"} <= {im.format for im in opened.values()}
    sizes = [im.size for im in opened.values()]
    assert any(w < h for w, h in sizes) and any(w > 3 * h for w, h in sizes)
    assert min(w * h for w, h in sizes) <= 32 * 32 and max(w * h for w, h in sizes) >= 4000 * 3000
    assert any(im.getexif().get(0x0112, 1) != 1 for im in opened.values())
    assert any(im.info.get("transparency") is not None for im in opened.values())


@pytest.mark.parametrize("image_name", sorted(IMAGES))
@pytest.mark.parametrize("input_name", sorted(INPUTS))
def test_preprocess_matches_reference_exactly(references, input_name, image_name):
    from genguard.export.reference import open_rgb

    data = IMAGES[image_name]
    spec = INPUTS[input_name]
    _, tensors = preprocess_bytes(data, {input_name: spec})
    ours = tensors[input_name]
    reference = references[input_name](open_rgb(data)).numpy()
    assert ours.shape == spec.shape
    assert max_abs(ours, reference) == 0.0


def test_preprocess_makes_one_tensor_per_input():
    decoded, tensors = preprocess_bytes(IMAGES["rgba.png"], INPUTS)
    assert set(tensors) == set(INPUTS)
    for name, tensor in tensors.items():
        assert tensor.shape == INPUTS[name].shape and tensor.flags.c_contiguous
    assert (decoded.width, decoded.height) == Image.open(io.BytesIO(IMAGES["rgba.png"])).size


# ---------------------------------------------------------------------------------------------------
# decode(): refusals


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR + IEND and no pixel data: tiny, whatever size it claims."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def truncated(name: str) -> bytes:
    data = samples.photos()[name]
    return data[: len(data) // 2]


def random_bytes() -> bytes:
    return np.random.default_rng(1234).integers(0, 256, 4096, dtype=np.uint8).tobytes()


def saved_as(fmt: str) -> bytes:
    return encode(photo().resize((64, 64)), fmt)


TRUNCATED = ("corrupt", "truncated")  # either code names a damaged file
REFUSALS = {
    "empty": (lambda: b"", {}, "empty"),
    "all_zero": (lambda: bytes(5000), {}, "empty"),
    "random": (random_bytes, {}, "not_an_image"),
    "truncated_jpeg": (lambda: truncated("rocket.jpg"), {}, TRUNCATED),
    "truncated_png": (lambda: truncated("astronaut.png"), {}, TRUNCATED),
    # batch padding must not hide truncation (libjpeg would read the zeros as image data)
    "truncated_jpeg_padded": (lambda: truncated("rocket.jpg") + bytes(10_240), {}, TRUNCATED),
    "truncated_png_padded": (lambda: truncated("astronaut.png") + bytes(10_240), {}, TRUNCATED),
    # Pillow's own bomb limit (> 178 Mpx) and GenGuard's (50 Mpx, under Pillow's), from the header alone
    "png_header_30000x30000": (lambda: png_header_only(30000, 30000), {}, "too_many_pixels"),
    "png_header_8000x8000": (lambda: png_header_only(8000, 8000), {}, "too_many_pixels"),
    "photo_over_max_pixels": (lambda: samples.photos()["rocket.jpg"], {"max_pixels": 1000}, "too_many_pixels"),
    "over_max_bytes": (lambda: samples.photos()["rocket.jpg"], {"max_bytes": 1000}, "too_large"),
    "pdf": (lambda: saved_as("PDF"), {}, "not_an_image"),
    "ico": (lambda: saved_as("ICO"), {}, "unsupported_format"),
    "tga": (lambda: saved_as("TGA"), {}, "unsupported_format"),
    "eps": (lambda: saved_as("EPS"), {}, "unsupported_format"),  # would run Ghostscript to load
    "png_not_accepted": (lambda: samples.photos()["astronaut.png"], {"formats": ("JPEG",)}, "unsupported_format"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_decode_refuses_with_reason(case):
    make, limits, reasons = REFUSALS[case]
    with pytest.raises(ImageRejected) as exc:
        decode(make(), DecodeLimits(**limits))
    assert exc.value.reason in (reasons if isinstance(reasons, tuple) else (reasons,)), str(exc.value)
    assert isinstance(exc.value, ValueError) and len(str(exc.value)) > 10


def test_too_many_pixels_is_decided_before_decoding():
    """A header-only PNG can't be decoded (control: a small one is 'corrupt'), so a huge one being
    'too_many_pixels' shows the header check ran first - and it is a few dozen bytes, not gigabytes."""
    with pytest.raises(ImageRejected) as small:
        decode(png_header_only(100, 100))
    assert small.value.reason in TRUNCATED
    bomb = png_header_only(30000, 30000)
    assert len(bomb) < 100
    with pytest.raises(ImageRejected) as exc:
        decode(bomb)
    assert exc.value.reason == "too_many_pixels"


def test_max_bytes_boundary():
    data = samples.photos()["rocket.jpg"]
    assert decode(data, DecodeLimits(max_bytes=len(data))).format == "JPEG"
    with pytest.raises(ImageRejected, match=str(len(data))):
        decode(data, DecodeLimits(max_bytes=len(data) - 1))


@pytest.mark.parametrize("name", ["rocket.jpg", "astronaut.png", "odd_size.webp", "palette.png"])
def test_trailing_zero_padding_is_accepted(name):
    data = IMAGES[name]
    plain_decoded, plain = preprocess_bytes(data, INPUTS)
    padded_decoded, padded = preprocess_bytes(data + bytes(10_240), INPUTS)
    assert (padded_decoded.format, padded_decoded.width, padded_decoded.height) == (
        plain_decoded.format, plain_decoded.width, plain_decoded.height)
    for key in INPUTS:
        assert max_abs(plain[key], padded[key]) == 0.0


def test_animated_gif_uses_first_frame():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [Image.new("RGB", (40, 30), c) for c in colours]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == len(colours)
    decoded = decode(data)
    assert decoded.format == "GIF"
    pixels = np.asarray(to_rgb(decoded.image, "drop"))
    assert (pixels == colours[0]).all()
    # and the tensors are those of the first frame saved alone
    _, animated = preprocess_bytes(data, INPUTS)
    _, still = preprocess_bytes(encode(frames[0], "GIF"), INPUTS)
    for key in INPUTS:
        assert max_abs(animated[key], still[key]) == 0.0


def test_decode_reports_format_and_size():
    for name, data in samples.photos().items():
        with Image.open(io.BytesIO(data)) as im:
            decoded = decode(data)
            assert (decoded.format, decoded.width, decoded.height) == (im.format, *im.size), name


# ---------------------------------------------------------------------------------------------------
# to_rgb


def decoded(name: str) -> Image.Image:
    return decode(IMAGES[name]).image


@pytest.mark.parametrize("name", ["rgba.png", "palette.png", "grey.jpg", "rocket.jpg"])
def test_white_matches_transformers_convert_to_rgb(name):
    from transformers.image_transforms import convert_to_rgb

    ours = np.asarray(to_rgb(decoded(name), "white"))
    assert np.array_equal(ours, convert_to_rgb(decoded(name), return_numpy=True))


@pytest.mark.parametrize("name", ["rgba.png", "palette.png", "cmyk.jpg", "grey.jpg", "grey16.png"])
def test_drop_matches_pillow_convert(name):
    image = decoded(name)
    assert to_rgb(image, "drop").mode == "RGB"
    assert np.array_equal(np.asarray(to_rgb(image, "drop")), np.asarray(image.convert("RGB")))


@pytest.mark.parametrize("name", ["rgba.png", "palette.png", "rocket.jpg"])
def test_drop_then_white_is_convert_then_transformers(name):
    from transformers.image_transforms import convert_to_rgb

    image = decoded(name)
    want = convert_to_rgb(image.convert("RGB"), return_numpy=True)
    assert np.array_equal(np.asarray(to_rgb(image, "drop_then_white")), want)


def test_alpha_modes_really_differ_on_transparent_images():
    """Guards the tests above against comparing identical things."""
    for name in ("rgba.png", "palette.png"):
        white = np.asarray(to_rgb(decoded(name), "white"))
        drop = np.asarray(to_rgb(decoded(name), "drop"))
        assert not np.array_equal(white, drop), name


def test_exif_transpose():
    image = decoded("exif_rotated.jpg")
    width, height = image.size
    assert width != height and image.getexif().get(0x0112) not in (None, 1)
    kept = to_rgb(image, "drop", exif_transpose=False)
    turned = to_rgb(image, "drop", exif_transpose=True)
    assert kept.size == (width, height)
    assert turned.size == (height, width)
    assert np.array_equal(np.asarray(turned), np.asarray(ImageOps.exif_transpose(image).convert("RGB")))
    spec = specs.TF_INCEPTION_224
    rotated = dataclasses.replace(spec, exif_transpose=True)
    a = preprocess_bytes(IMAGES["exif_rotated.jpg"], {"x": spec})[1]["x"]
    b = preprocess_bytes(IMAGES["exif_rotated.jpg"], {"x": rotated})[1]["x"]
    assert max_abs(a, b) > 0.1


# ---------------------------------------------------------------------------------------------------
# geometry helpers vs torchvision


@pytest.mark.parametrize(
    "width, height, shorter",
    [(640, 480, 256), (480, 640, 256), (333, 217, 365), (1600, 300, 256), (300, 520, 256), (7, 3, 256),
     (599, 600, 256), (256, 256, 256), (1, 600, 256), (1000, 999, 365)],
)
def test_shorter_side_size_matches_torchvision(width, height, shorter):
    import torchvision.transforms.functional as F

    resized = F.resize(Image.new("RGB", (width, height)), shorter)
    assert shorter_side_size(width, height, shorter) == resized.size


@pytest.mark.parametrize(
    "width, height, crop_w, crop_h",
    [
        (7, 5, 4, 2),  # offsets 1.5, 1.5 -> 2, 2
        (9, 9, 4, 4),  # 2.5 -> 2 (half to even; half-up would give 3)
        (11, 8, 4, 3),  # 3.5 -> 4, 2.5 -> 2
        (10, 10, 4, 4),  # 3, exact
        (255, 240, 224, 224),  # 15.5 -> 16, 8
        (250, 229, 224, 224),  # 13, 2.5 -> 2
        (224, 224, 224, 224),  # 0, 0
    ],
)
def test_center_crop_box_matches_torchvision(width, height, crop_w, crop_h):
    import torchvision.transforms.functional as F

    # R = x, G = y: the crop's top-left pixel names its offset
    xs, ys = np.meshgrid(np.arange(width), np.arange(height))
    coords = np.stack([xs, ys, np.zeros_like(xs)], axis=-1).astype(np.uint8)
    cropped = np.asarray(F.center_crop(Image.fromarray(coords), [crop_h, crop_w]))
    assert cropped.shape[:2] == (crop_h, crop_w)
    assert center_crop_box(width, height, crop_w, crop_h) == (int(cropped[0, 0, 0]), int(cropped[0, 0, 1]))


# ---------------------------------------------------------------------------------------------------
# property test: random sizes and content vs timm's transform

TIMM_REFERENCES = {
    "tfmnv3_224": (specs.TF_INCEPTION_224, "tf_mobilenetv3_large_100.in1k"),
    "eva02_448": (specs.EVA02_448, "eva02_base_patch14_448.mim_in22k_ft_in22k_in1k"),
    "effb4_320": (specs.EFFNET_B4_320, "efficientnet_b4.ra2_in1k"),  # 365 -> 320: half-pixel crops
}
_timm_transforms: dict = {}


def timm_transform(tag: str):
    if tag not in _timm_transforms:
        from timm.data import create_transform, resolve_data_config
        from timm.models import get_pretrained_cfg

        _timm_transforms[tag] = create_transform(**resolve_data_config(get_pretrained_cfg(tag).__dict__))
    return _timm_transforms[tag]


def intermediate_pixels(spec, width: int, height: int) -> int:
    """Pixels of the reference's resized image before its center crop."""
    if spec.resize == "squash":
        return spec.size[0] * spec.size[1]
    new_w, new_h = shorter_side_size(width, height, int(spec.size[0] / spec.crop_pct))
    return new_w * new_h


def noise_image(width: int, height: int, seed: int, smooth: bool = False) -> Image.Image:
    rng = np.random.default_rng(seed)
    if smooth:  # gradients + a little noise: resampling rounding matters most on smooth content
        ramp = np.linspace(0, 255, width)[None, :, None] * np.linspace(0.2, 1, height)[:, None, None]
        pixels = np.clip(ramp + rng.normal(0, 3, (height, width, 3)), 0, 255).astype(np.uint8)
    else:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("key", list(TIMM_REFERENCES))
@settings(max_examples=25, deadline=None, database=None)
@given(
    width=st.integers(1, 600),
    height=st.integers(1, 600),
    seed=st.integers(0, 2**32 - 1),
    smooth=st.booleans(),
)
def test_prepare_matches_timm_on_random_images(key, width, height, seed, smooth):
    spec, tag = TIMM_REFERENCES[key]
    # beyond this, prepare() resamples only the crop on purpose (tested separately below)
    assume(intermediate_pixels(spec, width, height) <= MAX_INTERMEDIATE_PIXELS)
    image = noise_image(width, height, seed, smooth)
    reference = timm_transform(tag)(image).numpy()
    assert max_abs(prepare(image, spec), reference) == 0.0


@pytest.mark.parametrize("key, bound", [("tfmnv3_224", 1.0), ("effb4_320", 25.0)])
@pytest.mark.parametrize("width, height", [(1, 600), (2, 600), (600, 2), (2, 500)])
def test_crop_only_path_stays_within_its_documented_bound(monkeypatch, key, bound, width, height):
    """Where the reference's shorter-side resize would be huge (past MAX_INTERMEDIATE_PIXELS), prepare()
    resamples only the crop; preprocess.py documents that as within 1 level for bilinear and ~20 for
    bicubic. The limit is lowered here so that sizes the reference can still run take that path."""
    from genguard import preprocess

    spec, tag = TIMM_REFERENCES[key]
    monkeypatch.setattr(preprocess, "MAX_INTERMEDIATE_PIXELS", 100_000)
    assert intermediate_pixels(spec, width, height) > 100_000
    image = noise_image(width, height, seed=width * height)
    ours = prepare(image, spec)
    levels = np.abs(ours - timm_transform(tag)(image).numpy()) * 255 * np.asarray(spec.std, np.float32)[:, None, None]
    assert ours.shape == spec.shape
    assert levels.max() <= bound + 1e-3, f"off by {levels.max():.1f} levels"


def test_one_by_ten_thousand_does_not_allocate_the_reference_intermediate():
    image = Image.new("RGB", (1, 10_000), (10, 20, 30))
    spec, _ = TIMM_REFERENCES["tfmnv3_224"]
    assert intermediate_pixels(spec, 1, 10_000) > MAX_INTERMEDIATE_PIXELS
    sizes = []
    original = Image.Image.resize

    def recording(self, size, *args, **kwargs):
        sizes.append(size)
        return original(self, size, *args, **kwargs)

    Image.Image.resize = recording
    try:
        out = prepare(image, spec)
    finally:
        Image.Image.resize = original
    assert out.shape == spec.shape and sizes
    assert max(w * h for w, h in sizes) <= MAX_INTERMEDIATE_PIXELS  # never the 256 x 2,560,000 intermediate


# The published preprocessor_config.json of google/siglip2-base-patch16-224 (the vision tower OpenSDI-Flux
# fine-tunes), pinned here by hand: the SigLIP parity must not compare the spec with a config written from
# the spec itself (the random checkpoints' processor configs are).
SIGLIP2_BASE_224_PROCESSOR = {
    "image_processor_type": "SiglipImageProcessor",
    "do_resize": True,
    "size": {"height": 224, "width": 224},
    "resample": 2,  # PIL.Image.BILINEAR
    "do_rescale": True,
    "rescale_factor": 0.00392156862745098,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}


def test_siglip_preprocessing_equals_the_upstream_processor(tmp_path):
    import json

    from transformers import AutoImageProcessor

    from genguard.export.reference import open_rgb

    (tmp_path / "preprocessor_config.json").write_text(json.dumps(SIGLIP2_BASE_224_PROCESSOR))
    processor = AutoImageProcessor.from_pretrained(tmp_path, backend="pil")  # the card's backend (no torchvision)
    spec = specs.get("opensdi_flux").input
    images = samples.all_images()
    worst = 0.0
    for name, data in images.items():
        expected = processor(images=open_rgb(data), return_tensors="np")["pixel_values"][0]
        ours = preprocess_bytes(data, {"x": spec})[1]["x"]
        assert ours.shape == expected.shape, name
        worst = max(worst, float(np.abs(ours - expected).max()))
    assert worst == 0.0, f"max |d| {worst} vs the upstream SigLIP processor"
