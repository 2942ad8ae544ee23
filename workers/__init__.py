"""arq job functions and worker settings; thin wrappers around bridge/ code."""
