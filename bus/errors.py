"""One error hierarchy for docbus.

Callers catch :class:`DocbusError` and never import pika, lxml or signxml to handle a
failure.  Every refusal of a message carries a short machine-readable ``reason`` (a
kebab-case code that travels in status 02 and is stored in the archive's quarantine) and
a human sentence saying what is wrong and where.
"""

from __future__ import annotations


def one_line(exc: BaseException) -> str:
    """``exc``'s text on one line: a database driver's message may run over several."""
    return " ".join(str(exc).split()) or type(exc).__name__


class DocbusError(Exception):
    """Base of every error docbus raises on purpose."""

    reason = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.reason


class ConfigError(DocbusError):
    """The installation is not set up (no CA, unknown agency, bad URL)."""

    reason = "config"


class BrokerUnavailable(DocbusError):
    """RabbitMQ cannot be reached or refused us; the message names the URL."""

    reason = "broker-unavailable"


class NotFound(DocbusError):
    """A document, agency or record that was asked for does not exist."""

    reason = "not-found"


class HandOffFailed(DocbusError):
    """The agency's own system (an adapter's ``on_receive``: its handler, the drop folder)
    failed to take a message the adapter had stored and acked.  Nothing is lost: the message
    stays in the local store, unhanded, and is handed again when the adapter starts next."""

    reason = "hand-off-failed"


class Refused(DocbusError):
    """A message was refused; ``reason`` says why in a machine-readable code."""

    reason = "refused"


class MalformedEnvelope(Refused):
    """The bytes are not a safe, well-formed edXML document."""

    reason = "malformed"


class SchemaViolation(Refused):
    """Well-formed XML that does not match the edXML schema profile."""

    reason = "schema-invalid"


class SignatureRejected(Refused):
    """The XMLDSig signature or its certificate does not verify."""

    reason = "signature-invalid"


class PolicyRefusal(Refused):
    """A verified message that the provincial directive does not allow on the bus.

    ``verified``: the message read from the verified tree, when the refusal came after the
    signature checked out (the gate sets it), so the quarantine can keep its header (số/ký
    hiệu, trích yếu) for people looking for what was refused.  None for a refusal of bytes
    that never verified: nothing in them may be believed.
    """

    reason = "policy"
    verified: object | None = None
