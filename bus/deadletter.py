"""Poison messages: what the router could not process within the delivery limit.

A submission that makes the router fail unexpectedly is requeued; the quorum queue counts
the attempts and, past ``topology.DELIVERY_LIMIT``, dead-letters it to ``<ns>.dead``.  The
router records the last error of each such submission (``Failure``), so an operator sees
why.  ``docbus dead list`` moves what the dead queue holds into the archive
(``DeadLetter``, acked only after the commit) and lists it; ``replay`` sends a message back
to the router's queue with its original routing key and broker user; ``purge`` deletes it.
"""

from __future__ import annotations

import json
from typing import Any

from bus.archive import Archive, DeadLetter, Failure, sha256, utcnow
from bus.errors import NotFound
from bus.topology import Names
from bus.transport import Transport

REPLAY_KEY = "x-docbus-replay-routing-key"
REPLAY_USER = "x-docbus-replay-user-id"


def record_failure(digest: str, routing_key: str, error: str) -> None:
    """Best effort: the database may itself be what failed."""
    try:
        Failure.insert(digest=digest, routing_key=routing_key, attempts=1, last_error=error[:4000]).on_conflict(
            conflict_target=[Failure.digest],
            update={
                Failure.attempts: Failure.attempts + 1,
                Failure.last_error: error[:4000],
                Failure.updated_at: utcnow(),
            },
        ).execute()
    except Exception:
        pass


def collect(archive: Archive, transport: Transport, names: Names) -> int:
    """Move every message of the dead queue into the archive; returns how many."""
    moved = 0
    while (d := transport.get(names.dead)) is not None:
        digest = sha256(d.body)
        failure = Failure.get_or_none(Failure.digest == digest)
        deaths = d.headers.get("x-death") or []
        queue = deaths[0].get("queue", "") if deaths and isinstance(deaths[0], dict) else ""
        reason = (
            failure.last_error
            if failure
            else (deaths[0].get("reason", "") if deaths and isinstance(deaths[0], dict) else "")
        )
        with archive.write():
            DeadLetter.create(
                digest=digest,
                queue=str(queue),
                routing_key=d.routing_key,
                user_id=d.user_id,
                reason=str(reason),
                headers=json.dumps({k: v for k, v in d.headers.items() if k != "x-death"}, default=str),
                body=d.body,
            )
        d.ack()
        moved += 1
    return moved


def get(letter_id: int) -> DeadLetter:
    found = DeadLetter.get_or_none(DeadLetter.id == letter_id)
    if found is None:
        raise NotFound(f"no dead letter #{letter_id} (see 'docbus dead list')")
    return found


def replay(letter: DeadLetter, transport: Transport, names: Names) -> None:
    """Back to the router's queue (default exchange), keeping who sent it and how."""
    urgent = letter.routing_key.startswith("urgent.")
    headers: dict[str, Any] = {REPLAY_KEY: letter.routing_key}
    if letter.user_id:
        headers[REPLAY_USER] = letter.user_id
    transport.publish("", names.router_urgent if urgent else names.router_queue, bytes(letter.body), headers=headers)
    DeadLetter.update(replayed_at=utcnow()).where(DeadLetter.id == letter.id).execute()


def purge(letter: DeadLetter) -> None:
    DeadLetter.delete().where(DeadLetter.id == letter.id).execute()
