"""Finding migration files: naming, ordering, duplicates and the shipped set."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from centralita.db import DbSettings, db_settings_of, describe_target
from centralita.db.migrate import MigrationError, discover


def test_shipped_migrations_are_found_in_version_order_with_checksums() -> None:
    migrations = discover()
    versions = [m.version for m in migrations]
    assert versions == sorted(versions)
    assert {1, 2, 5} <= set(versions)
    core = next(m for m in migrations if m.version == 1)
    assert core.filename == "0001_core.sql"
    assert core.label == "0001_core"
    assert core.checksum == hashlib.sha256(core.sql.encode()).hexdigest()
    assert all(m.statements() for m in migrations)


def test_files_are_ordered_by_number_not_by_listing(tmp_path: Path) -> None:
    for name in ("0010_late.sql", "0002_b.sql", "0001_a.sql"):
        (tmp_path / name).write_text("SELECT 1;")
    assert [m.filename for m in discover(tmp_path)] == ["0001_a.sql", "0002_b.sql", "0010_late.sql"]


@pytest.mark.parametrize("name", ["1_short.sql", "0001-dash.sql", "0001_Upper.sql", "abcd_x.sql", "0001_.sql"])
def test_badly_named_sql_file_is_an_error_naming_it(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=rf"{name}: migration files must be named NNNN_name\.sql"):
        discover(tmp_path)


def test_two_files_with_one_version_are_an_error_naming_both(tmp_path: Path) -> None:
    (tmp_path / "0003_aicall.sql").write_text("SELECT 1;")
    (tmp_path / "0003_other.sql").write_text("SELECT 2;")
    with pytest.raises(MigrationError, match=r"0003_other\.sql: version 0003 is also used by 0003_aicall\.sql"):
        discover(tmp_path)


def test_non_utf8_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "0001_latin.sql").write_bytes(b"SELECT '\xe9';")
    with pytest.raises(MigrationError, match=r"0001_latin\.sql: not UTF-8"):
        discover(tmp_path)


def test_unsplittable_migration_names_its_file(tmp_path: Path) -> None:
    (tmp_path / "0001_open.sql").write_text("SELECT 'never closed;")
    (migration,) = discover(tmp_path)
    with pytest.raises(MigrationError, match=r"0001_open\.sql: line 1: unterminated ' quote"):
        migration.statements()


def test_db_settings_part_of_an_agent_settings_object() -> None:
    settings = DbSettings(db_user="panel", db_password="s3cret", db_host="10.213.0.2", db_name="centralita")
    assert db_settings_of(settings) == settings
    assert describe_target(settings) == "panel@10.213.0.2:3306/centralita"
    assert "s3cret" not in describe_target(settings)
    with_socket = DbSettings(db_user="panel", db_socket="/run/mysqld/mysqld.sock")
    assert describe_target(with_socket) == "panel@/run/mysqld/mysqld.sock/centralita"
