"""The worker's SQL over the ``events`` table (blocking: called through asyncio.to_thread)."""

from __future__ import annotations

import pymysql

STATES = ("new", "pending", "delivered", "failed")


def queue_settled_events(conn: pymysql.Connection, older_than_s: float, limit: int) -> int:
    """Move events that are still ``new`` after ``older_than_s`` seconds to ``pending``; return how many.

    The oldest go first and at most ``limit`` per call, so a flood of events
    (an attack raising thousands of security alerts) is worked off in steady
    batches instead of one long-locking UPDATE.
    """
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE events SET delivery_state = 'pending', pending_since = NOW(3) "
            "WHERE delivery_state = 'new' AND created_at <= NOW(3) - INTERVAL %s MICROSECOND "
            "ORDER BY created_at, id LIMIT %s",
            (int(older_than_s * 1_000_000), limit),
        )
        marked = cur.rowcount
    conn.commit()
    return marked


def count_by_state(conn: pymysql.Connection) -> dict[str, int]:
    """Events per delivery state; every state is present, zero when there are none."""
    counts = dict.fromkeys(STATES, 0)
    with conn.cursor() as cur:
        cur.execute("SELECT delivery_state AS state, COUNT(*) AS n FROM events GROUP BY delivery_state")
        for row in cur.fetchall():
            state, number = (row["state"], row["n"]) if isinstance(row, dict) else row
            counts[str(state)] = int(number)
    return counts
