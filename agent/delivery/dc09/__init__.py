"""SIA DC-09 (ANSI/SIA DC-09, EN 50136) to alarm receiving centres: a second, standard alarm path.

Self-contained on purpose: it depends on the standard library, ``cryptography`` and values passed
in, so it can be wired to the agent's config and outbox without either knowing its internals.
See docs/dc09.md for the event mapping, what a centre sets up, and what the standard asks.
"""
