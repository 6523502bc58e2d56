"""`tuneserve loadtest` input errors: one line on stderr, exit code 1, nothing started."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tuneserve.cli import main


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--slo", "p99<100ms"], "error: --slo 'p99<100ms': 'p99<100ms' is not KEY=VALUE"),
        (["--slo", "p99=100ms,fail=2x"], "'fail=2x': expected a percentage from 0 to 100"),
        (["--duration", "ten"], "error: --duration 'ten' is not a duration"),
        (["--warmup", "5 sec"], "error: --warmup '5 sec' is not a duration"),
        (["--host", "localhost:3000"], "host: expected a URL such as http://127.0.0.1:3000"),
        (["--users", "0"], "users: Input should be greater than or equal to 1"),
        (["--open-loop"], "open loop needs --rate (arrivals per second) above 0"),
        (["--find-max"], "--find-max needs --slo"),
        (["--label-names", "{0: neg}"], "--label-names is not JSON"),
        (["--texts", "/nonexistent/test.tsv"], "load-test split file /nonexistent/test.tsv not"),
        (["--master", "--worker"], "error: --master and --worker exclude each other"),
        (["--worker", "--find-max", "--slo", "p99=1s"], "--find-max runs one Locust run per"),
        (["--master", "--processes", "2"], "error: --master runs no users: start the workers"),
        (["--expect-workers", "2"], "--expect-workers applies to --master only"),
        (["--processes", "0"], "processes: Input should be greater than or equal to 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(
    extra: list[str], message: str, tmp_path: Path, traffic_tsv: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    host = f"http://127.0.0.1:{_free_port()}"
    argv = ["loadtest", "--host", host, "--texts", str(traffic_tsv), "--out", str(tmp_path)]
    assert main([*argv, *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert message in err[0]
    assert not any(tmp_path.iterdir()), "a run folder was made for a run that never started"


def test_unreachable_host(tmp_path: Path, traffic_tsv: Path, capsys: pytest.CaptureFixture[str]):
    port = _free_port()
    argv = ["loadtest", "--host", f"http://127.0.0.1:{port}", "--texts", str(traffic_tsv),
            "--out", str(tmp_path), "--slo", "p99=100ms"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: cannot reach http://127.0.0.1:{port} ([Errno 111] Connection refused): start "
        "the service (make serve) or pass --host"
    ]
