#!/usr/bin/python3
"""Several small files (units, env files), directories and links kept in one module run.

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
      List of {key, dest, content, owner, group, mode, make_parents} for files, {key, dest,
      state: directory, owner, group, mode} for directories, {key, dest, state: link, src} for
      symbolic links and {key, dest, state: absent} for paths that must not exist (a file or a
      link; a directory is refused); C(key) names the entry in the result (default its path);
      a link with C(src_missing_msg) requires its target to be an existing file, and fails with
      that message before anything is written when it is not;
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


STATES = ("file", "directory", "link", "absent")


def _wanted(module: AnsibleModule, spec: dict) -> tuple[str, bytes | None, int, int, int]:
    state = spec.get("state", "file")
    if state not in STATES:
        module.fail_json(msg="files: %s: state must be one of %s" % (spec.get("dest"), ", ".join(STATES)))
    spec.setdefault("key", spec.get("dest"))  # an entry is named by its path unless it says otherwise
    needed = {"file": ("owner", "group", "mode", "content"), "directory": ("owner", "group", "mode"), "link": ("src",)}
    for key in ("key", "dest") + needed.get(state, ()):
        if key not in spec:
            module.fail_json(msg="files: an entry has no %s (keys: %s)" % (key, ", ".join(sorted(spec))))
    dest = spec["dest"]
    if not os.path.isabs(dest):
        module.fail_json(msg="files: %s: the destination must be an absolute path" % dest)
    if state in ("link", "absent"):
        return dest, None, -1, -1, -1
    try:
        uid = pwd.getpwnam(spec["owner"]).pw_uid
        gid = grp.getgrnam(spec["group"]).gr_gid
    except KeyError as exc:
        module.fail_json(msg="files: %s: unknown owner or group %s" % (dest, exc))
    try:
        mode = int(str(spec["mode"]), 8)
    except ValueError:
        module.fail_json(msg="files: %s: mode %r is not octal" % (dest, spec["mode"]))
    return dest, None if state == "directory" else str(spec["content"]).encode("utf-8"), uid, gid, mode


def _link_differs(dest: str, src: str) -> bool:
    return not os.path.islink(dest) or os.readlink(dest) != src


def _link(dest: str, src: str) -> None:
    if os.path.isdir(dest) and not os.path.islink(dest):
        raise OSError("%s is a directory, not a link" % dest)
    tmp = os.path.join(os.path.dirname(dest), ".centralita-link-%d" % os.getpid())
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(src, tmp)
    os.replace(tmp, dest)


def _remove(dest: str) -> None:
    if os.path.isdir(dest) and not os.path.islink(dest):
        raise OSError("%s is a directory; only files and links are removed" % dest)
    os.unlink(dest)


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
    wanted = [(spec, *_wanted(module, spec)) for spec in module.params["files"]]
    for spec, *_ in wanted:  # every check before the first write
        if spec.get("state") == "link" and spec.get("src_missing_msg") and not os.path.isfile(str(spec["src"])):
            module.fail_json(msg=str(spec["src_missing_msg"]))
    changed = []
    for spec, dest, content, uid, gid, mode in wanted:
        state = spec.get("state", "file")
        if state == "link":
            differs = _link_differs(dest, str(spec["src"]))
        elif state == "absent":
            differs = os.path.lexists(dest)
        else:
            differs = _differs(dest, content, uid, gid, mode)
        if not differs:
            continue
        changed.append(spec["key"])
        if not module.check_mode:
            try:
                if state == "link":
                    _link(dest, str(spec["src"]))
                elif state == "absent":
                    _remove(dest)
                elif content is None:
                    _directory(dest, uid, gid, mode)
                else:
                    _write(dest, content, uid, gid, mode, bool(spec.get("make_parents")))
            except OSError as exc:
                module.fail_json(msg="cannot write %s: %s" % (dest, exc), changed_keys=changed[:-1])
    module.exit_json(changed=bool(changed), changed_keys=changed)


if __name__ == "__main__":
    main()
