"""Writing results: atomic files and the machine line every result table carries.

Atomic = temp file in the same folder, flush + fsync, then ``os.replace``: a reader (or a
killed job) sees either the old file or the complete new one, never a partial file.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def machine_info() -> dict[str, Any]:
    """Cores, CPU and library versions, recorded with every result."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "numpy": np.__version__, "torch": torch.__version__}


def write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    """Write ``data`` to ``path`` atomically; creates the folder; no temp file is left on error."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p


def write_text(text: str, path: str | os.PathLike) -> Path:
    """Write a text file (e.g. a Markdown result table) atomically."""
    return write_bytes(text.encode("utf-8"), path)


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON atomically (numpy scalars and arrays allowed)."""
    return write_text(json.dumps(obj, indent=2, default=_jsonable), path)


def save_figure(fig: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> Path:
    """Save a matplotlib figure atomically (rendered to memory, then :func:`write_bytes`)."""
    import io

    buf = io.BytesIO()
    fmt = savefig_kwargs.pop("format", Path(path).suffix.lstrip(".") or "png")
    fig.savefig(buf, format=fmt, **savefig_kwargs)
    return write_bytes(buf.getvalue(), path)


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
