"""Training callbacks."""

from vispre.callbacks.online_probe import OnlineLinearProbe

__all__ = ["OnlineLinearProbe"]
