"""Centralita: telephony appliance agents (AI calls, collections, CDR connector, SBC control, panel)."""

__version__ = "0.1.0"
