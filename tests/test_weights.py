"""Real weights by hub id, offline: a seeded Hugging Face cache, pack -> verify -> unpack, clear errors.

Nothing here reaches a hub. The connected machine's cache is seeded by hand in the standard
huggingface_hub layout (models--ORG--NAME/{blobs, snapshots/<commit>/<file> -> ../../blobs/<blob>,
refs/main}; blobs named by sha256 for LFS files and by git blob sha1 otherwise) under the real repository
ids and the file names those repositories publish. Hub libraries read HF_HUB_OFFLINE / HF_HOME at import
time, so everything that must see them runs in a subprocess with its environment set.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from conftest import checkpoint_path, free_ports
from genguard import specs
from genguard.export import weights

HUB = [s for s in specs.DETECTORS.values() if s.source]
LOCAL_ONLY = [s for s in specs.DETECTORS.values() if not s.source and not s.optional]
CLI = [sys.executable, "-m", "genguard.export.weights"]


def commit_of(repo_id: str) -> str:
    """A fixed 40-hex commit per repository (what the hub would name the revision)."""
    return hashlib.sha1(f"genguard-test {repo_id}".encode()).hexdigest()


def seed_repo(cache: Path, repo_id: str, commit: str, files: dict[str, bytes]) -> None:
    """One repository in the hub cache layout, written independently of genguard.export.weights."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        lfs = name.endswith((".safetensors", ".bin"))
        blob = (hashlib.sha256(data).hexdigest() if lfs
                else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())
        (repo / "blobs" / blob).write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../../blobs") / blob)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)


def published_files(spec) -> list[str]:
    """One name per group of what the loader reads: the files each repository publishes."""
    return [group[0] for group in weights.hub_files(spec)]


def env(**values) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    out.update({k: str(v) for k, v in values.items()})
    return out


def run(args, **environment) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env(**environment), capture_output=True, text=True, timeout=900)


def corrupt_member(pack: Path, out: Path, member_name: str) -> None:
    """A copy of `pack` with one byte of one member's data flipped (the tar itself stays readable)."""
    with tarfile.open(pack) as tar:
        member = tar.getmember(member_name)
        offset = member.offset_data + member.size // 2
    data = bytearray(pack.read_bytes())
    data[offset] ^= 0xFF
    out.write_bytes(bytes(data))


@pytest.fixture
def small_cache(tmp_path) -> Path:
    """Every hub detector's published files with small stand-in contents (pack/unpack don't parse them)."""
    cache = tmp_path / "connected" / "hub"
    for spec in HUB:
        files = {name: f"{spec.name} {name} ".encode() * 1000 for name in published_files(spec)}
        seed_repo(cache, spec.source, commit_of(spec.source), files)
    return cache


# ---------------------------------------------------------------------------------------------------
# pack / verify / unpack (in-process: these read and write an explicit cache folder, never the network)


def test_pack_unpack_round_trip_lands_in_the_hub_cache_layout(small_cache, tmp_path):
    from huggingface_hub import scan_cache_dir, try_to_load_from_cache

    pack = tmp_path / "genguard-weights.tar"
    manifest = weights.pack(pack, cache=str(small_cache))
    assert set(manifest["detectors"]) == {s.name for s in HUB}
    for spec in HUB:
        entry = manifest["detectors"][spec.name]
        assert entry["repo_id"] == spec.source and entry["revision"] == commit_of(spec.source)
        assert [f["path"] for f in entry["files"]] == published_files(spec)
        for f in entry["files"]:
            data = (small_cache / f"models--{spec.source.replace('/', '--')}" / "snapshots"
                    / entry["revision"] / f["path"]).read_bytes()
            assert f["sha256"] == hashlib.sha256(data).hexdigest() and f["size"] == len(data)
    assert weights.verify(pack) == manifest
    from genguard.client.cli import main as cli_main  # `genguard weights` is the same command

    assert cli_main(["weights", "verify", str(pack)]) == 0

    offline = tmp_path / "offline" / "hub"
    weights.unpack(pack, cache=str(offline))
    info = scan_cache_dir(offline)  # huggingface_hub's own reading of the layout
    assert not info.warnings, info.warnings
    repos = {r.repo_id: r for r in info.repos}
    assert set(repos) == {s.source for s in HUB}
    for spec in HUB:
        repo = repos[spec.source]
        assert set(repo.refs) == {"main"} and repo.refs["main"].commit_hash == commit_of(spec.source)
        assert {f.file_name for f in repo.refs["main"].files} == set(published_files(spec))
        for name in published_files(spec):
            got = try_to_load_from_cache(spec.source, name, cache_dir=offline)
            want = small_cache / f"models--{spec.source.replace('/', '--')}" / "snapshots" / commit_of(spec.source) / name
            assert Path(got).read_bytes() == want.read_bytes()
    # same blob names as the connected machine's cache (sha256 for LFS files, git sha1 otherwise)
    for spec in HUB:
        folder = f"models--{spec.source.replace('/', '--')}/blobs"
        assert sorted(p.name for p in (offline / folder).iterdir()) == sorted(p.name for p in (small_cache / folder).iterdir())


