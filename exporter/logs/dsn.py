"""The enhanced status codes (RFC 3463) that get a ``dsn`` label value of their own.

Shared by every parser that counts ``mail_log_delivery_dsn_total``, so that one code has one
label value whatever the MTA; any other code is counted as its class, ``2.other``,
``4.other`` or ``5.other``.
"""

from __future__ import annotations

__all__ = ["DSN_CODES"]

DSN_CODES: frozenset[str] = frozenset({
    "2.0.0", "2.1.5", "2.6.0", "4.0.0", "4.1.1", "4.1.8", "4.2.0", "4.2.1", "4.2.2", "4.3.0", "4.3.1", "4.3.2",
    "4.3.5", "4.4.1", "4.4.2", "4.4.3", "4.4.4", "4.4.6", "4.4.7", "4.5.0", "4.5.3", "4.7.0", "4.7.1", "4.7.5",
    "4.7.25", "4.7.26", "4.7.28", "5.0.0", "5.1.0", "5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.8", "5.1.10", "5.2.0",
    "5.2.1", "5.2.2", "5.2.3", "5.3.0", "5.3.4", "5.4.1", "5.4.4", "5.4.6", "5.4.7", "5.5.0", "5.5.1", "5.7.0",
    "5.7.1", "5.7.8", "5.7.9", "5.7.23", "5.7.25", "5.7.26", "5.7.27", "5.7.28",
})  # fmt: skip
