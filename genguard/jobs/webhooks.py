"""Webhooks: the callback URL check (no server-side request forgery) and signed delivery.

Deliveries follow the Standard Webhooks specification (the `standardwebhooks` package signs them):
`webhook-id` (the same for every attempt at one job's event, so receivers can drop duplicates),
`webhook-timestamp`, `webhook-signature` = v1,HMAC-SHA256 with the job owner's secret. Delivery is at least once:
a non-2xx answer, a timeout or a refused connection is retried with exponential backoff up to the configured
attempts, each attempt recorded on the job. Redirects are never followed.

A callback URL must name a host in the allowlist (`jobs_callback_hosts`: names, `*.suffix`, IPs, CIDRs), and every
address the host resolves to must be public, unless that address is itself in an allowlisted IP or CIDR: so a
name that resolves to 10.x or 127.0.0.1 is refused unless the operator listed that address. The same check runs
again before each delivery (the name may resolve elsewhere by then).
"""

from __future__ import annotations

import ipaddress
import json
import socket
from datetime import datetime, timezone
from urllib.parse import urlsplit

from standardwebhooks.webhooks import Webhook

TIMEOUT_S = 10.0


class CallbackRefused(ValueError):
    """A callback URL this gateway will not call (the message says why)."""


def parse_allowlist(text: str) -> list[str]:
    return [entry.strip().lower() for entry in text.split(",") if entry.strip()]


def _networks(allowlist: list[str]) -> list:
    networks = []
    for entry in allowlist:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            pass
    return networks


def _name_allowed(host: str, allowlist: list[str]) -> bool:
    return any(host == entry or entry.startswith("*.") and host.endswith(entry[1:]) for entry in allowlist)


def _public(address) -> bool:
    return not (address.is_private or address.is_loopback or address.is_link_local or address.is_multicast
                or address.is_reserved or address.is_unspecified or getattr(address, "ipv4_mapped", None))


def check_callback(url: str, allowlist: list[str], resolve=socket.getaddrinfo) -> str:
    """The URL, or CallbackRefused saying why."""
    if len(url) > 2048:
        raise CallbackRefused("callback_url is longer than 2048 characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CallbackRefused(f"callback_url must be an http:// or https:// URL with a host, not {url[:80]!r}")
    if parts.username or parts.password:
        raise CallbackRefused("callback_url must not carry credentials: the webhook's signature authenticates it")
    host = parts.hostname.lower()
    if not allowlist:
        raise CallbackRefused("this gateway takes no callback URLs: its operator allowlists callback hosts with "
                              "--jobs-callback-hosts (GENGUARD_GATEWAY_JOBS_CALLBACK_HOSTS)")
    networks = _networks(allowlist)
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if not (_name_allowed(host, allowlist) or literal is not None and any(literal in n for n in networks)):
        raise CallbackRefused(f"callback host {host} is not in this gateway's callback allowlist")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = resolve(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise CallbackRefused(f"callback host {host} does not resolve ({exc})") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not _public(address) and not any(address in n for n in networks):
            raise CallbackRefused(f"callback host {host} resolves to {address}, a private, loopback or link-local "
                                  "address: refused unless that address is allowlisted explicitly")
    return url


def event(job: dict) -> dict:
    """The Standard Webhooks payload: type, timestamp, data (the job as GET /v1/jobs/{id} shows it)."""
    return {"type": f"job.{job['status']}", "timestamp": datetime.now(timezone.utc).isoformat(), "data": job}


def signed(job: dict, secret: str) -> tuple[bytes, dict[str, str]]:
    """The body and the Standard Webhooks headers for one delivery of the job's event."""
    body = json.dumps(event(job), separators=(",", ":"))
    message_id = f"msg_{job['id']}_{job['status']}"
    now = datetime.now(timezone.utc)
    headers = {"content-type": "application/json", "user-agent": "GenGuard-Webhooks/1",
               "webhook-id": message_id, "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": Webhook(secret).sign(message_id, now, body)}
    return body.encode(), headers


async def deliver(http, job: dict, secret: str, allowlist: list[str]) -> tuple[bool, int | None, str | None]:
    """One attempt: (ok, the receiver's status code, the error)."""
    import asyncio

    import httpx

    url = job["callback_url"]
    try:
        await asyncio.to_thread(check_callback, url, allowlist)
    except CallbackRefused as exc:
        return False, None, f"refused: {exc}"
    body, headers = signed(job, secret)
    try:
        response = await http.post(url, content=body, headers=headers, follow_redirects=False, timeout=TIMEOUT_S)
    except httpx.HTTPError as exc:
        return False, None, f"{type(exc).__name__}: {exc}"[:500]
    ok = 200 <= response.status_code < 300
    return ok, response.status_code, None if ok else f"HTTP {response.status_code}"
