"""Splitting migration files into statements the way the mariadb client does."""

from __future__ import annotations

import re

import pytest
from centralita.db.sqlsplit import SqlSplitError, split_statements


def texts(sql: str) -> list[str]:
    return [s.text for s in split_statements(sql)]


def test_statements_split_on_semicolons_and_keep_their_start_line() -> None:
    statements = split_statements("CREATE TABLE a (id INT);\n\nCREATE TABLE b (id INT);\n")
    assert [(s.text, s.line) for s in statements] == [("CREATE TABLE a (id INT)", 1), ("CREATE TABLE b (id INT)", 3)]


def test_semicolons_inside_strings_and_identifiers_do_not_split() -> None:
    sql = (
        "INSERT INTO t VALUES ('a;b', \"c;d\");\n"
        "CREATE TABLE `we;ird` (x INT);\n"
        "INSERT INTO t VALUES ('it''s; fine', 'back\\\\slash;', 'esc\\'aped;');\n"
    )
    assert texts(sql) == [
        "INSERT INTO t VALUES ('a;b', \"c;d\")",
        "CREATE TABLE `we;ird` (x INT)",
        "INSERT INTO t VALUES ('it''s; fine', 'back\\\\slash;', 'esc\\'aped;')",
    ]


def test_semicolons_in_comments_do_not_split_and_comment_only_chunks_vanish() -> None:
    sql = (
        "-- header; with a semicolon\n"
        "# hash comment; too\n"
        "CREATE TABLE a (\n"
        "  id INT -- trailing; comment\n"
        ");\n"
        "/* block; comment */\n"
        "-- only a comment at the end;\n"
    )
    statements = split_statements(sql)
    assert len(statements) == 1
    assert statements[0].line == 3
    assert statements[0].text.startswith("CREATE TABLE a (")


def test_double_dash_without_a_space_is_an_operator_not_a_comment() -> None:
    assert texts("SELECT 1--1;\nSELECT 2;") == ["SELECT 1--1", "SELECT 2"]


def test_executable_comments_are_kept_as_code() -> None:
    assert texts("/*!40101 SET NAMES utf8mb4 */;\nSELECT 1;") == ["/*!40101 SET NAMES utf8mb4 */", "SELECT 1"]


def test_delimiter_command_allows_triggers_with_inner_semicolons() -> None:
    sql = (
        "CREATE TABLE t (n INT);\n"
        "DELIMITER //\n"
        "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW\n"
        "BEGIN\n"
        "  SET NEW.n = NEW.n + 1;\n"
        "  SET NEW.n = NEW.n * 2;\n"
        "END//\n"
        "DELIMITER ;\n"
        "SELECT 1;\n"
    )
    statements = split_statements(sql)
    assert [s.line for s in statements] == [1, 3, 9]
    assert statements[1].text.endswith("END")
    assert "SET NEW.n = NEW.n * 2;" in statements[1].text


def test_last_statement_without_a_semicolon_is_kept() -> None:
    assert texts("SELECT 1;\nSELECT 2") == ["SELECT 1", "SELECT 2"]


def test_line_numbers_count_newlines_inside_strings() -> None:
    statements = split_statements("INSERT INTO t VALUES ('two\nlines');\nSELECT 1;")
    assert [s.line for s in statements] == [1, 3]


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT 'open;\n", "line 1: unterminated ' quote"),
        ("SELECT 1;\n/* never closed", "line 2: unterminated /* comment"),
        ("SELECT 1;\nSELECT `x;\n", "line 2: unterminated ` quote"),
        ("DELIMITER\n", "line 1: DELIMITER needs a value"),
    ],
)
def test_unterminated_constructs_are_errors_with_their_line(sql: str, message: str) -> None:
    with pytest.raises(SqlSplitError, match=re.escape(message)):
        split_statements(sql)


def test_summary_flattens_whitespace_and_truncates() -> None:
    (statement,) = split_statements("CREATE TABLE x (\n    id INT,\n    name VARCHAR(10)\n);")
    assert statement.summary() == "CREATE TABLE x ( id INT, name VARCHAR(10) )"
    assert statement.summary(width=12) == "CREATE TA..."
