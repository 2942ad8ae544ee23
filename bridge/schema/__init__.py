"""Every shape the bridge reads or writes, declared once (pydantic v2 models)."""
