"""Hub checkpoints for air-gapped installs: download, pack with a manifest, unpack and verify.

    python -m genguard.export.weights download [--cache DIR] [--revision NAME=REV ...]   # connected machine
    python -m genguard.export.weights pack --out FILE [--cache DIR] [--revision NAME=REV ...]
    python -m genguard.export.weights verify FILE                                       # any machine
    python -m genguard.export.weights unpack FILE [--cache DIR]                         # offline machine

`make weights` runs download + pack into build/weights/genguard-weights.tar. The pack is a plain tar:
`manifest.json` (per detector: repo id, requested revision, resolved commit, and each file's path, size,
sha256 and cache blob name) and `files/<detector>/<path>`. `unpack` refuses the whole pack if any file's
sha256 or size differs from the manifest (nothing is installed), then installs each file into the
Hugging Face cache in its standard layout (models--ORG--NAME/{blobs, snapshots/<commit>/, refs/<rev>}),
which is where transformers and timm look for them by hub id with HF_HUB_OFFLINE=1.

The same module resolves a hub checkpoint before it is loaded (resolve()): it downloads or finds in the
cache exactly the files the loaders read (HUB_FILES), returns the commit served, and turns "not cached
and the hub can't be reached" into one message that names the detector, the repo id and the ways out.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath

from genguard import specs
from genguard.checksums import sha256_file
from genguard.specs import DetectorSpec

PACK_FORMAT = "genguard-weights"
PACK_VERSION = 1
DEFAULT_PACK = Path("build/weights/genguard-weights.tar")
DEFAULT_REVISION = "main"
COMMIT = re.compile(r"[0-9a-f]{40}")
_BLOB = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_CHUNK = 1 << 20


class WeightsError(RuntimeError):
    """A pack that can't be made, read or trusted."""


class WeightsUnavailable(RuntimeError):
    """A hub checkpoint that is neither in the local cache nor downloadable from here."""


def hub_files(spec: DetectorSpec) -> list[tuple[str, ...]]:
    """What the loader of `spec` reads from its hub repository: groups of alternatives, one of each needed
    (its checkpoint family's hub_files)."""
    from genguard.export.families import family_of  # families load through this module's hub helpers

    files = family_of(spec).hub_files
    if files is None:
        raise ValueError(f"{spec.name}: {spec.format} checkpoints are not on the hub")
    return list(files)


def hub_specs(names: list[str] | None = None) -> list[DetectorSpec]:
    """Detectors whose checkpoint has a hub id (default: all of them)."""
    chosen = [specs.get(n) for n in names] if names else list(specs.DETECTORS.values())
    from genguard.export.families import family_of

    return [s for s in chosen if s.source and family_of(s).hub_files is not None]


def is_hub_id(source: str | os.PathLike) -> bool:
    """A hub id (ORG/NAME, optionally @REVISION) rather than an existing local path."""
    text = str(source)
    return not Path(text).exists() and bool(_HUB_ID.fullmatch(text.split("@", 1)[0]))


def split_revision(source: str) -> tuple[str, str]:
    """"ORG/NAME@REV" -> ("ORG/NAME", "REV"); no @: the default revision (main)."""
    repo_id, _, revision = str(source).partition("@")
    return repo_id, revision or DEFAULT_REVISION


def _hub():
    import huggingface_hub

    return huggingface_hub


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The Hugging Face hub cache: `path`, else $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if path:
        return Path(path)
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def ways_out(spec: DetectorSpec) -> str:
    return (
        "Ways out: (1) plumbing test only: `make serve WEIGHTS=random` (meaningless answers); "
        "(2) real weights without network: on a connected machine `make weights` (writes "
        f"{DEFAULT_PACK}), copy that file here, `python -m genguard.export.weights unpack genguard-weights.tar`, "
        f"then `HF_HUB_OFFLINE=1 make serve`; or a local copy of the checkpoint: "
        f"`make serve CHECKPOINTS='{spec.name}=/path/to/checkpoint_dir'`. See docs/detectors.md, \"Air-gapped install\"."
    )


def _unavailable(spec: DetectorSpec, repo_id: str, revision: str, cache: Path, why: str,
                 unreachable: bool = True) -> WeightsUnavailable:
    reach = ("the hub is switched off (HF_HUB_OFFLINE=1)" if offline()
             else "the hub could not be reached from here")
    return WeightsUnavailable(
        f"{spec.name}: cannot load {repo_id} (revision {revision}): {why}"
        + (f", and {reach}. " if unreachable else ". ")
        + f"Hugging Face cache searched: {cache}. " + ways_out(spec)
    )


