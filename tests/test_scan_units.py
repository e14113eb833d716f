"""genguard scan's parts that need neither Ray nor a server: listing, reading (failures by kind, WebDataset
members), the schema as DuckDB and pandas read it, dedupe, parts/resume bookkeeping, select; and the KubeRay
RayJob (deploy/scan/rayjob.yaml) validated offline like deploy/'s other manifests."""

from __future__ import annotations

import io
import os
import shlex
import tarfile
from pathlib import Path

import duckdb
import jsonschema
import kubernetes_validate
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml

from genguard import server
from genguard.client import Result, cli
from genguard.scan import output, schema, select, sources
from genguard.scan.score import Dedupe, read_batch

ROOT = Path(__file__).resolve().parents[1]


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_listing_streams_each_uri_once_from_folders_globs_and_lists(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/a.png", "d/sub/b.jpg", "d/.hidden.png", "d/s.tar"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "d" / ".git").mkdir()
    (tmp_path / "d" / ".git" / "c.png").write_bytes(b"x")
    pd.DataFrame({"path": [str(tmp_path / "d" / "a.png"), "s3://b/k.png"]}).to_parquet(tmp_path / "l.parquet")
    (tmp_path / "l.jsonl").write_text('{"uri": "gs://b/x.tar"}\n')
    found = sources.entries([str(tmp_path / "d"), str(tmp_path / "d" / "*.png"), str(tmp_path / "l.parquet"),
                             str(tmp_path / "l.jsonl"), str(tmp_path / "missing.png")])
    assert not isinstance(found, list)  # a generator: the listing is never held whole
    got = {(e.uri.replace(str(tmp_path), "T"), e.kind) for e in found}
    assert got == {("T/d/a.png", "file"), ("T/d/sub/b.jpg", "file"), ("T/d/s.tar", "tar"),
                   ("s3://b/k.png", "object"), ("gs://b/x.tar", "tar"), ("T/missing.png", "file")}


def test_reading_turns_every_problem_into_a_row(tmp_path):
    (tmp_path / "ok.png").write_bytes(b"img")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "dir.png").mkdir()
    _tar(tmp_path / "s.tar", {"k1.png": b"one", "k1.json": b"{}", "k2.jpg": b"two", "k3.png": b"three" * 400})
    data = (tmp_path / "s.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:6 * 512 + 512 + 200])  # ends inside k3.png's bytes
    (tmp_path / "not.tar").write_bytes(b"hello")
    uris = ["ok.png", "empty.png", "dir.png", "gone.png", "s.tar", "cut.tar", "not.tar"]
    batch = {"uri": np.array([str(tmp_path / u) for u in uris]),
             "kind": np.array(["tar" if u.endswith(".tar") else "file" for u in uris])}
    done = np.sort(np.array([sources.uri_digest(f"{tmp_path}/s.tar#k2.jpg")], dtype=np.int64))
    table = read_batch(batch, done, {}).to_pylist()
    got = {r["uri"].replace(str(tmp_path) + "/", ""): r["failure_reason"] or r["data"] for r in table}
    assert got == {"ok.png": b"img", "empty.png": "empty", "dir.png": "unreadable", "gone.png": "not_found",
                   "s.tar#k1.png": b"one", "s.tar#k3.png": b"three" * 400,        # k2.jpg: done already
                   "cut.tar#k1.png": b"one", "cut.tar#k2.jpg": b"two", "cut.tar#k3.png": "broken_tar_member",
                   "not.tar": "broken_tar"}
    row = next(r for r in table if r["uri"].endswith("s.tar#k1.png"))
    assert row["key"] == "k1" and row["shard"].endswith("s.tar") and row["bytes"] == 3 and len(row["sha256"]) == 64


def test_permission_denied_is_its_own_reason(tmp_path):
    """As a user without the right (root reads anything: the read runs as nobody there)."""
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"x")
    secret.chmod(0)
    os.chmod(tmp_path, 0o755)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        try:
            if os.getuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            error = next(sources.read(sources.Entry(str(secret), "file"))).get("error") or ("read",)
            os.write(write, error[0].encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    assert os.read(read, 100).decode() == "permission_denied"


def _doc(p: float) -> dict:
    return {"status": "SUCCESS", "is_ai_generated": p, "verdict": "ai_generated" if p > 0.5 else "not_ai_generated",
            "possible_sources": {"none": 1 - p, "sd": p}, "sources_given_ai": {"sd": 1.0}, "source": "none",
            "nsfw": {"level": "low", "scores": {"neutral": 0.2, "low": 0.5, "medium": 0.2, "high": 0.1}},
            "detectors": {"sumsub_sd": {"source": {"sd": p, "real": 1 - p}}}, "image": {"width": 4, "height": 3,
            "format": "PNG"}, "weights": {"sumsub_sd": "real"}, "fusion": {"id": "sha256:abc"},
            "provenance": {"declares_ai": True, "generator": "midjourney"}}


def test_schema_reads_back_typed_in_duckdb_and_pandas(tmp_path):
    rows = [{**schema.answer(Result.from_json(_doc(0.9), 0, "x")), "uri": "/a.png", "sha256": "f" * 64, "bytes": 9},
            schema.failure("empty", "zero bytes", uri="/b.png", bytes=0)]
    writer = output.PartWriter(tmp_path, rows=1)
    writer.add(schema.table(rows))
    assert writer.written == 2 and len(output.parts(tmp_path)) == 1
    frame = pd.read_parquet(tmp_path / "rows")
    assert list(frame.columns) == schema.COLUMNS and frame.is_ai_generated[0] == 0.9
    assert frame.nsfw_scores[0]["high"] == 0.1 and frame.scanned_at.dt.tz is not None
    con = duckdb.connect()
    got = con.execute(f"SELECT detectors['sumsub_sd.source']['sd'], provenance_found, provenance_generator, "
                      f"weights_kind, fusion_id, failure_reason FROM read_parquet({output.pattern(tmp_path)}) "
                      "ORDER BY uri").fetchall()
    assert got == [(0.9, True, "midjourney", "real", "sha256:abc", None), (None, None, None, None, None, "empty")]


def test_dedupe_claims_each_sha_once_and_releases_transient_failures():
    dedupe = Dedupe(capacity=2)
    assert dedupe.claim(["a", "b"]) == {"a": "yours", "b": "yours"}
    assert dedupe.claim(["a"]) == {"a": "pending"}
    dedupe.publish({"a": {"status": "SUCCESS"}, "b": None})  # b: the server was away: someone may try again
    assert dedupe.claim(["a", "b"]) == {"a": {"status": "SUCCESS"}, "b": "yours"}
    dedupe.publish({"b": {"status": "SUCCESS"}})
    dedupe.claim(["c"])
    dedupe.publish({"c": {"status": "SUCCESS"}})  # over capacity: the oldest answer goes
    assert "a" not in dedupe.answers and dedupe.lookup(["b"]) == {"b": {"status": "SUCCESS"}}


def test_resume_bookkeeping_drops_transient_failures_and_knows_the_rest(tmp_path):
    writer = output.PartWriter(tmp_path)
    writer.add(schema.table([schema.failure("server_unreachable", "away", uri="/a"),
                             schema.failure("not_found", "gone", uri="/b")]))
    writer.flush()
    assert output.drop_retryable(tmp_path) == 1
    assert list(output.done_digests(tmp_path)) == [sources.uri_digest("/b")]
    summary = output.summarize(tmp_path, {"run": {}})
    assert summary["rows"] == 1 and summary["by_failure_reason"] == {"not_found": 1}


def test_select_writes_lists_rows_files_and_shards(tmp_path):
    src = tmp_path / "src"
    (src / "n").mkdir(parents=True)
    (src / "a.png").write_bytes(b"A")
    (src / "n" / "b.png").write_bytes(b"B")
    _tar(src / "s.tar", {"k1.png": b"1", "k1.json": b"{}", "k2.png": b"2"})
    rows = [{"uri": str(src / "a.png"), "verdict": "not_ai_generated"},
            {"uri": str(src / "n" / "b.png"), "verdict": "ai_generated"},
            {"uri": f"{src}/s.tar#k1.png", "shard": str(src / "s.tar"), "key": "k1", "verdict": "not_ai_generated"},
            {"uri": f"{src}/s.tar#k2.png", "shard": str(src / "s.tar"), "key": "k2", "verdict": "ai_generated"}]
    out = tmp_path / "scan"
    writer = output.PartWriter(out)
    writer.add(schema.table(rows))
    writer.flush()
    output.summarize(out, {"run": {"sources": [str(src)]}})
    where = "verdict = 'not_ai_generated'"
    assert select.select(out, where, tmp_path / "keep.txt") == {"kept": 2}
    assert (tmp_path / "keep.txt").read_text().split() == [str(src / "a.png"), f"{src}/s.tar#k1.png"]
    assert select.select(out, where, tmp_path / "keep.parquet") == {"kept": 2}
    assert list(pd.read_parquet(tmp_path / "keep.parquet").uri) == [str(src / "a.png"), f"{src}/s.tar#k1.png"]
    counts = select.select(out, "true", tmp_path / "all", link="hard")
    assert counts == {"kept": 4, "files": 2, "shards": 1, "shard_members": 3}
    assert (tmp_path / "all" / "n" / "b.png").stat().st_ino == (src / "n" / "b.png").stat().st_ino
    select.select(out, where, tmp_path / "clean")
    assert sorted(str(p.relative_to(tmp_path / "clean")) for p in (tmp_path / "clean").rglob("*")) == ["a.png", "s.tar"]
    with tarfile.open(tmp_path / "clean" / "s.tar") as tar:
        assert tar.getnames() == ["k1.png", "k1.json"]
    with pytest.raises(ValueError, match="nope"):
        select.select(out, "nope = 1", tmp_path / "x.txt")


# -- deploy/scan/rayjob.yaml --------------------------------------------------------------------------------

# KubeRay's RayJob (ray.io/v1) is a CRD: the part of its schema the manifest uses, closed to unknown fields (a typo
# fails, as the API would prune it silently); its pod templates are checked against the core Pod schema below.
_GROUP = {"type": "object", "required": ["rayStartParams", "template"], "additionalProperties": False,
          "properties": {"groupName": {"type": "string"}, "replicas": {"type": "integer", "minimum": 0},
                         "minReplicas": {"type": "integer", "minimum": 0}, "maxReplicas": {"type": "integer"},
                         "rayStartParams": {"type": "object", "additionalProperties": {"type": "string"}},
                         "template": {"type": "object", "required": ["spec"]}}}
RAYJOB_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayJob"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {"type": "object", "required": ["entrypoint", "rayClusterSpec"], "additionalProperties": False,
                 "properties": {
                     "entrypoint": {"type": "string"}, "shutdownAfterJobFinishes": {"type": "boolean"},
                     "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                     "rayClusterSpec": {"type": "object", "required": ["headGroupSpec"], "additionalProperties": False,
                                        "properties": {"rayVersion": {"type": "string"},
                                                       "headGroupSpec": {**_GROUP, "required": ["template"]},
                                                       "workerGroupSpecs": {"type": "array", "items": {
                                                           **_GROUP, "required": ["groupName", "template"]}}}}}}}}


