"""Third-party modules, found even by the Prolog's isolated interpreter.

nsctl-prolog and nsctl-epilog start Python with ``-I -S`` and put only the venv's own
site-packages on the path (contrib/slurm/launchers). A dependency that lives elsewhere (a venv
made with --system-site-packages, a distribution's package) is then not found: for those, and
only on the paths that need them (a cold cache, node matching), site is run after all.
"""

from __future__ import annotations


def dependency(name: str):
    """Import and return the module ``name`` (PyYAML's ``yaml``, python-hostlist's ``hostlist``)."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        import site

        site.main()  # idempotent: adds the site directories (and .pth files) skipped by -S
        return importlib.import_module(name)
