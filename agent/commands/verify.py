"""The box's side: a payload from ``…/cmd`` becomes a verified :class:`Command`, or is refused.

The steps run in the order of docs/commands.md ("When the box accepts a command"): form, then
the signature, then what needs a verified sender (site, name, lifetime, typed args, time,
replay). A command that fails any step is not recorded in the replay cache, so a genuine
command refused because the box's clock is behind can still be accepted once it is valid.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.clock import clock_synced as kernel_clock_synced
from agent.commands.args import STANDARD, CommandType
from agent.commands.nonces import NonceStore, NonceStoreError
from agent.commands.wire import MAX_LIFETIME_S, CommandRejected, Envelope, Scalar, read_envelope
from agent.delivery.protocol import SITE_ID

log = logging.getLogger("agent.commands")

A = TypeVar("A")

DEFAULT_MAX_SKEW_S: Final = 300.0


@dataclass(frozen=True, slots=True)
class Command(Generic[A]):
    """A verified command. ``args`` are the checked scalars; ``params`` is what its type's
    parser made of them (e.g. :class:`~agent.commands.args.LiveArgs`). Times are seconds since
    the epoch."""

    id: str
    name: str
    args: dict[str, Scalar]
    issued_at: float
    expires_at: float
    nonce: str
    params: A
    clock_unsynced: bool = False  # expiry could not be judged: accepted on a fresh nonce only


class CommandVerifier:
    """Turns payloads from ``…/cmd`` into verified commands, or raises CommandRejected.

    ``commands`` is the allow-list: each type brings the parser of its args, so no name can be
    allowed without its arguments being checked. ``clock_synced`` is asked on every command
    (the kernel's NTP flag by default): while it is False, expiry cannot be judged, and a command
    is accepted on a fresh nonce alone, marked ``clock_unsynced``.
    """

    def __init__(
        self,
        public_key: Ed25519PublicKey,
        site_id: str,
        nonce_store: NonceStore,
        clock: Callable[[], float] = time.time,
        max_skew_s: float = DEFAULT_MAX_SKEW_S,
        *,
        commands: Iterable[CommandType[Any]] = STANDARD.values(),
        clock_synced: Callable[[], bool] = kernel_clock_synced,
        max_lifetime_s: float = MAX_LIFETIME_S,
    ) -> None:
        if not isinstance(public_key, Ed25519PublicKey):
            raise TypeError("public_key must be an Ed25519PublicKey (see load_public_key)")
        if not SITE_ID.fullmatch(site_id):
            raise ValueError(f"invalid site id {site_id!r}")
        if not 0 <= max_skew_s <= 3600 or not 0 < max_lifetime_s <= 86400:
            raise ValueError("max_skew_s must be 0..3600 and max_lifetime_s 0..86400 seconds")
        kinds = list(commands)
        self._kinds = {kind.name: kind for kind in kinds}
        if len(self._kinds) != len(kinds):
            raise ValueError("two command types with one name: each name is allowed once")
        self._key = public_key
        self.site_id = site_id
        self._store = nonce_store
        self._clock = clock
        self._clock_synced = clock_synced
        self.max_skew_s = float(max_skew_s)
        self.max_lifetime_s = float(max_lifetime_s)

    def allows(self, kind: CommandType[Any]) -> bool:
        """Whether this very type (its name and its parser) is on the allow-list."""
        return self._kinds.get(kind.name) == kind

    def verify(self, payload: bytes) -> Command[object]:
        envelope = read_envelope(payload)
        try:
            self._key.verify(envelope.sig, envelope.signed)
        except InvalidSignature:
            raise CommandRejected("bad_signature: not signed by the centre's key") from None
        return self._check_meaning(envelope)

    def _check_meaning(self, fields: Envelope) -> Command[object]:
        """The rules that need a verified sender; every rejection from here carries the id."""
        cid = fields.id

        def reject(reason: str) -> CommandRejected:
            return CommandRejected(reason, cid)

        if fields.site_id != self.site_id:
            raise reject("wrong_site: the command is for another site")
        kind = self._kinds.get(fields.name)
        if kind is None:
            raise reject("unknown_command: not allowed on this box")
        lifetime = fields.expires_at - fields.issued_at
        if lifetime <= 0:
            raise reject("bad_lifetime: expires_at must be after issued_at")
        if lifetime > self.max_lifetime_s:
            raise reject(f"lifetime_too_long: at most {self.max_lifetime_s:g} s")
        try:
            params = kind.parse(fields.args)
        except CommandRejected as exc:
            raise reject(exc.reason) from None
        synced = bool(self._clock_synced())
        forget_before = None
        if synced:
            now = self._clock()
            if fields.issued_at > now + self.max_skew_s:
                raise reject(
                    f"not_yet_valid: issued more than {self.max_skew_s:g} s ahead of"
                    " the box's clock"
                )
            if fields.expires_at < now - self.max_skew_s:
                raise reject("expired")
            forget_before = now - (self.max_lifetime_s + self.max_skew_s)
        try:
            if fields.expires_at <= self._store.horizon:
                raise reject("expired: older than commands this box has already forgotten")
            seen = self._store.seen_or_add(
                fields.nonce, cid, fields.expires_at, forget_before=forget_before
            )
        except NonceStoreError as exc:  # fail closed: without the cache a replay would pass
            log.error("command %s refused: %s", cid, exc)
            raise reject("replay_store_unavailable") from None
        if seen:
            raise reject("replayed: this nonce or id was already used")
        return Command(
            cid,
            fields.name,
            dict(fields.args),
            fields.issued_at,
            fields.expires_at,
            fields.nonce,
            params,
            clock_unsynced=not synced,
        )
