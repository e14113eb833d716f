"""Direct Triton access over TLS (genguard.client TLS): the sync and asyncio clients, gRPC and HTTP,
through a TLS-terminating proxy (a self-signed certificate made with openssl, ALPN h2 for gRPC) in
front of the real tritonserver (the session `triton` fixture)."""

from __future__ import annotations

import asyncio
import io
import ssl
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import free_ports
from genguard.client import AsyncClient, Client, ServerUnavailable
from genguard.client.transport import TLS

pytestmark = pytest.mark.server


def make_cert(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


class TlsProxy:
    """Terminates TLS on a free port and pipes the plaintext to `target` (host:port)."""

    def __init__(self, target: str, cert: Path, key: Path):
        self.target = target.rsplit(":", 1)
        self.port = free_ports(1)[0]
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.context.set_alpn_protocols(["h2", "http/1.1"])
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=self.context))
        self.ready.set()
        self.loop.run_forever()

    async def _handle(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target[0], int(self.target[1]))
        except OSError:
            writer.close()
            return

        async def pipe(src, dst) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    return make_cert(folder, "server"), make_cert(folder, "stranger")


@pytest.fixture(scope="module")
def proxies(triton, certs):
    (cert, key), _ = certs
    grpc, http = TlsProxy(triton.grpc_url, cert, key), TlsProxy(triton.http_url, cert, key)
    yield {"grpc": grpc, "http": http}
    grpc.close()
    http.close()


def image(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_tls_to_triton(triton, proxies, certs, protocol):
    (cert, _), (stranger, _) = certs
    data = [image(1), image(2)]
    with Client(triton.grpc_url) as plain:
        expected = [r.is_ai_generated for r in plain.detect(data)]
    proxy = proxies[protocol]
    with Client(proxy.url, protocol=protocol, tls=TLS(ca_file=str(cert)), retries=0) as client:
        results = client.detect(data)
        assert client.health().ok
    assert [r.status for r in results] == ["SUCCESS", "SUCCESS"]
    assert [r.is_ai_generated for r in results] == pytest.approx(expected, abs=1e-5)

    async def run_async():
        async with AsyncClient(proxy.url, protocol=protocol, tls=TLS(ca_file=str(cert)), retries=0) as client:
            return await client.detect(data)

    assert [r.is_ai_generated for r in asyncio.run(run_async())] == pytest.approx(expected, abs=1e-5)

    # The same port without TLS, or with a CA that didn't sign the server's certificate, gets nowhere.
    for tls in (None, TLS(ca_file=str(stranger))):
        with Client(proxy.url, protocol=protocol, tls=tls, retries=0, timeout=10) as client:
            with pytest.raises(ServerUnavailable):
                client.detect(data)


def test_tls_settings_are_checked():
    with pytest.raises(ValueError, match="cert_file and key_file"):
        TLS(cert_file="client.pem")
    with pytest.raises(ValueError, match="gRPC always checks"):
        TLS(insecure=True).grpc_kwargs()
