"""The reviewer page (GET / of the REST gateway) in a real browser: Debian's chromium driven by Playwright
(launched by its executable_path, headless), over real HTTP against a real uvicorn gateway (keys on) in
front of the real tritonserver (the session `triton` fixture). A mixed batch is uploaded through the
page; the rows, the failure reason, the NSFW blur and its reveal, the detail view's numbers (against the
API's own answer to the page's request), the API-key prompt, keyboard labels and the exported labels
files are checked; every request the page makes must stay on the gateway's origin. Screenshots go to
build/screenshots/ for review."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
from PIL import Image
from PIL.PngImagePlugin import PngInfo

import hostile
from genguard.calibration.dataset import load_labelled
from test_gateway import KEY, ROOT, auth, png, start_gateway

pytestmark = [pytest.mark.server, pytest.mark.gateway, pytest.mark.browser]

CHROMIUM = os.environ.get("GENGUARD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = ROOT / "build" / "screenshots"
LEVELS = ("low", "medium", "high")
WAIT_MS = 240_000  # a shared, loaded test machine: inference can be slow


@pytest.fixture(scope="module")
def keyed(triton, tmp_path_factory):
    gw = start_gateway(triton.grpc_url, tmp_path_factory.mktemp("gw-page"), "--deadline-s", "180", keys=[KEY])
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        yield chromium
        chromium.close()


def mixed_batch(folder: Path) -> dict[str, bytes]:
    """Good images (PNG, JPEG, a PNG whose text chunk names a generator), and a corrupt PNG."""
    gradient = np.linspace(0, 255, 96 * 128 * 3).reshape(96, 128, 3).astype(np.uint8)
    jpeg = io.BytesIO()
    Image.fromarray(gradient).save(jpeg, "JPEG", quality=90)
    tagged = io.BytesIO()
    info = PngInfo()
    info.add_text("parameters", "a lighthouse at dusk\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Model: sd_xl_base")
    Image.open(io.BytesIO(png(5, (80, 64)))).save(tagged, "PNG", pnginfo=info)
    files = {"noise-a.png": png(1), "noise-b.png": png(2, (72, 72)), "gradient.jpg": jpeg.getvalue(),
             "webui.png": tagged.getvalue(), "corrupt.png": hostile.png_with_bad_crc(png(40, (120, 80)))}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def test_page_and_static_files_are_served_with_csp_without_a_key(keyed):
    page = requests.get(keyed.url + "/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'" and directives["script-src"] == "'self'"
    assert directives["connect-src"] == "'self'" and directives["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "http" not in csp
    html = page.text
    assert html.count("<script") == html.count('<script src="/static/') == 2  # app.js, jobs.js; no inline script
    assert not re.search(r"\son[a-z]+\s*=", html)  # no inline event handlers either
    for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css"), ("favicon.svg", "image/svg+xml")):
        r = requests.get(f"{keyed.url}/static/{name}", timeout=10)
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind), name
        assert r.headers["content-security-policy"] == csp
        text = r.content.replace(b'xmlns="http://www.w3.org/2000/svg"', b"")  # a namespace name, not a fetch
        assert b"http://" not in text and b"https://" not in text and b"//" + b"cdn" not in text, name
    missing = requests.get(keyed.url + "/static/index.py", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    # the API behind the page stays keyed
    refused = requests.get(keyed.url + "/v1/models", timeout=10)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "missing_api_key"


def _value(locator) -> float:
    return float(locator.get_attribute("data-value"))


def _check_number(locator, expected: float) -> None:
    assert _value(locator) == expected
    assert locator.inner_text() == f"{expected:.4f}"


def test_review_a_mixed_batch(keyed, browser, tmp_path):
    files = mixed_batch(tmp_path)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    good = [n for n in files if n != "corrupt.png"]
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)

    # -- the API-key prompt: a wrong key is refused with the gateway's message, the right one is kept
    page.goto(keyed.url + "/")
    dialog = page.locator("#key-dialog")
    dialog.wait_for(state="visible")
    page.fill("#key-input", "gk-wrong-key-0000000000000000")
    page.click("#key-form button[type=submit]")
    page.locator("#key-error").wait_for(state="visible")
    refused = requests.get(keyed.url + "/v1/models", headers=auth("gk-wrong-key-0000000000000000"), timeout=10)
    assert page.inner_text("#key-error") == refused.json()["error"]["message"]
    page.fill("#key-input", KEY)
    page.click("#key-form button[type=submit]")
    dialog.wait_for(state="hidden")
    models = requests.get(keyed.url + "/v1/models", headers=auth(), timeout=30).json()
    page.locator("#served", has_text="detectors:").wait_for()
    served = page.inner_text("#served")
    assert all(name in served for name in models["detectors"])
    assert page.evaluate("sessionStorage.getItem('genguard.apiKey')") == KEY
    assert page.input_value("#blur-level") == models["fusion"]["nsfw_level"]
    assert float(page.input_value("#blur-threshold")) == models["fusion"]["nsfw_threshold"]
    assert page.is_visible("#random-banner") and "RANDOM WEIGHTS" in page.inner_text("#random-banner")

    # -- upload: one multipart request; the answer the page got is the reference for every number shown
    with page.expect_response(lambda r: r.url.endswith("/v1/detect"), timeout=WAIT_MS) as answered:
        page.set_input_files("#pick-files", [str(tmp_path / n) for n in files])
    response = answered.value
    assert response.status == 200 and response.request.method == "POST"
    assert response.request.headers["authorization"] == f"Bearer {KEY}"
    docs = {d["name"]: d for d in response.json()["data"]}
    assert sorted(docs) == sorted(files)
    page.locator("#progress-box").wait_for(state="hidden")  # every chunk answered
    assert page.locator("#rows td.status", has_text="PENDING").count() == 0

    rows = page.locator("#rows tr")
    assert rows.count() == len(files)
    assert sorted(rows.nth(i).get_attribute("data-name") for i in range(rows.count())) == sorted(files)
    for name, doc in docs.items():
        row = page.locator(f'#rows tr[data-name="{name}"]')
        if name == "corrupt.png":
            assert doc["status"] == "FAILURE" and doc["error"]["reason"] == "corrupt"
            assert row.locator("td.status").inner_text() == "FAILURE: corrupt"
            assert row.locator("td.status").get_attribute("title") == doc["error"]["message"]
            continue
        assert doc["status"] == "SUCCESS", doc
        assert row.locator("td.status").inner_text() == "SUCCESS"
        assert row.locator("td.verdict").inner_text() == doc["verdict"]
        _check_number(row.locator("td.p .num"), doc["is_ai_generated"])
        assert row.locator("td.source").inner_text() == (doc["source"] or "—")
        assert row.locator("td.nsfw").inner_text() == doc["nsfw"]["level"]
    failure = page.locator('#failure-list li[data-name="corrupt.png"]')
    assert failure.locator(".reason").inner_text() == "corrupt"
    assert docs["corrupt.png"]["error"]["message"] in failure.inner_text()

    # -- NSFW blur: pick the level and threshold (from the API's answers) that blur exactly one image
    def gap(level):
        scores = sorted((docs[n]["nsfw"]["at_least"][level], n) for n in good)
        return scores[-1][0] - scores[-2][0], level, scores[-1][1], (scores[-1][0] + scores[-2][0]) / 2
    width, level, target, threshold = max(gap(lv) for lv in LEVELS)
    assert width > 0, "every image has the same NSFW scores: no level separates them"
    page.select_option("#blur-level", level)
    page.fill("#blur-threshold", repr(threshold))
    blurred = [n for n in files if "blurred" in (page.locator(f'#rows tr[data-name="{n}"] img').get_attribute("class") or "")]
    assert blurred == [target]
    thumb = page.locator(f'#rows tr[data-name="{target}"] img')
    assert "blur(" in thumb.evaluate("img => getComputedStyle(img).filter")
    page.screenshot(path=str(SCREENSHOTS / "page-1280x800-blurred.png"))
    page.click(f'#rows tr[data-name="{target}"] .thumb-button')  # reveal (and open the detail view)
    assert "blurred" not in (thumb.get_attribute("class") or "")
    assert thumb.evaluate("img => getComputedStyle(img).filter") == "none"
    assert page.is_visible("#detail") and page.inner_text("#d-name") == target
    assert "blurred" not in (page.get_attribute("#d-image", "class") or "")

    # -- the detail view's numbers are the API's
    for name in good:
        page.click(f'#rows tr[data-name="{name}"] td.name')
        assert page.inner_text("#d-name") == name
        doc = docs[name]
        detail = page.locator("#detail")
        assert detail.locator("[data-block=verdict] .verdict").inner_text() == doc["verdict"]
        fusion = detail.locator("[data-block=fusion]")
        _check_number(fusion.locator('[data-key="P(AI-generated)"] .num'), doc["is_ai_generated"])
        _check_number(fusion.locator('[data-key="threshold"] .num'), doc["fusion"]["threshold"])
        for block, values in (("possible_sources", doc["possible_sources"]), ("sources_given_ai", doc["sources_given_ai"]),
                              ("nsfw_scores", doc["nsfw"]["scores"]), ("nsfw_at_least", doc["nsfw"]["at_least"])):
            bars = detail.locator(f"[data-block={block}] .bar-row")
            assert bars.count() == len(values), block
            for key, value in values.items():
                _check_number(detail.locator(f'[data-block={block}] .bar-row[data-key="{key}"] .num'), value)
        tables = detail.locator("[data-block=detectors] table.probs")
        assert tables.count() == sum(len(heads) for heads in doc["detectors"].values())
        for detector, heads in doc["detectors"].items():
            for head, probs in heads.items():
                table = detail.locator(f'table.probs[data-detector="{detector}"][data-head="{head}"]')
                assert table.locator("tbody tr").count() == len(probs)
                for label, p in probs.items():
                    _check_number(table.locator(f'tr[data-key="{label}"] .num'), p)
        facts = detail.locator("[data-block=image]")
        for key in ("width", "height", "format"):
            assert facts.locator(f'[data-key="{key}"] dd').inner_text() == str(doc["image"][key])
        assert facts.locator('[data-key="bytes"] dd').inner_text() == str(len(files[name]))
        assert detail.locator("[data-block=random-weights]").is_visible()
        assert detail.locator(".warning").all_inner_texts() == doc.get("warnings", [])
        signals = doc["provenance"]["signals"]
        shown = detail.locator("[data-block=provenance] li.signal")
        assert shown.count() == len(signals)
        for i, signal in enumerate(signals):
            assert signal["kind"] in shown.nth(i).inner_text() and signal["source"] in shown.nth(i).inner_text()
        assert detail.locator('[data-block=provenance-facts] [data-key="effect"] dd').inner_text() \
            == doc["provenance"]["effect"]
        assert detail.locator("#d-explanations").is_hidden()  # nothing is drawn until answers carry explanations
    webui = next(s for s in docs["webui.png"]["provenance"]["signals"] if s["kind"] == "ai_generated")
    page.click('#rows tr[data-name="webui.png"] td.name')
    line = page.locator("[data-block=provenance] li.signal", has_text=webui["detail"]["tool"])
    assert line.count() == 1 and "a lighthouse at dusk" in line.inner_text()  # the prompt excerpt, as sent

    # -- the failure in the detail view
    page.click('#rows tr[data-name="corrupt.png"] td.name')
    assert page.locator("[data-block=failure]").inner_text().startswith("FAILURE: corrupt")

    # -- labels by keyboard: select a row, then a / j r / j u; the failure stays unlabelled
    page.click("#grid th button[data-sort=name]")  # sorted by name: corrupt, gradient, noise-a, noise-b, webui
    order = [page.locator("#rows tr").nth(i).get_attribute("data-name") for i in range(len(files))]
    assert order == sorted(files)
    page.click('#rows tr[data-name="gradient.jpg"] td.name')
    page.keyboard.press("a")
    page.keyboard.press("j")
    page.keyboard.press("r")
    page.keyboard.press("j")
    page.keyboard.press("u")
    page.keyboard.press("j")
    page.keyboard.press("r")
    page.keyboard.press("0")  # webui.png: labelled, then cleared
    labels = {n: page.locator(f'#rows tr[data-name="{n}"] td.label').inner_text() for n in files}
    expected = {"gradient.jpg": "ai", "noise-a.png": "real", "noise-b.png": "unsure"}
    assert labels == {n: expected.get(n, "") for n in files}
    page.keyboard.press("Escape")  # closes the detail view; Enter on a focused row opens it
    assert page.locator("#detail").is_hidden()
    page.focus('#rows tr[data-name="noise-b.png"]')
    page.keyboard.press("Enter")
    assert page.locator("#detail").is_visible() and page.inner_text("#d-name") == "noise-b.png"
    assert page.get_attribute('#d-labels button[data-label="unsure"]', "aria-pressed") == "true"
    page.select_option("#f-label", "real")
    assert [page.locator("#rows tr").nth(i).get_attribute("data-name") for i in range(page.locator("#rows tr").count())] \
        == ["noise-a.png"]
    page.select_option("#f-label", "")

    # -- exports: the labelled-set formats genguard evaluate / calibrate read, answers included
    with page.expect_download() as download:
        page.click("#export-jsonl")
    jsonl = tmp_path / "labels.jsonl"
    download.value.save_as(jsonl)
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert sorted((x["path"], x["label"]) for x in lines) == sorted(expected.items())
    for line in lines:
        assert line["answer"] == docs[line["path"]]
    with page.expect_download() as download:
        page.click("#export-csv")
    table = tmp_path / "labels.csv"
    download.value.save_as(table)
    with table.open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames[:3] == ["path", "label", "generator"]
        rows_csv = list(reader)
    assert sorted((r["path"], r["label"]) for r in rows_csv) == sorted(expected.items())
    for r in rows_csv:
        doc = docs[r["path"]]
        assert (r["verdict"], float(r["is_ai_generated"]), r["status"]) == (doc["verdict"], doc["is_ai_generated"],
                                                                            doc["status"])
    for exported in (jsonl, table):
        labelled = load_labelled(exported)
        assert sorted((Path(s.path).name, s.label) for s in labelled.samples) == [("gradient.jpg", 1), ("noise-a.png", 0)]
        assert labelled.skipped == {"unsure or unlabelled": 1}

    page.click(f'#rows tr[data-name="{target}"] td.name')
    page.screenshot(path=str(SCREENSHOTS / "page-1280x800.png"))

    # -- sort by P(AI) (failures first), filter by status
    page.click("#grid th button[data-sort=p]")
    by_p = [page.locator("#rows tr").nth(i).get_attribute("data-name") for i in range(len(files))]
    assert by_p == ["corrupt.png"] + sorted(good, key=lambda n: docs[n]["is_ai_generated"])
    page.select_option("#f-status", "FAILURE")
    assert page.locator("#rows tr").count() == 1 and page.locator("#rows tr").get_attribute("data-name") == "corrupt.png"
    page.select_option("#f-status", "")
    source = docs["webui.png"]["source"]
    page.select_option("#f-source", source)
    page.fill("#f-p", repr(docs["webui.png"]["is_ai_generated"]))
    shown = [page.locator("#rows tr").nth(i).get_attribute("data-name") for i in range(page.locator("#rows tr").count())]
    assert shown == sorted((n for n in good if docs[n]["source"] == source
                            and docs[n]["is_ai_generated"] >= docs["webui.png"]["is_ai_generated"]),
                           key=lambda n: docs[n]["is_ai_generated"])
    assert "webui.png" in shown
    page.select_option("#f-source", "")
    page.fill("#f-p", "")
    assert page.locator("#rows tr").count() == len(files)

    # -- a dropped file goes the same way (one more request, one more row); its name is shown as text
    with page.expect_response(lambda r: r.url.endswith("/v1/detect"), timeout=WAIT_MS) as answered:
        page.evaluate("""bytes => {
            const dt = new DataTransfer();
            dt.items.add(new File([new Uint8Array(bytes)], "<b>dropped</b>.png", {type: "image/png"}));
            document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true}));
        }""", list(files["noise-a.png"]))
    dropped = answered.value.json()["data"]
    assert [d["name"] for d in dropped] == ["<b>dropped</b>.png"]
    row = page.locator('#rows tr[data-name="<b>dropped</b>.png"]')
    assert row.locator("td.name").inner_text() == "<b>dropped</b>.png"  # a name is text, never HTML
    assert row.locator("td.name b").count() == 0
    row.locator("td.status", has_text="SUCCESS").wait_for()
    _check_number(row.locator("td.p .num"), dropped[0]["is_ai_generated"])

    # -- phone width (the desktop screenshot was taken above), then the origin check
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # the page itself never scrolls sideways
    assert page.locator(".results").evaluate("e => e.scrollWidth <= e.clientWidth")  # nor does the grid
    page.screenshot(path=str(SCREENSHOTS / "page-390-phone.png"), full_page=True)

    origin = urlsplit(keyed.url)
    elsewhere = [u for u in requested if urlsplit(u).scheme not in ("blob", "data")
                 and (urlsplit(u).scheme, urlsplit(u).netloc) != (origin.scheme, origin.netloc)]
    assert requested and not elsewhere
    assert {urlsplit(u).path for u in requested if u.startswith(keyed.url)} >= {"/", "/static/app.js", "/static/app.css",
                                                                                "/v1/models", "/v1/detect"}
    assert not errors, errors
    page.reload()  # the key is kept for the tab: no prompt again
    page.locator("#served", has_text="detectors:").wait_for()
    assert page.locator("#key-dialog").is_hidden()
    context.close()


def test_page_without_keys_and_a_refused_request(triton, browser, tmp_path):
    """A loopback gateway without keys: no prompt. A request the gateway refuses (here 413, its body limit)
    marks each of its images with the error's code and message."""
    gw = start_gateway(triton.grpc_url, tmp_path, "--max-body-bytes", "4096")
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(gw.url + "/")
        page.locator("#served", has_text="detectors:").wait_for()
        assert page.locator("#key-dialog").is_hidden()
        big = tmp_path / "big.png"
        big.write_bytes(png(3, (200, 200)))  # ~120 kB of noise: over the 4 kB body limit
        with page.expect_response(lambda r: r.url.endswith("/v1/detect"), timeout=WAIT_MS) as answered:
            page.set_input_files("#pick-files", str(big))
        error = answered.value.json()["error"]
        assert answered.value.status == 413 and error["code"] == "body_too_large"
        status = page.locator('#rows tr[data-name="big.png"] td.status')
        status.filter(has_text="FAILURE").wait_for()
        assert status.inner_text() == "FAILURE: body_too_large"
        assert status.get_attribute("title") == error["message"]
        assert error["message"] in page.locator('#failure-list li[data-name="big.png"]').inner_text()
        assert "authorization" not in answered.value.request.headers
        # a picked folder (hidden files skipped, names keep the folder) and a pasted image, small enough to pass
        folder = tmp_path / "shots"
        folder.mkdir()
        for name, seed in (("a.png", 11), ("b.png", 12), (".hidden.png", 13)):
            (folder / name).write_bytes(png(seed, (8, 8)))
        with page.expect_response(lambda r: r.url.endswith("/v1/detect"), timeout=WAIT_MS) as answered:
            page.set_input_files("#pick-folder", str(folder))
        assert sorted(d["name"] for d in answered.value.json()["data"]) == ["shots/a.png", "shots/b.png"]
        with page.expect_response(lambda r: r.url.endswith("/v1/detect"), timeout=WAIT_MS) as answered:
            page.evaluate("""bytes => {
                const dt = new DataTransfer();
                dt.items.add(new File([new Uint8Array(bytes)], "pasted.png", {type: "image/png"}));
                document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: dt, bubbles: true}));
            }""", list(png(14, (8, 8))))
        assert [d["status"] for d in answered.value.json()["data"]] == ["SUCCESS"]
        page.locator("#progress-box").wait_for(state="hidden")
        names = [page.locator("#rows tr").nth(i).get_attribute("data-name") for i in range(page.locator("#rows tr").count())]
        assert (names[0], sorted(names[1:3]), names[3:]) == ("big.png", ["shots/a.png", "shots/b.png"], ["pasted.png"])
        assert page.locator("#rows td.status", has_text="SUCCESS").count() == 3
        page.close()
    finally:
        gw.stop()


