"""Logging to stderr and to syslog (ident ``nsctl``), every line tagged with the job id."""

from __future__ import annotations

import logging
import os
from typing import Optional

SYSLOG = "/dev/log"


def job_logger(job_id: Optional[str], verbose: bool = False) -> logging.Logger:
    """The logger for one command run; idempotent (tests call it many times in one process)."""
    logger = logging.getLogger("nsctl")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    tag = f"job {job_id}: " if job_id else ""
    stderr = logging.StreamHandler()
    stderr.setFormatter(logging.Formatter(f"nsctl: {tag}%(levelname)s: %(message)s"))
    logger.addHandler(stderr)
    if os.path.exists(SYSLOG):
        from logging.handlers import SysLogHandler  # only when there is a syslog socket

        try:
            syslog = SysLogHandler(address=SYSLOG)
        except OSError:
            pass  # no syslog daemon listening: stderr still has everything
        else:
            syslog.ident = "nsctl: "
            syslog.setFormatter(logging.Formatter(f"{tag}%(message)s"))
            syslog.setLevel(logging.INFO)
            logger.addHandler(syslog)
    return logger