def _rayjob() -> dict:
    return yaml.safe_load((ROOT / "deploy" / "scan" / "rayjob.yaml").read_text())


def test_rayjob_validates_offline_and_its_pods_against_kubernetes():
    job = _rayjob()
    jsonschema.validate(job, RAYJOB_SCHEMA)
    cluster = job["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for template in templates:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", **template.get("metadata", {})},
               "spec": template["spec"]}
        for version in ("1.30.0", "1.37.0"):
            kubernetes_validate.validate(pod, version, strict=True)
        # the server's NetworkPolicy admits pods labelled as GenGuard clients only
        assert template["metadata"]["labels"]["genguard.io/client"] == "true"
    assert cluster["rayVersion"] == __import__("ray").__version__
    bad = {**job, "spec": {**job["spec"], "entrypoin": "x"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, RAYJOB_SCHEMA)


def test_rayjob_runs_a_valid_scan_against_the_genguard_services_grpc_port():
    job = _rayjob()
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["genguard", "scan"]
    args = cli.build_parser().parse_args(argv[1:])
    services = [o for o in yaml.safe_load_all((ROOT / "deploy" / "base" / "services.yaml").read_text()) if o]
    service = next(s for s in services if s["metadata"]["name"] == "genguard")
    host, port = args.url.rsplit(":", 1)
    assert host == f"{service['metadata']['name']}.{job['metadata']['namespace']}.svc"
    assert int(port) == server.GRPC_PORT in [p["port"] for p in service["spec"]["ports"]]
    mount = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]
    assert str(args.out).startswith(mount["mountPath"])  # the driver runs on the head: its output is that volume
