"""The viewer and the analyses on long decodes: one simulated 2D open field (1 m arena,
2 cm bins, 16 tetrodes, 4 min encoding), ``--minutes`` decoded at 500 Hz with
``predict_to_file`` (the pipeline's default ``Keep``), then, each in a fresh process
(``--runs`` times, medians):

- ``analyses``: ``analyze`` + ``summarize`` over the whole file (decoding error,
  ahead/behind, HPD area, state fractions): seconds and the process's peak memory
  (``VmHWM``), and its memory before reading the file;
- ``viewer``: ``write_viewer`` of the first ``--viewer-minutes``: seconds, file size,
  frames and frame duration;
- ``position posterior``: on the first 30 s, ``stream_position_posterior`` summed block
  by block against the former recipe, ``unstack("state_bins").sum("state")``.

    python benchmarks/viewer_and_analyses.py                         # an hour (~15 min here)
    python benchmarks/viewer_and_analyses.py --minutes 20 --runs 1   # quicker
    python benchmarks/viewer_and_analyses.py --screenshot docs/viewer.png   # also the README's picture (needs Chromium)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ENCODING_S = 240.0


def decode(folder: Path, minutes: float) -> None:
    """Simulate and decode; leave results.nc, the grid, the position and the spikes in ``folder``."""
    import pandas as pd

    from decoding_assets.decoder import ContFragClusterlessClassifier, Environment, Keep
    from decoding_assets.decoder.simulate import simulate_open_field

    session = simulate_open_field(duration=ENCODING_S + 60.0 * minutes, n_tetrodes=16, seed=0)
    train = session.position_time < ENCODING_S
    clf = ContFragClusterlessClassifier(Environment(place_bin_size=2.0), {"disable_progress_bar": True})
    clf.fit(session.position_time, session.position, session.spike_times, session.spike_waveform_features,
            is_training=train)  # fmt: skip
    start = time.perf_counter()
    clf.predict_to_file(folder / "results.nc", session.spike_times, session.spike_waveform_features,
                        session.position_time[~train], keep=Keep())  # fmt: skip
    print(f"decoded {(~train).sum()} bins in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    clf.save_model(folder / "model.nc")
    velocity = np.gradient(session.position, session.position_time, axis=0)
    pd.DataFrame(
        {"position_x": session.position[:, 0], "position_y": session.position[:, 1],
         "orientation": np.arctan2(velocity[:, 1], velocity[:, 0]), "speed": session.speed},
        index=pd.Index(session.position_time, name="time"),
    ).to_pickle(folder / "position.pkl")  # fmt: skip
    np.savez(folder / "spikes.npz", **{f"tetrode_{k:02d}": t for k, t in enumerate(session.spike_times)})


def peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def current_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(task: str, folder: Path, viewer_minutes: float) -> dict:
    """One measurement, in this (fresh) process."""
    import pandas as pd

    from decoding_assets.decoder import load_model, load_results
    from decoding_assets.decoder.analyses import analyze, stream_position_posterior, summarize
    from decoding_assets.position import GROUP_MAX_GAP_S, interpolate_angle, interpolate_by_time

    env = load_model(folder / "model.nc").environments
    position = pd.read_pickle(folder / "position.pkl")
    results = load_results(folder / "results.nc")
    before = current_mib()
    start = time.perf_counter()
    if task == "analyses":
        t = results["time"].values
        samples = position.index.to_numpy()
        xy = np.column_stack([interpolate_by_time(samples, position[c].to_numpy(), t, GROUP_MAX_GAP_S)
                              for c in ("position_x", "position_y")])  # fmt: skip
        heading = interpolate_angle(samples, position["orientation"].to_numpy(), t, GROUP_MAX_GAP_S)
        summary = summarize(analyze(results, env, xy, heading), results)
        extra = {"median_decoding_error_cm": summary.median_decoding_error_cm, "n_time_bins": int(t.size)}
    elif task == "viewer":
        from decoding_assets.viewer import ViewerSource, write_viewer

        spikes = dict(np.load(folder / "spikes.npz"))
        source = ViewerSource("simulated open field", results, env, position, spikes)
        t0 = float(results["time"].values[0])
        out = write_viewer(folder / "viewer.html", source, stop=t0 + 60.0 * viewer_minutes)
        data = out.read_text()
        frames = json.loads(data[data.index('type="application/json">') + 24 : data.index("</script>")])
        extra = {"size_mib": out.stat().st_size / 2**20, "n_frames": frames["n_frames"], "frame_ms": 1000 * frames["frame_s"]}
    elif task == "streamed":  # the first 30 s, block by block
        window = results.isel(time=slice(0, 15_000))
        total = 0.0
        for block in stream_position_posterior(window):
            total += float(np.nansum(block.values))
        extra = {"bins": 15_000}
    else:  # "unstacked": the former recipe, on the same 30 s
        window = results.isel(time=slice(0, 15_000))
        posterior = window.acausal_posterior.unstack("state_bins").sum("state")
        total = float(posterior.sum())
        extra = {"bins": 15_000}
    return {"seconds": time.perf_counter() - start, "peak_mib": peak_mib(), "before_mib": before, **extra}


def run_child(task: str, folder: Path, viewer_minutes: float) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", task, "--folder", str(folder), "--viewer-minutes", str(viewer_minutes)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def screenshot(page: Path, png: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1000,900", "--hide-scrollbars"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(page.as_uri())
        WebDriverWait(driver, 120).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
        driver.execute_script("const s = document.getElementById('slider'); s.value = 2400; s.dispatchEvent(new Event('input'))")
        time.sleep(1.0)
        driver.save_screenshot(str(png))
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0, help="minutes decoded")
    parser.add_argument("--viewer-minutes", type=float, default=20.0, help="minutes the viewer shows")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--folder", type=Path, help="keep the decode here (and reuse it when there)")
    parser.add_argument("--screenshot", type=Path, help="also save a screenshot of the viewer here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.folder, args.viewer_minutes)))
        return
    folder = args.folder or Path(tempfile.mkdtemp(prefix="viewer-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "results.nc").is_file():
        decode(folder, args.minutes)
    rows = {}
    for task in ("analyses", "viewer", "streamed", "unstacked"):
        runs = [run_child(task, folder, args.viewer_minutes) for _ in range(args.runs)]
        rows[task] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        print(task, json.dumps(rows[task]), file=sys.stderr)
    print(f"\n{args.minutes:g} min decoded ({rows['analyses']['n_time_bins']} bins), results "
          f"{(folder / 'results.nc').stat().st_size / 2**20:.0f} MiB; medians of {args.runs} fresh processes\n")
    print("| what | seconds | peak memory MiB | memory before MiB | |")
    print("|---|---|---|---|---|")
    a, v = rows["analyses"], rows["viewer"]
    print(f"| analyses, {args.minutes:g} min | {a['seconds']:.1f} | {a['peak_mib']:.0f} | {a['before_mib']:.0f} "
          f"| median error {a['median_decoding_error_cm']:.1f} cm |")
    print(f"| viewer, first {args.viewer_minutes:g} min | {v['seconds']:.1f} | {v['peak_mib']:.0f} | {v['before_mib']:.0f} "
          f"| {v['size_mib']:.1f} MiB, {v['n_frames']:.0f} frames of {v['frame_ms']:.0f} ms |")
    for task, text in (("streamed", "stream_position_posterior"), ("unstacked", 'unstack("state_bins").sum("state")')):
        r = rows[task]
        print(f"| position posterior, 30 s: {text} | {r['seconds']:.2f} | {r['peak_mib']:.0f} | {r['before_mib']:.0f} | |")
    if args.screenshot:
        screenshot(folder / "viewer.html", args.screenshot)
        print(f"\nscreenshot: {args.screenshot}")


if __name__ == "__main__":
    main()
