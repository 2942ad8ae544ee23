"""Apache OpenMeetings over its REST API (services/...): a room per lesson, room hashes for joins."""
