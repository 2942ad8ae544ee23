"""A provider that needs no account (the default): rooms live in memory, join tokens are HS256 JWTs."""
