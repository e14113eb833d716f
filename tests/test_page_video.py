"""The reviewer page with clips, in Debian's chromium (Playwright, headless) against a real gateway and the real
tritonserver: a clip is a row with a poster (<video>) and a timeline strip of P(AI) and NSFW level per sampled
frame; clicking a bar shows that frame's answer, checked against the API's own answer to the page's request."""

from __future__ import annotations

import pytest

import video_fixtures as vf
from genguard.export import samples
from test_gateway import png, start_gateway
from test_page import CHROMIUM, SCREENSHOTS, WAIT_MS, _check_number, browser  # noqa: F401 (the browser fixture)

pytestmark = [pytest.mark.server, pytest.mark.gateway, pytest.mark.browser]

PHOTOS = samples.photos()
A, B = PHOTOS["rocket.jpg"], PHOTOS["coffee.png"]


@pytest.mark.slow  # ~16 s: its own gateway and a browser session on top of the clip's inference
def test_a_clip_is_a_row_with_a_poster_and_a_timeline_strip(triton, browser, tmp_path):  # noqa: F811
    gw = start_gateway(triton.grpc_url, tmp_path, "--deadline-s", "180")
    try:
        (tmp_path / "still.png").write_bytes(png(7))
        (tmp_path / "clip.webm").write_bytes(vf.clip([A, B, A], "webm", "libvpx-vp9"))
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(60_000)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
        page.goto(gw.url + "/")
        page.locator("#served", has_text="detectors:").wait_for()
        with page.expect_response(lambda r: r.url.endswith("/v1/detect"), timeout=WAIT_MS) as answered:
            page.set_input_files("#pick-files", [str(tmp_path / "still.png"), str(tmp_path / "clip.webm")])
        docs = {d["name"]: d for d in answered.value.json()["data"]}
        clip = docs["clip.webm"]
        assert clip["kind"] == "video" and clip["status"] == "SUCCESS" and docs["still.png"]["status"] == "SUCCESS"
        page.locator("#progress-box").wait_for(state="hidden")

        row = page.locator('#rows tr[data-name="clip.webm"]')
        assert row.locator("video.thumb").count() == 1 and row.locator("td.verdict").inner_text() == clip["verdict"]
        bars = row.locator(".strip .frame")
        assert bars.count() == len(clip["timeline"]) == 3
        assert page.locator('#rows tr[data-name="still.png"] .strip').count() == 0
        for i, entry in enumerate(clip["timeline"]):  # each bar: its frame's P(AI) and NSFW level
            style = bars.nth(i).get_attribute("style")
            assert f"--p: {entry['is_ai_generated']}" in style, style
            assert f"nsfw-{entry['nsfw_level']}" in bars.nth(i).get_attribute("class")

        bars.nth(1).click()  # the middle frame (the other photo): its answer in the detail view
        frame = page.locator("#detail [data-block=frame]")
        assert frame.get_attribute("data-frame") == "1"
        entry = clip["timeline"][1]
        _check_number(frame.locator('[data-key="P(AI-generated)"] .num'), entry["is_ai_generated"])
        assert frame.locator('[data-key="NSFW level"] dd').inner_text() == entry["nsfw_level"]
        assert frame.locator('[data-key="t"] dd').inner_text() == f"{entry['t']:g}"
        facts = page.locator("#detail [data-block=video]")
        assert facts.locator('[data-key="codec"] dd').inner_text() == clip["video"]["codec"]
        assert page.is_visible("#d-video") and page.is_hidden("#d-image")
        page.locator("#detail [data-block=timeline] .frame").nth(2).click()  # the detail view's own strip
        assert page.locator("#detail [data-block=frame]").get_attribute("data-frame") == "2"
        _check_number(page.locator('#detail [data-block=frame] [data-key="P(AI-generated)"] .num'),
                      clip["timeline"][2]["is_ai_generated"])
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "page-video-1280x800.png"))
        assert errors == []
    finally:
        gw.stop()