def test_a_corrupted_file_is_refused_by_its_sha256_and_nothing_is_installed(small_cache, tmp_path):
    pack = tmp_path / "genguard-weights.tar"
    weights.pack(pack, cache=str(small_cache))
    bad = tmp_path / "corrupted.tar"
    corrupt_member(pack, bad, "files/sumsub_sd/model.safetensors")
    with pytest.raises(weights.WeightsError, match=r"sumsub_sd model.safetensors fails verification: sha256"):
        weights.verify(bad)
    offline = tmp_path / "offline" / "hub"
    with pytest.raises(weights.WeightsError, match="nothing was installed"):
        weights.unpack(bad, cache=str(offline))
    assert not any(p.name.startswith("models--") for p in offline.iterdir())
    # the CLI says the same and fails
    result = run([*CLI, "unpack", str(bad), "--cache", str(offline)])
    assert result.returncode == 1 and "sha256" in result.stderr and "sumsub_sd" in result.stderr


def _with_extra_member(pack: Path, out: Path, name: str, kind=tarfile.REGTYPE, data: bytes = b"x") -> None:
    with tarfile.open(pack) as src, tarfile.open(out, "w") as dst:
        for member in src:
            dst.addfile(member, src.extractfile(member) if member.isreg() else None)
        info = tarfile.TarInfo(name)
        info.type = kind
        if kind == tarfile.SYMTYPE:
            info.linkname = "/etc/passwd"
            dst.addfile(info)
        else:
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("name, kind, words", [
    ("../../escape.json", tarfile.REGTYPE, "not in its manifest"),
    ("files/sumsub_sd/extra.py", tarfile.REGTYPE, "not in its manifest"),
    ("files/sumsub_sd/link", tarfile.SYMTYPE, "not in its manifest"),
])
def test_members_outside_the_manifest_are_refused(small_cache, tmp_path, name, kind, words):
    pack = tmp_path / "genguard-weights.tar"
    weights.pack(pack, cache=str(small_cache))
    bad = tmp_path / "bad.tar"
    _with_extra_member(pack, bad, name, kind)
    offline = tmp_path / "offline"
    with pytest.raises(weights.WeightsError, match=words):
        weights.unpack(bad, cache=str(offline))
    assert not (tmp_path / "escape.json").exists() and not (offline / "escape.json").exists()


def test_a_manifest_with_an_unsafe_path_is_refused(small_cache, tmp_path):
    pack = tmp_path / "genguard-weights.tar"
    manifest = weights.pack(pack, cache=str(small_cache))
    manifest["detectors"]["sumsub_sd"]["files"][0]["path"] = "../../../outside.json"
    bad = tmp_path / "bad.tar"
    with tarfile.open(pack) as src, tarfile.open(bad, "w") as dst:
        for member in src:
            if member.name == "manifest.json":
                data = json.dumps(manifest).encode()
                member.size = len(data)
                dst.addfile(member, io.BytesIO(data))
            else:
                dst.addfile(member, src.extractfile(member))
    with pytest.raises(weights.WeightsError, match="unsafe path"):
        weights.unpack(bad, cache=str(tmp_path / "offline"))


