"""docbus: the provincial document exchange bus (edXML over RabbitMQ).

The public API is small on purpose:

- :mod:`bus.edxml` builds and parses edXML (QCVN 102:2016) edocs and statuses;
- :mod:`bus.envelope` turns untrusted bytes into a verified message (parse, schema, signature);
- :mod:`bus.router` is the central process; :mod:`adapters` is the agency side;
- :mod:`bus.errors` is the one error hierarchy every caller catches (pika never leaks out).
"""

__version__ = "0.1.0"
