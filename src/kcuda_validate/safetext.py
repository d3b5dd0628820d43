"""Text on its way out of the tool: survives arbitrary bytes, and carries no credentials.

Every sink uses these helpers — the log formatter, the JSON writer, the report files, the terminal (the
error lines and the rich renderers): one place decides what leaves the process.

* `printable`: argv, paths and the environment reach Python as str with the undecodable bytes smuggled in as
  lone surrogates (PEP 383 "surrogateescape"). Such a str cannot be encoded as UTF-8, so a log handler,
  `json.dumps(..., ensure_ascii=False)` or a UTF-8 terminal would raise. Each such byte is shown as `\\xNN`
  (the byte the user typed), any other lone surrogate as `\\uDXXX`. Valid text is returned unchanged.
* `redact`: credentials in URLs — the userinfo of `scheme://user:secret@host` (as in
  `HF_ENDPOINT=http://user:token@host`) and the value of token-looking query parameters (`?token=`,
  `access_token`, `X-Amz-Signature`, ...) — Hugging Face tokens (`hf_...`), `Bearer` values, HTTP Basic
  credentials (`Basic <base64 of user:password>`, as a server may echo them), and the
  literal value of `HF_TOKEN` / `HUGGING_FACE_HUB_TOKEN` if one is set, each become `***`.
* `spelled_out`: non-printable characters as their escapes, for outside text in a one-line message.
* `safe` = both; `safe_json` applies `safe` to every string of a JSON-able document and turns the floats
  JSON cannot carry (NaN, ±infinity) into null.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, TextIO, cast

MASK = "***"

# scheme://userinfo@ : the userinfo is everything between "//" and the last "@" before the host ends.
# One slash is enough: a URL that went through pathlib (`--model-path https://u:p@h/f`) has lost the other.
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*:/{1,3})(?P<userinfo>[^/?#\s]+)@")
# A bare netloc with a password, as some messages print it: user:secret@host (no scheme).
_NETLOC_USERINFO = re.compile(r"(?<![\w.%~+:/@-])(?P<userinfo>[\w.%~+-]+:[^/?#@\s]+)@(?=[\w.-]*\w)")
_SECRET_PARAMS = (
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "auth",
    "authorization",
    "api_key",
    "apikey",
    "key",
    "password",
    "passwd",
    "pwd",
    "secret",
    "client_secret",
    "signature",
    "sig",
    "x-amz-signature",
    "x-amz-security-token",
    "x-amz-credential",
    "x-goog-signature",
    "x-goog-credential",
    "policy",
    "key-pair-id",
)
_QUERY_SECRET = re.compile(
    # The value ends where the URL does; a `:` or `,` right after it is the message's, not the secret's.
    r"(?P<name>[?&;](?:" + "|".join(re.escape(p) for p in _SECRET_PARAMS) + r")=)"
    r"(?P<value>[^&;#\s'\"]+?)(?=[:,]?(?:[&;#\s'\"]|$))",
    re.IGNORECASE,
)
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{16,}\b")
_BEARER = re.compile(r"(?P<name>\bBearer\s+)(?P<value>[A-Za-z0-9._~+/=-]{8,})", re.IGNORECASE)
# HTTP Basic credentials (a server may echo the Authorization header it got): base64 of `user:password`.
_BASIC = re.compile(r"(?P<name>\bBasic\s+)(?P<value>[A-Za-z0-9+/]{4,}={0,2})(?![A-Za-z0-9+/=])", re.IGNORECASE)
_TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
_MIN_LITERAL = 8  # a shorter "token" would mask ordinary words


def printable(text: str) -> str:
    """`text` with every lone surrogate spelled out (`\\xNN` for a surrogateescape'd byte): always encodable."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        return text
    out: list[str] = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def redact(text: str) -> str:
    """`text` with the credentials it may carry (see the module docstring) replaced by ***."""
    for name in _TOKEN_ENV:
        value = os.environ.get(name, "").strip()
        if len(value) >= _MIN_LITERAL and value in text:
            text = text.replace(value, MASK)
    if "@" in text:
        text = _URL_USERINFO.sub(lambda m: m["scheme"] + MASK + "@", text)
        text = _NETLOC_USERINFO.sub(MASK + "@", text)
    if "=" in text:
        text = _QUERY_SECRET.sub(lambda m: m["name"] + MASK, text)
    if "hf_" in text:
        text = _HF_TOKEN.sub("hf_" + MASK, text)
    if "earer" in text:
        text = _BEARER.sub(lambda m: m["name"] + MASK, text)
    if "asic" in text:
        text = _BASIC.sub(lambda m: m["name"] + MASK if _is_basic_credential(m["value"]) else m[0], text)
    return text


def _is_basic_credential(value: str) -> bool:
    """Base64 of `user:password`, not an ordinary word after "Basic" (`Basic checks` stays as it is)."""
    import base64
    import binascii

    try:
        decoded = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    return b":" in decoded


def safe(text: str) -> str:
    """What may leave the process: printable, and without credentials."""
    return redact(printable(text))


def spelled_out(text: str) -> str:
    """`text` with every non-printable character (newline, tab, ESC, C1, zero-width) written as its Python escape.

    For text from outside (a path, a report's field) on its way to a terminal: it cannot break a one-line
    message or drive the terminal, and the user still sees which character was there."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _is_control(c: str) -> bool:
    """Unicode's category Cc, less newline and tab: C0, DEL and C1."""
    n = ord(c)
    return (n < 0x20 and c not in "\n\t") or 0x7F <= n <= 0x9F


def as_generated(text: str) -> str:
    """`text` with its control codes other than newline and tab (ESC, CR, BEL, DEL, C1) written as escapes.

    For the model's own text on its way to a terminal: a model can emit an escape sequence that would
    recolour, retitle or rewrite the user's terminal, but its lines, tabs and zero-width joiners are the text."""
    if not any(_is_control(c) for c in text):
        return text
    return "".join(ascii(c)[1:-1] if _is_control(c) else c for c in text)


# What XML 1.0 forbids in a document at all, escaped or not (its Char production): C0 but tab, LF and CR,
# lone surrogates, U+FFFE and U+FFFF.
_XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_text(text: str) -> str:
    """`text` with what XML 1.0 cannot carry written as escapes: a JUnit file stays well-formed whatever a
    path or a server's message held (ESC included), and a reader still sees which character was there."""
    return _XML_FORBIDDEN.sub(lambda m: ascii(m[0])[1:-1], text)


def safe_json(value: Any) -> Any:
    """A copy of a JSON-able document that `json.dumps(..., allow_nan=False)` can write and that holds no secret.

    Strings (keys too) go through `safe`; NaN and infinities, which JSON has no spelling for, become None.
    Anything else (a Path, an enum) is turned into its `str` first, as `json.dumps(default=str)` would."""
    if isinstance(value, str):
        return safe(value)
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {safe(k) if isinstance(k, str) else k: safe_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [safe_json(v) for v in value]
    return safe(str(value))


class SafeStream:
    """A text stream whose writes go through `safe`; everything else is the wrapped stream's."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    @property
    def wrapped(self) -> Any:
        return self._stream

    def write(self, text: str) -> int:
        self._stream.write(safe(text))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def safe_stream(stream: TextIO) -> TextIO:
    """`stream` behind a SafeStream, typed as the text stream it stands in for."""
    return cast(TextIO, SafeStream(stream))
