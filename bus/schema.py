"""Validate edXML trees against the project's XSDs (``schemas/``).

lxml's compiled schemas are used on the hot path: they are fast and give a line number.
``lenient`` accepts what real implementers send; ``strict`` is the profile this bus
sends and delivers.  :func:`explain` uses xmlschema for a readable error path when a
human is reading (``docbus verify``, ``docbus inspect``).
"""

from __future__ import annotations

import re
import threading
from functools import cache
from typing import Literal

from lxml import etree

from bus.errors import SchemaViolation
from schemas import LENIENT, STRICT

Profile = Literal["lenient", "strict"]


_per_thread = threading.local()
_compiling = threading.Lock()


def _compiled(profile: Profile) -> etree.XMLSchema:
    """The compiled schema, one per thread.

    Per thread because an lxml schema keeps the last validation's error log on itself (two
    threads validating at once would read each other's errors), and compiled under one lock
    because libxml2 sets up its built-in XSD types on first use without one: two threads
    compiling at once (four sending agencies in one process) failed with "the given type is
    not a built-in type".  A compilation takes about a millisecond.
    """
    schemas: dict[str, etree.XMLSchema] | None = getattr(_per_thread, "schemas", None)
    if schemas is None:
        schemas = _per_thread.schemas = {}
    schema = schemas.get(profile)
    if schema is None:
        path = STRICT if profile == "strict" else LENIENT
        parser = etree.XMLParser(resolve_entities=False, no_network=True)
        with _compiling:
            schema = schemas[profile] = etree.XMLSchema(etree.parse(str(path), parser))
    return schema


@cache
def _readable(profile: Profile) -> object:
    import xmlschema

    return xmlschema.XMLSchema(str(STRICT if profile == "strict" else LENIENT))


def explain(root: etree._Element, profile: Profile = "strict") -> str | None:
    """The first violation as 'path: reason' (xmlschema), or None when ``root`` is valid.

    Slower than :func:`validate` (the schema is compiled by xmlschema on first use): for people
    reading a report, not for the router.
    """
    error = next(_readable(profile).iter_errors(root), None)  # type: ignore[attr-defined]
    if error is None:
        return None
    return f"{error.path}: {error.reason}"


def validate(root: etree._Element, profile: Profile = "strict") -> None:
    """Raise :class:`SchemaViolation` naming the first error and its line."""
    schema = _compiled(profile)
    if not schema.validate(root):
        err = schema.error_log.last_error
        where = f"line {err.line}: " if err is not None and err.line else ""
        # "{http://www.mic.gov.vn/TBT/QCVN_102_2016}Subject" reads as "Subject" in a 02 or an error line
        message = re.sub(r"\{[^}]*\}", "", err.message) if err is not None else "invalid"
        raise SchemaViolation(f"edXML ({profile} profile) {where}{message}", reason="schema-invalid")
