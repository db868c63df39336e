"""Hostile XML is refused before it reaches anything else, each with its own reason."""

from __future__ import annotations

import pytest

from bus import safexml
from bus.config import Limits
from bus.errors import MalformedEnvelope


def refused(data: bytes, limits: Limits | None = None) -> str:
    with pytest.raises(MalformedEnvelope) as info:
        safexml.parse(data, limits)
    return info.value.reason


def test_plain_xml_parses() -> None:
    assert safexml.parse("<a>Công văn</a>".encode()).text == "Công văn"


def test_external_entity_is_refused() -> None:
    xxe = b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>'
    assert refused(xxe) == "dtd-forbidden"


def test_billion_laughs_is_refused() -> None:
    lol = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        + b"".join(f'<!ENTITY lol{i} "{"&lol{};".format(i - 1 if i > 1 else "") * 10}">'.encode() for i in range(1, 10))
        + b"]><lolz>&lol9;</lolz>"
    )
    assert refused(lol) == "dtd-forbidden"


def test_external_dtd_is_refused() -> None:
    assert refused(b'<!DOCTYPE a SYSTEM "http://example.invalid/a.dtd"><a/>') == "dtd-forbidden"


def test_doctype_after_comment_is_refused() -> None:
    assert refused(b"<!-- hi --><!DOCTYPE a []><a/>") == "dtd-forbidden"


def test_nesting_ten_thousand_deep_is_refused() -> None:
    assert refused(b"<a>" * 10_000 + b"</a>" * 10_000) == "too-deep"


def test_nesting_over_our_limit_is_refused() -> None:
    assert refused(b"<a>" * 40 + b"</a>" * 40, Limits(max_depth=32)) == "too-deep"


def test_oversized_envelope_is_refused_before_parsing() -> None:
    assert refused(b"<a>" + b"x" * 2048 + b"</a>", Limits(max_envelope_bytes=1024)) == "too-large"


def test_invalid_utf8_is_refused() -> None:
    assert refused(b"<a>\xff\xfe</a>") == "bad-encoding"


def test_other_declared_encoding_is_refused() -> None:
    assert refused('<?xml version="1.0" encoding="ISO-8859-1"?><a>é</a>'.encode("latin-1")) == "bad-encoding"


def test_not_well_formed_says_where() -> None:
    with pytest.raises(MalformedEnvelope) as info:
        safexml.parse(b"<a>\n<b></a>")
    assert "line 2" in str(info.value)
