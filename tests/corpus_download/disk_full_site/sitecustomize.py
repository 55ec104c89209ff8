"""Test-only start-up hook (put this folder on PYTHONPATH): writes to one file go to /dev/full.

With ``CCMB_TEST_DISK_FULL=<path>`` set, every process started with this folder on PYTHONPATH (the
download workers too: they are spawned with the parent's environment) opens ``/dev/full`` instead when
``<path>`` is opened for writing, so writing it fails with a real ENOSPC from the kernel.
"""
import builtins
import os

_TARGET = os.environ.get("CCMB_TEST_DISK_FULL")

if _TARGET:
    _open = builtins.open

    def _full_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and ("w" in mode or "a" in mode) and os.fspath(file) == _TARGET:
            return _open("/dev/full", mode, *args, **kwargs)
        return _open(file, mode, *args, **kwargs)

    builtins.open = _full_open
