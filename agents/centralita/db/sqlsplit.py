"""Split a migration file into single statements the way the mariadb client does.

pymysql sends one statement per ``execute``; a semicolon inside a string, a
quoted identifier or a comment must not end a statement, and routines/triggers
need the client's ``DELIMITER`` command. Knowing the line where each statement
starts lets a failed migration name the exact place to look.
"""

from __future__ import annotations

import dataclasses


class SqlSplitError(ValueError):
    """The file cannot be split (an unterminated string or comment)."""


@dataclasses.dataclass(frozen=True)
class Statement:
    text: str
    line: int  # 1-based line where the statement's first non-blank character is

    def summary(self, width: int = 100) -> str:
        flat = " ".join(self.text.split())
        return flat if len(flat) <= width else flat[: width - 3] + "..."


def split_statements(sql: str) -> list[Statement]:
    """Statements of ``sql`` without their terminating delimiter; comment-only chunks are dropped."""
    statements: list[Statement] = []
    delimiter = ";"
    buf: list[str] = []
    has_code = False
    start_line = 1
    line = 1
    i = 0
    n = len(sql)
    at_line_start = True

    def flush() -> None:
        nonlocal buf, has_code
        text = "".join(buf).strip()
        if has_code and text:
            statements.append(Statement(text, start_line))
        buf = []
        has_code = False

    while i < n:
        ch = sql[i]
        if at_line_start and not has_code:
            end = sql.find("\n", i)
            end = n if end == -1 else end
            stripped = sql[i:end].strip()
            if stripped[:10].upper() == "DELIMITER " or stripped.upper() == "DELIMITER":
                new = stripped[len("DELIMITER") :].strip()
                if not new:
                    raise SqlSplitError(f"line {line}: DELIMITER needs a value")
                delimiter = new
                buf = []
                i = end
                continue
        at_line_start = False
        if ch == "\n":
            line += 1
            at_line_start = True
            buf.append(ch)
            i += 1
            continue
        if ch in "'\"`":
            start = line
            j = i + 1
            while True:
                if j >= n:
                    raise SqlSplitError(f"line {start}: unterminated {ch} quote")
                c = sql[j]
                if c == "\\" and ch != "`":
                    j += 2
                    continue
                if c == ch:
                    if j + 1 < n and sql[j + 1] == ch:
                        j += 2
                        continue
                    break
                j += 1
            chunk = sql[i : j + 1]
            if not has_code:
                start_line = start
            has_code = True
            line += chunk.count("\n")
            buf.append(chunk)
            i = j + 1
            continue
        if ch == "#" or (sql.startswith("--", i) and (i + 2 >= n or sql[i + 2] in " \t\r\n")):
            end = sql.find("\n", i)
            end = n if end == -1 else end
            if has_code:  # comments before a statement are not part of it
                buf.append(sql[i:end])
            i = end
            continue
        if sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end == -1:
                raise SqlSplitError(f"line {line}: unterminated /* comment")
            chunk = sql[i : end + 2]
            if chunk.startswith(("/*!", "/*M!")):
                # Executable comments are code to the server.
                if not has_code:
                    start_line = line
                has_code = True
            line += chunk.count("\n")
            if has_code:
                buf.append(chunk)
            i = end + 2
            continue
        if sql.startswith(delimiter, i):
            flush()
            i += len(delimiter)
            continue
        if not ch.isspace() and not has_code:
            has_code = True
            start_line = line
        buf.append(ch)
        i += 1
    flush()
    return statements