def test_pack_names_what_the_cache_lacks(small_cache, tmp_path):
    link = small_cache / f"models--{'Freepik/nsfw_image_detector'.replace('/', '--')}" / "snapshots"
    (link / commit_of("Freepik/nsfw_image_detector") / "model.safetensors").unlink()
    with pytest.raises(weights.WeightsUnavailable, match=r"freepik_nsfw: Freepik/nsfw_image_detector .*model.safetensors"):
        weights.pack(tmp_path / "p.tar", cache=str(small_cache))


# ---------------------------------------------------------------------------------------------------
# clear errors when the hub can't be reached and the cache lacks a checkpoint


def _assert_clear(text: str, spec) -> None:
    assert f"{spec.name}: cannot load {spec.source}" in text, text
    assert "WEIGHTS=random" in text and "genguard.export.weights unpack" in text and "CHECKPOINTS=" in text, text


def test_default_export_offline_with_an_empty_cache_names_detector_repo_and_ways_out(tmp_path):
    result = run([sys.executable, "-m", "genguard.export", "--build", str(tmp_path / "build"),
                  "--detectors", ",".join(s.name for s in HUB)],
                 HF_HOME=tmp_path / "hf", HF_HUB_OFFLINE=1)
    assert result.returncode == 1
    for spec in HUB:
        _assert_clear(result.stderr, spec)
    assert "HF_HUB_OFFLINE=1" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "build" / "onnx").exists() or not any((tmp_path / "build" / "onnx").rglob("model.onnx"))


def test_download_with_the_hub_unreachable_says_so(tmp_path):
    port = free_ports(1)[0]  # nothing listens there: connection refused, as behind a firewall
    result = run([*CLI, "download", "--detectors", "sumsub_sd"], HF_HOME=tmp_path / "hf",
                 HF_ENDPOINT=f"http://127.0.0.1:{port}")
    assert result.returncode == 1
    _assert_clear(result.stderr, specs.get("sumsub_sd"))
    assert "could not be reached" in result.stderr


def test_download_offline_with_a_complete_cache_resolves_the_commit(small_cache):
    result = run([*CLI, "download", "--cache", str(small_cache)], HF_HUB_OFFLINE=1)
    assert result.returncode == 0, result.stderr
    for spec in HUB:
        assert f"{spec.source} @ {commit_of(spec.source)}" in result.stdout


def test_a_pinned_revision_is_the_one_loaded_offline(tiny_build, tmp_path):
    """Two commits cached, refs/main on the first: --revision picks the second; an absent one is named."""
    spec = specs.get("sumsub_sd")
    folder = checkpoint_path(tiny_build, spec.name)
    files = {name: (folder / name).read_bytes() for name in published_files(spec)}
    cache = tmp_path / "hf" / "hub"
    pinned = hashlib.sha1(b"pinned").hexdigest()
    seed_repo(cache, spec.source, pinned, files)
    seed_repo(cache, spec.source, commit_of(spec.source), files)  # refs/main -> this one
    code = ("import sys, warnings; warnings.simplefilter('ignore')\n"
            "from genguard import specs; from genguard.export.checkpoints import load\n"
            "from genguard.export.weights import WeightsUnavailable\n"
            "for source in sys.argv[1:]:\n"
            "    try: print('REVISION', load(specs.get('sumsub_sd'), source).revision)\n"
            "    except WeightsUnavailable as exc: print('ERROR', exc)\n")
    absent = "f" * 40
    result = run([sys.executable, "-c", code, spec.source, f"{spec.source}@{pinned}", f"{spec.source}@{absent}"],
                 HF_HOME=tmp_path / "hf", HF_HUB_OFFLINE=1)
    assert result.returncode == 0, result.stderr
    lines = [l for l in result.stdout.splitlines() if l.startswith(("REVISION", "ERROR"))]
    assert lines[:2] == [f"REVISION {commit_of(spec.source)}", f"REVISION {pinned}"]
    assert lines[2].startswith(f"ERROR sumsub_sd: cannot load {spec.source} (revision {absent})")


