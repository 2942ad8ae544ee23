"""Moodle's web services for a `format = "moodle"` source with `moodle_url` and `ws_token`: the REST
client, what jobs learn from it before they run (calendar twins, names, times) and reconciliation."""
