"""The ЦОУ operator's console (``edge-agent console``): alarms, schools and video in a browser.

A separate process from the receiver (``edge-agent central``): the receiver parses what 7,600
boxes send and must never hold the centre's signing key (docs/security.md), while the console
signs commands (``ack``, ``live``, ``fetch``, ``test_mode``) for the officer. The console reads
the receiver's ledger, keeps its own users, incidents and audit log, and talks to the boxes over
its own MQTT session. docs/console.md explains the modules and their threads.
"""
