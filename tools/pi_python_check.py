"""Which av, cryptography and PyYAML a venv imports, from where, and whether they work.

Run by tools/release-check.sh with each venv it builds in a Raspberry Pi OS-like userland; on a
real box: ``/opt/edge-agent/venv/bin/python tools/pi_python_check.py --production``. Prints one
line per package (version, and "debian" for /usr/lib/python3/dist-packages, else "venv", i.e.
PyPI) and exits 1 if something the agent or picamera2 relies on is missing:

- av: at least 17.1 (pyproject.toml), libx264 (the synthetic cameras, raw V4L2 cameras without a
  hardware encoder), and the calls picamera2's software H.264 encoder (LibavH264Encoder, the one
  a Pi 5 uses) makes, on a null container, as picamera2 0.3.24 and later make them. picamera2
  imports whichever av the venv sees.
- cryptography: an Ed25519 signature round trip (the agent's signed commands and clips).
- PyYAML: importable; with ``--production`` it and cryptography must be Debian's, as install.sh
  arranges (docs/install.md, "Where each Python package comes from").

Standard library and the three packages only: it runs in the production venv, which has no
test tools.
"""

from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from pathlib import Path

DEBIAN_SITE = Path("/usr/lib/python3/dist-packages")
MIN_AV = (17, 1)


def origin(module_file: str | None) -> str:
    if module_file is None:
        return "?"
    return "debian" if Path(module_file).resolve().is_relative_to(DEBIAN_SITE) else "venv"


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())


def h264_encoders() -> list[str]:
    import av

    found = []
    for name in sorted(av.codecs_available):
        if "264" in name:
            try:
                av.codec.Codec(name, "w")
            except Exception:  # UnknownCodecError: a decoder only
                continue
            found.append(name)
    return found


def check_av() -> list[str]:
    import av
    import av.codec.context

    problems = []
    encoders = h264_encoders()
    print(
        f"av {av.__version__} ({origin(av.__file__)}; FFmpeg {av.ffmpeg_version_info}; "
        f"H.264 encoders: {' '.join(encoders) or 'none'})"
    )
    if version_tuple(av.__version__) < MIN_AV:
        problems.append(f"av {av.__version__} is older than {'.'.join(map(str, MIN_AV))}")
    if "libx264" not in encoders:
        # PyPI's armv7l wheels (17.1 to 18.1) are built so; the aarch64 and x86_64 ones have it.
        return [
            *problems,
            "no software H.264 encoder (libx264) in this av: the synthetic cameras (demo, "
            "simulated school), raw V4L2 cameras on a Pi without a hardware encoder (Pi 5) and "
            "picamera2's encoder on a Pi 5 cannot encode",
        ]
    # picamera2.encoders.LibavH264Encoder._start() and _encode(), with a blank frame instead of a
    # camera buffer (from_numpy_buffer needs numpy, which the production venv does not have).
    try:
        container = av.open("/dev/null", "w", format="null")
        stream = container.add_stream("h264", rate=30)
        stream.codec_context.thread_count = 0
        stream.codec_context.thread_type = av.codec.context.ThreadType.FRAME
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.bit_rate = 100_000
        stream.codec_context.gop_size = 30
        stream.codec_context.options["preset"] = "ultrafast"
        stream.codec_context.options["tune"] = "zerolatency"
        stream.codec_context.time_base = Fraction(1, 1_000_000)
        if not hasattr(av.VideoFrame, "from_numpy_buffer"):
            problems.append("av.VideoFrame.from_numpy_buffer is missing (picamera2 uses it)")
        frame = av.VideoFrame(64, 48, "yuv420p")
        frame.pts = 0
        packets = [*stream.encode(frame), *stream.encode(None)]
        container.close()
        if not packets or not packets[0].is_keyframe:
            problems.append("picamera2-style encode gave no keyframe")
    except Exception as exc:
        problems.append(f"picamera2-style encode failed: {type(exc).__name__}: {exc}")
    return problems


def check_cryptography(production: bool) -> list[str]:
    import cryptography
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    where = origin(cryptography.__file__)
    print(f"cryptography {cryptography.__version__} ({where})")
    problems = []
    key = Ed25519PrivateKey.generate()
    try:
        key.public_key().verify(key.sign(b"alarm"), b"alarm")
    except Exception as exc:
        problems.append(f"Ed25519 round trip failed: {exc}")
    if production and where != "debian":
        problems.append("cryptography is not Debian's python3-cryptography")
    return problems


def check_yaml(production: bool) -> list[str]:
    import yaml

    where = origin(yaml.__file__)
    loader = "C loader" if getattr(yaml, "__with_libyaml__", False) else "pure Python"
    print(f"pyyaml {yaml.__version__} ({where}; {loader})")
    if production and where != "debian":
        return ["PyYAML is not Debian's python3-yaml"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--production",
        action="store_true",
        help="also require Debian's cryptography and PyYAML (the production venv)",
    )
    args = parser.parse_args(argv)
    print(f"python {sys.version.split()[0]} at {sys.prefix}")
    problems = check_av() + check_cryptography(args.production) + check_yaml(args.production)
    for problem in problems:
        print(f"problem: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
