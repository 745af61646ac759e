"""A directory whose entries cannot be removed, for the "files stay after a deletion" paths."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def undeletable(directory: Path) -> Iterator[None]:
    """Inside the block nothing directly in ``directory`` can be unlinked or renamed away.

    A normal user loses write permission on it. Root ignores permissions, so for root the
    directory gets the immutable attribute (``chattr +i``); a container without
    CAP_LINUX_IMMUTABLE refuses that, and then the directory is swapped for a symlink to it,
    which ``shutil.rmtree`` refuses to remove for anyone. Restored on exit.
    """
    if os.geteuid() != 0:
        mode = directory.stat().st_mode
        directory.chmod(0o500)
        try:
            yield
        finally:
            directory.chmod(mode)
        return
    chattr = shutil.which("chattr")
    if (
        chattr
        and subprocess.run([chattr, "+i", str(directory)], capture_output=True).returncode == 0
    ):
        try:
            yield
        finally:
            subprocess.run([chattr, "-i", str(directory)], check=True)
        return
    real = directory.with_name(directory.name + ".real")
    directory.rename(real)
    directory.symlink_to(real, target_is_directory=True)
    try:
        yield
    finally:
        if directory.is_symlink():
            directory.unlink()
            real.rename(directory)
