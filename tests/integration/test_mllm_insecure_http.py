"""`agegender query --base-url http://<not loopback>`: refused before anything is sent, unless the user opts in.

The hostile run that found this sent the key and every crop in clear text to a non-loopback address of the
machine itself. These tests use such an address too (one of this machine's own interfaces, found with psutil
and proven to be ours by binding a socket to it), so nothing leaves the machine.
"""

from __future__ import annotations

import errno
import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/mllm_fakes.py

from mllm_fakes import make_dataset  # noqa: E402

from agegender import cli  # noqa: E402

SECRET = "sk-transport-SECRET-0123456789"


def own_non_loopback_ipv4() -> str:
    """An IPv4 address of one of this machine's interfaces that is not loopback (skip when there is none)."""
    psutil = pytest.importorskip("psutil")
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family != socket.AF_INET or address.address.startswith("127."):
                continue
            with socket.socket() as probe:  # only an address of this machine can be bound
                try:
                    probe.bind((address.address, 0))
                except OSError:
                    continue
            return address.address
    pytest.skip("this machine has no non-loopback IPv4 address")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("insecure_http_data")
    make_dataset(root, n_images=3).to_parquet(root / "samples.parquet", index=False)
    return root


def query_args(data: Path, tmp_path: Path, base_url: str) -> list[str]:
    return [
        "query", "--samples", str(data / "samples.parquet"), "--data-root", str(data), "--input", "body",
        "--backend", "openai", "--model", "m", "--base-url", base_url, "--api-key-env", "TRANSPORT_TEST_KEY",
        "--out", str(tmp_path / "preds.parquet"), "--store", str(tmp_path / "store"), "--quiet",
        "--option", "timeout_s=2", "--option", "max_retries=0",
    ]  # fmt: skip


def test_plain_http_to_a_non_loopback_address_exits_2_and_sends_nothing(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRANSPORT_TEST_KEY", SECRET)
    host = own_non_loopback_ipv4()
    with socket.socket() as listener:  # a real listener: any connection attempt would be queued here
        listener.bind((host, 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        code = cli.main(query_args(data, tmp_path, f"http://{host}:{port}/v1"))
        err = capsys.readouterr().err
        listener.setblocking(False)
        with pytest.raises(BlockingIOError) as info:
            listener.accept()  # nothing connected, not even without a request
        assert info.value.errno in (errno.EAGAIN, errno.EWOULDBLOCK)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in ("base_url", "plain http://", host, "unencrypted", "--allow-insecure-http"):
        assert needle in err, (needle, err)
    assert SECRET not in err
    assert not (tmp_path / "preds.parquet").exists()


class _Recorder(BaseHTTPRequestHandler):
    """Answers every chat request with a valid completion and records its Authorization header."""

    seen: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        length = int(self.headers.get("content-length", 0))
        json.loads(self.rfile.read(length))
        type(self).seen.append(self.headers.get("authorization", ""))
        body = json.dumps(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1,
                "model": "m",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "[male; 30]"}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_the_explicit_opt_in_sends(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRANSPORT_TEST_KEY", SECRET)
    host = own_non_loopback_ipv4()
    _Recorder.seen = []
    server = ThreadingHTTPServer((host, 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://{host}:{server.server_address[1]}/v1"
        code = cli.main([*query_args(data, tmp_path, url), "--allow-insecure-http"])
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0, capsys.readouterr().err
    # what the user accepted: the key went along, in clear text, with every request
    assert _Recorder.seen and set(_Recorder.seen) == {f"Bearer {SECRET}"}
    manifest = json.loads((tmp_path / "preds.manifest.json").read_text())
    assert SECRET not in json.dumps(manifest)


def test_a_server_the_pipeline_starts_never_listens_off_loopback_nor_gets_a_plain_http_client():
    """The pipeline's own server and client: `running_server` stays on loopback, the client refuses the rest."""
    from agegender.errors import InputError
    from agegender.mllm.backends.openai_backend import OpenAIBackend
    from agegender.mllm.tools.server import running_server

    host = own_non_loopback_ipv4()
    with pytest.raises(InputError, match="loopback"), running_server("constant", host=host):
        pass
    with pytest.raises(InputError, match="unencrypted"):
        OpenAIBackend("constant", base_url=f"http://{host}:8000/v1", api_key_env=None)