def _typed(value: float) -> str:
    """What the page shows for a served threshold (app.js typed()): 3 decimals, trailing zeros dropped."""
    return repr(float(f"{value:.3f}"))


@pytest.mark.slow  # a server of its own: its fusion's NSFW threshold is an unrounded float
def test_blur_threshold_shows_a_typed_value_and_blurs_as_served(triton, tiny_build, browser, tmp_path):
    """A fitted fusion's thresholds are unrounded floats (0.8677880859545739). The page shows them as a
    person would type them, and until the reviewer types blurs exactly where the server's is_nsfw says,
    the threshold chosen between the image's score and the shown value so that the rounded value would
    decide the other way; at desktop and phone widths."""
    import math

    from conftest import start_server
    from genguard import server
    from genguard.fusion import FusionConfig
    from test_provenance_server import infer

    image = png(21, (64, 64))
    (tmp_path / "one.png").write_bytes(image)
    score = infer(triton, [image])[0]["nsfw"]["at_least"]["medium"]  # the same tiny weights as served below
    cell = math.floor(score * 1000) / 1000
    if score - cell < 0.0005:  # shown rounded down (<= score): a threshold just above the score, not NSFW
        threshold = score + (cell + 0.0005 - score) / 2
    else:                      # shown rounded up (> score): a threshold just below the score, NSFW
        threshold = score - (score - cell - 0.0005) / 2
    assert (float(_typed(threshold)) <= score) != (threshold <= score) and len(repr(threshold)) > 8
    running = start_server(tiny_build, tmp_path / "server", detectors=["sumsub_sd", "freepik_nsfw"],
                           fusion=FusionConfig(threshold=0.4311764705882353, nsfw_threshold=threshold))
    gw = None
    try:
        gw = start_gateway(running.grpc_url, tmp_path)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(gw.url + "/")
        page.locator("#served", has_text="detectors:").wait_for()
        shown = page.input_value("#blur-threshold")
        assert shown == _typed(threshold) and re.fullmatch(r"0\.\d{1,3}", shown), shown
        assert repr(threshold) in page.get_attribute("#blur-threshold", "title")
        assert "threshold 0.431" in page.inner_text("#served")
        with page.expect_response(lambda r: r.url.endswith("/v1/detect"), timeout=WAIT_MS) as answered:
            page.set_input_files("#pick-files", str(tmp_path / "one.png"))
        [doc] = answered.value.json()["data"]
        assert doc["nsfw"]["at_least"]["medium"] == score and doc["nsfw"]["is_nsfw"] == (score >= threshold)
        row = page.locator('#rows tr[data-name="one.png"]')
        row.locator("td.status", has_text="SUCCESS").wait_for()

        def is_blurred() -> bool:
            return "blurred" in (row.locator("img").get_attribute("class") or "")

        assert is_blurred() == doc["nsfw"]["is_nsfw"]  # the exact served threshold, not the rounded one
        page.set_viewport_size({"width": 390, "height": 844})
        assert page.input_value("#blur-threshold") == shown
        box = page.locator("#blur-threshold").bounding_box()
        assert box and 0 <= box["x"] and box["x"] + box["width"] <= 390
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "page-390-threshold.png"), full_page=True)
        for typed, blurs in (("0", True), ("1.5", False), (shown, doc["nsfw"]["is_nsfw"])):
            page.fill("#blur-threshold", typed)  # what the reviewer types decides from then on
            assert is_blurred() == blurs, typed
        page.close()
    finally:
        if gw:
            gw.stop()
        server.stop_pid(running.process.pid)


def test_static_files_ship_in_the_package():
    """pip install . carries every file the page route serves (pyproject's package-data)."""
    import tomllib
    from fnmatch import fnmatch

    from genguard.gateway.routers import page

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = data["genguard.gateway"]
    static = ROOT / "genguard" / "gateway" / "static"
    for name in [*page.FILES, "index.html"]:
        assert (static / name).is_file(), name
        assert any(fnmatch(f"static/{name}", pattern) for pattern in patterns), name
