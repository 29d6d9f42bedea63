"""Local camera question answering (browser UI)."""
