"""`genguard scan` end to end: real Ray (one local session for the module), the real tritonserver, and moto's S3
server on 127.0.0.1 read through s3fs. A folder with good, corrupt and duplicate images, a WebDataset shard with
a broken member, an s3:// prefix and a list scan to one row per input with the right statuses; a driver killed
midway and rerun ends with the uninterrupted scan's uris, none twice; an unreachable server's rows are retried by
the rerun; `select` writes what its SQL keeps."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request

import duckdb
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import video_fixtures as vf
from conftest import free_ports
from genguard.client import cli
from genguard.scan import output
from genguard.scan.run import Options, scan

# Each test here runs Ray Data pipelines against the session tritonserver (Ray's start alone takes ~10 s on 2 cores)
pytestmark = [pytest.mark.slow, pytest.mark.server]


def encoded(seed: int, fmt: str = "PNG", size=(48, 48)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module's scans (the scan joins it instead of starting its own)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's standalone S3 server on 127.0.0.1 with bucket `photos`: (storage options, the prefix's objects)."""
    import boto3
    import s3fs
    from moto.server import ThreadedMotoServer

    port = free_ports(1)[0]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "testing", "secret": "testing",
               "client_kwargs": {"region_name": "us-east-1"}}
    boto3.client("s3", endpoint_url=options["endpoint_url"], aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket="photos")
    fs = s3fs.S3FileSystem(**options)
    objects = {"photos/batch1/x.png": encoded(1), "photos/batch1/y.jpg": encoded(20, "JPEG"),
               "photos/batch1/sub/z.txt": b"not an image either\n"}
    for name, data in objects.items():
        fs.pipe(name, data)
    yield options, {f"s3://{k}": v for k, v in objects.items()}
    server.stop()


def _shard(path, members: list[tuple[str, bytes]], cut_last: bool = False) -> None:
    """A tar of `members`; cut_last: the file ends halfway through the last member's bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            start = buffer.tell()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    path.write_bytes(data[:start + 512 + len(members[-1][1]) // 2] if cut_last else data)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(folder, shard, list file, {uri: expected status or failure reason})."""
    root = tmp_path_factory.mktemp("corpus")
    photos = root / "photos"
    (photos / "nested").mkdir(parents=True)
    (photos / "a.png").write_bytes(encoded(1))
    (photos / "b.jpg").write_bytes(encoded(2, "JPEG"))
    (photos / "nested" / "a-copy.png").write_bytes(encoded(1))            # same bytes as a.png (and s3 x.png)
    (photos / "notes.txt").write_text("not an image\n")
    (photos / "truncated.jpg").write_bytes(encoded(3, "JPEG", (256, 256))[:600])
    (photos / "empty.png").write_bytes(b"")
    (photos / "gone.png").symlink_to(photos / "deleted.png")              # listed, then nothing to read
    (photos / ".DS_Store").write_bytes(b"hidden")                          # hidden: not an input
    (photos / "clip.mp4").write_bytes(vf.clip([encoded(8), encoded(9)], seconds_each=0.5, fps=4))  # a video row
    shard = root / "shard-000.tar"
    _shard(shard, [("s1.png", encoded(4)), ("s1.json", b"{}"), ("s2.jpg", encoded(5, "JPEG")),
                   ("s3.png", b"\x89PNG garbage"), ("s4.png", encoded(6, "PNG", (128, 128)))], cut_last=True)
    listed = root / "more.csv"
    extra = root / "elsewhere" / "c.png"
    extra.parent.mkdir()
    extra.write_bytes(encoded(7))
    listed.write_text(f"uri\n{extra}\n{photos / 'a.png'}\n")                # a.png again: still one row
    expected = {
        str(photos / "a.png"): "SUCCESS", str(photos / "b.jpg"): "SUCCESS",
        str(photos / "nested" / "a-copy.png"): "SUCCESS", str(photos / "notes.txt"): "not_an_image",
        str(photos / "truncated.jpg"): "truncated", str(photos / "empty.png"): "empty",
        str(photos / "gone.png"): "not_found", str(extra): "SUCCESS", str(photos / "clip.mp4"): "SUCCESS",
        f"{shard}#s1.png": "SUCCESS", f"{shard}#s2.jpg": "SUCCESS", f"{shard}#s3.png": "not_an_image",
        f"{shard}#s4.png": "broken_tar_member",
    }
    return photos, shard, listed, expected


