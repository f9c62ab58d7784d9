"""install.sh and the systemd unit, tested through staged installs (--root): no root, no network.

The production path is the real one: a venv built with Debian's python3 and a non-editable pip
install of this checkout. Only pip's dependency resolution is switched off (EDGE_AGENT_PIP_ARGS),
so the test needs no registry. systemd-analyze and shellcheck checks skip where those are absent
(./install.sh --dev installs both).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "install.sh"
UNIT = REPO / "systemd" / "edge-agent.service"
EXAMPLE = REPO / "agent" / "data" / "agent.example.yaml"
OFFLINE_PIP = "--no-deps --no-build-isolation --no-index"
MAX_EXPOSURE = 2.5

# Runtime dependencies that the production venv takes from Debian bookworm (the package and its
# version there), because PyPI has no armv7l wheel of them (pyyaml) or of what they need (cffi,
# under cryptography): docs/install.md, "Where each Python package comes from".
FROM_DEBIAN = {
    "pyyaml": ("python3-yaml", "6.0"),
    "cryptography": ("python3-cryptography", "38.0.4"),
}

VENV = "opt/edge-agent/venv"
CONFIG = "etc/edge-agent/agent.yaml"
STATE = "var/lib/edge-agent"
UNIT_PATH = "etc/systemd/system/edge-agent.service"


def run_install(
    *args: str, root: Path, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """./install.sh ARGS --root ROOT; fails the test, showing the output, on a non-zero exit."""
    proc = subprocess.run(
        [*prefix, "bash", str(INSTALL), *args, "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "EDGE_AGENT_PIP_ARGS": OFFLINE_PIP, **(env or {})},
    )
    shown = f"install.sh {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    assert proc.returncode == 0, shown
    return proc


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def tree(root: Path, under: str) -> dict[str, tuple[int, bytes]]:
    """Every file below root/under with its mode and content (directories: mode only)."""
    out = {}
    for p in sorted((root / under).rglob("*")):
        out[str(p.relative_to(root))] = (mode(p), p.read_bytes() if p.is_file() else b"")
    return out


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """One full staged install (real venv, real pip install of this checkout) for several tests."""
    root = tmp_path_factory.mktemp("staged") / "root"
    yield root, run_install(root=root).stdout


def test_help_lists_every_mode() -> None:
    proc = subprocess.run(["bash", str(INSTALL), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for option in ("--root", "--uninstall", "--purge", "--dev", "--no-venv"):
        assert option in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frobnicate"], "unknown option"),
        (["--root", "/"], "running system"),
        (["--dev", "--root", "/tmp/x"], "--dev"),
    ],
)
def test_bad_usage_is_refused(args: list[str], message: str) -> None:
    proc = subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True)
    assert proc.returncode != 0
    assert message in proc.stderr


def test_staged_install_layout(staged: tuple[Path, str]) -> None:
    root, out = staged
    assert mode(root / "etc/edge-agent") == 0o750
    assert mode(root / CONFIG) == 0o640
    assert (root / CONFIG).read_bytes() == EXAMPLE.read_bytes()
    assert mode(root / STATE) == 0o750
    assert mode(root / UNIT_PATH) == 0o644
    assert (root / UNIT_PATH).read_bytes() == UNIT.read_bytes()
    # The venv sees Debian's python3-picamera2/-lgpio/-av, and holds a real (non-editable) copy.
    assert "include-system-site-packages = true" in (root / VENV / "pyvenv.cfg").read_text()
    installed = list((root / VENV / "lib").glob("python3*/site-packages/agent/__init__.py"))
    assert installed, "the agent package is not in the venv"
    assert not list((root / VENV / "lib").glob("python3*/site-packages/__editable__*"))
    # Relocated: the scripts name the venv where it will be once the staging root becomes /.
    script = root / VENV / "bin" / "edge-agent"
    assert os.access(script, os.X_OK)
    assert script.read_text().splitlines()[0] == "#!/opt/edge-agent/venv/bin/python"
    assert str(root) not in (root / VENV / "pyvenv.cfg").read_text()
    assert os.readlink(root / "usr/local/bin/edge-agent") == "/opt/edge-agent/venv/bin/edge-agent"
    assert (root / "opt/edge-agent/docs/hardware.md").exists()
    assert (root / "opt/edge-agent/examples/large-school.yaml").exists()
    # Nothing happened to this machine; each step that would have is listed.
    for step in (
        "apt-get install",
        "useradd",
        "chown",
        "systemctl daemon-reload",
        "check-config",
        "systemctl enable",
    ):
        assert re.search(rf"^skipped: .*{step}.*\(--root", out, re.M), f"no skip line for {step}"


def test_debian_packages_satisfy_the_dependencies_they_stand_in_for(
    staged: tuple[Path, str],
) -> None:
    """install.sh installs each of FROM_DEBIAN, and pyproject.toml accepts bookworm's version.

    Raise a lower bound past bookworm's and pip replaces Debian's package with PyPI's, which on
    armhf means compiling cffi (no compiler on the box) or a pure-Python YAML loader.
    """
    _, out = staged
    [apt] = re.findall(r"^skipped: apt-get install (.*) \(--root\)$", out, re.M)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = {(r := Requirement(d)).name.lower(): r for d in project["dependencies"]}
    for name, (package, version) in FROM_DEBIAN.items():
        assert package in apt.split(), f"install.sh does not install {package}"
        assert deps[name].specifier.contains(version), (
            f"pyproject.toml wants {deps[name]}; bookworm's {package} is {version}"
        )


def test_staged_venv_imports_the_installed_agent(staged: tuple[Path, str]) -> None:
    root, _ = staged
    proc = subprocess.run(
        [str(root / VENV / "bin" / "python"), "-c", "import agent; print(agent.__file__)"],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith(str(root / VENV))


def test_staged_unit_passes_systemd_analyze_verify(staged: tuple[Path, str]) -> None:
    """verify --root checks the unit, its drop-ins and that ExecStart exists in the staged root.

    The root needs the units the service depends on (sysinit.target, ...): the host's unit
    directory is copied in for the check and removed after. verify exits 0 even for unknown
    keys or bad values (it only warns), so any output at all fails the test.
    """
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    root, _ = staged
    host_units = Path("/usr/lib/systemd/system")
    if not (host_units / "sysinit.target").exists():
        pytest.skip("this machine has no systemd unit directory to verify against")
    lib = root / "usr/lib/systemd"
    shutil.copytree(host_units, lib / "system", symlinks=True)
    try:
        proc = subprocess.run(
            ["systemd-analyze", "verify", f"--root={root}", "edge-agent.service"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        shutil.rmtree(root / "usr/lib")
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr


def test_rerun_upgrades_in_place_and_keeps_config_and_data(staged: tuple[Path, str]) -> None:
    root, _ = staged
    config = root / CONFIG
    config.write_text(config.read_text() + "# edited on site\n")
    (root / STATE / "outbox.db").write_bytes(b"queued alarms")
    before = tree(root, "etc") | tree(root, STATE)

    second = run_install(root=root).stdout
    assert "upgrading" in second
    assert "kept: /etc/edge-agent/agent.yaml" in second
    assert config.read_text().endswith("# edited on site\n")
    assert (root / STATE / "outbox.db").read_bytes() == b"queued alarms"
    assert tree(root, "etc") | tree(root, STATE) == before
    # Idempotent: a third run changes nothing and says the same.
    third = run_install(root=root).stdout
    assert third == second
    assert tree(root, "etc") | tree(root, STATE) == before


def test_uninstall_keeps_config_and_data_purge_removes_them(tmp_path: Path) -> None:
    root = tmp_path / "root"
    run_install("--no-venv", root=root)
    (root / STATE / "outbox.db").write_bytes(b"queued alarms")

    out = run_install("--uninstall", root=root).stdout
    assert not (root / "opt/edge-agent").exists()
    assert not (root / UNIT_PATH).exists()
    assert not (root / "usr/local/bin/edge-agent").exists()
    assert (root / CONFIG).exists()
    assert (root / STATE / "outbox.db").read_bytes() == b"queued alarms"
    assert "skipped: systemctl disable --now edge-agent.service (--root)" in out
    run_install("--uninstall", root=root)  # again: nothing left to remove is not an error

    out = run_install("--purge", root=root).stdout
    assert not (root / "etc/edge-agent").exists()
    assert not (root / STATE).exists()
    assert "skipped: userdel edge-agent (--root)" in out


@pytest.mark.parametrize(("version", "dropin"), [("252.38-1~deb12u1", False), ("257.8-1", True)])
def test_restart_backoff_dropin_only_for_systemd_254_and_newer(
    tmp_path: Path, version: str, dropin: bool
) -> None:
    """The target's systemd version is read from the staged root's dpkg database."""
    root = tmp_path / "root"
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(
        f"Package: systemd-sysv\nVersion: 9\n\nPackage: systemd\nStatus: install ok installed\n"
        f"Version: {version}\n\n"
    )
    run_install("--no-venv", root=root)
    conf = root / "etc/systemd/system/edge-agent.service.d/restart-backoff.conf"
    assert conf.exists() == dropin
    if dropin:
        assert "RestartSteps=" in conf.read_text() and "RestartMaxDelaySec=" in conf.read_text()


def test_staged_install_needs_neither_root_nor_network() -> None:
    """Run as nobody, and where possible in a network namespace with no interfaces up."""
    if os.geteuid() != 0:
        pytest.skip("already not root: every other staged test shows it")
    if shutil.which("runuser") is None:
        pytest.skip("runuser (util-linux) not installed")
    readable = subprocess.run(["runuser", "-u", "nobody", "--", "test", "-r", str(EXAMPLE)])
    if readable.returncode != 0:
        pytest.skip(f"nobody cannot read the checkout at {REPO}")
    no_net = (
        shutil.which("unshare") is not None
        and subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0
    )
    prefix = ("unshare", "--net") if no_net else ()
    # Not under pytest's tmp_path: /tmp/pytest-of-root is 0700, so nobody could not reach it.
    with tempfile.TemporaryDirectory(prefix="edge-agent-install-test-") as tmp:
        shutil.chown(tmp, "nobody")
        root = Path(tmp) / "root"
        run_install(root=root, env={"HOME": tmp}, prefix=(*prefix, "runuser", "-u", "nobody", "--"))
        assert (root / VENV / "bin" / "edge-agent").exists()
        assert (root / CONFIG).stat().st_uid == (root / STATE).stat().st_uid != 0


def test_production_install_refuses_without_root() -> None:
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("runuser (util-linux) not installed")
        prefix = ["runuser", "-u", "nobody", "--"]
    proc = subprocess.run([*prefix, "bash", str(INSTALL)], capture_output=True, text=True, cwd="/")
    assert proc.returncode != 0
    assert "needs root" in proc.stderr


def test_unit_security_exposure_is_at_most_2_5() -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for edge-agent\.service: (\d+\.\d+)", proc.stdout)
    if found is None and "offline" in proc.stderr:
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
    assert found, proc.stdout + proc.stderr
    assert float(found[1]) <= MAX_EXPOSURE, proc.stdout


def unit_directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_keeps_the_service_contract() -> None:
    """What the rest of the agent relies on; the exposure test covers the sandbox as a whole."""
    d = unit_directives()
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["ExecStart"] == [
        "/opt/edge-agent/venv/bin/edge-agent run -c /etc/edge-agent/agent.yaml"
    ]
    assert d["User"] == d["Group"] == ["edge-agent"]
    assert d["WatchdogSec"] == ["10s"] and d["Restart"] == ["always"]
    assert d["StartLimitIntervalSec"] == ["0"], "the service must never give up restarting"
    assert d["TimeoutStopSec"] == ["10s"]
    assert d["WorkingDirectory"] == ["/var/lib/edge-agent"]
    assert "LG_WD=/var/lib/edge-agent" in d["Environment"]
    # systemd 252 (bookworm) does not know these; install.sh adds them as a drop-in on >= 254.
    assert "RestartSteps" not in d and "RestartMaxDelaySec" not in d


def test_hardware_examples_validate(tmp_path: Path) -> None:
    """The example configs pass the agent's own validator (with stand-ins for the key files).

    A plain import: an agent that cannot be imported fails here, it is not a reason to skip.
    """
    from agent.config import load_config

    examples = sorted((REPO / "hardware" / "examples").glob("*.yaml"))
    # docs/install.md and hardware/README.md send technicians to these two by name.
    assert {"small-school.yaml", "large-school.yaml"} <= {e.name for e in examples}, examples
    for example in examples:
        site = tmp_path / example.stem
        site.mkdir()
        shutil.copy(example, site / "agent.yaml")
        for name in re.findall(r"^\s*\w+_file: (\S+)", example.read_text(), re.M):
            (site / name).write_text("stand-in\n")
        load_config(site / "agent.yaml")  # raises ConfigError listing every problem


@pytest.mark.parametrize(
    "script", [INSTALL, REPO / "tools" / "release-check.sh"], ids=lambda p: p.name
)
def test_shell_scripts_are_shellcheck_clean(script: Path) -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    proc = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
