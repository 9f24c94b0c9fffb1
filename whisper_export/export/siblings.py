"""Directories beside an output (a bundle being exported or built, an old one being replaced), named after this
host and process so that a later run can tell the ones a killed run left behind from those a live run owns."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
from pathlib import Path

from whisper_export.atomic import exchange_paths

KINDS = ("tmp", "build", "old")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def sibling_directory(out_dir: Path, kind: str) -> Path:
    """A new empty directory beside out_dir, named .NAME.KIND-HOST-PID-RANDOM, made with mode 0o777 so that the
    umask gives it ordinary permissions (tempfile.mkdtemp's 0o700 would stay on the bundle after the rename)."""
    for _ in range(100):
        path = out_dir.parent / f".{out_dir.name}.{kind}-{_host()}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            path.mkdir(0o777)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"{out_dir.parent}: no free name for a temporary directory")


def swap_in(new: Path, out_dir: Path) -> None:
    """Rename the finished bundle to out_dir. An old bundle there is exchanged with it in one atomic step where
    the system can (Linux), so out_dir always holds one of the two, then deleted; elsewhere it is moved aside
    first and deleted only once the new one is in place (put back if that rename fails)."""
    if not out_dir.exists():
        new.rename(out_dir)
        return
    if exchange_paths(new, out_dir):
        shutil.rmtree(new, ignore_errors=True)  # the old bundle, now under the temporary name
        return
    trash = sibling_directory(out_dir, "old")
    out_dir.rename(trash / "old")
    try:
        new.rename(out_dir)
    except BaseException:
        (trash / "old").rename(out_dir)
        trash.rmdir()
        raise
    shutil.rmtree(trash, ignore_errors=True)


def remove_stale_siblings(out_dir: Path) -> list[Path]:
    """Remove the directories beside out_dir that a killed run of this host left (its process is gone); those of
    live processes and of other hosts (a shared file system) are kept. Returns what was removed."""
    # .NAME.KIND-HOST-PID-HEX, and the export's own .(.NAME.build-...).tmp-... inside a staged build
    one = rf"(?:{'|'.join(KINDS)})-{re.escape(_host())}-(\d+)-[0-9a-f]{{8}}"
    pattern = re.compile(rf"\.\.?{re.escape(out_dir.name)}\.{one}(?:\.{one})?")
    removed = []
    try:
        entries = list(out_dir.parent.iterdir())
    except OSError:
        return removed
    for path in entries:
        match = pattern.fullmatch(path.name)
        pids = [int(pid) for pid in match.groups() if pid is not None] if match else []
        if match is None or not path.is_dir() or path.is_symlink() or any(map(_alive, pids)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
