"""Lesson Bridge: learning-platform events in, video-conferencing provider calls out."""
