"""``centralita_files`` (roles/agents/library), run as Ansible runs it: several files in
one module run, replaced only when content, owner, group or mode differ, and the
result naming exactly the files that changed (handlers act on those names)."""

from __future__ import annotations

import grp
import json
import os
import pwd
import secrets
import subprocess
import sys
from pathlib import Path

MODULE = Path(__file__).resolve().parents[2] / "roles" / "agents" / "library" / "centralita_files.py"
OWNER = pwd.getpwuid(os.getuid()).pw_name
GROUP = grp.getgrgid(os.getgid()).gr_name


def run(files: list[dict], tmp_path: Path, check_mode: bool = False) -> dict:
    args: dict = {"files": files}
    if check_mode:
        args["_ansible_check_mode"] = True
    path = tmp_path / f"args-{secrets.token_hex(4)}.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    done = subprocess.run([sys.executable, str(MODULE), str(path)], capture_output=True, text=True, timeout=60)
    return json.loads(done.stdout)


def spec(tmp_path: Path, key: str, content: str, mode: str = "0600") -> dict:
    return {"key": key, "dest": str(tmp_path / key), "content": content, "owner": OWNER, "group": GROUP, "mode": mode}


def test_writes_only_what_differs_and_names_it(tmp_path):
    files = [spec(tmp_path, "aicall.env", "A='1'\n"), spec(tmp_path, "worker.env", "W='secret'\n", "0640")]
    assert run(files, tmp_path)["changed_keys"] == ["aicall.env", "worker.env"]
    assert (tmp_path / "worker.env").read_text() == "W='secret'\n"
    assert (tmp_path / "worker.env").stat().st_mode & 0o7777 == 0o640
    assert run(files, tmp_path) == {**run(files, tmp_path), "changed": False, "changed_keys": []}

    (tmp_path / "aicall.env").chmod(0o644)
    files[1]["content"] = "W='other'\n"
    result = run(files, tmp_path)
    assert result["changed"] is True
    assert result["changed_keys"] == ["aicall.env", "worker.env"]
    assert (tmp_path / "aicall.env").stat().st_mode & 0o7777 == 0o600


def test_check_mode_reports_without_writing(tmp_path):
    result = run([spec(tmp_path, "panel.env", "P='1'\n")], tmp_path, check_mode=True)
    assert result["changed_keys"] == ["panel.env"]
    assert not (tmp_path / "panel.env").exists()


def test_bad_entries_are_refused_naming_the_file(tmp_path):
    relative = {**spec(tmp_path, "x.env", ""), "dest": "x.env"}
    assert "must be an absolute path" in run([relative], tmp_path)["msg"]
    unknown = {**spec(tmp_path, "y.env", ""), "owner": "no-such-user-here"}
    result = run([unknown], tmp_path)
    assert result["failed"] is True
    assert "y.env" in result["msg"]
    assert "no-such-user-here" in result["msg"]
    missing = spec(tmp_path, "z.env", "")
    del missing["mode"]
    assert "no mode" in run([missing], tmp_path)["msg"]


def test_missing_drop_in_directories_are_created_only_when_asked(tmp_path):
    nested = {**spec(tmp_path, "journald", "[Journal]\n"), "dest": str(tmp_path / "journald.conf.d" / "c.conf")}
    refused = run([nested], tmp_path)
    assert refused["failed"] is True and "journald.conf.d" in refused["msg"]
    created = run([{**nested, "make_parents": True}], tmp_path)
    assert created["changed_keys"] == ["journald"]
    assert (tmp_path / "journald.conf.d" / "c.conf").read_text() == "[Journal]\n"
    assert (tmp_path / "journald.conf.d").stat().st_mode & 0o777 == 0o755


def test_directories_get_their_owner_and_mode(tmp_path):
    wanted = {**spec(tmp_path, "state", ""), "state": "directory", "mode": "0750"}
    del wanted["content"]
    assert run([wanted], tmp_path)["changed_keys"] == ["state"]
    assert (tmp_path / "state").is_dir() and (tmp_path / "state").stat().st_mode & 0o7777 == 0o750
    assert run([wanted], tmp_path)["changed"] is False
    (tmp_path / "state").chmod(0o755)
    assert run([wanted], tmp_path)["changed_keys"] == ["state"]
    (tmp_path / "plain").write_text("x")
    refused = run([{**wanted, "key": "plain", "dest": str(tmp_path / "plain")}], tmp_path)
    assert refused["failed"] is True and "not a directory" in refused["msg"]


def test_links_point_where_asked_and_a_wrong_target_is_replaced(tmp_path):
    (tmp_path / "available.conf").write_text("server {}\n")
    link = {
        "key": "site",
        "dest": str(tmp_path / "enabled.conf"),
        "state": "link",
        "src": str(tmp_path / "available.conf"),
    }
    assert run([link], tmp_path)["changed_keys"] == ["site"]
    assert os.readlink(tmp_path / "enabled.conf") == str(tmp_path / "available.conf")
    assert run([link], tmp_path)["changed"] is False
    (tmp_path / "enabled.conf").unlink()
    (tmp_path / "enabled.conf").symlink_to(tmp_path / "elsewhere.conf")
    assert run([link], tmp_path)["changed_keys"] == ["site"]
    assert os.readlink(tmp_path / "enabled.conf") == str(tmp_path / "available.conf")
    (tmp_path / "enabled.conf").unlink()
    (tmp_path / "enabled.conf").mkdir()
    refused = run([link], tmp_path)
    assert refused["failed"] is True and "is a directory" in refused["msg"]
    assert "no src" in run([{k: v for k, v in link.items() if k != "src"}], tmp_path)["msg"]


def test_absent_removes_a_file_or_link_once_and_refuses_a_directory(tmp_path):
    (tmp_path / "default").symlink_to(tmp_path / "gone")
    absent = {"key": "default", "dest": str(tmp_path / "default"), "state": "absent"}
    assert run([absent], tmp_path, check_mode=True)["changed_keys"] == ["default"]
    assert os.path.lexists(tmp_path / "default")
    assert run([absent], tmp_path)["changed_keys"] == ["default"]
    assert not os.path.lexists(tmp_path / "default")
    assert run([absent], tmp_path)["changed"] is False
    (tmp_path / "default").mkdir()
    assert "only files and links" in run([absent], tmp_path)["msg"]
    assert "state must be one of" in run([{**absent, "state": "hard"}], tmp_path)["msg"]


def test_a_link_whose_target_must_exist_fails_before_anything_is_written(tmp_path):
    zone = tmp_path / "zoneinfo"
    (zone / "Europe").mkdir(parents=True)
    (zone / "Europe" / "Madrid").write_text("TZif")
    name = spec(tmp_path, "timezone", "Europe/Nowhere\n", "0644")
    link = {"key": "localtime", "dest": str(tmp_path / "localtime"), "state": "link", "src_missing_msg": "no such zone"}
    for missing in (zone / "Europe" / "Nowhere", zone / "Europe"):
        result = run([name, {**link, "src": str(missing)}], tmp_path)
        assert result["failed"] is True and result["msg"] == "no such zone"
        assert not (tmp_path / "timezone").exists()
    done = run([name, {**link, "src": str(zone / "Europe" / "Madrid")}], tmp_path)
    assert done["changed_keys"] == ["timezone", "localtime"]
