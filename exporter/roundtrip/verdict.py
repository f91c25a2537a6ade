"""The receiving side's verdict on a delivered probe: authentication results and spam filter, bounded.

Pure functions over the header fields fetched with the probe (no I/O).  :func:`judge` takes the
``Authentication-Results`` fields and the spam filters' fields of one message and returns a
:class:`Verdict` whose every value comes from a small fixed set, so that the route can export
it as labels.

Decisions:

* **Whose results.**  Only ``Authentication-Results`` fields that carry the receiver's own
  authserv-id count (``receive.authserv_id``; see :func:`~exporter.roundtrip.authresults.results_for`).
  Anything else (a relay's header, or one the sender forged) is ignored.  When the route has
  no authserv-id configured there is no verdict at all: guessing which header is the
  receiver's would let any sender decide the result.
* **Per method** (``spf``, ``dkim``, ``dmarc``, ``arc``): :func:`~exporter.roundtrip.authresults.verdict`
  folds several results into one (``pass`` if any signature passed), ``none`` when the
  receiver did not state one.  ``arc`` is reported only when the receiver stated it.
* **DKIM alignment** (RFC 7489 section 3.1.1, relaxed): some passing DKIM result's signing
  domain (``header.d``, else the domain of ``header.i``) equals the From domain or is a
  parent or child of it.  The organisational domain is approximated without the public
  suffix list: the shorter of the two must have at least two labels.  None when no DKIM
  result passed.
* **DMARC policy and disposition**, as the receiver wrote them: the published policy from the
  comment after the result (OpenDMARC and Gmail: ``(p=reject dis=none)``) or a
  ``policy.published-domain-policy`` property; the applied disposition from ``dis=`` or
  Microsoft 365's ``action=`` property (``oreject``, ``pct.quarantine``... map to the action
  taken).  Each is one of :data:`DMARC_POLICIES`, ``unknown`` when the header does not say.
* **Spam verdict** from the first standard spam filter field present, in this order:
  ``X-Spam-Flag`` (SpamAssassin), ``X-Spam-Status`` (SpamAssassin, rspamd), ``X-Spam``
  (rspamd), ``X-Rspamd-Action``, ``X-MS-Exchange-Organization-SCL`` and the ``SCL:`` of
  ``X-Forefront-Antispam-Report`` (Microsoft 365; 5 and above is spam).  ``ham`` or ``spam``,
  ``none`` when no filter said anything; the score (``score=`` of X-Spam-Status,
  ``X-Rspamd-Score``, or the SCL) is kept when given.  These fields are taken as found: a
  receiver that runs a filter rewrites them, and a probe never carries them itself.
"""

from __future__ import annotations

__all__ = [
    "AUTH_METHODS",
    "DMARC_POLICIES",
    "FETCHED_HEADERS",
    "SPAM_HEADERS",
    "SPAM_VERDICTS",
    "Verdict",
    "dkim_aligned",
    "dmarc_policy",
    "judge",
    "spam_verdict",
]

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from exporter.roundtrip.authresults import AuthResults, MethodResult, results_for, verdict

#: Methods judged on every probe (``arc`` is added when the receiver states it).
AUTH_METHODS: tuple[str, ...] = ("spf", "dkim", "dmarc")
#: Values of the DMARC ``policy`` and ``disposition`` labels.
DMARC_POLICIES: tuple[str, ...] = ("none", "quarantine", "reject", "unknown")
#: Values of the spam ``verdict`` label.
SPAM_VERDICTS: tuple[str, ...] = ("ham", "spam", "none")
#: Header fields read for the spam verdict (lower-case), in order of precedence.
SPAM_HEADERS: tuple[str, ...] = (
    "x-spam-flag",
    "x-spam-status",
    "x-spam",
    "x-rspamd-action",
    "x-ms-exchange-organization-scl",
    "x-forefront-antispam-report",
)
#: Fields fetched with a probe for the verdict (besides ``Received``).
FETCHED_HEADERS: tuple[str, ...] = ("Authentication-Results", *(h.title() for h in SPAM_HEADERS), "X-Rspamd-Score")

_RSPAMD_SPAM_ACTIONS = {"add header", "rewrite subject", "soft reject", "reject"}
_SCORE_RE = re.compile(r"\bscore=(-?[0-9]+(?:\.[0-9]+)?)(?![0-9eE.])", re.IGNORECASE)
_SCL_RE = re.compile(r"(?:^|;)\s*SCL:(-?[0-9]+)", re.IGNORECASE)
_POLICY_RE = re.compile(r"(?<![a-z.])p=([a-z]+)", re.IGNORECASE)
_DIS_RE = re.compile(r"(?<![a-z.])dis=([a-z]+)", re.IGNORECASE)
_MAX_SCORE = 1e6


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the receiving side said about one probe; every string is from a bounded set."""

    #: Whether authentication results were judged (the route names the receiver's authserv-id).
    auth_checked: bool
    #: Whether a header with the receiver's authserv-id was there.
    header_present: bool
    #: method -> one of authresults.RESULTS; spf, dkim and dmarc always, arc when stated.
    auth: tuple[tuple[str, str], ...]
    #: A passing DKIM signature aligned with the From domain; None when none passed.
    dkim_aligned: bool | None
    dmarc_policy: str  # DMARC_POLICIES
    dmarc_disposition: str  # DMARC_POLICIES
    spam: str  # SPAM_VERDICTS
    spam_score: float | None

    def result(self, method: str) -> str:
        return dict(self.auth).get(method, "none")

    def describe(self) -> str:
        """One line for the status page: ``spf=pass dkim=pass dmarc=pass (p=reject) spam=ham``."""
        parts = [f"{m}={r}" for m, r in self.auth]
        if not self.auth_checked:
            parts = []
        elif not self.header_present:
            parts = ["no Authentication-Results from the receiver"]
        elif self.dmarc_policy != "unknown":
            parts.append(f"(p={self.dmarc_policy})")
        if self.dkim_aligned is False:
            parts.append("dkim not aligned")
        parts.append(f"spam={self.spam}" + (f" score={self.spam_score:g}" if self.spam_score is not None else ""))
        return " ".join(parts)


def _domain(value: str | None) -> str:
    if not value:
        return ""
    return value.rsplit("@", 1)[-1].strip().strip(".").lower()


def _aligned(signer: str, author: str) -> bool:
    if not signer or not author:
        return False
    if signer == author:
        return True
    short, long_ = (signer, author) if len(signer) < len(author) else (author, signer)
    return short.count(".") >= 1 and long_.endswith("." + short)


def dkim_aligned(results: Sequence[AuthResults], from_domain: str) -> bool | None:
    """Whether a passing DKIM result's signing domain is aligned (relaxed) with ``from_domain``."""
    author = _domain(from_domain)
    passing = [r for ar in results for r in ar.results if r.method == "dkim" and r.result == "pass"]
    if not passing:
        return None
    return any(_aligned(_domain(r.prop("header.d") or r.prop("header.i")), author) for r in passing)


