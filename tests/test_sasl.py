"""SASL XOAUTH2 and OAUTHBEARER encodings, the error challenge, and the choice of mechanism."""

from __future__ import annotations

import base64

import pytest

from exporter.net.sasl import abort_response, choose_mechanism, initial_response, oauth_error


def decoded(b64: str) -> bytes:
    return base64.b64decode(b64, validate=True)


def test_xoauth2_initial_response() -> None:
    # Google's and Microsoft's documented form: user=...^Aauth=Bearer ...^A^A
    assert decoded(
        initial_response("XOAUTH2", "someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg")
    ) == (b"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\x01\x01")


def test_oauthbearer_initial_response_is_rfc_7628_example() -> None:
    # RFC 7628 §4.1, the client's first message
    got = decoded(
        initial_response(
            "OAUTHBEARER", "user@example.com", "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==", "server.example.com", 143
        )
    )
    assert got == (
        b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01"
        b"auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01"
    )


def test_oauthbearer_escapes_the_authzid() -> None:
    got = decoded(initial_response("OAUTHBEARER", "a,b=c@example.com", "t"))
    assert got.startswith(b"n,a=a=2Cb=3Dc@example.com,\x01auth=Bearer t")


def test_abort_responses() -> None:
    assert abort_response("XOAUTH2") == ""  # an empty line
    assert decoded(abort_response("OAUTHBEARER")) == b"\x01"  # RFC 7628 §3.2.3


def test_not_an_oauth_mechanism() -> None:
    with pytest.raises(ValueError):
        initial_response("PLAIN", "u", "t")


def test_error_challenge_of_rfc_7628() -> None:
    # RFC 7628 §4.3's failure challenge
    challenge = (
        "eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIiwic2NvcGUiOiJleGFtcGxlX3Njb3BlIiwib3BlbmlkLWNvbmZpZ3VyYXRpb24iOiJodHRwczovL2V4"
        "YW1wbGUuY29tLy53ZWxsLWtub3duL29wZW5pZC1jb25maWd1cmF0aW9uIn0="
    )
    assert oauth_error(challenge) == "the server refused the token (status invalid_token, scope example_scope)"


@pytest.mark.parametrize("challenge", ["", "not base64!", base64.b64encode(b"[1, 2]").decode(), "e30="])
def test_odd_error_challenges_are_described_safely(challenge: str) -> None:
    assert oauth_error(challenge) == "the server refused the token"


def test_error_challenge_text_is_bounded_and_printable() -> None:
    body = base64.b64encode(b'{"status": "bad\\u0007' + b"x" * 500 + b'"}').decode()
    text = oauth_error(body)
    assert len(text) < 120 and text.isprintable()


@pytest.mark.parametrize(
    ("offered", "configured", "oauth", "want"),
    [
        ({"PLAIN", "LOGIN"}, "auto", False, "PLAIN"),
        ({"LOGIN"}, "auto", False, "LOGIN"),
        ({"XOAUTH2"}, "auto", False, None),  # a password never goes to an OAuth mechanism
        ({"XOAUTH2", "OAUTHBEARER", "PLAIN"}, "auto", True, "OAUTHBEARER"),  # the standard first
        ({"xoauth2", "PLAIN"}, "auto", True, "XOAUTH2"),  # Microsoft 365 SMTP offers only XOAUTH2
        ({"PLAIN", "LOGIN"}, "auto", True, None),  # a token never goes to a password mechanism
        ({"XOAUTH2", "OAUTHBEARER"}, "XOAUTH2", True, "XOAUTH2"),
        ({"OAUTHBEARER"}, "XOAUTH2", True, None),  # configured but not offered: no fallback
        (set(), "auto", True, None),
    ],
)
def test_choose_mechanism(offered: set[str], configured: str, oauth: bool, want: str | None) -> None:
    assert choose_mechanism(offered, configured, oauth) == want
