"""The hub process: routing (hub), task and engine state (scheduler), history (store)."""
