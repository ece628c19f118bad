"""Fingerprints of a fixed set of images from ``fit-run``, ``node fit-run`` and ``fit-serve`` on the default model.

A change that must not change any image (a refactor) is checked by recording before and comparing after:

    python scripts/image_fingerprints.py --write /tmp/before.json        # on the old code
    python scripts/image_fingerprints.py --check /tmp/before.json        # on the new code: exit 1 on a difference

Each entry is the sha256 of the decoded RGB pixels and the PNG's ``parameters`` text, per request and front end.
Pixels are compared, not PNG bytes: the encoder's compression is not part of an image. Fingerprints depend on the
machine's ONNX Runtime kernels, so compare only runs on one machine. ``--skip node,serve`` leaves front ends out.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# (name, fit-run arguments); the serve body is derived from the same settings.
CASES = [
    ("96x64-star", dict(width=96, height=64, label="star", seed=3)),
    ("80x80-euler-cfg1", dict(width=80, height=80, label="circle", seed=7, sampler="euler", steps=12, cfg=1.0)),
    ("128x64-ntk", dict(width=128, height=64, label="ring", seed=11, extrapolation="ntk-aware")),
    ("128x128-pi", dict(width=128, height=128, label="cross", seed=5, extrapolation="linear", steps=10)),
    ("48x96-dopri5", dict(width=48, height=96, label="square", seed=2, sampler="dopri5", cfg=2.5)),
    ("64x64-sde", dict(width=64, height=64, label="frame", seed=9, sampler="sde", steps=20)),
    ("96x48-uncond", dict(width=96, height=48, label=None, seed=123456789012345)),
    ("80x80-int8", dict(width=80, height=80, label="diamond", seed=1, precision="int8")),
]
MULTI = ("num4", dict(width=64, height=48, label="circle,star", seed=40, num=4))     # several images in one call


def fingerprint(path: Path) -> dict:
    from PIL import Image

    with Image.open(path) as im:
        pixels = im.convert("RGB").tobytes()
        return {"pixels": hashlib.sha256(pixels).hexdigest(), "size": list(im.size),
                "parameters": json.loads(im.text.get("parameters", "null"))}


def cli_args(case: dict) -> list[str]:
    args = []
    for key, value in case.items():
        if value is None:
            continue
        flag = "--class" if key == "label" else f"--{key}"
        args += [flag, str(value)]
    return args


def run_cli(command: list[str], case: dict, out: Path) -> list[Path]:
    result = subprocess.run([*command, *cli_args(case), "--out", str(out), "-q"], cwd=REPO, capture_output=True,
                            text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed: {result.stderr.strip()}")
    return [Path(line) for line in result.stdout.split()]


def python_cli() -> list[str]:
    return [sys.executable, "-m", "cli.run"]


def node_cli() -> list[str]:
    return ["node", str(REPO / "js" / "bin" / "fit-run.mjs")]


def serve_images(cases, folder: Path) -> dict:
    """One POST per case to a fit-serve started here; the PNGs it answers."""
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "cli.serve", "--port", str(port)]
    server = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=5).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"fit-serve did not start: {server.stderr.read().decode()[-2000:]}")
                time.sleep(1)
        found = {}
        for name, case in cases:
            body = {("class" if k == "label" else k): v for k, v in case.items() if k != "precision"}
            request = urllib.request.Request(f"{base}/v1/generate", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            path = folder / f"serve-{name}.png"
            path.write_bytes(urllib.request.urlopen(request, timeout=300).read())
            found[name] = fingerprint(path)
        return found
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()


def collect(skip: set[str]) -> dict:
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fronts = [("fit-run", python_cli())] + ([] if "node" in skip else [("node", node_cli())])
        for front, command in fronts:
            for name, case in CASES + [MULTI]:
                paths = run_cli(command, case, folder / f"{front}-{name}.png")
                for i, path in enumerate(paths):
                    result[f"{front}/{name}/{i}"] = fingerprint(path)
        if "serve" not in skip:
            served = [(name, case) for name, case in CASES if "precision" not in case]
            for name, found in serve_images(served, folder).items():
                result[f"serve/{name}/0"] = found
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", type=Path, help="record the fingerprints to this JSON file")
    mode.add_argument("--check", type=Path, help="compare with a recorded JSON file; exit 1 on any difference")
    parser.add_argument("--skip", default="", help="comma-separated front ends to leave out: node, serve")
    args = parser.parse_args()
    skip = {s for s in args.skip.split(",") if s}
    found = collect(skip)
    if args.write:
        args.write.write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
        print(f"{len(found)} images recorded in {args.write}")
        return 0
    recorded = json.loads(args.check.read_text())
    keys = [k for k in recorded if k.split("/")[0] not in skip]
    differ = [k for k in keys if recorded[k] != found.get(k)]
    for key in differ:
        print(f"DIFFERS {key}: {recorded[key]} != {found.get(key)}")
    print(f"{len(keys) - len(differ)} of {len(keys)} images identical")
    return 1 if differ else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
