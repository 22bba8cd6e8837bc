"""Reading Kamailio's dispatcher and htable dumps into the status an operator sees."""

from __future__ import annotations

import asyncio

from centralita.sbc.control import SbcStatus, _banned, _carriers, read_status, render_status

LISTING = {
    "NRSETS": 2,
    "RECORDS": [
        {
            "SET": {
                "ID": 3,
                "TARGETS": [
                    {
                        "DEST": {
                            "URI": "sip:10.0.0.3:5060",
                            "FLAGS": "AX",
                            "PRIORITY": 0,
                            "ATTRS": {
                                "BODY": "duid=carrier3;cid=3;sd=0;tp=;mc=10;cps=5;fd=sbc.example.net;au=1",
                                "DUID": "carrier3",
                            },
                        }
                    }
                ],
            }
        },
        {"SET": {"ID": 4, "TARGETS": [{"DEST": {"URI": "sip:10.0.0.4:5060", "FLAGS": "IP", "PRIORITY": 0}}]}},
    ],
}


def test_dispatcher_listing_becomes_one_row_per_carrier_with_its_state():
    rows = _carriers(LISTING)
    assert [(r["carrier_id"], r["state"], r["probing"]) for r in rows] == [(3, "up", False), (4, "down", True)]


def test_carrier_limits_come_from_the_dispatcher_attributes_and_empty_means_unlimited():
    three, four = _carriers(LISTING)
    assert (three["max_channels"], three["max_cps"], three["from_domain"]) == (10, 5, "sbc.example.net")
    assert (four["max_channels"], four["max_cps"], four["from_domain"]) == (None, None, None)
    assert "au" not in three, "nothing about credentials is shown"


class StatusRpc:
    """Answers the RPCs read_status makes, with calls per carrier and per customer."""

    def __init__(self, carrier_calls: dict[str, int]) -> None:
        self.carrier_calls = carrier_calls

    async def call(self, method: str, *params):
        if method == "dispatcher.list":
            return LISTING
        if method == "dlg.profile_get_size":
            profile, value = params
            size = self.carrier_calls.get(value, 0) if profile == "carr" else 1
            return {"profile": profile, "value": value, "size": size}
        if method == "dlg.stats_active":
            return {"all": 2}
        return []


def test_status_counts_the_calls_through_each_carrier():
    status = asyncio.run(read_status(StatusRpc({"3": 2}), {7: {"name": "acme"}}))
    assert [(r["carrier_id"], r["channels"]) for r in status.carriers] == [(3, 2), (4, 0)]
    text = render_status(status)
    assert "channels 2/10  cps max 5" in text
    assert "channels 0/unlimited  cps max unlimited" in text


def test_flood_bans_are_listed_from_the_htable_dump():
    dump = [{"entry": 1, "slot": [{"name": "10.0.0.9", "value": 1}]}, {"entry": 5, "slot": [{"name": "10.0.0.2"}]}]
    assert _banned(dump) == ["10.0.0.2", "10.0.0.9"]


def test_rendered_status_shows_carriers_dialogs_channels_and_bans():
    status = SbcStatus(
        carriers=_carriers(LISTING),
        dialogs={"starting": 0, "connecting": 1, "answering": 0, "ongoing": 2, "all": 3},
        channels={7: 2},
        limits={7: {"name": "acme", "max_cps": 10, "max_channels": 30, "monthly_minutes_limit": 1000,
                    "minutes_used": 12.5}},
        banned=["10.0.0.9"],
    )  # fmt: skip
    text = render_status(status)
    assert "sip:10.0.0.4:5060" in text and "down, probing" in text
    assert "ongoing 2" in text
    assert "channels 2/30" in text and "minutes 12.5/1000" in text
    assert "Banned for flooding: 10.0.0.9" in text
