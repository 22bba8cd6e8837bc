"""The trace loader's line checks, settings and choice of closed spool files (no database)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from centralita.sbc import traceload

GOOD = b"T1763900000.5\tout\t10.0.0.1\t5060\t::1\t5070\tudp\t\t200\t1 INVITE\tabc@x\t" + base64.b64encode(b"SIP")


def test_a_line_as_kamailio_writes_it_passes() -> None:
    assert traceload.line_problem(GOOD) is None


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (GOOD[1:], "does not start with T"),
        (GOOD + b"\textra", "13 fields"),
        (GOOD.replace(b"\tout\t", b"\tsideways\t"), "direction"),
        (GOOD.replace(b"\t5070\t", b"\t70000\t"), "destination port"),
        (GOOD.replace(b"\t\t200\t", b"\tINVITE\t200\t"), "exactly one"),
        (GOOD.replace(b"abc@x", b"a" * 256), "Call-ID"),
        (GOOD.replace(b"1 INVITE", b"1 \xffINVITE"), "CSeq"),
        (GOOD[:-1] + b"!", "base64"),
    ],
)
def test_a_line_the_table_cannot_take_is_named_with_the_reason(line: bytes, why: str) -> None:
    assert why in (traceload.line_problem(line) or "")


def test_only_files_kamailio_left_for_a_newer_one_are_closed(tmp_path: Path) -> None:
    traces = ("traces_100.tsv", "traces_99.tsv", "traces_101.tsv", "traces_x.tsv", "notes.txt")
    for name in (*traces, "sql_98.sql", "sql_150.sql"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "quarantine").mkdir()
    settings = traceload.Settings(spool_dir=tmp_path, db_user="u", db_password="", db_name="d")
    closed = [p.name for p in traceload.Loader(settings).closed_files()]
    assert closed == ["sql_98.sql", "traces_99.tsv", "traces_100.tsv"], "oldest first; each kind's newest is open"


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"T" + base64.b64encode(b"SELECT 1"), "not a statement line"),
        (b"Snot base64!", "not base64"),
        (b"S" + base64.b64encode(b"   "), "empty statement"),
    ],
)
def test_a_statement_line_that_cannot_be_run_is_named_with_the_reason(line: bytes, why: str) -> None:
    statement, problem = traceload.statement_of(line)
    assert statement is None and why in problem


def test_a_statement_keeps_its_bytes_as_kamailio_wrote_them() -> None:
    raw = b"INSERT INTO events (message) VALUES ('caf\xe9 \t')"
    assert traceload.statement_of(b"S" + base64.b64encode(raw)) == (raw, "")


def test_a_long_statement_written_in_pieces_is_put_together() -> None:
    raw = b"INSERT INTO sbc_cdr_intake (call_id) VALUES " + b",".join(b"('c%05d')" % i for i in range(9000))
    pieces = [base64.b64encode(raw[at : at + 30000]) for at in range(0, len(raw), 30000)]
    assert len(pieces) > 1
    assert traceload.statement_of(b"S" + b",".join(pieces)) == (raw, "")
    assert "missing" in traceload.statement_of(b"S" + pieces[0] + b",," + pieces[1])[1]
    assert "missing" in traceload.statement_of(b"S")[1]


def test_settings_name_the_variable_that_is_wrong() -> None:
    env = {"TRACELOAD_SPOOL_DIR": "/var/spool/x", "TRACELOAD_DB_USER": "k", "TRACELOAD_DB_NAME": "c"}
    assert traceload.Settings.from_env(env).db_port == 3306
    with pytest.raises(traceload.SettingError, match="TRACELOAD_DB_NAME"):
        traceload.Settings.from_env({**env, "TRACELOAD_DB_NAME": ""})
    with pytest.raises(traceload.SettingError, match="TRACELOAD_DB_PORT"):
        traceload.Settings.from_env({**env, "TRACELOAD_DB_PORT": "many"})
    with pytest.raises(traceload.SettingError, match="TRACELOAD_SPOOL_DIR"):
        traceload.Settings.from_env({**env, "TRACELOAD_SPOOL_DIR": "spool"})
