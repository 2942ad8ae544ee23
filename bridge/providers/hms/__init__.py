"""100ms: rooms on the v2 REST API, template and roles on the policy API, app tokens minted locally."""
