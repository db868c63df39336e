"""The checks' floor (benchmarks.floor) does the checks it claims to cost: each can fail."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidSignature

from benchmarks.floor import checks_floor
from bus.errors import SchemaViolation
from tests.helpers import signed_edoc

PC, DEPT = "000.00.00.H61", "000.00.01.H61"


@pytest.fixture
def envelopes(memory_province) -> list[bytes]:
    s = memory_province.settings
    return [signed_edoc(s, PC, [DEPT], subject="Công văn kiểm thử", number=str(i)) for i in range(5)]


def test_each_step_is_timed_and_summed(envelopes) -> None:
    floor = checks_floor(envelopes)
    steps = ("parse", "schema", "digest", "signature", "signed_tree", "seal", "archive")
    assert set(floor) == {*steps, "total"}
    assert all(floor[k] > 0 for k in steps)
    assert floor["total"] == pytest.approx(sum(floor[k] for k in steps), abs=0.001)


def test_an_altered_envelope_fails_its_signature(envelopes) -> None:
    altered = envelopes[0].replace("kiểm thử".encode(), b"kiem thu")
    assert altered != envelopes[0]
    with pytest.raises(InvalidSignature):
        checks_floor([altered])


def test_an_invalid_envelope_fails_the_schema(envelopes) -> None:
    invalid = (
        envelopes[0].replace(b"<edXML:Subject>", b"<edXML:Subjekt>").replace(b"</edXML:Subject>", b"</edXML:Subjekt>")
    )
    assert invalid != envelopes[0]
    with pytest.raises(SchemaViolation):
        checks_floor([invalid])