def cached_commit(repo_id: str, revision: str = DEFAULT_REVISION, cache: str | None = None) -> str | None:
    """The commit `revision` names in the local cache (no network): itself if a commit hash, else what
    refs/<revision> holds; None when the cache doesn't know it."""
    if COMMIT.fullmatch(revision):
        return revision
    try:
        ref = cache_dir(cache) / ("models--" + repo_id.replace("/", "--")) / "refs" / _safe_relpath(revision)
        return ref.read_text().strip() if ref.is_file() else None
    except WeightsError:
        return None


def _missing(folder: Path, groups: list[tuple[str, ...]]) -> list[str]:
    return [" or ".join(g) for g in groups if not any((folder / f).is_file() for f in g)]


def resolve(spec: DetectorSpec, repo_id: str, revision: str = DEFAULT_REVISION, cache: str | None = None) -> str:
    """Make sure `repo_id` at `revision` has every file spec's loader reads in the hub cache (downloading
    them when the hub is reachable); return the commit hash. Raises WeightsUnavailable otherwise."""
    hub = _hub()
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    root = cache_dir(cache)
    groups = hub_files(spec)
    patterns = sorted({f for g in groups for f in g})
    try:
        folder = Path(hub.snapshot_download(repo_id, revision=revision, allow_patterns=patterns,
                                            cache_dir=str(root)))
    except HfHubHTTPError as exc:  # reached, and refused: unknown repo or revision, gated, ...
        raise _unavailable(spec, repo_id, revision, root, f"the hub refused it ({exc.__class__.__name__}: "
                           f"{str(exc).splitlines()[0][:200]})", unreachable=False) from exc
    except (EntryNotFoundError, OSError) as exc:  # LocalEntryNotFoundError is both
        raise _unavailable(spec, repo_id, revision, root, "it is not in the local cache") from exc
    missing = _missing(folder, groups)
    if missing:
        raise _unavailable(spec, repo_id, revision, root,
                           f"the cached snapshot {folder.name} lacks {', '.join(missing)}", unreachable=offline())
    if not COMMIT.fullmatch(folder.name):
        raise WeightsError(f"{spec.name}: unexpected snapshot folder {folder}")
    return folder.name


# ---------------------------------------------------------------------------------------------------
# pack / verify / unpack


