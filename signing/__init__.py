"""Keys, certificates and XML signatures.

- :mod:`signing.ca`: the provincial CA; issues each agency's certificate with its OrganId inside.
- :mod:`signing.xmldsig`: enveloped XMLDSig signatures over whole edXML envelopes.
- :mod:`signing.seal`: the hub's seal on the TraceHeader it appends to each delivery.
"""
