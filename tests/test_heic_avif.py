"""HEIC/HEIF (pillow-heif) and AVIF (Pillow) inputs: decoded on the CPU target within the decode limits,
converted to PNG by the GPU targets' validate step, refused with their own reasons; fixtures made here."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image

from genguard import dali, protocol, specs
from genguard.export import samples
from genguard.preprocess import DecodeLimits, ImageRejected, decode, preprocess_bytes

FORMATS = ("HEIF", "AVIF")


def photo() -> Image.Image:
    return Image.open(io.BytesIO(samples.photos()["chelsea.png"])).convert("RGB")


def encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    photo().save(buf, fmt, quality=90)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", FORMATS)
def test_decoded_within_limits_and_close_to_the_source(fmt):
    data = encoded(fmt)
    assert data[4:8] == b"ftyp"
    decoded = decode(data + b"\0" * 999)  # zero padding of a batched request is not part of the image
    assert (decoded.format, decoded.width, decoded.height) == (fmt, 451, 300)
    pixels = np.asarray(decoded.image.convert("RGB"), dtype=np.int16)
    assert np.abs(pixels - np.asarray(photo(), dtype=np.int16)).mean() < 6  # lossy, but the same picture
    _, tensors = preprocess_bytes(data, specs.distinct_inputs(specs.DETECTORS.values()))
    assert all(np.isfinite(t).all() for t in tensors.values())
    for cut in (data[: len(data) * 2 // 3] + b"\0" * 2000, data[: len(data) // 2].ljust(len(data), b"\0")):
        with pytest.raises(ImageRejected) as truncated:  # padding never stands in for the missing bytes
            decode(cut)
        assert truncated.value.reason == "truncated"
    with pytest.raises(ImageRejected) as large:
        decode(data, DecodeLimits(max_pixels=451 * 300 - 1))
    assert large.value.reason == "too_many_pixels"
    with pytest.raises(ImageRejected) as refused:
        decode(data, DecodeLimits(formats=("JPEG", "PNG")))
    assert refused.value.reason == "unsupported_format"


@pytest.mark.parametrize("fmt", FORMATS)
def test_gpu_validate_converts_them_to_png_for_dali(fmt):
    data = encoded(fmt)
    screened = dali.screen(data + b"\0" * 64)
    assert screened.info == {"ok": True, "width": 451, "height": 300, "format": fmt}
    assert screened.payload[:8] == b"\x89PNG\r\n\x1a\n"
    converted = np.asarray(Image.open(io.BytesIO(screened.payload)).convert("RGB"))
    assert np.array_equal(converted, np.asarray(decode(data).image.convert("RGB")))
    assert dali.screen(data[: len(data) // 2]).info["reason"] == "truncated"


@pytest.mark.server
def test_answered_through_the_server_beside_a_truncated_one(triton):
    heic, avif = encoded("HEIF"), encoded("AVIF")
    batch = protocol.pack_images([heic, heic[: len(heic) // 2], avif])
    tensor = grpcclient.InferInput(protocol.INPUT, list(batch.shape), "UINT8")
    tensor.set_data_from_numpy(batch)
    result = grpcclient.InferenceServerClient(triton.grpc_url).infer(protocol.ENSEMBLE, [tensor], client_timeout=300)
    docs = [json.loads(x) for x in result.as_numpy(protocol.RESULT).reshape(-1)]
    assert [d["status"] for d in docs] == ["SUCCESS", "FAILURE", "SUCCESS"]
    assert docs[1]["error"]["reason"] == "truncated"
    assert [docs[0]["image"]["format"], docs[2]["image"]["format"]] == ["HEIF", "AVIF"]
    assert docs[0]["verdict"] in ("ai_generated", "not_ai_generated", "uncertain")
    from genguard.provenance import Extractor

    for doc, data in ((docs[0], heic), (docs[2], avif)):  # their XMP and EXIF are read (docs/provenance.md)
        assert doc["provenance"]["looked_for"] == ["xmp", "exif"]
        assert doc["provenance"]["signals"] == Extractor().extract(data)["signals"]
    # the sample photo's own XMP (CreatorTool: f-spot) goes with it into the HEIF file, and is read back there
    assert [s["detail"].get("value") for s in docs[0]["provenance"]["signals"]] == ["f-spot version 0.5.0.3"]
