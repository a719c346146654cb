"""Test helpers shared by unit and integration tests (keys, tokens, documented sample payloads)."""
