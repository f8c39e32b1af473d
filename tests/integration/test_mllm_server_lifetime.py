"""A model server started by `running_server` (the query_mllms stage) dies with the process that started it.

The parent here is a small Python process that starts a process server and then waits; the test SIGKILLs it,
so no `finally` of the parent runs, and the server must notice on its own.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

psutil = pytest.importorskip("psutil")

PARENT = textwrap.dedent(
    """
    import sys, time
    import psutil
    from agegender.mllm.tools.server import running_server

    with running_server("constant", "constant", in_process=False, startup_timeout_s=120) as url:
        (server,) = psutil.Process().children()
        print(server.pid, url.rsplit(":", 1)[1].split("/")[0], flush=True)
        time.sleep(600)
    """
)

#: a liveness bound, not a timing goal: the server should be gone in about a second
GONE_WITHIN_S = 20.0


def gone(pid: int) -> bool:
    """Whether a process has ended (a zombie has: only its exit status is left for a reaper)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def port_refuses(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
        return False


def test_the_server_dies_when_its_parent_is_killed():
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    server_pid = None
    try:
        line = parent.stdout.readline()
        assert line, f"the parent did not start its server: {parent.communicate(timeout=30)[1][-2000:]}"
        server_pid, port = (int(x) for x in line.split())
        assert not gone(server_pid) and not port_refuses(port)  # up and listening
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + GONE_WITHIN_S
        while not gone(server_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert gone(server_pid), f"the server {server_pid} outlived its parent by {GONE_WITHIN_S:.0f} s"
        assert port_refuses(port)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=30)
        if server_pid is not None and not gone(server_pid):
            os.kill(server_pid, signal.SIGKILL)  # the orphan this test made: do not leave it running


def test_the_server_exits_when_its_stdin_closes():
    """The portable half: with the parent alive (no PDEATHSIG), EOF on stdin alone stops the server."""
    from agegender.mllm.tools.server import ANNOUNCE_PREFIX

    cmd = [sys.executable, "-m", "agegender.mllm.tools.server", "--backend", "constant", "--port", "0", "--announce"]
    cmd += ["--exit-with-parent", str(os.getpid())]
    server = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=dict(os.environ)
    )
    try:
        line = server.stdout.readline()
        assert line.startswith(ANNOUNCE_PREFIX), line
        port = int(line[len(ANNOUNCE_PREFIX) :])
        deadline = time.monotonic() + GONE_WITHIN_S
        while port_refuses(port) and time.monotonic() < deadline:  # bound before uvicorn accepts: wait for it
            time.sleep(0.05)
        assert not port_refuses(port)
        server.stdin.close()
        server.wait(timeout=GONE_WITHIN_S)
        assert port_refuses(port)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=30)
