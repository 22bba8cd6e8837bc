"""The few ARI REST calls the collections agent makes (blocking: run through asyncio.to_thread)."""

from __future__ import annotations

from urllib.parse import quote

import requests


class AriRequestError(RuntimeError):
    """ARI answered with an unexpected status or could not be reached."""


def _base(ari_url: str) -> str:
    base = ari_url.rstrip("/")
    return base if base.endswith("/ari") else base + "/ari"


def hangup_channel(
    session: requests.Session, ari_url: str, channel_id: str, *, reason: str = "normal", timeout: float = 5.0
) -> bool:
    """Hang up ``channel_id``; True when ARI hung it up, False when it was already gone (404)."""
    url = f"{_base(ari_url)}/channels/{quote(channel_id, safe='')}"
    try:
        response = session.delete(url, params={"reason": reason}, timeout=timeout)
    except requests.RequestException as exc:
        raise AriRequestError(f"DELETE {url}: {exc}") from exc
    if response.status_code == 204:
        return True
    if response.status_code == 404:
        return False
    raise AriRequestError(f"DELETE {url}: HTTP {response.status_code} {response.text[:200]}")


def make_session(user: str, password: str) -> requests.Session:
    session = requests.Session()
    session.auth = (user, password)
    return session
