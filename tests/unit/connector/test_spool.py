from __future__ import annotations

import asyncio
import time

from centralita.connector.cdr import record_from_fields, resolve_timezone
from centralita.connector.spool import DEAD, Spool
from centralita.fakes.ami_server import sample_cdr

ZONE = resolve_timezone("UTC")


def records(start: int, count: int):
    return [(record_from_fields(sample_cdr(n), ZONE), None) for n in range(start, start + count)]


def test_same_cdr_twice_is_one_row(tmp_path):
    async def scenario():
        spool = Spool(tmp_path)
        await spool.open()
        first = await spool.add(records(0, 10), "ami")
        again = await spool.add(records(5, 10), "backfill")
        total = await spool.count()
        await spool.close()
        return len(first), len(again), total

    assert asyncio.run(scenario()) == (10, 5, 15)


def test_delivery_is_per_sink_and_survives_reopen(tmp_path):
    async def scenario():
        spool = Spool(tmp_path)
        await spool.open()
        await spool.add(records(0, 5), "ami")
        api_items = await spool.fetch("api", 0, 100)
        await spool.mark("api", [i.id for i in api_items[:3]])
        await spool.close()
        spool = Spool(tmp_path)
        await spool.open()
        api_left = [i.record.sequence for i in await spool.fetch("api", 0, 100)]
        db_left = [i.record.sequence for i in await spool.fetch("mariadb", 0, 100)]
        await spool.close()
        return api_left, db_left

    api_left, db_left = asyncio.run(scenario())
    assert api_left == [3, 4]
    assert db_left == [0, 1, 2, 3, 4]


def test_filtered_cdrs_are_kept_but_never_fetched(tmp_path):
    async def scenario():
        spool = Spool(tmp_path)
        await spool.open()
        entries = records(0, 2)
        entries[0] = (entries[0][0], "excluded_destination")
        await spool.add(entries, "ami")
        fetched = [i.record.sequence for i in await spool.fetch("api", 0, 10)]
        total = await spool.count()
        await spool.close()
        return fetched, total

    assert asyncio.run(scenario()) == ([1], 2)


def test_dead_letters_are_counted_listed_and_requeued(tmp_path):
    async def scenario():
        spool = Spool(tmp_path)
        await spool.open()
        await spool.add(records(0, 3), "ami")
        items = await spool.fetch("api", 0, 10)
        await spool.mark("api", [items[0].id], DEAD, "HTTP 400: bad")
        stats = await spool.stats("api")
        letters = await spool.dead_letters("api")
        requeued = await spool.requeue_dead("api")
        after = await spool.stats("api")
        await spool.close()
        return stats, letters, requeued, after

    stats, letters, requeued, after = asyncio.run(scenario())
    assert (stats.depth, stats.dead) == (2, 1)
    assert letters[0][2] == "HTTP 400: bad"
    assert requeued == 1 and (after.depth, after.dead) == (3, 0)


def test_prune_forgets_only_cdrs_every_sink_settled(tmp_path):
    async def scenario():
        spool = Spool(tmp_path)
        await spool.open()
        await spool.add(records(0, 4), "ami")
        items = await spool.fetch("api", 0, 10)
        await spool.mark("api", [i.id for i in items[:2]])
        await spool.mark("mariadb", [items[0].id])
        removed = await spool.prune(["api", "mariadb"], time.time() + 1)
        total = await spool.count()
        await spool.close()
        return removed, total

    assert asyncio.run(scenario()) == (1, 3)


def test_spool_runs_in_wal_mode_with_full_sync(tmp_path):
    async def scenario():
        spool = Spool(tmp_path)
        await spool.open()
        mode = await spool._run(lambda: spool.db.execute("PRAGMA journal_mode").fetchone()[0])
        sync = await spool._run(lambda: spool.db.execute("PRAGMA synchronous").fetchone()[0])
        await spool.close()
        return mode, sync

    assert asyncio.run(scenario()) == ("wal", 2)


def test_spool_depth_stays_right_as_the_settled_head_is_skipped(tmp_path):
    async def scenario():
        spool = Spool(tmp_path)
        await spool.open()
        await spool.add(records(0, 6), "ami")
        items = await spool.fetch("api", 0, 10)
        seen = [(await spool.stats("api")).depth]
        await spool.mark("api", [i.id for i in items[:4]])
        seen.append((await spool.stats("api")).depth)
        await spool.mark("api", [i.id for i in items[4:]])
        seen.append((await spool.stats("api")).depth)
        await spool.add(records(6, 3), "backfill")  # new rows after everything was settled
        stats = await spool.stats("api")
        seen.append(stats.depth)
        await spool.close()
        return seen, stats.oldest_received_at is not None

    assert asyncio.run(scenario()) == ([6, 2, 0, 3], True)


def test_records_already_spooled_are_reported_once_even_inside_a_new_group(tmp_path):
    async def scenario():
        spool = Spool(tmp_path)
        await spool.open()
        await spool.add(records(0, 3), "ami")
        mixed = records(2, 3)  # 2 is old, 3 and 4 are new
        new = await spool.add(mixed, "backfill")
        payloads = [i.key for i in await spool.fetch("api", 0, 10)]
        await spool.close()
        return [record.sequence for record, _reason in new], payloads

    new, keys = asyncio.run(scenario())
    assert new == [3, 4]
    assert keys == [f"{1763800000}.{n}:{n}" for n in range(5)]