def _revisions(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, rev = pair.partition("=")
        if not sep or not rev:
            raise WeightsError(f"--revision expects NAME=REVISION, got {pair!r}")
        specs.get(name)
        out[name] = rev
    return out


def download(revisions: dict[str, str] | None = None, cache: str | None = None,
             names: list[str] | None = None) -> dict[str, str]:
    """Fetch every hub checkpoint's files into the cache (connected machine). Returns detector -> commit."""
    revisions = revisions or {}
    return {spec.name: resolve(spec, spec.source, revisions.get(spec.name, DEFAULT_REVISION), cache)
            for spec in hub_specs(names)}


def _cached_entry(spec: DetectorSpec, root: Path, revision: str) -> dict:
    """Manifest entry of one detector from the cache (no network)."""
    hub = _hub()
    repo_id = spec.source
    files, missing, commit = [], [], None
    for group in hub_files(spec):
        found = None
        for name in group:
            path = hub.try_to_load_from_cache(repo_id, name, cache_dir=str(root), revision=revision)
            if isinstance(path, str) and Path(path).is_file():
                found = (name, Path(path))
                break
        if found is None:
            missing.append(" or ".join(group))
            continue
        name, path = found
        commit = path.parents[len(PurePosixPath(name).parts) - 1].name
        blob = Path(os.path.realpath(path)).name
        files.append({"path": name, "size": path.stat().st_size, "sha256": sha256_file(path),
                      "blob": blob if _BLOB.fullmatch(blob) else None})
    if missing:
        raise WeightsUnavailable(
            f"{spec.name}: {repo_id} (revision {revision}) is incomplete in {root}: missing {', '.join(missing)}; "
            "run `python -m genguard.export.weights download` on a connected machine first")
    return {"repo_id": repo_id, "requested_revision": revision, "revision": commit, "files": files}


def pack(out: Path, revisions: dict[str, str] | None = None, cache: str | None = None,
         names: list[str] | None = None) -> dict:
    """Write the pack (tar with manifest.json + files/) from the cache; returns the manifest."""
    revisions = revisions or {}
    root = cache_dir(cache)
    entries = {s.name: _cached_entry(s, root, revisions.get(s.name, DEFAULT_REVISION)) for s in hub_specs(names)}
    manifest = {"format": PACK_FORMAT, "version": PACK_VERSION,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "detectors": entries}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        data = (json.dumps(manifest, indent=2) + "\n").encode()
        info = tarfile.TarInfo("manifest.json")
        info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
        tar.addfile(info, io.BytesIO(data))
        for name, entry in entries.items():
            for f in entry["files"]:
                src = hub_path(root, entry["repo_id"], entry["revision"], f["path"])
                if sha256_file(src) != f["sha256"]:  # changed while packing
                    raise WeightsError(f"{name}: {src} changed while packing")
                tar.add(os.path.realpath(src), arcname=f"files/{name}/{f['path']}", recursive=False,
                        filter=_anonymous)
    os.replace(tmp, out)
    return manifest


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o644
    return info


def hub_path(root: Path, repo_id: str, commit: str, filename: str) -> Path:
    return root / ("models--" + repo_id.replace("/", "--")) / "snapshots" / commit / filename


def _safe_relpath(path: str) -> PurePosixPath:
    rel = PurePosixPath(path)
    if rel.is_absolute() or not rel.parts or any(p in ("", ".", "..") for p in rel.parts) or "\\" in path:
        raise WeightsError(f"refused: unsafe path {path!r} in the pack")
    return rel


def _read_manifest(tar: tarfile.TarFile) -> dict:
    try:
        member = tar.getmember("manifest.json")
    except KeyError:
        raise WeightsError("not a GenGuard weights pack: no manifest.json") from None
    manifest = json.loads(tar.extractfile(member).read())
    if manifest.get("format") != PACK_FORMAT or manifest.get("version") != PACK_VERSION:
        raise WeightsError(f"not a {PACK_FORMAT} v{PACK_VERSION} pack: {manifest.get('format')!r} "
                           f"v{manifest.get('version')!r}")
    for name, entry in manifest["detectors"].items():
        spec = specs.get(name)
        if entry["repo_id"] != spec.source:
            raise WeightsError(f"{name}: pack holds {entry['repo_id']}, GenGuard expects {spec.source}")
        if not COMMIT.fullmatch(entry["revision"] or ""):
            raise WeightsError(f"{name}: manifest revision {entry['revision']!r} is not a commit hash")
        _safe_relpath(entry["requested_revision"])
        for f in entry["files"]:
            _safe_relpath(f["path"])
            if f.get("blob") is not None and not _BLOB.fullmatch(f["blob"]):
                raise WeightsError(f"{name}: bad blob name {f['blob']!r}")
    return manifest


def _extract_verified(pack_file: Path, staging: Path) -> dict:
    """Every manifest file into staging/<detector>/<path>, hashed while copied; WeightsError on any
    difference, on a member the manifest doesn't list, or on anything but regular files."""
    with tarfile.open(pack_file, "r:") as tar:
        manifest = _read_manifest(tar)
        expected = {f"files/{name}/{f['path']}": (name, f)
                    for name, entry in manifest["detectors"].items() for f in entry["files"]}
        seen = set()
        for member in tar:
            if member.name == "manifest.json":
                continue
            if member.name not in expected:
                raise WeightsError(f"refused: {member.name!r} is in the pack but not in its manifest")
            if not member.isreg():
                raise WeightsError(f"refused: {member.name!r} is not a regular file")
            name, f = expected[member.name]
            target = staging / name / _safe_relpath(f["path"])
            target.parent.mkdir(parents=True, exist_ok=True)
            digest, size = hashlib.sha256(), 0
            with tar.extractfile(member) as src, open(target, "wb") as dst:
                for chunk in iter(lambda: src.read(_CHUNK), b""):
                    digest.update(chunk)
                    size += len(chunk)
                    dst.write(chunk)
            if digest.hexdigest() != f["sha256"] or size != f["size"]:
                raise WeightsError(
                    f"refused: {name} {f['path']} fails verification: sha256 {digest.hexdigest()} "
                    f"({size} bytes), manifest says {f['sha256']} ({f['size']} bytes); the pack is corrupted "
                    "or was altered: nothing was installed")
            seen.add(member.name)
        absent = sorted(set(expected) - seen)
        if absent:
            raise WeightsError(f"refused: the pack lacks {', '.join(absent)} listed in its manifest")
    return manifest


def verify(pack_file: Path) -> dict:
    """Check every file of the pack against its manifest without installing anything."""
    with tempfile.TemporaryDirectory(prefix="genguard-weights-") as tmp:
        return _extract_verified(Path(pack_file), Path(tmp))


def install_file(root: Path, repo_id: str, commit: str, filename: str, source: Path, sha256: str,
                 blob: str | None = None) -> Path:
    """Place one file in the hub cache layout: blobs/<blob>, snapshots/<commit>/<filename> -> blob."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    blob_path = repo / "blobs" / (blob or sha256)
    blob_path.parent.mkdir(parents=True, exist_ok=True)
    if not (blob_path.is_file() and sha256_file(blob_path) == sha256):
        tmp = blob_path.with_name(blob_path.name + ".incomplete")
        shutil.move(source, tmp)  # a rename: the staging folder is inside the cache
        os.replace(tmp, blob_path)
    link = repo / "snapshots" / commit / _safe_relpath(filename)
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    try:
        link.symlink_to(os.path.relpath(blob_path, link.parent))
    except OSError:  # no symlinks (some Windows setups): huggingface_hub then copies files too
        shutil.copyfile(blob_path, link)
    return link


def write_ref(root: Path, repo_id: str, ref: str, commit: str) -> None:
    refs = root / ("models--" + repo_id.replace("/", "--")) / "refs"
    path = refs / _safe_relpath(ref)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(commit)  # huggingface_hub writes the bare hash, no newline


def unpack(pack_file: Path, cache: str | None = None) -> dict:
    """Verify the whole pack, then install it into the hub cache. Returns the manifest."""
    root = cache_dir(cache)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".genguard-unpack-", dir=root) as tmp:
        staging = Path(tmp)
        manifest = _extract_verified(Path(pack_file), staging)
        for name, entry in manifest["detectors"].items():
            for f in entry["files"]:
                install_file(root, entry["repo_id"], entry["revision"], f["path"],
                             staging / name / f["path"], f["sha256"], f.get("blob"))
            if not COMMIT.fullmatch(entry["requested_revision"]):
                write_ref(root, entry["repo_id"], entry["requested_revision"], entry["revision"])
    check_installed(manifest, root)
    return manifest


def check_installed(manifest: dict, root: Path) -> None:
    """Read each file back through huggingface_hub's cache lookup and compare its sha256."""
    hub = _hub()
    for name, entry in manifest["detectors"].items():
        for f in entry["files"]:
            path = hub.try_to_load_from_cache(entry["repo_id"], f["path"], cache_dir=str(root),
                                              revision=entry["requested_revision"])
            if not isinstance(path, str) or sha256_file(Path(path)) != f["sha256"]:
                raise WeightsError(f"{name}: {f['path']} did not install into {root} (found {path!r})")


def pin_line(manifest: dict) -> str:
    """The REVISIONS= setting that pins what a manifest holds."""
    return " ".join(f"{n}={e['revision']}" for n, e in manifest["detectors"].items())


# ---------------------------------------------------------------------------------------------------
# command line


def main(argv=None, prog: str = "python -m genguard.export.weights") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    cache_help = "Hugging Face hub cache (default: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)"
    for name in ("download", "pack"):
        p = sub.add_parser(name)
        p.add_argument("--cache", help=cache_help)
        p.add_argument("--revision", action="append", default=[], metavar="NAME=REV",
                       help="pin a detector's revision (branch, tag or commit; default main)")
        p.add_argument("--detectors", default="", help="comma-separated subset of the hub detectors")
    sub.choices["pack"].add_argument("--out", type=Path, default=DEFAULT_PACK)
    p = sub.add_parser("verify")
    p.add_argument("pack", type=Path)
    p = sub.add_parser("unpack")
    p.add_argument("pack", type=Path)
    p.add_argument("--cache", help=cache_help)
    args = parser.parse_args(argv)
    try:
        if args.command in ("download", "pack"):
            names = [n for n in args.detectors.split(",") if n] or None
            revisions = _revisions(args.revision)
        if args.command == "download":
            for name, commit in download(revisions, args.cache, names).items():
                print(f"{name:<14} {specs.get(name).source} @ {commit}")
            print(f"in {cache_dir(args.cache)}")
        elif args.command == "pack":
            manifest = pack(args.out, revisions, args.cache, names)
            print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB, sha256 {sha256_file(args.out)})")
            for name, entry in manifest["detectors"].items():
                print(f"  {name:<14} {entry['repo_id']} @ {entry['revision']}: "
                      + ", ".join(f["path"] for f in entry["files"]))
        elif args.command == "verify":
            manifest = verify(args.pack)
            print(f"{args.pack}: every file matches its sha256 in the manifest")
            print(f"  pin: REVISIONS=\"{pin_line(manifest)}\"")
        else:
            manifest = unpack(args.pack, args.cache)
            print(f"installed {args.pack} into {cache_dir(args.cache)} (every file verified by sha256)")
            for name, entry in manifest["detectors"].items():
                print(f"  {name:<14} {entry['repo_id']} @ {entry['revision']} "
                      f"(refs/{entry['requested_revision']})")
            print(f"next: HF_HUB_OFFLINE=1 make serve CHECKPOINTS=...   (to pin: REVISIONS=\"{pin_line(manifest)}\")")
    except (WeightsError, WeightsUnavailable, KeyError, OSError, tarfile.TarError, json.JSONDecodeError) as exc:
        print(f"{prog} {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
