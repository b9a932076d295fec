"""Logging: stderr and syslog, every line tagged with the job id."""

from __future__ import annotations

import socket

from nsctl import log


def test_lines_go_to_stderr_and_syslog_tagged_with_the_job(tmp_path, monkeypatch, capsys):
    address = str(tmp_path / "log")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(address)
    server.settimeout(5)
    monkeypatch.setattr(log, "SYSLOG", address)
    try:
        logger = log.job_logger("42")
        logger.info("namespaces ready")
        logger.debug("not shown without --verbose")
        message = server.recv(4096).decode()
    finally:
        server.close()
        log.job_logger(None)  # drop the handler bound to the socket
    assert message.endswith("nsctl: job 42: namespaces ready\x00")
    assert message.startswith("<14>")  # facility user, severity info
    assert capsys.readouterr().err == "nsctl: job 42: INFO: namespaces ready\n"


def test_without_a_syslog_socket_stderr_still_gets_everything(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(log, "SYSLOG", str(tmp_path / "missing"))
    logger = log.job_logger("7", verbose=True)
    logger.debug("step: mkdir")
    assert capsys.readouterr().err == "nsctl: job 7: DEBUG: step: mkdir\n"
    assert logger.syslog is None
