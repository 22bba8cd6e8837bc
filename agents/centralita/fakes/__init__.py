"""Stand-ins for the services on the internet (OpenAI Realtime and GPT-Live, a MikroTik router,
the remote CDR API) and for Asterisk's AMI, speaking their real protocols."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any


def send_json(handler: BaseHTTPRequestHandler, status: int, body: Any) -> None:
    """Answer ``handler``'s request with ``body`` as JSON."""
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
