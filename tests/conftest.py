"""Fixtures shared by several test files."""
import os
import subprocess

import pytest


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs folder, for disk-full tests: mounted when the tests run as root on Linux (unmounted after),
    skipped with the reason elsewhere."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("a disk-full test mounts a 1 MiB tmpfs, which needs root on Linux")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True,
                             text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs for the disk-full test: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
