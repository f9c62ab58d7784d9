"""The one YAML file technicians write, validated as a contract (agent/config/schema.py).

``load_config`` and ``parse_config`` return a frozen ``Config`` (model.py) or raise a
``ConfigError`` listing every problem with its key path and line (reader.py).
"""

from __future__ import annotations

import stat
from importlib import resources
from pathlib import Path

from agent.config.model import Config, Problem, TlsConfig
from agent.config.schema import parse
from agent.config.yamlfile import read_text, stat_mode
from agent.errors import ConfigError
from agent.logs import redact

# --------------------------------------------------------------------------------------------------
# Public functions.


_MAX_BYTES = 1 << 20  # a config file is a few KB; more means the wrong file was given


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; every way it can fail becomes a ConfigError."""
    text = read_text(path, _MAX_BYTES, "start from agent.example.yaml")
    origin = Path(path).absolute()
    return parse(text, str(path), origin.parent, origin)


def parse_config(text: str, source: str = "<string>", *, base_dir: Path | None = None) -> Config:
    """Validate config text; relative paths resolve against base_dir, by default the current dir."""
    return parse(text, source, base_dir or Path.cwd(), None)


def default_config_text() -> str:
    """The embedded simulated school, so the agent and its demo run with no file on disk."""
    data = resources.files("agent").joinpath("data", "simulated-school.yaml")
    return data.read_text(encoding="utf-8")


def format_report(err: ConfigError) -> str:
    """What `edge-agent check-config` prints: every problem, then the count where the eye ends."""
    sources = sorted({p.source for p in err.problems if isinstance(p, Problem)})
    count = len(err.problems)
    summary = f"{count} problem{'' if count == 1 else 's'} in {', '.join(sources) or 'the config'}"
    return "\n".join([*(str(p) for p in err.problems), summary])


# The one redactor (agent/logs.py), under the name camera and selftest messages use.
redact_url = redact


def config_warnings(cfg: Config) -> list[str]:
    """Files other local users can read (secrets) or replace (trust anchors).

    Warnings, not errors: a wrong file mode must never stop the alarms. The centre's public key
    and the CA are public, so for them only write access by others matters.
    """
    tls = cfg.mqtt.tls or TlsConfig()
    dc09_keys = cfg.dc09.key_files if cfg.dc09 else ()
    checks = [
        (p, 0o006, "holds secrets", "640")
        for p in (cfg.source, cfg.mqtt.password_file, tls.key_file, *dc09_keys)
    ]
    checks += [
        (p, 0o002, "is trusted to verify the centre", "644")
        for p in (tls.ca_file, cfg.commands.public_key_file)
    ]
    warnings = []
    for path, exposed, why, fix in checks:
        mode = stat.S_IMODE(stat_mode(path) or 0) if path else 0
        if mode & exposed:
            warnings.append(
                f"{path} is open to every user on this machine (mode {mode:04o}) but"
                f" {why}: run chmod {fix} {path} (the agent reads it via its group)"
            )
    return warnings
