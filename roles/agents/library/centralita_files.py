#!/usr/bin/python3
"""Several small files (units, env files) written in one module run.

Each file is compared with what is on disk (content, owner, group, mode) and
replaced atomically only when something differs; the result names the files
that changed, so handlers can act on exactly those. Contents are rendered on
the controller (template lookups); a task whose files hold secrets sets
``no_log: true``.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: centralita_files
short_description: Write several small files in one run, reporting which changed
options:
  files:
    description: >-
      List of {key, dest, content, owner, group, mode, make_parents} for files, or {key, dest,
      state: directory, owner, group, mode} for directories; C(key) names the entry in the result (default its path);
      C(make_parents) creates missing parent directories (root, 0755).
    type: list
    elements: dict
    required: true
"""

import grp
import os
import pwd
import stat
import tempfile

from ansible.module_utils.basic import AnsibleModule


def _wanted(module: AnsibleModule, spec: dict) -> tuple[str, bytes | None, int, int, int]:
    directory = spec.get("state") == "directory"
    if spec.get("state", "file") not in ("file", "directory"):
        module.fail_json(msg="files: %s: state must be file or directory" % spec.get("dest"))
    spec.setdefault("key", spec.get("dest"))  # an entry is named by its path unless it says otherwise
    for key in ("key", "dest", "owner", "group", "mode") + (() if directory else ("content",)):
        if key not in spec:
            module.fail_json(msg="files: an entry has no %s (keys: %s)" % (key, ", ".join(sorted(spec))))
    dest = spec["dest"]
    if not os.path.isabs(dest):
        module.fail_json(msg="files: %s: the destination must be an absolute path" % dest)
    try:
        uid = pwd.getpwnam(spec["owner"]).pw_uid
        gid = grp.getgrnam(spec["group"]).gr_gid
    except KeyError as exc:
        module.fail_json(msg="files: %s: unknown owner or group %s" % (dest, exc))
    try:
        mode = int(str(spec["mode"]), 8)
    except ValueError:
        module.fail_json(msg="files: %s: mode %r is not octal" % (dest, spec["mode"]))
    return dest, None if directory else str(spec["content"]).encode("utf-8"), uid, gid, mode


def _differs(dest: str, content: bytes | None, uid: int, gid: int, mode: int) -> bool:
    try:
        status = os.lstat(dest)
        if content is None:
            if not stat.S_ISDIR(status.st_mode):
                return True
            current = None
        else:
            with open(dest, "rb") as handle:
                current = handle.read()
    except FileNotFoundError:
        return True
    return current != content or status.st_uid != uid or status.st_gid != gid or (status.st_mode & 0o7777) != mode


def _directory(dest: str, uid: int, gid: int, mode: int) -> None:
    if os.path.lexists(dest) and not os.path.isdir(dest):
        raise OSError("%s exists and is not a directory" % dest)
    os.makedirs(dest, mode=0o700, exist_ok=True)
    os.chown(dest, uid, gid)
    os.chmod(dest, mode)


def _write(dest: str, content: bytes, uid: int, gid: int, mode: int, make_parents: bool = False) -> None:
    directory = os.path.dirname(dest)
    if make_parents and not os.path.isdir(directory):
        os.makedirs(directory, mode=0o755)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".centralita-")
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main() -> None:
    module = AnsibleModule(
        # Not no_log here: Ansible would then mask every returned string equal to any
        # value of ``files`` (the keys among them). Tasks that write secrets set
        # ``no_log: true`` themselves, which keeps the arguments out of every log.
        argument_spec={"files": {"type": "list", "elements": "dict", "required": True}},
        supports_check_mode=True,
    )
    changed = []
    for spec in module.params["files"]:
        dest, content, uid, gid, mode = _wanted(module, spec)
        if not _differs(dest, content, uid, gid, mode):
            continue
        changed.append(spec["key"])
        if not module.check_mode:
            try:
                if content is None:
                    _directory(dest, uid, gid, mode)
                else:
                    _write(dest, content, uid, gid, mode, bool(spec.get("make_parents")))
            except OSError as exc:
                module.fail_json(msg="cannot write %s: %s" % (dest, exc), changed_keys=changed[:-1])
    module.exit_json(changed=bool(changed), changed_keys=changed)


if __name__ == "__main__":
    main()
