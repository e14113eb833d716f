"""Videos through the REST gateway (real uvicorn in front of the session's real tritonserver) and the CLI:
clips mixed with images keep their order in multipart and as `data:video/...` URLs, the synchronous limits fail
only their clip and name the jobs API, Hive's route refuses clips naming /v1/detect, and `genguard detect` answers
a folder of images and clips directly and through the gateway."""

from __future__ import annotations

import base64
import json

import pytest
import requests

import video_fixtures as vf
from genguard.client import Client
from genguard.export import samples
from test_gateway import HIVE, assert_error, genguard_cli, png, start_gateway

pytestmark = [pytest.mark.server, pytest.mark.gateway]

PHOTOS = samples.photos()
A, B = PHOTOS["rocket.jpg"], PHOTOS["coffee.png"]
SYNC_BYTES, SYNC_SECONDS = 150_000, 2.5


@pytest.fixture(scope="module")
def clip_ab():
    return vf.clip([A, B], seconds_each=1.0, fps=4)  # 2 s: within the synchronous limit


@pytest.fixture(scope="module")
def vgw(triton, tmp_path_factory):
    """No keys (loopback); small synchronous video limits, so the tests' clips cross them cheaply."""
    gw = start_gateway(triton.grpc_url, tmp_path_factory.mktemp("gw-video"), "--deadline-s", "180",
                       "--video-max-bytes", str(SYNC_BYTES), "--video-max-duration-s", str(SYNC_SECONDS))
    yield gw
    gw.stop()


def test_multipart_mixes_images_and_clips_in_order_and_sync_limits_fail_only_their_clip(vgw, triton, clip_ab):
    long_clip = vf.clip([A, B, A, B], seconds_each=1.0, fps=4)          # 4 s: over the duration limit
    big_clip = vf.clip([A, B], size=(640, 480), fps=24, seconds_each=1.0) + b"\0" * SYNC_BYTES  # over the bytes
    files = [("file", ("a.png", png(1), "image/png")), ("file", ("clip.mp4", clip_ab, "video/mp4")),
             ("file", ("long.mp4", long_clip, "video/mp4")), ("file", ("big.mp4", big_clip, "video/mp4")),
             ("file", ("b.png", png(2), "image/png"))]
    response = requests.post(vgw.url + "/v1/detect", files=files, timeout=180)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [(d["index"], d["name"], d.get("kind", "image")) for d in data] == [
        (0, "a.png", "image"), (1, "clip.mp4", "video"), (2, "long.mp4", "video"), (3, "big.mp4", "video"),
        (4, "b.png", "image")]
    assert [d["status"] for d in data] == ["SUCCESS", "SUCCESS", "FAILURE", "FAILURE", "SUCCESS"]
    assert data[2]["error"]["reason"] == "too_long" and "POST /v1/jobs" in data[2]["error"]["message"]
    assert data[3]["error"]["reason"] == "too_large" and "POST /v1/jobs" in data[3]["error"]["message"]
    clip = data[1]
    assert [e["t"] for e in clip["timeline"]] == [0.0, 1.0] and clip["video"]["codec"] == "h264"
    with Client(triton.grpc_url, timeout=180) as client:  # the same clip straight from Triton
        direct = client.detect(clip_ab)[0]
    assert clip["is_ai_generated"] == pytest.approx(direct.is_ai_generated, abs=1e-6)
    assert [e["is_ai_generated"] for e in clip["timeline"]] == pytest.approx(
        [e["is_ai_generated"] for e in direct.timeline], abs=1e-6)


def test_data_urls_take_videos_and_sampling_options(vgw, clip_ab):
    body = {"input": ["data:video/mp4;base64," + base64.b64encode(clip_ab).decode(),
                      "data:image/png;base64," + base64.b64encode(png(3)).decode()], "names": ["clip", "still"]}
    response = requests.post(vgw.url + "/v1/detect", params={"fps": 2, "max_frames": 3}, json=body, timeout=180)
    assert response.status_code == 200, response.text
    clip, still = response.json()["data"]
    assert clip["kind"] == "video" and clip["status"] == "SUCCESS" and still["status"] == "SUCCESS"
    assert [e["t"] for e in clip["timeline"]] == [0.0, 0.5, 1.0]  # 2 fps, at most 3 frames
    assert_error(requests.post(vgw.url + "/v1/detect", params={"sampling": "everything"}, json=body, timeout=60),
                 422, "invalid_request")


def test_hive_route_refuses_videos_naming_the_native_route(vgw, clip_ab):
    body = {"input": ["data:image/png;base64," + base64.b64encode(png(4)).decode(),
                      "data:video/mp4;base64," + base64.b64encode(clip_ab).decode()]}
    error = assert_error(requests.post(vgw.url + HIVE, json=body, timeout=60), 422, "video_not_supported")
    assert "input[1]" in error["error"]["message"] and "POST /v1/detect" in error["error"]["message"]


def test_openapi_documents_videos_on_detect(vgw):
    detect = requests.get(vgw.url + "/openapi.json", timeout=30).json()["paths"]["/v1/detect"]["post"]
    assert {"fps", "max_frames", "sampling"} <= {p["name"] for p in detect["parameters"]}
    assert "genguard_video" in detect["description"] and "POST /v1/jobs" in detect["description"]


def test_cli_answers_a_folder_of_images_and_clips_directly_and_through_the_gateway(vgw, triton, tmp_path, clip_ab):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "1.png").write_bytes(png(5))
    (folder / "2.mp4").write_bytes(clip_ab)
    (folder / "3.gif").write_bytes(vf.animated([A, B], "GIF"))
    (folder / "4.mp4").write_bytes(vf.audio_only())
    for url in (triton.grpc_url, vgw.url):
        out = genguard_cli("detect", str(folder), "--url", url, "--format", "jsonl", "--fps", "2", "--timeout", "180")
        assert out.returncode == 4, out.stderr  # the audio-only file failed, alone
        rows = [json.loads(line) for line in out.stdout.splitlines()]
        assert [(r["name"].rsplit("/", 1)[-1], r["status"], r.get("kind", "image")) for r in rows] == [
            ("1.png", "SUCCESS", "image"), ("2.mp4", "SUCCESS", "video"), ("3.gif", "SUCCESS", "video"),
            ("4.mp4", "FAILURE", "video")], url
        assert rows[3]["error"]["reason"] == "no_video_stream"
        assert [e["t"] for e in rows[1]["timeline"]] == [0.0, 0.5, 1.0, 1.5]  # --fps 2 reached the model
    table = genguard_cli("detect", str(folder / "2.mp4"), "--url", triton.grpc_url, "--max-frames", "1")
    assert table.returncode == 0, table.stderr
    assert "[video 1 frames]" in table.stdout
