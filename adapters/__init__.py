"""The agency side of the bus.

``Adapter`` is what an agency's document system talks to: it sends edocs and statuses
(signed, kept in a local outbox first) and receives its inbox into a local store, answering
status 01 automatically.  See :mod:`adapters.adapter` for a runnable example.
"""

from adapters.adapter import Adapter, InboxItem, SentItem

__all__ = ["Adapter", "InboxItem", "SentItem"]
