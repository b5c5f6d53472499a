"""The ivisit-nb command line, run as real subprocesses against a real server."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "ivisit_nb"]


@pytest.fixture
def server_url():
    proc = subprocess.Popen(CLI + ["server", "--port", "0"], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line.startswith("listening on ws://127.0.0.1:")
    yield line.split()[-1]
    proc.terminate()
    proc.wait(10)


def _receiver(url, tmp_path, accept, count):
    return subprocess.Popen(
        CLI + ["receive", "--server", url, "--room", "lab", "--user", "bob", "--inbox", str(tmp_path / "inbox"),
               "--config-dir", str(tmp_path / "cfg"), "--accept", accept, "--count", str(count), "--json"],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, cwd=tmp_path,
    )


def _wait_receiving(proc):
    for line in proc.stdout:
        if json.loads(line)["event"] == "receiving":
            return
    raise AssertionError("receiver ended before receiving")


def _send(url, tmp_path, *items, to="bob"):
    return subprocess.run(
        CLI + ["send", "--server", url, "--room", "lab", "--user", "alice", "--config-dir", str(tmp_path / "cfg"),
               "--to", to, "--json", *items],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )


def test_send_and_receive_a_file_and_a_url(server_url, tmp_path):
    f = tmp_path / "data.csv"
    f.write_text("a,b\n1,2\n")
    rx = _receiver(server_url, tmp_path, "always", 2)
    try:
        _wait_receiving(rx)
        sent = _send(server_url, tmp_path, str(f), "https://jupyter.org/")
        assert sent.returncode == 0, sent.stdout + sent.stderr
        results = [json.loads(line) for line in sent.stdout.splitlines() if '"result"' in line]
        assert [(r["to"], r["status"]) for r in results] == [("bob", "done"), ("bob", "done")]
        assert rx.wait(60) == 0
        received = [json.loads(line) for line in rx.stdout.read().splitlines()]
        assert sorted(r["kind"] for r in received if r["event"] == "received") == ["file", "url"]
        assert (tmp_path / "inbox" / "alice" / "data.csv").read_text() == "a,b\n1,2\n"
        # sent again: bob already holds it, so it is "done" without payload
        rx = _receiver(server_url, tmp_path, "always", 1)
        _wait_receiving(rx)
        again = _send(server_url, tmp_path, str(f))
        assert again.returncode == 0
        assert json.loads([line for line in again.stdout.splitlines() if '"result"' in line][0])["lane"] == "dedup"
    finally:
        rx.kill()
        rx.wait()


def test_send_exits_nonzero_with_the_reason_when_refused(server_url, tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"x" * 100)
    rx = _receiver(server_url, tmp_path, "never", 1)
    try:
        _wait_receiving(rx)
        sent = _send(server_url, tmp_path, str(f))
        assert sent.returncode == 1
        result = json.loads([line for line in sent.stdout.splitlines() if '"result"' in line][0])
        assert result["status"] == "refused" and "refused" in result["reason"]
    finally:
        rx.kill()
        rx.wait()


def test_send_rejects_bad_input_before_connecting(server_url, tmp_path):
    bad = _send(server_url, tmp_path, "javascript:alert(1)")
    assert bad.returncode == 2
    assert "javascript" in bad.stdout
    missing = _send(server_url, tmp_path, str(tmp_path / "nope.txt"))
    assert missing.returncode == 2 and "not a file" in missing.stdout
    assert list(tmp_path.iterdir()) == []  # nothing created by a send that never started


def test_demo_runs_end_to_end(tmp_path):
    proc = subprocess.run(CLI + ["demo", "--json"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    summary = [e for e in events if e["event"] == "summary"][0]
    assert summary["ok"] is True and summary["items"] == 3
    assert [e for e in events if e["event"] == "dedup"][0]["bytes_transferred"] == 0


def test_receive_asks_on_the_terminal(server_url, tmp_path):
    f = tmp_path / "asked.txt"
    f.write_text("hello")
    rx = subprocess.Popen(
        CLI + ["receive", "--server", server_url, "--room", "lab", "--user", "bob", "--inbox", str(tmp_path / "inbox"),
               "--config-dir", str(tmp_path / "cfg"), "--count", "1", "--json"],
        stdout=subprocess.PIPE, stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )
    try:
        _wait_receiving(rx)
        rx.stdin.write("a\n")  # "Accept always from alice", typed before the question comes
        rx.stdin.flush()
        sent = _send(server_url, tmp_path, str(f))
        assert sent.returncode == 0, sent.stdout
        assert rx.wait(30) == 0
        assert "[a] Accept always from alice" in rx.stderr.read()
        settings = json.loads((tmp_path / "cfg" / "bob" / "settings.json").read_text())
        assert settings["users"]["alice"]["files"] == "accept"
    finally:
        rx.kill()
        rx.wait()
