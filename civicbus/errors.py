"""Errors a user causes and can fix; the CLI prints their message in one line, no traceback."""


class UserError(Exception):
    """Base of the errors whose message says what is wrong and what to do."""


class NoBrokerError(UserError):
    """No Kafka to talk to: CIVICBUS_BOOTSTRAP is unset and no `civicbus up` runs here."""
