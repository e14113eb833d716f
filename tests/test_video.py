"""Video: sniffing, decoding and sampling (genguard.video), the clip aggregation (genguard.clips), and
`genguard_video` on the real tritonserver: every container/codec this PyAV encodes, frame parity with the
reference pipelines on the same decoded frames, a clip whose middle changes source, and the hostile set."""

from __future__ import annotations

import json

import numpy as np
import pytest

import video_fixtures as vf
from conftest import TEST_MAX_DECODED_FRAMES, checkpoint_path
from genguard import clips, protocol, specs, video
from genguard.client import Client
from genguard.export import samples

PHOTOS = samples.photos()
A, B = PHOTOS["rocket.jpg"], PHOTOS["coffee.png"]


# -- decoding and sampling (no server) --------------------------------------------------------------------

@pytest.mark.parametrize("name,fmt,codec,pix", vf.codecs_here(), ids=[c[0] for c in vf.codecs_here()])
def test_each_encodable_codec_decodes_and_samples_at_the_rate(name, fmt, codec, pix):
    data = vf.clip([A, B, A], fmt, codec, pix, seconds_each=1.0, fps=4)
    assert video.is_video(data)
    clip = video.decode(data, sampling=video.Sampling(fps=2))
    assert [f.t for f in clip.frames] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert clip.frames_decoded == 12 and clip.width == 160 and clip.height == 128
    assert clip.facts()["duration_s"] == pytest.approx(3.0, abs=0.3)
    assert all(f.image.mode == "RGB" and f.image.size == (160, 128) for f in clip.frames)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animated_images_are_clips_and_stills_are_not(fmt):
    data = vf.animated([A, B, A], fmt)
    assert video.sniff(data) == {"GIF": "gif", "WEBP": "webp", "PNG": "apng"}[fmt]
    clip = video.decode(data)
    assert [f.t for f in clip.frames] == [0.0, 1.0, 2.0] and clip.frames_decoded == 3
    assert clip.duration_s == pytest.approx(3.0)
    assert not video.is_video(samples.photos()["rocket.jpg"]) and not video.is_video(B)


def test_first_frame_always_then_max_frames_and_keyframes():
    data = vf.clip([A, B] * 3, seconds_each=1.0, fps=4)
    assert [f.t for f in video.decode(data, sampling=video.Sampling(fps=0.01)).frames] == [0.0]
    assert len(video.decode(data, sampling=video.Sampling(fps=4, max_frames=5)).frames) == 5
    keys = video.decode(data, sampling=video.Sampling(mode="keyframes"))
    assert keys.frames and all(f.keyframe for f in keys.frames) and keys.frames[0].t == 0.0


