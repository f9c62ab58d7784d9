"""The ``dc09:`` section: the SIA DC-09 receivers of the second alarm path (docs/dc09.md).

The values and their rules are agent/delivery/dc09/settings.py's, not repeated here: this
module reads the YAML into a ``Settings``, leaves out what is not written so that its defaults
apply, and gives each of its findings the line of the key it names. It checks only what
``Settings`` cannot know: YAML types, a host written as a host, and the key files (read with
``settings.load_key``; their modes are config_warnings', like every secret file's).

``account`` and ``key_file`` may be given once for the section, as each receiver's default:
a school usually has one account at the centre, whichever receiver takes the call.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from agent.config.converters import (
    HOST_PATTERN,
    as_choice,
    as_integer,
    as_list_of,
    as_number,
    as_path,
    as_section,
    as_text,
    matching,
)
from agent.config.model import Dc09Config
from agent.config.reader import At, Invalid, Map
from agent.delivery.dc09.events import EventKind, MessageFormat
from agent.delivery.dc09.settings import (
    KeyFileError,
    Receiver,
    Settings,
    SettingsError,
    Transport,
    load_key,
)

_HOST = matching(
    HOST_PATTERN,
    "write a host name or IP address only, without tcp:// or :port (the port goes in port)",
)
_RECEIVER = re.compile(r"dc09\.receivers\[(\d+)\]\.(\w+)\Z")


def _key_file(at: At) -> tuple[Path, bytes]:
    path = as_path(must_exist=True)(at)
    try:
        return path, load_key(path)
    except KeyFileError as exc:
        raise Invalid(str(exc)) from None


class _Section:
    """One ``dc09:`` mapping being read: the section's own keys, then each receiver's."""

    def __init__(self, m: Map) -> None:
        self.m = m
        self.receiver_maps: list[Map] = []
        self.key_files: list[Path] = []
        self.account: str | None = None  # the section's defaults for each receiver
        self.key: bytes | None = None
        self.incomplete = False  # a receiver lacks a value (reported): no Settings to return

    def build(self) -> Dc09Config | None:
        m = self.m
        self.account = m.opt("account", as_text)
        self.key = self._key(m)
        receivers = m.req("receivers", as_list_of(as_section(self._receiver)))
        kw: dict[str, Any] = {
            "format": m.opt("format", as_choice(MessageFormat)),
            "events": m.opt("events", as_list_of(as_choice(EventKind))),
            "supervision_s": m.opt("supervision_s", as_number(0)),
            "ack_timeout_s": m.opt("ack_timeout_s", as_number(0)),
            "attempts": m.opt("attempts", as_integer(0)),
            "retry_max_s": m.opt("retry_max_s", as_number(0)),
        }
        if kw["events"] is not None:
            kw["events"] = frozenset(kw["events"])
        kw = {k: v for k, v in kw.items() if v is not None}  # not written: Settings' default
        test_report_s = m.opt("test_report_s", as_number(0))
        if test_report_s is not None:
            kw["test_report_s"] = test_report_s or None  # 0: no periodic test reports
        if receivers is None:
            return None
        try:
            settings = Settings(receivers, **kw)
        except SettingsError as err:
            self._report(err)
            return None
        if self.incomplete:
            return None
        return Dc09Config(settings, tuple(dict.fromkeys(self.key_files)))

    def _receiver(self, rm: Map) -> Receiver | None:
        self.receiver_maps.append(rm)
        host = rm.req("host", _HOST)
        port = rm.req("port", as_integer(0))
        transport = rm.get("transport", as_choice(Transport), Transport.TCP)
        account = rm.opt("account", as_text) or self.account
        numbers = {}  # the receiver number and line: Receiver's defaults unless written
        for name in ("receiver", "line"):
            if (value := rm.opt(name, as_text)) is not None:
                numbers[name] = value
        own_key = self._key(rm)  # always read: a key no builder asks for is "unknown"
        key = own_key if rm.present("key_file") else self.key
        if account is None and not self.m.present("account"):
            rm.problem(
                "account",
                "required: the account number the centre assigned (here, "
                "or once for every receiver as dc09.account)",
            )
        if host is None or port is None or account is None:
            # Reported already. A stand-in that breaks no rule lets Settings check every other
            # value now, so the technician gets every problem in one round.
            self.incomplete = True
            host, port, account = host or "-", 1 if port is None else port, account or "000"
        return Receiver(host, port, transport, account, key=key, **numbers)

    def _key(self, m: Map) -> bytes | None:
        found = m.opt("key_file", _key_file)
        if found is None:
            return None
        self.key_files.append(found[0])
        return found[1]

    def _report(self, err: SettingsError) -> None:
        """Each finding at the line where its value is written: a receiver's own key, or the
        section's default it took. The same finding about one default is reported once."""
        done: set[tuple[str, str]] = set()
        for finding in err.problems:
            where, key = self.m, finding.key.removeprefix("dc09.")
            if found := _RECEIVER.match(finding.key):
                rm = self.receiver_maps[int(found[1])]
                key = "key_file" if found[2] == "key" else found[2]
                if rm.present(key) or not self.m.present(key):
                    where = rm
            if (f"{where.at.path}.{key}", finding.message) not in done:
                done.add((f"{where.at.path}.{key}", finding.message))
                where.problem(key, finding.message)


def dc09_section(m: Map) -> Dc09Config | None:
    return _Section(m).build()
