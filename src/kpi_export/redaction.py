"""Keeping secrets and forged lines out of output: pure text functions shared by logs and failure reasons."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from urllib.parse import unquote

# C0 and C1 controls, DEL, line/paragraph separators and bidi overrides: anything that could forge a new
# log line or hide text when job data (a custom job id, a failed reason) reaches a log line. Lone surrogates
# (bytes from Redis that were not UTF-8) too: the stream could not even encode them.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
# user:password@ in a URL; greedy up to the last @ before the path, so that a password holding an
# unencoded @ is covered whole.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/\s]*@", re.IGNORECASE)
# Shorter configured secrets are not searched for in free text: replacing every "kpi" would mangle the logs.
# They stay out of output because no log line or failure reason is ever built from a password.
MIN_REDACTED_LENGTH = 6


def escape_controls(text: str, *, keep_newlines: bool = False) -> str:
    def escape(match: re.Match[str]) -> str:
        char = match.group()
        if keep_newlines and char == "\n":
            return char
        return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"

    return _UNSAFE.sub(escape, text)


def escape_controls_in_json(text: str) -> str:
    """JSON text with the characters json.dumps leaves raw (C1 controls, DEL, separators, bidi overrides, lone
    surrogates) as \\u escapes; its own newlines (indentation) stay, as json.dumps escapes those in strings."""
    return _UNSAFE.sub(lambda match: "\n" if match.group() == "\n" else f"\\u{ord(match.group()):04x}", text)


def hide_url_credentials(text: str) -> str:
    return _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)


class Redactor:
    """Replaces the configured secrets (as written, URL-decoded, JSON- or log-escaped) and any URL's
    credentials with ***."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        for secret in secrets:
            for form in (secret, unquote(secret)):
                forms.update({form, json.dumps(form)[1:-1], escape_controls(form)})
        self._secrets = sorted((s for s in forms if len(s) >= MIN_REDACTED_LENGTH), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        if "://" in text:  # every log line comes through here: skip the regex where it cannot match
            text = hide_url_credentials(text)
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text


def describe(error: BaseException) -> str:
    """An exception as one line for a log line or a `failedReason`: its class (the driver's, where SQLAlchemy
    wraps one) and the first line of its message, with URL credentials hidden and control characters escaped."""
    orig = getattr(error, "orig", None) or error
    # SQLAlchemy's adapters wrap the driver's exception, whose class says more ("DeadlockDetectedError").
    named = orig.__cause__ if isinstance(orig.__cause__, Exception) else orig
    first_line = (str(orig).strip().splitlines() or [""])[0]
    text = f"{type(named).__name__}: {first_line}" if first_line else type(named).__name__
    return escape_controls(hide_url_credentials(text))[:500]
