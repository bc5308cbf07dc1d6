"""Writing results: atomic files and the machine line every result table carries.

Atomic = temp file in the same folder, flush + fsync, then ``os.replace``: a reader (or a
killed job) sees either the old file or the complete new one, never a partial file. Result
files get mode 0o644 (``mkstemp`` creates 0o600), so others on a shared machine can read them.

Also the small formatting helpers the benchmark scripts share: :func:`machine_line` (the
Markdown "Machine: ..." sentence with CPU, cores, load average and library versions) and
:func:`mean_std` (``mean±std`` over seeds).
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

#: Libraries whose versions every result table names (``machine_line``, ``library_versions``).
RESULT_LIBRARIES = ("numpy", "torch", "tenseal", "cryptography", "phe", "opacus", "dp-accounting", "scipy")


def machine_info() -> dict[str, Any]:
    """Cores, CPU and library versions, recorded with every result."""
    import torch

    return {"cores": os.cpu_count(), "cpu": cpu_name(), "python": platform.python_version(),
            "numpy": np.__version__, "torch": torch.__version__}


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (``platform.processor()`` / machine type elsewhere)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def library_versions(packages: Sequence[str] = RESULT_LIBRARIES) -> dict[str, str]:
    """Installed version of each distribution in ``packages`` ("not installed" when absent)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in packages:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def machine_line(packages: Sequence[str] = RESULT_LIBRARIES) -> str:
    """One Markdown sentence naming the machine a result table was measured on.

    CPU model, core count, the 1/5/15-minute load average at the time of the call (the
    machine is shared: times include contention), the Python version and the version of
    every library in ``packages`` (read from the installed metadata: nothing is imported,
    so a numpy-only script does not pay for importing torch). Example::

        Machine: AMD EPYC 7B13, 2 cores (shared with other users; load average 1.2/0.9/0.8 when
        the table was written), Python 3.11.9; numpy 2.3.1, torch 2.13.0, .... Times are
        wall-clock on this shared machine: compare rows of one run, not absolute values.
    """
    libs = ", ".join(f"{k} {v}" for k, v in library_versions(packages).items())
    try:
        load = "load average %.1f/%.1f/%.1f" % os.getloadavg()
    except OSError:
        load = "load average n/a"
    return (f"Machine: {cpu_name()}, {os.cpu_count()} cores (shared with other users; {load} when the table "
            f"was written), Python {platform.python_version()}; {libs}. Times are wall-clock on this shared "
            f"machine: compare rows of one run, not absolute values.")


def mean_std(values: Iterable[Optional[float]], fmt: str = ".3f", *, sep: str = "±",
             skip_missing: bool = False) -> str:
    """``mean{sep}std`` of ``values`` formatted with ``fmt`` (population std, ``ddof=0``).

    One value prints as its mean alone (no ``±0``). ``skip_missing`` drops ``None`` and NaN
    first; with nothing left (or no values at all) the result is ``"n/a"``. Without it a NaN
    propagates (prints ``nan``), so a failed metric stays visible. Example:
    ``mean_std([0.9, 0.8])`` -> ``"0.850±0.050"``; ``mean_std([1, 2], ".1f", sep=" ± ")`` ->
    ``"1.5 ± 0.5"``.
    """
    vals = list(values)
    if skip_missing:
        vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "n/a"
    v = np.asarray(vals, dtype=float)
    return format(v.mean(), fmt) + (f"{sep}{format(v.std(), fmt)}" if v.size > 1 else "")


def write_bytes(data: bytes, path: str | os.PathLike, *, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` atomically with permission bits ``mode``.

    Creates the folder; no temp file is left on error.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p


def write_text(text: str, path: str | os.PathLike, *, mode: int = 0o644) -> Path:
    """Write a text file (e.g. a Markdown result table) atomically, UTF-8 encoded."""
    return write_bytes(text.encode("utf-8"), path, mode=mode)


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
