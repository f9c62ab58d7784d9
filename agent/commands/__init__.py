"""Authenticated commands from the centre: sign, verify, remember, route.

The centre signs each command with its Ed25519 key; the box holds only the public key, so a
stolen box cannot forge commands for other schools. docs/commands.md is the contract; this
package is its one implementation, one module per step a command takes:

    keys.py     the centre's key files, and sign_command (what the centre's tools call)
    wire.py     the envelope: its bytes, structure checks, what is signed, the result
    args.py     each command's type: its name and the parser of its typed arguments
    nonces.py   the durable replay cache and its horizon
    verify.py   the box's checks, in order, from payload to a verified Command
    router.py   each command's handler, paired with its type; the one entry point

Trust boundary. Everything on ``…/cmd`` is hostile until :meth:`CommandVerifier.verify`
returns:
- Syntax is checked before the signature (cheap refusals), meaning after it (site, name, times,
  typed args, replay). A rejection carries the command id only once the signature has verified,
  so an unauthenticated sender can never make the box publish a result about a real command id.
- Arguments are scalars only and pass their command's parser before a handler sees them; names
  of things match ``[a-z0-9_-]{1,64}``, so nothing reaches a path or a shell unchecked. Floats
  are refused: their JSON text differs between libraries, and the signature is over
  re-serialised values.
- Replays are refused by a persisted cache of (nonce, id) that survives restarts and does not
  depend on the wall clock (agent/commands/nonces.py), which matters on a Pi: it has no RTC.
"""
