"""Parse untrusted XML safely.

Security: every envelope is hostile until verified.  This module is the only place that
turns bytes into a tree, and it refuses, before and while parsing:

- anything over ``Limits.max_envelope_bytes`` (checked on the raw bytes, before lxml);
- any DOCTYPE, hence every DTD, internal or external, and every entity definition
  (XXE, billion laughs, quadratic blow-up) -- edXML never needs one;
- entity resolution and network access (off in the parser as a second line);
- documents nested deeper than ``Limits.max_depth`` (libxml2 itself stops at 256);
- bytes that are not UTF-8 XML.
"""

from __future__ import annotations

import functools
import re

from lxml import etree

from bus.config import Limits
from bus.errors import MalformedEnvelope


def _parser(*, huge_tree: bool) -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=huge_tree,
        remove_pis=True,
        collect_ids=False,
    )


PARSER = _parser(huge_tree=False)
# for files from outside the bus (the national axis), whose scans sit in one base64 text node
# over libxml2's 10 MB default; the file's byte size is still bounded before parsing
HUGE_TEXT_PARSER = _parser(huge_tree=True)
# The prolog may hold an XML declaration, comments, PIs and whitespace; a DOCTYPE is refused.
_DOCTYPE = re.compile(rb"<!DOCTYPE", re.IGNORECASE)
_PARSER_SOURCE = re.compile(r" \(<string>, line \d+\)$")


def parse(data: bytes, limits: Limits | None = None, *, huge_text: bool = False) -> etree._Element:
    """Return the root element of ``data`` or raise :class:`MalformedEnvelope`.

    ``huge_text``: allow text nodes over libxml2's 10 MB (a file from outside the bus carrying
    a large scan inside it).  Security: only with a ``limits.max_envelope_bytes`` chosen for
    such files; everything else here (no DOCTYPE, no entities or network, the depth bound)
    applies the same.  Envelopes on the bus never need it: larger files travel in chunks."""
    limits = limits or Limits()
    if not isinstance(data, bytes | bytearray):
        raise MalformedEnvelope("envelope must be bytes", reason="malformed")
    if len(data) > limits.max_envelope_bytes:
        raise MalformedEnvelope(
            f"envelope is {len(data)} bytes, over the limit of {limits.max_envelope_bytes}",
            reason="too-large",
        )
    root_start = _root_start(data)
    if _DOCTYPE.search(data, 0, root_start):
        raise MalformedEnvelope("a DOCTYPE (DTD or entity declaration) is not allowed", reason="dtd-forbidden")
    try:
        root = etree.fromstring(bytes(data), parser=HUGE_TEXT_PARSER if huge_text else PARSER)
    except etree.XMLSyntaxError as exc:
        reason = "bad-encoding" if "encoding" in str(exc).lower() or "utf-8" in str(exc).lower() else "malformed"
        if "depth" in str(exc).lower():
            reason = "too-deep"
        where = _PARSER_SOURCE.sub("", str(exc))  # "…, line 3, column 7", without lxml's "(<string>, line 3)"
        raise MalformedEnvelope(f"not well-formed XML: {where}", reason=reason) from exc
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or root.getroottree().docinfo.internalDTD is not None:
        raise MalformedEnvelope("a DOCTYPE (DTD or entity declaration) is not allowed", reason="dtd-forbidden")
    encoding = (docinfo.encoding or "UTF-8").upper()
    if encoding not in ("UTF-8", "UTF8"):
        raise MalformedEnvelope(
            f"encoding {encoding} is not allowed; edXML on this bus is UTF-8", reason="bad-encoding"
        )
    if _deeper_than(limits.max_depth)(root):
        raise MalformedEnvelope(f"document is nested deeper than {limits.max_depth} levels", reason="too-deep")
    return root


@functools.lru_cache(maxsize=8)
def _deeper_than(depth: int) -> etree.XPath:
    """True when an element sits more than ``depth`` levels down (compiled once per limit)."""
    return etree.XPath("boolean(/*" + "/*" * depth + ")")


def _root_start(data: bytes) -> int:
    """Offset of the root element's '<' (or len(data)); skips declaration, comments, PIs."""
    i = 0
    n = len(data)
    while i < n:
        j = data.find(b"<", i)
        if j < 0 or j + 1 >= n:
            return n
        nxt = data[j + 1 : j + 2]
        if nxt == b"?":
            k = data.find(b"?>", j)
            i = n if k < 0 else k + 2
        elif data.startswith(b"<!--", j):
            k = data.find(b"-->", j)
            i = n if k < 0 else k + 3
        elif nxt == b"!":
            k = data.find(b">", j)  # a DOCTYPE: the caller refuses it, its extent does not matter
            return n if k < 0 else k + 1
        else:
            return j
    return n
