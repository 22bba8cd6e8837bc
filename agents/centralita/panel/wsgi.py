"""gunicorn entry point: ``gunicorn centralita.panel.wsgi:app``.

A wrong setting stops the panel with the message on stderr (journald) instead
of a traceback. The exit code is gunicorn's "application failed to load" (4):
with it the gunicorn master stops instead of re-spawning workers that can
never start, and systemd shows the unit failed with the message beside it.
"""

from __future__ import annotations

import sys

from centralita.config import ConfigError
from centralita.logs import setup_logging
from centralita.panel import app_from_environment

EXIT_APP_LOAD_ERROR = 4

setup_logging("INFO")
try:
    app = app_from_environment()
except ConfigError as exc:
    print(f"centralita-panel: {exc}", file=sys.stderr, flush=True)
    sys.exit(EXIT_APP_LOAD_ERROR)
