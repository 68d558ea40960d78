"""Status codes that a listener backend's ``drain()`` returns; both backends share them."""

DRAIN_WOKEN = 1
"""The wake descriptor became readable: a stop or another request is waiting."""

DRAIN_TIMEOUT = 2
"""No input arrived on the connection for the whole timeout."""

DRAIN_CONNECTION_LOST = 3
"""The connection failed; the backend's ``error_message`` gives the reason."""

DRAIN_PIPE_CLOSED = 4
"""The reading end of the notification pipe is closed: no processor is reading."""
