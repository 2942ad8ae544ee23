"""BlendVision One chatrooms: one chatroom per lesson, chatroom tokens for joins."""
