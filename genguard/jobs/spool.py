"""Uploaded bytes, kept until the job's results expire: a folder (a volume in Kubernetes) or any fsspec URL
(s3://bucket/prefix, ...). One file per item, `<job id>/<item>`; workers on other machines read the same URL."""

from __future__ import annotations


class Spool:
    def __init__(self, url: str):
        from fsspec.core import url_to_fs

        self.url = url.rstrip("/")
        self.fs, self.root = url_to_fs(self.url)
        self.fs.makedirs(self.root, exist_ok=True)

    def _path(self, job_id: str, item: int | None = None) -> str:
        return f"{self.root}/{job_id}" + ("" if item is None else f"/{item}")

    def put(self, job_id: str, items: list[bytes]) -> None:
        self.fs.makedirs(self._path(job_id), exist_ok=True)
        for i, data in enumerate(items):
            with self.fs.open(self._path(job_id, i), "wb") as f:
                f.write(data)

    def get(self, job_id: str, item: int) -> bytes:
        with self.fs.open(self._path(job_id, item), "rb") as f:
            return f.read()

    def remove(self, job_id: str) -> None:
        try:
            self.fs.rm(self._path(job_id), recursive=True)
        except FileNotFoundError:
            pass
