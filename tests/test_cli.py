"""`genguard detect` and `genguard health`: outputs parsed back, exit codes, progress bar and warnings,
against the real server."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from conftest import free_ports, start_server
from genguard import server
from genguard.client import cli


def encoded(seed: int, fmt: str = "PNG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Two images and a text file: sorted a.png, b.jpg, c.txt."""
    root = tmp_path_factory.mktemp("mixed")
    (root / "a.png").write_bytes(encoded(1))
    (root / "b.jpg").write_bytes(encoded(2, "JPEG"))
    (root / "c.txt").write_text("hello\n")
    return root


def test_help_documents_the_exit_codes(capsys):
    done = subprocess.run([sys.executable, "-m", "genguard.client.cli", "detect", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for line in ("0  every image was answered", "2  usage error", "3  server unreachable", "4  some images failed"):
        assert line in done.stdout, line
    for argv in (["detect"], ["detect", "x.png", "--format", "xml"], ["detect", "x.png", "--threshold", "1.5"],
                 ["detect", "-", "-"], ["detect", "x.png", "--url", "ftp://tls.example"],
                 ["detect", "x.png", "--protocol", "rest", "--url", "127.0.0.1:8080"],
                 ["detect", "x.png", "--api-key-file", "keys", "--url", "127.0.0.1:8001"],
                 ["detect", "x.png", "--url", "https://gw.example", "--tls"],
                 ["detect", "x.png", "--tls-cert", "c.pem", "--url", "127.0.0.1:8001"]):
        with pytest.raises(SystemExit) as caught:
            cli.main(argv)
        assert caught.value.code == 2, argv


def test_the_client_imports_no_export_dependencies():
    heavy = ("torch", "onnx", "onnxruntime", "timm", "transformers", "genguard.export")
    code = ("import sys, genguard.client, genguard.client.cli; "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.server
def test_table_jsonl_and_csv_parse_back_and_a_bad_file_exits_4(triton, mixed, capsys):
    names = [str(mixed / n) for n in ("a.png", "b.jpg", "c.txt")]
    outputs = {}
    for fmt in ("jsonl", "csv", "table"):
        code, out, err = run(capsys, "detect", str(mixed), "--url", triton.grpc_url, "--format", fmt)
        assert code == cli.EXIT_FAILED == 4, err
        assert err.count("RANDOM WEIGHTS") == 1  # the server's warning, once however many images
        assert "1 of 3 images failed" in err and "img/s" not in err  # three images: no progress bar
        outputs[fmt] = out

    docs = [json.loads(line) for line in outputs["jsonl"].splitlines()]
    assert [d["name"] for d in docs] == names and [d["index"] for d in docs] == [0, 1, 2]
    assert [d["status"] for d in docs] == ["SUCCESS", "SUCCESS", "FAILURE"]
    assert docs[2]["error"]["reason"] == "not_an_image" and docs[0]["image"]["width"] == 64
    assert set(docs[0]["detectors"]) >= {"freepik_nsfw", "hive_effb4"}  # the full answer

    rows = list(csv.DictReader(io.StringIO(outputs["csv"])))
    assert tuple(rows[0]) == cli.CSV_COLUMNS
    assert [r["name"] for r in rows] == names and [r["status"] for r in rows] == ["SUCCESS", "SUCCESS", "FAILURE"]
    for row, doc in zip(rows[:2], docs):
        assert float(row["is_ai_generated"]) == pytest.approx(doc["is_ai_generated"], abs=1e-6)
        assert row["verdict"] == doc["verdict"] and row["source"] == doc["source"]
        assert row["nsfw_level"] == doc["nsfw"]["level"] and row["format"] in ("PNG", "JPEG")
    assert rows[2]["error_reason"] == "not_an_image" and rows[2]["is_ai_generated"] == ""

    lines = outputs["table"].splitlines()
    assert lines[0].split() == ["#", "INPUT", "STATUS", "VERDICT", "P(AI)", "SOURCE", "NSFW"]
    assert len(lines) == 4
    for line, name, doc in zip(lines[1:3], names, docs):
        cells = line.split()
        assert cells[:4] == [str(doc["index"]), name, "SUCCESS", doc["verdict"]]
        assert float(cells[4]) == pytest.approx(doc["is_ai_generated"], abs=5e-4)
    assert lines[3].split()[:4] == ["2", names[2], "FAILURE", "not_an_image:"]


@pytest.mark.server
def test_all_answered_exits_0_with_stdin_and_a_client_side_threshold(triton, mixed, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO((mixed / "b.jpg").read_bytes())))
    code, out, err = run(capsys, "detect", "-", str(mixed / "a.png"), "--url", triton.http_url,
                         "--protocol", "http", "--format", "jsonl", "--threshold", "0")
    assert code == 0, err
    docs = [json.loads(line) for line in out.splitlines()]
    assert [d["name"] for d in docs] == ["-", str(mixed / "a.png")]
    assert all(d["verdict"] == "ai_generated" and d["threshold"] == 0.0 for d in docs)  # p >= 0 always

    code, out, err = run(capsys, "detect", str(mixed / "*.png"), "--url", triton.grpc_url, "--format", "csv",
                         "--threshold", "1")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [r["name"] for r in rows] == [str(mixed / "a.png")]  # the glob, expanded here
    assert float(rows[0]["is_ai_generated"]) < 1 and rows[0]["verdict"] == "not_ai_generated"


def test_unreachable_server_exits_3_with_one_clear_sentence(mixed, capsys):
    port = free_ports(1)[0]
    code, out, err = run(capsys, "detect", str(mixed / "a.png"), "--url", f"127.0.0.1:{port}", "--retries", "1")
    assert code == cli.EXIT_UNAVAILABLE == 3 and out == ""
    assert f"cannot reach GenGuard at 127.0.0.1:{port} (grpc)" in err and "make serve" in err
    assert len(err.strip().splitlines()) == 1
    code, out, err = run(capsys, "health", "--url", f"127.0.0.1:{port}", "--protocol", "http", "--retries", "0")
    assert code == 3 and f"cannot reach GenGuard at 127.0.0.1:{port} (http)" in err


@pytest.mark.server
def test_health_lists_each_model(triton, capsys):
    code, out, err = run(capsys, "health", "--url", triton.grpc_url)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"GenGuard at {triton.grpc_url} (grpc): live yes, ready yes"
    ready = {line.split()[0]: line.split()[1] for line in lines[1:]}
    assert {"genguard", "preprocess", "postprocess", "sumsub_sd", "freepik_nsfw"} <= set(ready)
    assert set(ready.values()) == {"ready"}
    assert "random weights" in err
    # each detector: its weights, engine, and the file it serves with the start of the sha256 it was checked against
    from genguard.checksums import sha256_file

    for name in ("sumsub_sd", "freepik_nsfw"):
        line = next(line for line in lines[1:] if line.split()[0] == name)
        digest = sha256_file(triton.repository / name / "1" / "model.onnx")
        assert line.endswith(f"ready  random weights, onnxruntime fp32, model.onnx sha256 {digest[:12]}"), line


def stop(running) -> None:
    stopper = threading.Thread(target=server.stop_pid, args=(running.process.pid,))
    stopper.start()
    running.process.wait(timeout=60)  # reap it: stop_pid waits until the process group is gone
    stopper.join()


@pytest.mark.server
def test_a_200_image_directory_gives_one_row_per_image_in_order(tiny_build, tmp_path, capsys):
    # A private server with one small detector: the full set takes ~0.5 s per image on 2 CPU cores.
    running = start_server(tiny_build, tmp_path / "server", detectors=["sumsub_sd"])
    try:
        folder = tmp_path / "shots"
        folder.mkdir()
        for i in range(200):
            fmt, ext = ("PNG", "png") if i % 2 else ("JPEG", "jpg")
            (folder / f"shot_{(i * 37) % 200:03d}.{ext}").write_bytes(encoded(100 + i, fmt))
        code, out, err = run(capsys, "detect", str(folder), "--url", running.grpc_url, "--format", "csv",
                             "--batch-size", "8", "--concurrency", "2")
    finally:
        stop(running)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    expected = sorted(str(p) for p in folder.iterdir())
    assert len(expected) == 200 and [r["name"] for r in rows] == expected
    assert [int(r["index"]) for r in rows] == list(range(200))
    assert all(r["status"] == "SUCCESS" and r["width"] == "64" for r in rows)
    assert len({r["is_ai_generated"] for r in rows}) > 150  # distinct images, distinct answers: no row repeated
    assert "200/200" in err and "img" in err  # the progress bar, on stderr
    assert err.count("RANDOM WEIGHTS") == 1
