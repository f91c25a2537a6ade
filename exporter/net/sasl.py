"""SASL initial responses for OAuth2 bearer tokens, and the choice of mechanism.

- ``XOAUTH2`` (Google's and Microsoft's): ``user=USER ^A auth=Bearer TOKEN ^A ^A``.
- ``OAUTHBEARER`` (RFC 7628 §3.1): a GS2 header ``n,a=USER,`` then ``^A`` separated
  key-value pairs (``host``, ``port``, ``auth=Bearer TOKEN``) and a final ``^A^A``.

Both are sent base64-encoded, as the initial response of ``AUTH`` (SMTP, RFC 4954) or
``AUTHENTICATE`` (IMAP, with SASL-IR, RFC 4959, or after the continuation).  When the
server refuses a token it does not answer with a final failure at once: it sends a
challenge carrying a JSON error (RFC 7628 §3.2.2), to which the client answers with an
empty response (XOAUTH2) or a single ``^A`` (OAUTHBEARER, RFC 7628 §3.2.3); only then
does the final failure come.  :func:`abort_response` is that answer.

Pure functions: no I/O, no secrets kept.
"""

from __future__ import annotations

__all__ = ["OAUTH_MECHANISMS", "abort_response", "choose_mechanism", "initial_response", "oauth_error"]

import base64
import binascii
import json

#: OAuth2 mechanisms, in the order ``auto`` prefers them: the standard first.
OAUTH_MECHANISMS = ("OAUTHBEARER", "XOAUTH2")
#: Password mechanisms, in the order ``auto`` prefers them.
PASSWORD_MECHANISMS = ("PLAIN", "LOGIN")


def choose_mechanism(offered: set[str], configured: str, oauth: bool) -> str | None:
    """The mechanism to use: ``configured`` if the server offers it, else the preferred one it
    offers for this kind of credential (``oauth``: a bearer token, else a password); None when none fits."""
    offered = {m.upper() for m in offered}
    if configured != "auto":
        return configured if configured in offered else None
    for mech in OAUTH_MECHANISMS if oauth else PASSWORD_MECHANISMS:
        if mech in offered:
            return mech
    return None


def initial_response(mechanism: str, user: str, token: str, host: str = "", port: int = 0) -> str:
    """The base64 initial response of ``mechanism`` (XOAUTH2 or OAUTHBEARER) for ``user`` and ``token``."""
    if mechanism == "XOAUTH2":
        raw = f"user={user}\x01auth=Bearer {token}\x01\x01"
    elif mechanism == "OAUTHBEARER":
        # RFC 7628 §3.1: in the GS2 header, "," and "=" in the authzid are escaped as =2C and =3D
        authzid = user.replace("=", "=3D").replace(",", "=2C")
        pairs = ""
        if host:
            pairs += f"host={host}\x01"
        if port:
            pairs += f"port={port}\x01"
        raw = f"n,a={authzid},\x01{pairs}auth=Bearer {token}\x01\x01"
    else:
        raise ValueError(f"not an OAuth2 mechanism: {mechanism}")
    return base64.b64encode(raw.encode("utf-8")).decode("ascii")


def abort_response(mechanism: str) -> str:
    """What a client sends to a server's error challenge (base64; empty for XOAUTH2)."""
    return base64.b64encode(b"\x01").decode("ascii") if mechanism == "OAUTHBEARER" else ""


def oauth_error(challenge: str) -> str:
    """A short, safe description of a server's error challenge (base64 JSON, RFC 7628 §3.2.2).

    Only the ``status`` and ``scope`` members are kept: the rest is server text."""
    try:
        data = json.loads(base64.b64decode(challenge.strip(), validate=True))
    except (binascii.Error, ValueError):
        return "the server refused the token"
    if not isinstance(data, dict):
        return "the server refused the token"
    status = str(data.get("status", ""))[:40]
    scope = str(data.get("scope", ""))[:120]
    text = "the server refused the token"
    if status:
        text += f" (status {status}"
        text += f", scope {scope})" if scope else ")"
    return "".join(c if c.isprintable() else "?" for c in text)