def _bounded_policy(word: str | None) -> str:
    if not word:
        return "unknown"
    word = word.lower()
    if word in ("none", "quarantine", "reject"):
        return word
    # Microsoft 365's action= values: oreject / oquarantine (the policy was overridden: the
    # message went to the Junk folder), pct.reject / pct.quarantine (sampled out by pct=:
    # delivered as it was), bestguesspass (no DMARC record; no action).
    if word.startswith("pct."):
        return "none"
    if word in ("oreject", "oquarantine"):
        return "quarantine"
    return "none" if word == "bestguesspass" else "unknown"


def _first_dmarc(results: Sequence[AuthResults]) -> MethodResult | None:
    return next((r for ar in results for r in ar.results if r.method == "dmarc"), None)


def dmarc_policy(results: Sequence[AuthResults]) -> tuple[str, str]:
    """(published policy, applied disposition) of the first DMARC result, each in :data:`DMARC_POLICIES`."""
    dmarc = _first_dmarc(results)
    if dmarc is None:
        return "unknown", "unknown"
    policy = _POLICY_RE.search(dmarc.comment)
    published = dmarc.prop("policy.published-domain-policy") or dmarc.prop("policy.dmarc")
    dis = _DIS_RE.search(dmarc.comment)
    action = dmarc.prop("action") or dmarc.prop("policy.applied-disposition")
    return (
        _bounded_policy(policy.group(1) if policy else published),
        _bounded_policy(dis.group(1) if dis else action),
    )


def _score(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and abs(value) < _MAX_SCORE else None


def spam_verdict(fields: Iterable[tuple[str, str]]) -> tuple[str, float | None]:
    """(verdict, score) from the spam filters' header fields (name, value); ``("none", None)`` when none."""
    first: dict[str, str] = {}
    for name, value in fields:
        key = name.strip().lower()
        if (key in SPAM_HEADERS or key == "x-rspamd-score") and key not in first:
            first[key] = " ".join(value.split())[:2048]
    score: float | None = None
    status = first.get("x-spam-status")
    if status is not None:
        m = _SCORE_RE.search(status)
        score = _score(m.group(1)) if m else None
    if score is None:
        score = _score(first.get("x-rspamd-score"))
    flag = first.get("x-spam-flag")
    if flag is not None and flag.strip().lower() in ("yes", "no"):
        return ("spam" if flag.strip().lower() == "yes" else "ham"), score
    if status is not None:
        word = status.split(",", 1)[0].strip().lower()
        if word in ("yes", "no"):
            return ("spam" if word == "yes" else "ham"), score
    rspamd = first.get("x-spam")
    if rspamd is not None and rspamd.strip().lower() in ("yes", "no"):
        return ("spam" if rspamd.strip().lower() == "yes" else "ham"), score
    action = first.get("x-rspamd-action")
    if action is not None and action.strip():
        return ("spam" if action.strip().lower() in _RSPAMD_SPAM_ACTIONS else "ham"), score
    scl_text = first.get("x-ms-exchange-organization-scl")
    if scl_text is None:
        report = first.get("x-forefront-antispam-report")
        m = _SCL_RE.search(report) if report else None
        scl_text = m.group(1) if m else None
    scl = _score(scl_text)
    if scl is not None:
        return ("spam" if scl >= 5 else "ham"), (score if score is not None else scl)
    return "none", score


def judge(
    fields: Iterable[tuple[str, str]],
    *,
    authserv_id: str | None,
    from_domain: str,
) -> Verdict:
    """The verdict on one message, from its header fields (name, value) in message order.

    With ``authserv_id`` None no authentication result is judged (``auth`` is empty).
    """
    fields = list(fields)
    results: list[AuthResults] = []
    auth: list[tuple[str, str]] = []
    if authserv_id is not None:
        ar_values = [v for n, v in fields if n.strip().lower() == "authentication-results"]
        results = results_for(ar_values, authserv_id)
        auth = [(m, verdict(results, m)) for m in AUTH_METHODS]
        arc = verdict(results, "arc")
        if arc != "none":
            auth.append(("arc", arc))
    policy, disposition = dmarc_policy(results)
    spam, score = spam_verdict(fields)
    return Verdict(
        auth_checked=authserv_id is not None,
        header_present=bool(results),
        auth=tuple(auth),
        dkim_aligned=dkim_aligned(results, from_domain),
        dmarc_policy=policy,
        dmarc_disposition=disposition,
        spam=spam,
        spam_score=score,
    )
