"""The project's own XSDs for edXML (QCVN 102:2016); see bus.schema for their use."""

from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent
LENIENT = SCHEMA_DIR / "edxml-lenient.xsd"
STRICT = SCHEMA_DIR / "edxml-strict.xsd"
