"""The commands people and scripts run: the worker, the demo, dead-letter, replay,
status, re-analysis, traffic and triggers. The CLI (``streams.cli``) parses their
arguments; nothing in the pipeline imports them."""
