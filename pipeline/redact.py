"""Scrubbing untrusted text (a provider's error message, a server's close reason) before it is logged
or put into a record.

:func:`scrub` removes invisible and control characters, redacts the configured secrets (also
URL-encoded, base64 and quoted forms of each) and anything that looks like a credential
(``Bearer``/``Basic`` tokens, ``Authorization``/``X-API-Key``-style headers, ``api_key=``/``token=``
query parameters, ``user:password@`` in URLs), and cuts the result to a length. It is linear in the
length of the text and compiles the patterns of a set of secrets once.
"""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import quote, quote_plus

REDACTED: Final = "[redacted]"
WITHHELD: Final = "[withheld]"
"""What :func:`scrub` returns in the (contrived) case that redacting would itself spell a secret."""
DEFAULT_LIMIT: Final = 512
MARKER_MAX: Final = 40
"""Upper bound on the length of the truncation marker ``…[truncated N chars]``."""

# Format characters (zero-width, bidi overrides, tags) and lone surrogates: removed. Generated from
# Unicode categories Cf and Cs; tests/unit/test_redact.py checks it against :mod:`unicodedata`.
_INVISIBLE: Final = re.compile(
    "[\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e\u200b-\u200f\u202a-\u202e"
    "\u2060-\u2064\u2066-\u206f\ud800-\udfff\ufeff\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U00013438"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f]+"
)
# Other control characters (category Cc) are removed too; but those that separate words (tab, line
# and record separators, categories Zl and Zp) turn into a space, a run of them into one.
_CONTROL: Final = re.compile("[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f]+")
_BREAK: Final = re.compile("[\t-\r\x1c-\x1f\x85\u2028\u2029]+")

# Every pattern starts with a literal (no leading ``\w*`` that would rescan a long word from each of
# its positions), so each runs in time linear in the text.
_VALUE: Final = r"""[^\s"'&,;<>{}\[\]()]+"""
_SCHEMES: Final = r"(?:bearer|basic|token|digest|negotiate|apikey)"
_NAMES: Final = (
    r"(?:authorization|api[-_]?key|access[-_]?key|secret[-_]?key|private[-_]?key|token|secret"
    r"|password|passwd|credentials?|(?<![a-z])key)"
)
_NAME_VALUE: Final = re.compile(
    rf"""(?P<name>{_NAMES})(?P<sep>["']?[ \t]*[:=][ \t]*)(?P<q>["'])?"""
    rf"""(?(q)[^"']*|(?:{_SCHEMES} +)?{_VALUE})""",
    re.IGNORECASE,
)
_AUTH_SCHEME: Final = re.compile(rf"(?P<scheme>bearer|basic) +{_VALUE}", re.IGNORECASE)
_USERINFO: Final = re.compile(r"://[^\s/@:]+:[^\s/@]+@")


def _strip(text: str) -> str:
    return _BREAK.sub(" ", _CONTROL.sub("", _INVISIBLE.sub("", text)))


def _forms(secret: str) -> set[str]:
    """The spellings of ``secret`` that may show up in a message (after :func:`_strip`)."""
    raw = secret.encode("utf-8", "surrogatepass")
    b64 = base64.b64encode(raw).decode("ascii")
    url64 = base64.urlsafe_b64encode(raw).decode("ascii")
    forms = {
        secret,
        quote(secret, safe="", errors="surrogatepass"),
        quote_plus(secret, safe="", errors="surrogatepass"),
        b64,
        b64.rstrip("="),
        url64,
        url64.rstrip("="),
        repr(secret)[1:-1],
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
    }
    return {_strip(form) for form in forms} - {""}


@functools.lru_cache(maxsize=32)
def _secret_pattern(secrets: tuple[str, ...]) -> tuple[re.Pattern[str] | None, int]:
    """One pattern for every form of every secret (longest first), and the longest form's length."""
    forms = {form for secret in secrets if secret for form in _forms(secret)}
    if not forms:
        return None, 0
    ordered = sorted(forms, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, ordered)), re.IGNORECASE), len(ordered[0])


def _redact(text: str, secrets: re.Pattern[str] | None) -> str:
    if secrets is not None:
        text = secrets.sub(REDACTED, text)
    text = _NAME_VALUE.sub(lambda m: f"{m['name']}{m['sep']}{m['q'] or ''}{REDACTED}", text)
    text = _AUTH_SCHEME.sub(lambda m: f"{m['scheme']} {REDACTED}", text)
    return _USERINFO.sub(f"://{REDACTED}@", text)


def scrub(text: str, secrets: Iterable[str] = (), limit: int = DEFAULT_LIMIT) -> str:
    """``text`` made safe to log and publish: secrets and credentials redacted, control and invisible
    characters removed (line breaks and tabs turned into a space), cut to ``limit`` characters plus a
    marker ``…[truncated N chars]`` (at most :data:`MARKER_MAX` characters).

    Secrets are matched case-insensitively; an empty secret is ignored.
    """
    pattern, longest = _secret_pattern(tuple(secrets))
    if limit < 0:
        raise ValueError(f"limit must not be negative, got {limit}")
    scan = max(8192, 16 * limit)  # no need to clean much more than could ever reach the output
    dropped = 0
    if len(text) > scan + longest:
        dropped = len(text) - scan
        cleaned = _strip(text[:scan])
        # A secret cut by the scan window must not leave a prefix behind: drop the window's tail too.
        tail = max(longest, 256)
        dropped += min(tail, len(cleaned))
        cleaned = cleaned[: max(0, len(cleaned) - tail)]
    else:
        cleaned = _strip(text)
    out = _redact(cleaned, pattern)
    if len(out) > limit or dropped:
        dropped += max(0, len(out) - limit)
        out = f"{out[:limit]}…[truncated {dropped} chars]"
    if pattern is not None and pattern.search(out):
        return WITHHELD
    return out
