"""Operating-system names for the service's threads, so `top -H` and `ps -L` show decode vs inference."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path


def name_os_thread() -> None:
    """Give the calling thread its Python name at the OS level (Linux keeps 15 characters).

    Meant as a ThreadPoolExecutor `initializer`. Elsewhere than Linux it does nothing.
    """
    comm = Path(f"/proc/self/task/{threading.get_native_id()}/comm")
    with contextlib.suppress(OSError):
        comm.write_text(threading.current_thread().name[:15])
