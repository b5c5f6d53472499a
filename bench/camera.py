"""Camera(): frames a second from the browser's (fake) camera to the kernel, per path.

Runs the measurements in ``tests/browser/test_camera.py`` (the tests marked ``measure``,
which ``make test`` leaves out) in a real JupyterLab in headless Chromium with Chromium's
fake camera, then prints a table of medians and the ratio of the streaming capture to the
ipywebrtc path (the baseline, measured in the same run). Chromium's fake camera delivers
20 pictures a second, so paths asked for 30 fps top out at 20; the "ceiling" rows allow
repeated pictures and show what 2 frames in flight sustain.

    python bench/camera.py            # 3 runs of 8 s per path (about 4 minutes)

Needs Debian's chromium and the test extras (``make test`` installs both).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import load_average, machine_line, stamp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "test-artifacts" / "camera.json"


def main() -> int:
    started = stamp()
    load_before = load_average()
    RESULTS.unlink(missing_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-m", "measure", "-p", "no:cacheprovider",
         "tests/browser/test_camera.py", "-k", "measure"],
        cwd=ROOT,
    )
    if not RESULTS.exists():
        print(f"the measurements did not run (pytest exit {done.returncode})", file=sys.stderr)
        return 1
    results = json.loads(RESULTS.read_text())
    print(f"\n## Camera(): frames a second decoded in the kernel, {started}")
    print(machine_line())
    print(f"load average at the start {load_before}, at the end {load_average()}\n")
    print("| path | runs (fps) | median fps | kernel CPU % (median) | latency ms (median) |")
    print("| --- | --- | ---: | ---: | ---: |")
    medians: dict[str, float] = {}
    for key, value in results.items():
        if ":" in key or key.startswith("load average"):
            continue
        runs = value["runs"]
        medians[key] = value["median"]
        cpu = results.get(f"{key}: kernel CPU %", {}).get("runs")
        lat = results.get(f"{key}: latency ms", {}).get("runs")
        cpu_text = f"{statistics.median(cpu):.1f}" if cpu else ""
        lat_text = f"{statistics.median(lat):.1f}" if lat else ""
        print(f"| {key} | {', '.join(map(str, runs))} | **{value['median']:.2f}** | {cpu_text} | {lat_text} |")
    base = medians.get("ipywebrtc 320x240")
    if base:
        for key in ("capture 320x240 @30", "capture 320x240 @120 (ceiling)"):
            if key in medians:
                print(f"- {key} / ipywebrtc 320x240: **{medians[key] / base:.1f}x**")
        print(f"- ipywebrtc at 320x240: {base:.2f} fps (the issue's threshold for adding the capture: 10 fps)")
    return 0 if done.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
