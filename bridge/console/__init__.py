"""The operator console: /console in the web process (bridge.console.views), on with BRIDGE_ADMIN_TOKEN."""

from bridge.console.views import console_routes

__all__ = ["console_routes"]
