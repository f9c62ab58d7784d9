"""The simulated school's config (agent/data/simulated-school.yaml) for a private broker: the one
way the tests, the benches and the demo write it, so a new config key is added in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from agent.config import default_config_text

KEEPALIVE_S = 5  # the smallest the config allows: a dead link is noticed within 2 x this

Cameras = bool | list[dict[str, Any]] | Mapping[str, Mapping[str, Any]]


def school_config(
    path: Path,
    *,
    port: int,
    storage: Path,
    host: str = "127.0.0.1",
    cameras: Cameras = False,
    **sections: Any,
) -> Path:
    """Write the simulated school (agent/data/simulated-school.yaml) for a private broker.

    ``cameras``: False for none (quicker), True for the school's four synthetic ones, a mapping
    of some of them by id to the keys to change in each (``{"entrance-cam": {"post_alarm_s":
    2}}``; ``{}`` keeps one as it is), or a list of camera sections; buttons keep their links to
    the cameras that remain. ``sections`` are merged in: a mapping key by key (``mqtt=
    {"keepalive_s": 10}``); for a list of items with ids, a mapping of id to the keys to change
    in that item (``buttons={"gym": {"location": "..."}}``); anything else replaced
    (``buttons=[...]``).
    """
    data = yaml.safe_load(default_config_text())
    data["mqtt"].update({"host": host, "port": port, "keepalive_s": KEEPALIVE_S})
    if not host.startswith("127.") and host != "localhost":
        data["mqtt"]["allow_plaintext"] = True  # a private test namespace, not the internet
    data["storage"]["path"] = str(storage)
    if isinstance(cameras, Mapping):
        _change_by_id("cameras", data["cameras"], cameras)
        data["cameras"] = [c for c in data["cameras"] if c["id"] in cameras]
    elif cameras is not True:
        data["cameras"] = cameras or []
    if cameras is not True:
        ids = {c["id"] for c in data["cameras"]}
        for button in data["buttons"]:
            button["cameras"] = [c for c in button.get("cameras", []) if c in ids]
            if not button["cameras"]:
                del button["cameras"]
    for key, value in sections.items():
        if isinstance(value, Mapping) and isinstance(data.get(key), dict):
            data[key].update(value)
        elif isinstance(value, Mapping) and isinstance(data.get(key), list):
            _change_by_id(key, data[key], value)
        else:
            data[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def _change_by_id(
    section: str, items: list[dict[str, Any]], changes: Mapping[str, Mapping[str, Any]]
) -> None:
    by_id = {item["id"]: item for item in items}
    for item_id, change in changes.items():
        if item_id not in by_id:
            raise KeyError(f"the simulated school has no {section} item {item_id!r}")
        by_id[item_id].update(change)
