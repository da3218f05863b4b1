"""The REST API: translates HTTP to calls on the services, and nothing more."""
