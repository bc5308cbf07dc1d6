"""A real Flower deployment on this machine: one SuperLink and N SuperNodes over loopback.

:class:`LocalDeployment` starts ``flower-superlink`` and ``flower-supernode`` as separate
OS processes (each in its own session, so the SuperExec/ServerApp/ClientApp processes they
spawn can be killed with them), submits the app with ``flwr run`` exactly as an operator
would, and always tears everything down (``close``/``__exit__`` send SIGTERM, then
SIGKILL, to every process group it started). Every wait is bounded by a timeout.

It is the harness of the deployment tests and the benchmark, and a worked example of
how to run the example app outside the simulation engine. Transport is plain HTTP on
127.0.0.1 (``--insecure``): fine for loopback, never for a real network, where TLS
certificates must be configured (see Flower's deployment docs).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from secagg.errors import ConfigError, SecaggError

_BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))  # a TOML basic string


def config_args(values: Mapping[str, Any]) -> str:
    """``key=value`` pairs in Flower's --node-config / --run-config syntax (TOML values)."""
    return " ".join(f"{k}={_toml_value(v)}" for k, v in values.items())


class DeploymentError(SecaggError):
    """A process of the local deployment failed to start, died, or a wait timed out."""


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen
    log: Path


@dataclass
class LocalDeployment:
    """SuperLink + SuperNodes as local processes. Use as a context manager.

    ``node_configs[i]`` is SuperNode i's node config (``partition-id`` etc.).
    ``workdir`` receives the logs, the Flower home (FABs) and the CLI's connection file.
    """

    workdir: Path
    node_configs: Sequence[Mapping[str, Any]]
    startup_timeout_s: float = 60.0
    procs: list[_Proc] = field(default_factory=list)
    supernodes: dict[int, _Proc] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        if len(self.node_configs) < 1:
            raise ConfigError("node_configs: need at least one SuperNode")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.home = self.workdir / "flwr-home"
        self.home.mkdir(exist_ok=True)
        self.port = free_port()
        self.env = {**os.environ, "FLWR_HOME": str(self.home), "PYTHONUNBUFFERED": "1", "FLWR_TELEMETRY_ENABLED": "0",
                    "OMP_NUM_THREADS": "1"}
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "local-test"\n\n[superlink.local-test]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n',
            encoding="utf-8",
        )

    # --- process management ---------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> _Proc:
        log = self.workdir / f"{name}.log"
        fh = open(log, "wb")  # noqa: SIM115 - closed when the process is reaped
        p = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
                             cwd=self.workdir, start_new_session=True)
        fh.close()
        proc = _Proc(name, p, log)
        self.procs.append(proc)
        return proc

    def log_tail(self, proc: _Proc, n: int = 25) -> str:
        try:
            lines = proc.log.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def start(self) -> "LocalDeployment":
        sl = self._spawn("superlink", [str(_BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(self.port),
                                       "--disable-runtime-dependency-installation"])
        deadline = time.monotonic() + self.startup_timeout_s
        while not _port_open(self.port):
            if sl.popen.poll() is not None or time.monotonic() > deadline:
                raise DeploymentError(f"SuperLink did not open port {self.port}:\n{self.log_tail(sl)}")
            time.sleep(0.2)
        for i, nc in enumerate(self.node_configs):
            self.supernodes[i] = self._spawn(f"supernode{i}", [
                str(_BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{self.port}",
                "--port", str(free_port()), "--max-wait-time", str(int(self.startup_timeout_s)),
                "--node-config", config_args(nc),
            ])
        return self

    def kill_supernode(self, index: int) -> None:
        """SIGKILL SuperNode ``index`` and everything it spawned (a crash, not a shutdown)."""
        proc = self.supernodes[index]
        try:
            os.killpg(proc.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.popen.wait(timeout=10)

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                try:
                    os.killpg(proc.popen.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for proc in self.procs:
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs:  # the process groups may still hold SuperExec/App children
            try:
                os.killpg(proc.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def __enter__(self) -> "LocalDeployment":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- running an app ---------------------------------------------------------------
    def submit(self, app_dir: Path, run_config: Mapping[str, Any], timeout_s: float = 60.0) -> str:
        """``flwr run app_dir local-test -c ...``; returns the CLI's output."""
        argv = [str(_BIN / "flwr"), "run", str(app_dir), "local-test"]
        if run_config:
            argv += ["--run-config", config_args(run_config)]
        try:
            out = subprocess.run(argv, env=self.env, cwd=self.workdir, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as e:
            raise DeploymentError(f"flwr run did not return within {timeout_s}s") from e
        if out.returncode != 0 or "Successfully started run" not in out.stdout:
            raise DeploymentError(f"flwr run failed (rc={out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out.stdout

    def wait_for_file(self, path: Path, timeout_s: float) -> None:
        """Wait until ``path`` exists; DeploymentError (with the SuperLink log) on timeout."""
        deadline = time.monotonic() + timeout_s
        while not Path(path).exists():
            if time.monotonic() > deadline:
                raise DeploymentError(f"{path} did not appear within {timeout_s}s; SuperLink log:\n{self.log_tail(self.procs[0], 40)}")
            if self.procs[0].popen.poll() is not None:
                raise DeploymentError(f"SuperLink exited:\n{self.log_tail(self.procs[0], 40)}")
            time.sleep(0.2)

    def run_app(self, app_dir: Path, run_config: Mapping[str, Any], timeout_s: float = 180.0) -> dict:
        """Submit the example app and return the JSON report its ServerApp writes to ``result-path``."""
        result = self.workdir / f"result-{time.monotonic_ns()}.json"
        self.submit(app_dir, {**run_config, "result-path": str(result)})
        self.wait_for_file(result, timeout_s)
        return json.loads(result.read_text(encoding="utf-8"))
