"""The background worker: moves alert events towards delivery.

Everything that raises an alert (Kamailio, fail2ban sync, fraud checks, the
agents) only inserts a row into ``events``; the worker is the one process that
picks rows up, so a slow Telegram or SMTP server never delays a call path.
"""
