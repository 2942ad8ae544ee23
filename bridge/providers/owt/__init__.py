"""OWT (Open WebRTC Toolkit / Intel CS for WebRTC) MCU: rooms, join tokens, participants, streaming out."""
