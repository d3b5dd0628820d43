"""safetext: the one place that decides what text may leave the process (printable, no credentials)."""

from __future__ import annotations

import io
import json
import math

import pytest

from kcuda_validate.safetext import SafeStream, as_generated, printable, redact, safe, safe_json, spelled_out


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain ascii", "plain ascii"),
        ("é ü — 日本", "é ü — 日本"),  # valid text is left alone
        ("/tmp/x\udcff\udcfe.gguf", "/tmp/x\\xff\\xfe.gguf"),  # os.fsdecode(b"/tmp/x\xff\xfe.gguf")
        ("lone \ud800 high", "lone \\ud800 high"),
        ("mixed é\udce9", "mixed é\\xe9"),
    ],
)
def test_printable_spells_out_what_utf8_cannot_carry(text: str, shown: str) -> None:
    assert printable(text) == shown
    shown.encode("utf-8")  # never raises


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("http://user:token@host:8080/x", "http://***@host:8080/x"),
        ("https://only-a-token@hub.example/api", "https://***@hub.example/api"),
        ("http://u:p@ss@host/a", "http://***@host/a"),  # an unencoded @ in the password
        ("cannot reach user:s3cret@127.0.0.1:9 (refused)", "cannot reach ***@127.0.0.1:9 (refused)"),
        ("GET https://cdn/x?X-Amz-Signature=deadbeef&Expires=1", "GET https://cdn/x?X-Amz-Signature=***&Expires=1"),
        ("http://h/?token=abc&access_token=def;api_key=ghi", "http://h/?token=***&access_token=***;api_key=***"),
        ("Authorization: Bearer abcdefghijk", "Authorization: Bearer ***"),
        ("token hf_abcdefghijklmnopqrstu leaked", "token hf_*** leaked"),
        # a URL that went through pathlib keeps one slash (`--model-path https://u:p@h/f`)
        ("https:/user:secretpw@example.com/m.gguf: no such file", "https:/***@example.com/m.gguf: no such file"),
        ("/m.gguf?token=tokSECRET1: no such file", "/m.gguf?token=***: no such file"),  # the ":" is the message's
        ("x?token=abc:def&y=1", "x?token=***&y=1"),
        ("HTTP 401: bad token Basic dXNlcjpodW50ZXIycHc=", "HTTP 401: bad token Basic ***"),  # user:hunter2pw
        ("Basic checks passed", "Basic checks passed"),
        ("Basic information", "Basic information"),  # not base64 of user:password
        # left alone: no credential in these
        ("mail bob@example.com", "mail bob@example.com"),
        ("http://host:8080/path?revision=main", "http://host:8080/path?revision=main"),
        ("12:30 on host", "12:30 on host"),
    ],
)
def test_redact_masks_credentials_only(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_redact_masks_the_hf_token_value_wherever_it_appears(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "not-hf-shaped-but-secret")
    assert redact("sent not-hf-shaped-but-secret twice: not-hf-shaped-but-secret") == "sent *** twice: ***"
    monkeypatch.setenv("HF_TOKEN", "short")  # too short to mask without masking ordinary words
    assert redact("a short word") == "a short word"


def test_safe_json_is_strict_json_without_secrets() -> None:
    doc = {
        "argv": ["--model-path", "/m/\udcff.gguf"],
        "endpoint": "http://u:pw@h",
        "metrics": {"a": math.nan, "b": math.inf, "c": -math.inf, "d": 1.5, "n": 3, "ok": True, "none": None},
        "nested": [("x", 1.0)],
    }
    text = json.dumps(safe_json(doc), allow_nan=False)
    assert json.loads(text) == {
        "argv": ["--model-path", "/m/\\xff.gguf"],
        "endpoint": "http://***@h",
        "metrics": {"a": None, "b": None, "c": None, "d": 1.5, "n": 3, "ok": True, "none": None},
        "nested": [["x", 1.0]],
    }


def test_safe_stream_filters_every_write() -> None:
    raw = io.StringIO()
    stream = SafeStream(raw)
    assert stream.write("to http://a:b@c \udcff\n") == len("to http://a:b@c \udcff\n")
    stream.writelines(["x?token=1\n"])
    stream.flush()
    assert raw.getvalue() == "to http://***@c \\xff\nx?token=***\n"
    assert stream.isatty() is False
    assert safe("http://a:b@c \udcff") == "http://***@c \\xff"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain ascii / ünïcode ✓", "plain ascii / ünïcode ✓"),
        ("a\nb\tc\rd", "a\\nb\\tc\\rd"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
        ("c1\x9bcsi del\x7f", "c1\\x9bcsi del\\x7f"),
        ("zero\u200bwidth", "zero\\u200bwidth"),
    ],
    ids=["printable", "whitespace", "sgr", "osc-title", "c1-del", "zero-width"],
)
def test_spelled_out_writes_every_non_printable_character_as_its_escape(text: str, shown: str) -> None:
    assert spelled_out(text) == shown


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("lines\n\tand tabs stay", "lines\n\tand tabs stay"),
        ("\x1b[2J\x1b[31mred\x1b[0m", "\\x1b[2J\\x1b[31mred\\x1b[0m"),
        ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),
        ("over\rwrite", "over\\rwrite"),
        ("c1\x9bcsi del\x7f", "c1\\x9bcsi del\\x7f"),
        ("family \U0001f468\u200d\U0001f469 and \u00e9", "family \U0001f468\u200d\U0001f469 and \u00e9"),
    ],
    ids=["newline-tab", "clear-sgr", "osc-title", "carriage-return", "c1-del", "zero-width-joiner"],
)
def test_as_generated_spells_out_control_codes_but_keeps_the_texts_own_layout(text: str, shown: str) -> None:
    assert as_generated(text) == shown
