"""`genguard gateway` / `python -m genguard.gateway`: run the REST gateway on uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys

from genguard.jobs.options import JOBS_SETTINGS

from .settings import ENV_PREFIX, Settings, SettingsError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = Settings()
    env = lambda name: f"{ENV_PREFIX}{name.upper()}"  # noqa: E731
    parser.add_argument("--triton-url", default=None, help=f"Triton gRPC host:port (default {d.triton_url}; "
                                                           f"${env('triton_url')})")
    parser.add_argument("--host", default=None, help=f"address to listen on (default {d.host}; off loopback an "
                                                     "API keys file is required)")
    parser.add_argument("--port", type=int, default=None, help=f"default {d.port}")
    parser.add_argument("--api-keys-file", default=None, help=f"one API key per line (${env('api_keys_file')})")
    parser.add_argument("--max-body-bytes", type=int, default=None, help=f"default {d.max_body_bytes} (64 MiB)")
    parser.add_argument("--max-images", type=int, default=None, help=f"per request (default {d.max_images})")
    parser.add_argument("--deadline-s", type=float, default=None, help=f"queue wait + inference (default {d.deadline_s:g})")
    parser.add_argument("--max-concurrency", type=int, default=None,
                        help=f"requests forwarded to Triton at once (default {d.max_concurrency})")
    parser.add_argument("--max-queue", type=int, default=None, help=f"requests waiting beyond those (default {d.max_queue})")
    parser.add_argument("--retry-after-s", type=int, default=None, help=f"Retry-After on 429/503 (default {d.retry_after_s})")
    parser.add_argument("--triton-retries", type=int, default=None,
                        help=f"reconnect attempts before 503 (default {d.triton_retries})")
    parser.add_argument("--public-metrics", action="store_true", default=None,
                        help="serve /metrics without an API key (default: the key is required when keys are on)")
    parser.add_argument("--cache", default=None, help=f"answer cache: off, memory or redis://host:port/db "
                        f"(default {d.cache}; ${env('cache')})")
    parser.add_argument("--cache-max-bytes", type=int, default=None,
                        help=f"memory cache bound (default {d.cache_max_bytes}; entries: ${env('cache_max_entries')})")
    parser.add_argument("--video-max-bytes", type=int, default=None,
                        help=f"a clip on POST /v1/detect (default {d.video_max_bytes}, 32 MiB; larger: POST /v1/jobs)")
    parser.add_argument("--video-max-duration-s", type=float, default=None,
                        help=f"a clip's duration on POST /v1/detect (default {d.video_max_duration_s:g}; longer: "
                             "POST /v1/jobs)")
    from genguard.jobs.options import add_arguments as jobs_arguments

    jobs_arguments(parser)
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app

    names = ("triton_url", "host", "port", "api_keys_file", "max_body_bytes", "max_images", "deadline_s",
             "max_concurrency", "max_queue", "retry_after_s", "triton_retries", "public_metrics", "cache", "cache_max_bytes",
             "video_max_bytes", "video_max_duration_s", *JOBS_SETTINGS)
    try:
        settings = Settings.from_env(**{n: getattr(args, n) for n in names})
        app = create_app(settings)
    except SettingsError as exc:
        print(f"genguard gateway: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    print(f"GenGuard gateway on http://{settings.host}:{settings.port} (docs http://{settings.host}:{settings.port}/docs)"
          f" -> Triton gRPC {settings.triton_url}", file=sys.stderr, flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level, access_log=False,
                proxy_headers=False, server_header=False, timeout_graceful_shutdown=30)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="genguard gateway", description="GenGuard's REST gateway in front of Triton.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
