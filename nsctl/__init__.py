"""nsctl: per-job private /tmp, /dev/shm, PID and user namespaces for Slurm, from Prolog/Epilog."""

__version__ = "0.1.0"
