#!/usr/bin/env python3
"""Pack a directory of wheels into one reproducible tar archive, or fingerprint the sources.

``pack_wheels.py WHEELDIR ARCHIVE [STAMP]``: same wheels in, same bytes out (sorted
names, fixed times and owners), so the hosts receive one file and Ansible's
checksum decides whether anything changed. The archive is replaced only when its
content differs. Prints its sha256, and writes ``ARCHIVE.sha256`` (the checksum)
and ``ARCHIVE.stamp`` (STAMP: the fingerprint of what it was built from).

``pack_wheels.py --state CACHEDIR SOURCEDIR TAGS [WORD ...]``: prints JSON with the
fingerprint (a sha256 over the package's files, build leftovers ignored, and the
words: pins, download arguments), the targets (comma-separated TAGS) whose archive
in CACHEDIR was built from something else or is missing, and the checksums of the
archives that are current. A re-run with the same inputs skips the build.
"""

import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path


def pack(source: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for wheel in sorted(source.glob("*.whl")):
            info = tarfile.TarInfo(wheel.name)
            info.size = wheel.stat().st_size
            info.mtime = 946684800
            info.mode = 0o644
            with wheel.open("rb") as handle:
                tar.addfile(info, handle)
    return buffer.getvalue()


IGNORED_PARTS = {"__pycache__", "build", "dist", ".pytest_cache", ".ruff_cache"}


def fingerprint(source: Path, words: list[str]) -> str:
    digest = hashlib.sha256()
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if not path.is_file() or any(p in IGNORED_PARTS or p.endswith(".egg-info") for p in relative.parts):
            continue
        if path.suffix in (".pyc", ".pyo"):
            continue
        digest.update(str(relative).encode() + b"\0" + path.read_bytes() + b"\0")
    for word in words:
        digest.update(b"word\0" + word.encode() + b"\0")
    return digest.hexdigest()


def main() -> int:
    if sys.argv[1:2] == ["--state"]:
        cache, source, tags, words = Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4].split(","), sys.argv[5:]
        current = fingerprint(source, words)
        stale, checksums = [], {}
        for tag in tags:
            archive = cache / f"wheelhouse-{tag}.tar"
            stamp, checksum = Path(f"{archive}.stamp"), Path(f"{archive}.sha256")
            if archive.is_file() and stamp.is_file() and checksum.is_file() and stamp.read_text().strip() == current:
                checksums[tag] = checksum.read_text().strip()
            else:
                stale.append(tag)
        print(json.dumps({"fingerprint": current, "stale": stale, "checksums": checksums}))
        return 0
    source, dest = Path(sys.argv[1]), Path(sys.argv[2])
    stamp = sys.argv[3] if len(sys.argv) > 3 else ""
    data = pack(source)
    if not data or not any(source.glob("*.whl")):
        print(f"no wheels in {source}", file=sys.stderr)
        return 1
    if not dest.exists() or dest.read_bytes() != data:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(dest)
    checksum = hashlib.sha256(data).hexdigest()
    Path(f"{dest}.sha256").write_text(checksum + "\n")
    Path(f"{dest}.stamp").write_text(stamp + "\n")
    print(checksum)
    return 0


if __name__ == "__main__":
    sys.exit(main())
