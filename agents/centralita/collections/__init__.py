"""The collections dialer: calls debtors with a personalised message.

At this stage the agent keeps an ARI events connection for the
``centralita-collections`` Stasis application open (reconnecting with backoff),
logs each call that enters it and hangs up calls it has no flow for yet, so a
channel never sits silent in Stasis.
"""
