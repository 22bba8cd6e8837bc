"""Settings of the SBC tools (``centralita kamailio``, ``centralita rates``, the panel's reloads)."""

from __future__ import annotations

import dataclasses

from centralita.config import setting, url
from centralita.db import DbSettings

DEFAULT_ENV_FILE = "/etc/centralita/sbc.env"


@dataclasses.dataclass(frozen=True, kw_only=True)
class SbcSettings(DbSettings):
    """Where Kamailio's JSON-RPC answers, plus the DB_* settings of the schema it reads."""

    db_user: str = setting("DB_USER", default="centralita_panel", help="an account that may write the SBC tables")
    kamailio_rpc_url: str = setting(
        "KAMAILIO_RPC_URL",
        default="http://127.0.0.1:5071/RPC",
        check=url,
        help="Kamailio's JSON-RPC over HTTP (kamailio_rpc_address/kamailio_rpc_port in the inventory)",
    )
    kamailio_rpc_timeout: float = setting("KAMAILIO_RPC_TIMEOUT", default=5.0, minimum=0.5, maximum=120)