HOSTILE = {
    "empty": (lambda: b"", "empty"),
    "not a video": (lambda: b"\x00\x00\x00\x18ftypisom" + b"\x13" * 4000, "unreadable"),
    "truncated": (lambda: vf.clip([A, B])[:3000], "unreadable"),
    "audio only": (vf.audio_only, "no_video_stream"),
    "corrupt packets mid-stream": (lambda: vf.corrupt_middle(vf.clip([A, B] * 4)), "corrupt"),
    "unsupported codec": (vf.unknown_codec, "unsupported_codec"),
    "absurd dimensions": (vf.absurd_dimensions, "too_many_pixels"),
    "frame-count bomb": (lambda: vf.frame_bomb(TEST_MAX_DECODED_FRAMES + 500), "too_many_frames"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_clips_are_refused_with_their_reason(name):
    make, reason = HOSTILE[name]
    with pytest.raises(video.VideoRejected) as caught:
        video.decode(make(), video.VideoLimits(max_decoded_frames=TEST_MAX_DECODED_FRAMES))  # as the test server
    assert caught.value.reason == reason, str(caught.value)


def test_the_bounded_child_sends_what_decode_samples_and_fails_within_its_limits():
    """genguard_video decodes in a child process (genguard.triton_models.video_decode): the same sampled frames,
    as the PNGs genguard.video.png makes of them; a clip refused inside it keeps its reason; a child that runs
    out of its address space fails its clip as decode_memory."""
    from genguard.triton_models import video_decode

    data = vf.clip([A, B, A])
    clip, frames = video_decode.open_bounded(data)
    sent = list(frames)
    reference = video.decode(data)
    assert [f.t for f, _ in sent] == [f.t for f in reference.frames] and clip.frames_decoded == 12
    assert [png for _, png in sent] == [video.png(f.image) for f in reference.frames]
    with pytest.raises(video.VideoRejected) as caught:
        list(video_decode.open_bounded(vf.audio_only())[1])
    assert caught.value.reason == "no_video_stream"
    with pytest.raises(video.VideoRejected) as caught:
        list(video_decode.open_bounded(data, video.VideoLimits(max_memory_mb=100))[1])
    assert caught.value.reason == "decode_memory", str(caught.value)


def test_the_decode_time_limit_does_not_count_the_time_frames_spend_with_the_detectors(monkeypatch):
    """The watchdog kills the child after decode_timeout_s of its own time: a caller that holds each frame longer
    (the ensemble answering a batch) does not make a fast decode time out."""
    import time

    from genguard.triton_models import video_decode

    monkeypatch.setattr(video_decode, "GRACE_S", 0.0)
    clip, frames = video_decode.open_bounded(vf.clip([A, B, A]), video.VideoLimits(decode_timeout_s=3.0))
    for _ in frames:
        time.sleep(1.5)  # 4.5 s held in all, over the 3 s limit
    assert clip.frames_decoded == 12


def test_limits_refuse_before_or_while_decoding():
    data = vf.clip([A, B] * 3, fps=4)
    cases = [(video.VideoLimits(max_bytes=1000), "too_large"), (video.VideoLimits(max_pixels=100 * 100), "too_many_pixels"),
             (video.VideoLimits(max_duration_s=2), "too_long"), (video.VideoLimits(max_decoded_frames=10), "too_many_frames"),
             (video.VideoLimits(decode_timeout_s=0), "decode_timeout")]
    for limits, reason in cases:
        with pytest.raises(video.VideoRejected) as caught:
            video.decode(data, limits)
        assert caught.value.reason == reason


def test_options_are_checked_by_name():
    assert video.parse_options('{"fps": 2, "sampling": "keyframes"}') == video.Sampling(fps=2, mode="keyframes")
    for bad, word in [('{"fsp": 2}', "fsp"), ('{"fps": -1}', "fps"), ('{"max_frames": 0}', "max_frames"),
                      ('{"sampling": "scenes"}', "scenes"), ("[1]", "object")]:
        with pytest.raises(ValueError, match=word):
            video.parse_options(bad)


def _frame_doc(p: float, level: str = "neutral", ok: bool = True) -> dict:
    if not ok:
        return {"status": protocol.FAILURE, "error": {"reason": "corrupt", "message": "bad"}}
    scores = {"neutral": 0.1, "low": 0.1, "medium": 0.1, "high": 0.1, level: 0.7}
    return {"status": protocol.SUCCESS, "is_ai_generated": p, "possible_sources": {"none": 1 - p, "flux": p},
            "sources_given_ai": {"flux": 1.0}, "fusion": {"threshold": 0.5, "margin": 0.0, "id": "x"},
            "nsfw": {"level": level, "scores": scores, "at_least": {"low": 0.9, "medium": 0.8, "high": 0.7},
                     "is_nsfw": level in ("medium", "high"), "rule": "at_least[medium] >= 0.5"},
            "weights": {"d": "random"}}


def test_aggregation_top_k_mean_nsfw_peak_and_timeline():
    clip = video.Clip("mp4", "h264", 16, 16, 4.0, 1.0,
                      frames=[video.Frame(float(t), None) for t in range(4)])
    docs = [_frame_doc(0.1), _frame_doc(0.9, "high"), _frame_doc(0.7), _frame_doc(0.2, ok=False)]
    doc = clips.answer(0, clip, docs, clips.Aggregation(top_fraction=0.5))
    assert doc["is_ai_generated"] == pytest.approx((0.9 + 0.7) / 2) and doc["verdict"] == "ai_generated"
    assert doc["source"] == "flux" and doc["aggregation"]["k"] == 2
    assert doc["aggregation"]["frames_over_threshold"] == pytest.approx(2 / 3)
    assert doc["nsfw"]["level"] == "high" and doc["nsfw"]["timestamps"] == [1.0] and doc["nsfw"]["is_nsfw"]
    assert [e["status"] for e in doc["timeline"]] == ["SUCCESS"] * 3 + ["FAILURE"]
    plain = clips.answer(0, clip, docs, clips.Aggregation(top_fraction=1.0))
    assert plain["is_ai_generated"] == pytest.approx(1.7 / 3) and plain["weights"] == {"d": "random"}
    none = clips.answer(0, clip, [_frame_doc(0, ok=False)] * 4)
    assert none["status"] == protocol.FAILURE and none["error"]["reason"] == "no_frame_answered"


# -- genguard_video on the real server --------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(triton):
    with Client(triton.grpc_url) as c:
        yield c


def _reference_probs(tiny_build, images) -> dict[str, list[np.ndarray]]:
    from genguard.export.checkpoints import load
    from genguard.export.reference import ReferencePipeline

    out = {}
    for name, spec in specs.DETECTORS.items():
        source = checkpoint_path(tiny_build, name)
        with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
            out[name] = ReferencePipeline(spec, load(spec, source), str(source)).probs(images)
    return out


@pytest.mark.server
@pytest.mark.slow  # ~18 s on 2 cores: loads every detector's reference pipeline in process
def test_served_frames_equal_the_reference_on_the_same_decoded_frames(client, tiny_build):
    """Frame parity: per sampled frame, every detector head's served probabilities vs the card's reference
    pipeline on the frame genguard.video decodes in process (the server sends it losslessly)."""
    data = vf.clip([A, B, A], seconds_each=1.0, fps=4)
    result = client.detect(data, video_options={"fps": 2})[0]
    assert result.ok and result.kind == "video", result.error
    frames = video.decode(data, sampling=video.Sampling(fps=2)).frames
    assert [e["t"] for e in result.timeline] == [f.t for f in frames]
    reference = _reference_probs(tiny_build, [f.image for f in frames])
    worst = 0.0
    for name, spec in specs.DETECTORS.items():
        for head, ref in zip(spec.heads, reference[name]):
            got = np.array([[e["detectors"][name][head.name][label] for label in head.labels] for e in result.timeline])
            worst = max(worst, float(np.abs(got - ref).max()))
    print(f"\nmax |dprob| served frames vs reference on the same decoded frames: {worst:.2e}")
    assert worst <= 1e-4


@pytest.mark.server
@pytest.mark.slow  # ~28 s on 2 cores: ten clips, each with its middle frame asked again as an image
def test_every_codec_and_animated_format_through_the_server_with_a_source_switch(client):
    """Each clip shows A, then B, then A (one second each): the timeline switches where the content does, and
    the image ensemble answers B's decoded frame as the timeline does."""
    clips_in = {name: vf.clip([A, B, A], fmt, codec, pix) for name, fmt, codec, pix in vf.codecs_here()}
    clips_in |= {f"animated.{fmt.lower()}": vf.animated([A, B, A], fmt) for fmt in ("GIF", "WEBP", "PNG")}
    results = client.detect([A, *clips_in.values(), B])
    assert [r.kind for r in results] == ["image"] + ["video"] * len(clips_in) + ["image"]
    assert results[0].ok and results[-1].ok
    for (name, data), result in zip(clips_in.items(), results[1:-1]):
        assert result.ok, (name, result.error)
        line = result.timeline
        assert [e["t"] for e in line] == [0.0, 1.0, 2.0], name
        middle = video.decode(data).frames[1].image
        alone = client.detect(middle)[0]
        assert line[1]["is_ai_generated"] == pytest.approx(alone.is_ai_generated, abs=1e-4), name
        assert abs(line[0]["is_ai_generated"] - line[1]["is_ai_generated"]) > 10 * abs(
            line[0]["is_ai_generated"] - line[2]["is_ai_generated"]), (name, line)
        assert result.video["frames_sampled"] == 3 and result.video["codec"]
        assert result.weights and result.fusion.get("id") is not None
        assert result.verdict in ("ai_generated", "not_ai_generated", "uncertain")


@pytest.mark.server
def test_hostile_clips_fail_alone_between_good_neighbours(client):
    good = vf.clip([A, B])
    bad = {name: make() for name, (make, _) in HOSTILE.items() if name != "empty"}
    results = client.detect([good, *bad.values(), good])
    assert results[0].ok and results[-1].ok
    for (name, _), result in zip(bad.items(), results[1:-1]):
        if video.is_video(bad[name]):
            assert not result.ok and result.error.reason == HOSTILE[name][1], (name, result.error)
        else:
            assert not result.ok, name  # not recognised as a clip: the image pipeline refuses it


@pytest.mark.server
def test_options_reach_the_server_and_bad_ones_fail_the_clip(client):
    data = vf.clip([A, B, A], fps=4)
    assert len(client.detect(data, video_options={"fps": 4, "max_frames": 5})[0].timeline) == 5
    bad = client.detect(data, video_options={"fps": "fast"})[0]
    assert not bad.ok and bad.error.reason == "invalid_options" and "fps" in bad.error.message


@pytest.mark.server
def test_container_tags_and_c2pa_in_mp4_reach_the_provenance_block(client, c2pa_cas):
    from genguard.provenance.testing import sign

    tagged = vf.clip([A, B], metadata={"comment": "made with Stable Diffusion"})
    doc = client.detect(tagged)[0].raw
    assert doc["provenance"]["declares_ai"] and doc["provenance"]["generator"] == "stable_diffusion"
    assert doc["provenance"]["c2pa"] == {"present": False}
    signed = sign(vf.clip([A, B]), "video/mp4", c2pa_cas[0].signer())
    c2pa = client.detect(signed)[0].raw["provenance"]["c2pa"]
    assert c2pa["present"] and c2pa["state"] == "trusted" and "trainedAlgorithmicMedia" in c2pa["digital_source_types"]
    assert json.dumps(doc)  # the whole answer is JSON
