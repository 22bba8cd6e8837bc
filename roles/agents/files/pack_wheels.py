#!/usr/bin/env python3
"""Pack a directory of wheels into one reproducible tar archive.

Same wheels in, same bytes out (sorted names, fixed times and owners), so the
hosts receive one file and Ansible's checksum decides whether anything changed.
The archive is replaced only when its content differs. Prints its sha256.
"""

import hashlib
import io
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


def main() -> int:
    source, dest = Path(sys.argv[1]), Path(sys.argv[2])
    data = pack(source)
    if not data or not any(source.glob("*.whl")):
        print(f"no wheels in {source}", file=sys.stderr)
        return 1
    if not dest.exists() or dest.read_bytes() != data:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(dest)
    print(hashlib.sha256(data).hexdigest())
    return 0


if __name__ == "__main__":
    sys.exit(main())
