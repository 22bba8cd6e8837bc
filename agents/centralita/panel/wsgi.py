"""gunicorn entry point: ``gunicorn centralita.panel.wsgi:app``.

A wrong setting stops the worker with the message on stderr (journald) and
exit code 2 instead of a traceback, like every other Centralita process.
"""

from __future__ import annotations

import sys

from centralita.config import ConfigError
from centralita.logs import setup_logging
from centralita.panel import app_from_environment

setup_logging("INFO")
try:
    app = app_from_environment()
except ConfigError as exc:
    print(f"centralita-panel: {exc}", file=sys.stderr)
    sys.exit(2)