# ---------------------------------------------------------------------------------------------------
# the whole path: seeded cache -> pack -> (corrupted pack refused) -> unpack -> default export with
# HF_HUB_OFFLINE=1 -> `make serve`'s launcher -> a served answer naming real weights and the revisions


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 120, 40)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.server
@pytest.mark.slow  # exports all six detectors from a seeded hub cache, then make serve
def test_offline_default_export_serves_real_weights_and_names_the_revision(tiny_build, tmp_path, capsys):
    from genguard import server
    from genguard.client import Client
    from genguard.client.cli import main as cli_main

    # the connected machine's cache: reduced-depth native checkpoints under the real ids and file names
    connected = tmp_path / "connected" / "hub"
    for spec in HUB:
        folder = checkpoint_path(tiny_build, spec.name)
        seed_repo(connected, spec.source, commit_of(spec.source),
                  {name: (folder / name).read_bytes() for name in published_files(spec)})
    pack = tmp_path / "genguard-weights.tar"
    result = run([*CLI, "pack", "--cache", str(connected), "--out", str(pack)], HF_HUB_OFFLINE=1)
    assert result.returncode == 0, result.stderr

    # the offline machine: a corrupted copy is refused, the good one installs into its HF_HOME
    home = tmp_path / "offline-hf"
    bad = tmp_path / "corrupted.tar"
    corrupt_member(pack, bad, "files/opensdi_flux/model.safetensors")
    result = run([*CLI, "unpack", str(bad)], HF_HOME=home, HF_HUB_OFFLINE=1)
    assert result.returncode == 1 and "opensdi_flux model.safetensors fails verification" in result.stderr
    result = run([*CLI, "unpack", str(pack)], HF_HOME=home, HF_HUB_OFFLINE=1)
    assert result.returncode == 0, result.stderr

    # ImageTrust has no hub id: local state-dict files (copied without the random marker)
    local = {}
    for spec in LOCAL_ONLY:
        (tmp_path / spec.name).mkdir()
        weights_file = next(p for p in checkpoint_path(tiny_build, spec.name).iterdir() if p.suffix == ".pth")
        local[spec.name] = shutil.copy(weights_file, tmp_path / spec.name / weights_file.name)

    build = tmp_path / "build"
    ports = free_ports(3)
    serve = [sys.executable, "-m", "genguard.export.serve", "--build", str(build), "--timeout", "240",
             "--gateway-port", "0",  # Triton alone (the REST gateway's fixed port may be taken here)
             "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])]
    for name, path in local.items():
        serve += ["--checkpoint", f"{name}={path}"]
    result = run(serve, HF_HOME=home, HF_HUB_OFFLINE=1)  # no --weights: the default, real
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "RANDOM WEIGHTS" not in result.stdout + result.stderr
        for spec in HUB:
            parity = json.loads((build / "onnx" / spec.name / "parity.json").read_text())
            assert parity["weights"] == "real" and parity["passed"]
            assert parity["checkpoint"] == spec.source and parity["revision"] == commit_of(spec.source)

        url = f"127.0.0.1:{ports[1]}"
        with Client(url) as client:
            [answer] = client.detect([_png()])
            health = client.health()
        assert answer.ok, answer.error
        expected_names = {s.name for s in HUB + LOCAL_ONLY}
        assert answer.weights == {name: "real" for name in expected_names}
        assert answer.revisions == {**{s.name: commit_of(s.source) for s in HUB}, **{s.name: None for s in LOCAL_ONLY}}
        assert not answer.warnings
        assert health.ok and health.revisions == answer.revisions

        assert cli_main(["health", "--url", url]) == 0
        out = capsys.readouterr()
        for spec in HUB:
            line = next(l for l in out.out.splitlines() if l.split()[0] == spec.name)
            served = json.loads((build / "onnx" / spec.name / "parity.json").read_text())["onnx_sha256"]
            assert line.split()[1:] == ["ready", "real", "weights,", "revision", f"{commit_of(spec.source)},",
                                        "onnxruntime", "fp32,", "model.onnx", "sha256", served[:12]]
        assert "random weights" not in out.err

        # make serve re-exports a detector whose pinned revision differs from the one exported
        from genguard.export.__main__ import stale_exports

        argv = ["--build", str(build)] + [a for name, path in local.items() for a in ("--checkpoint", f"{name}={path}")]
        assert stale_exports(argv)[1] == []
        assert stale_exports(argv + ["--revision", f"sumsub_sd={commit_of(specs.get('sumsub_sd').source)}"])[1] == []
        assert stale_exports(argv + ["--revision", f"sumsub_sd={'e' * 40}"])[1] == ["sumsub_sd"]
    finally:
        server.main(["stop", "--build", str(build)])