def inferences(triton) -> int:
    """Images the ensemble has answered so far (Triton's counter)."""
    text = urllib.request.urlopen(triton.metrics_url, timeout=10).read().decode()
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith("nv_inference_count{") and 'model="genguard"' in line)


def rows(out) -> pd.DataFrame:
    return pd.read_parquet(out / "rows")


def test_scan_gives_one_row_per_input_with_its_status(triton, ray_session, corpus, s3, tmp_path):
    photos, shard, listed, expected = corpus
    options, objects = s3
    expected = {**expected, "s3://photos/batch1/x.png": "SUCCESS", "s3://photos/batch1/y.jpg": "SUCCESS",
                "s3://photos/batch1/sub/z.txt": "not_an_image"}
    before = inferences(triton)
    out = tmp_path / "out"
    summary = scan([str(photos), str(shard), "s3://photos/batch1", str(listed)], out,
                   Options(url=triton.grpc_url, batch_size=4, storage_options=options, progress=False))
    table = rows(out)
    assert sorted(table.uri) == sorted(expected)
    got = dict(zip(table.uri, np.where(table.status == "SUCCESS", "SUCCESS", table.failure_reason)))
    assert got == expected
    ok = table[table.status == "SUCCESS"]
    assert ok.is_ai_generated.between(0, 1).all() and ok.verdict.notna().all() and ok.nsfw_level.notna().all()
    assert (ok.weights_kind == "random").all() and ok.fusion_id.notna().all() and (ok[ok.kind == "image"].width == 48).all()
    # a.png, nested/a-copy.png and s3 x.png are the same bytes: one answer, scored once, on three rows
    same = table[table.sha256 == table.set_index("uri").sha256[str(photos / "a.png")]]
    assert len(same) == 3 and same.is_ai_generated.nunique() == 1
    sent = table[table.failure_reason.isna() | table.failure_reason.isin(["not_an_image", "truncated"])]
    clip = table.set_index("uri").loc[str(photos / "clip.mp4")]  # its sampled frames go through the ensemble
    assert clip.kind == "video" and clip.video_frames_sampled == len(clip.timeline) > 0 and clip.width == 160
    assert (inferences(triton) - before - clip.video_frames_sampled == sent.sha256.nunique() - 1 == len(sent) - 3)
    assert set(table[table.uri.str.endswith(".png")].kind.dropna()) == {"image"}
    # WebDataset rows carry their shard and key; failures carry a reason and a message
    assert table.set_index("uri").key[f"{shard}#s2.jpg"] == "s2"
    assert table[table.status == "FAILURE"].failure_message.str.len().gt(0).all()
    # summary.json: the dataset's counts and this run's figures
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["rows"] == len(expected) and summary["by_status"]["SUCCESS"] == len(ok)
    assert summary["by_failure_reason"]["broken_tar_member"] == 1 and summary["by_weights_kind"]["random"] == len(sent)
    assert summary["run"]["server"]["weights_kind"] == "random" and summary["run"]["images_per_second"] > 0
    # DuckDB reads the dataset's types as they are
    con = duckdb.connect()
    types = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{out}/rows/*.parquet')").fetchall()}
    assert types["is_ai_generated"] == "DOUBLE" and types["scanned_at"] == "TIMESTAMP WITH TIME ZONE"
    assert con.execute(f"SELECT max(nsfw_scores.high) <= 1 FROM read_parquet('{out}/rows/*.parquet')").fetchone()[0]
    # a rerun finds everything done and scans nothing
    again = scan([str(photos), str(shard), "s3://photos/batch1", str(listed)], out,
                 Options(url=triton.grpc_url, batch_size=4, storage_options=options, progress=False))
    assert again["run"]["scanned_this_run"] == 0 and again["rows"] == len(expected)


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    folder = tmp_path_factory.mktemp("many")
    for i in range(40):
        (folder / f"{i:03d}.png").write_bytes(encoded(100 + i, size=(32, 32)))
    return folder


def test_a_killed_scan_resumes_to_the_same_uris_without_duplicates(triton, ray_session, many, tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    scan([str(many)], whole, Options(url=triton.grpc_url, batch_size=2, progress=False))
    command = [sys.executable, "-m", "genguard.client.cli", "scan", str(many), "--out", str(resumed), "--url",
               triton.grpc_url, "--batch-size", "2", "--concurrency", "1", "--part-rows", "4", "--no-progress",
               "--ray-address", ray_session]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(output.parts(resumed)) < 3 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    partial = rows(resumed)
    assert 0 < len(partial) < 40, "the driver was killed midway"
    summary = scan([str(many)], resumed, Options(url=triton.grpc_url, batch_size=2, progress=False))
    assert summary["run"]["already_done"] == len(partial) and summary["run"]["scanned_this_run"] == 40 - len(partial)
    final = rows(resumed)
    assert final.uri.is_unique and sorted(final.uri) == sorted(rows(whole).uri)
    assert (final.status == "SUCCESS").all()


def test_an_unreachable_server_gives_rows_and_the_rerun_retries_them(triton, ray_session, many, tmp_path):
    out = tmp_path / "out"
    subset = [str(many / f"{i:03d}.png") for i in range(6)]
    dead = f"127.0.0.1:{free_ports(1)[0]}"
    summary = scan(subset, out, Options(url=dead, retries=1, timeout=5, progress=False))
    assert summary["by_failure_reason"] == {"server_unreachable": 6}
    assert "127.0.0.1" in rows(out).failure_message[0]
    summary = scan(subset, out, Options(url=triton.grpc_url, progress=False))
    assert summary["run"]["retried"] == 6 and summary["by_status"] == {"SUCCESS": 6}
    assert rows(out).uri.is_unique


def test_cli_scan_then_select(triton, ray_session, corpus, tmp_path, capsys):
    photos, shard, _, expected = corpus
    out = tmp_path / "out"
    code = cli.main(["scan", str(photos), str(shard), "--out", str(out), "--url", triton.grpc_url, "--no-progress"])
    captured = capsys.readouterr()
    assert code == 4 and "failures by reason" in captured.err and "rows in" in captured.out, captured
    where = "status = 'SUCCESS' AND nsfw_level IS NOT NULL"
    kept = duckdb.sql(f"SELECT uri FROM read_parquet('{out}/rows/*.parquet') WHERE {where} ORDER BY uri").fetchall()
    assert kept and len(kept) < len(rows(out))
    assert cli.main(["scan", "select", str(out), "--where", where, "--to", str(tmp_path / "keep.txt")]) == 0
    assert (tmp_path / "keep.txt").read_text().splitlines() == [u for (u,) in kept]
    folder = tmp_path / "clean"
    assert cli.main(["scan", "select", str(out), "--where", where, "--to", str(folder)]) == 0
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == ["a.png", "b.jpg", "clip.mp4", "nested/a-copy.png", "shard-000.tar"]
    assert (folder / "nested" / "a-copy.png").read_bytes() == (photos / "nested" / "a-copy.png").read_bytes()
    with tarfile.open(folder / "shard-000.tar") as tar:  # kept samples whole (s1's .json too), nothing else
        assert tar.getnames() == ["s1.png", "s1.json", "s2.jpg"]
    assert cli.main(["scan", "select", str(out), "--where", "no_such_column = 1", "--to", str(tmp_path / "x.txt")]) == 2
