"""``POST /alertmanager``: Alertmanager's webhook, the HTTP half.

Authentication (bearer token or basic auth, compared in constant time), content type
(JSON, else 415), size (``webhook.max_body_bytes``, else 413), the body within
``--web.read-timeout`` (else 408), validation (:func:`~exporter.continuity.webhook.parse_notification`,
else 400 and nothing is written), then the continuity service stores it in one durable
transaction: 200 only after its commit, 503 when the store fails (Alertmanager retries
5xx answers, not 4xx ones).  Every answer is counted in
``mail_webhook_notifications_total{result}``.
"""

from __future__ import annotations

__all__ = ["IncidentIntake", "handle_webhook"]

import asyncio
import base64
import binascii
import hmac
import logging
from typing import Protocol

from aiohttp import web

from exporter import config as cfgmod
from exporter.continuity.webhook import Notification, parse_notification
from exporter.core.errors import StoreError, WebhookError

log = logging.getLogger("exporter.continuity")


class IncidentIntake(Protocol):
    """What the webhook handler needs of the continuity service."""

    @property
    def webhook_config(self) -> cfgmod.WebhookConfig: ...

    def count_webhook(self, result: str) -> None: ...

    async def ingest_notification(self, note: Notification) -> int: ...


def _authorized(cfg: cfgmod.WebhookConfig, request: web.Request) -> bool:
    if cfg.bearer_token is None and cfg.basic_auth is None:
        return True
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    value = value.strip()
    token = cfg.bearer_token
    if (
        token is not None
        and scheme.lower() == "bearer"
        and hmac.compare_digest(value.encode(), token.reveal().encode())
    ):
        return True
    if cfg.basic_auth is not None and scheme.lower() == "basic":
        try:
            given = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return False
        want = f"{cfg.basic_auth.username}:{cfg.basic_auth.password.reveal()}".encode()
        if hmac.compare_digest(given, want):
            return True
    return False


async def handle_webhook(request: web.Request, intake: IncidentIntake, body_timeout: float) -> web.Response:
    """Answer one webhook request; the body must arrive within ``body_timeout`` seconds."""
    cfg = intake.webhook_config
    if not _authorized(cfg, request):
        intake.count_webhook("unauthorized")
        challenge = 'Bearer realm="mail-continuity-exporter"'
        if cfg.basic_auth is not None:
            challenge = 'Basic realm="mail-continuity-exporter"'
        return web.Response(status=401, text="Unauthorized.\n", headers={"WWW-Authenticate": challenge})
    ctype = request.content_type.lower()
    if ctype != "application/json" and not (ctype.startswith("application/") and ctype.endswith("+json")):
        intake.count_webhook("unsupported_media_type")
        return web.Response(status=415, text=f'Expected Content-Type "application/json", got "{ctype[:60]}".\n')
    limit = cfg.max_body_bytes
    try:
        if request.content.is_eof():
            # The whole body came with the headers (the common case): reading it cannot
            # wait, so it needs no deadline (arming one costs more than the read).
            body = await _read_body(request, limit)
        else:
            async with asyncio.timeout(body_timeout):
                body = await _read_body(request, limit)
    except TimeoutError:
        intake.count_webhook("invalid")
        log.info("webhook body not received in time", extra={"kv": {"timeout": body_timeout}})
        resp = web.Response(status=408, text="Request body not received within --web.read-timeout.\n")
        resp.force_close()
        return resp
    if body is None:
        intake.count_webhook("too_large")
        return web.Response(status=413, text=f"Body larger than webhook.max_body_bytes ({limit} bytes).\n")
    try:
        note = parse_notification(body)
    except WebhookError as exc:
        intake.count_webhook("invalid")
        log.info("webhook notification rejected", extra={"kv": {"err": str(exc), "status": exc.status}})
        return web.Response(status=exc.status, text=f"Rejected: {exc}\n")
    try:
        stored = await intake.ingest_notification(note)
    except StoreError as exc:
        intake.count_webhook("error")
        log.error("webhook notification not stored", extra={"kv": {"err": str(exc)}})
        return web.Response(status=503, text="Not stored: the incident store failed; retry later.\n")
    intake.count_webhook("accepted")
    return web.Response(text=f"Stored {stored} alerts.\n")


async def _read_body(request: web.Request, limit: int) -> bytes | None:
    """The request body, or None when it is larger than ``limit`` (read no further than that)."""
    length = request.content_length
    if length is not None:
        if length > limit:
            return None
        try:
            return await request.content.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            return exc.partial  # the client went away; the truncated JSON is rejected
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(65536)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
