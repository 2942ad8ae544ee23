"""JaaS (8x8 Jitsi as a Service): implicit rooms, RS256 join tokens, conference commands."""
