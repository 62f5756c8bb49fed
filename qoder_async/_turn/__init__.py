"""The turn API: session handles, turns, listeners, tracing and metrics."""
