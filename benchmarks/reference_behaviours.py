"""Measure, side by side, how the reference (non_local_detector 0.6.9) and our decoder
behave where MODEL.md lists a known behaviour of the reference, and print a Markdown
table ``behaviour | reference 0.6.9 | ours | same?`` of the measured values.

    python benchmarks/reference_behaviours.py                 # about 30 s on 2 cores
    python benchmarks/reference_behaviours.py --keep DIR      # keep the inputs, outputs and files

Run it with our virtual environment's python. It simulates one small session (a 50 cm
open field at 5 cm bins, 4 tetrodes, 40 s of encoding, 4 s decoded at 500 Hz) into an
npz file, then re-invokes itself with ``--impl reference`` under the reference's python
(``benchmarks/.venv-reference``, created on first use as run_benchmarks.py creates it)
and with ``--impl ours`` under this one. Each worker fits and decodes the same inputs
with its implementation, on the CPU, and writes what it measured (JSON) and its
posterior (npz); this process compares them. What is measured:

 1. the bin of a spike at exactly time[-1], and whether a spike after time[-1] counts
    (a spike with a far-outlier mark, alone, against the log likelihood without it);
 2. the log likelihood of bins flagged ``is_missing``, and the change of the marginal
    log likelihood per missing bin between a decode with 20 missing bins and without;
 3. EM with ``max_iter=2``: the returned model's discrete transitions D[0,0], D[1,0],
    and how many M steps it holds (its ``predict`` gives E step 3 of ``max_iter=3``
    after 2 M steps, E step 2 after 1);
 4. ``predict`` given ``position`` sampled at ``position_time`` (31.25 Hz, no NaN):
    accepted, and its posterior against ``predict`` without position;
 5. results files both ways: (a) the reference's ``save_results`` as a stock install
    writes it (neither h5netcdf nor netCDF4 importable, so xarray writes NetCDF3), read
    by our ``load_results``; (b) our ``save_results`` file (exact, and the pipeline's
    default ``Keep()``), read by the reference's ``load_results``; (c) the reference's
    ``save_results`` in its venv as it is;
 6. an electrode group with no encoding spikes: is the posterior finite;
 7. parity of the acausal posterior on this 2D case (MODEL.md's bounds).

The workers run in this order: the reference as a stock install (it writes its NetCDF3
file), ours (reads that file, writes ours), the reference in its venv as it is (saves
its file again: 5c), the reference reading our files. Reading them needs h5py beside
h5netcdf; where the reference's venv lacks it, h5py alone is installed into a temporary
folder for that last worker (the venv is left as it is) and a note says so.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time as clock
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

ARENA_CM = 50.0
PLACE_BIN_SIZE = 5.0
ENCODING_S, DECODING_S = 40.0, 4.0
N_TETRODES = 4
SEED = 0
PARAMS = {"position_std": 6.0, "waveform_std": 24.0, "block_size": 1000, "disable_progress_bar": True}
MISSING_BINS = slice(800, 820)  # item 2: bins flagged is_missing
CAMERA_STEP = 16  # item 4: every 16th position sample of the 500 Hz simulation (31.25 Hz)
FAR_MARK_UV = 1.0e4  # item 1: far from every encoding mark, so its term is the floor log(1e-15)
NO_ENCODING_ELECTRODE = 1  # item 6: this group keeps only its spikes after the encoding period
DIAGONAL = 0.98  # discrete transitions' diagonal before EM (both implementations' default)


# ---------------------------------------------------------------------- inputs


def write_inputs(path: Path) -> dict:
    """Simulate the session once (our simulator) and write it as npz for both workers."""
    from decoding_assets.decoder.simulate import simulate_open_field

    session = simulate_open_field(
        duration=ENCODING_S + DECODING_S, n_tetrodes=N_TETRODES, arena_size=ARENA_CM, seed=SEED
    )
    is_training = session.position_time < ENCODING_S
    arrays = {
        "position_time": session.position_time,
        "position": session.position,
        "is_training": is_training,
        "decode_time": session.position_time[~is_training],
        "sampling_frequency": np.array(session.sampling_frequency),
        "n_electrodes": np.array(len(session.spike_times)),
    }
    for e, (times, marks) in enumerate(zip(session.spike_times, session.spike_waveform_features)):
        arrays[f"spike_times_{e}"] = times
        arrays[f"spike_marks_{e}"] = marks
    np.savez(path, **arrays)
    return {
        "decoding_bins": int((~is_training).sum()),
        "spikes": int(sum(t.size for t in session.spike_times)),
    }


class Inputs:
    def __init__(self, path: Path):
        data = np.load(path)
        self.position_time = data["position_time"]
        self.position = data["position"]
        self.is_training = data["is_training"]
        self.time = data["decode_time"]
        self.fs = float(data["sampling_frequency"])
        n = int(data["n_electrodes"])
        self.spike_times = [data[f"spike_times_{e}"] for e in range(n)]
        self.marks = [data[f"spike_marks_{e}"] for e in range(n)]

    def no_spikes(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        return [np.zeros(0) for _ in self.marks], [np.zeros((0, m.shape[1])) for m in self.marks]


# ---------------------------------------------------------------------- the two implementations


class Reference:
    """non_local_detector 0.6.9's ContFragClusterlessClassifier, its defaults otherwise."""

    def __init__(self):
        from non_local_detector import ContFragClusterlessClassifier, DiscreteStationaryDiagonal, Environment

        self.cls, self.environment, self.diagonal = (
            ContFragClusterlessClassifier,
            Environment,
            DiscreteStationaryDiagonal,
        )

    def classifier(self):
        return self.cls(environments=self.environment(place_bin_size=PLACE_BIN_SIZE),
                        clusterless_algorithm_params=dict(PARAMS),
                        discrete_transition_type=self.diagonal(diagonal_values=np.array([DIAGONAL, DIAGONAL])))  # fmt: skip

    def interior(self, clf) -> np.ndarray:
        return np.asarray(clf.environments[0].is_track_interior_).ravel()

    def centers(self, clf) -> np.ndarray:
        return np.asarray(clf.environments[0].place_bin_centers_)

    def log_likelihood(self, clf, data: Inputs, spike_times, marks, is_missing=None) -> np.ndarray:
        """(n_time, interior bins): both states share one; the first state's come first."""
        ll = np.asarray(clf.compute_log_likelihood(data.time, data.position_time, data.position, spike_times, marks,
                                                   is_missing))  # fmt: skip
        return ll[:, : ll.shape[1] // 2]

    def save(self, results, path: Path) -> None:
        self.cls.save_results(results, str(path))

    def load(self, path: Path):
        return self.cls.load_results(str(path))


class Ours:
    def __init__(self):
        from decoding_assets.decoder import ContFragClusterlessClassifier, Environment, Keep, load_results, save_results

        self.cls, self.environment = ContFragClusterlessClassifier, Environment
        self.keep, self.load, self._save = Keep, load_results, save_results

    def classifier(self):
        return self.cls(environments=self.environment(place_bin_size=PLACE_BIN_SIZE),
                        clusterless_algorithm_params=dict(PARAMS), discrete_transition_diag=DIAGONAL)  # fmt: skip

    def interior(self, clf) -> np.ndarray:
        return np.asarray(clf.environments.is_track_interior_).ravel()

    def centers(self, clf) -> np.ndarray:
        return np.asarray(clf.environments.place_bin_centers_)

    def log_likelihood(self, clf, data: Inputs, spike_times, marks, is_missing=None) -> np.ndarray:
        ll = np.asarray(clf.compute_log_likelihood(data.time, spike_times, marks, is_missing))
        return ll[:, self.interior(clf)]

    def save(self, results, path: Path, keep=None) -> None:
        if keep is None:
            self._save(results, path)  # its default: everything, exactly
        else:
            self._save(results, path, keep=keep)


def marginal_log_likelihood(results) -> float:
    return float(np.atleast_1d(results.attrs["marginal_log_likelihoods"])[-1])


def posterior(results) -> np.ndarray:
    return np.asarray(results["acausal_posterior"].values, dtype=np.float64)


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b| where both are numbers (NaN where either is NaN is compared apart)."""
    both = ~np.isnan(a) & ~np.isnan(b)
    return float(np.abs(a[both] - b[both]).max()) if both.any() else float("nan")


# ---------------------------------------------------------------------- measurements (in a worker)


def measure_spike_bins(api, clf, data: Inputs) -> dict:
    """Item 1: which bins one far-outlier spike changes, at and after time[-1]."""
    times, marks = data.no_spikes()
    base = api.log_likelihood(clf, data, times, marks)

    def bins_changed(when: float) -> list[int]:
        probe_marks = [np.full((1, marks[0].shape[1]), FAR_MARK_UV), *marks[1:]]
        ll = api.log_likelihood(clf, data, [np.array([when]), *times[1:]], probe_marks)
        return np.flatnonzero(np.abs(ll - base).max(axis=1) > 1e-3).tolist()

    return {
        "n_time": int(data.time.size),
        "at_last": bins_changed(float(data.time[-1])),
        "after_last": bins_changed(float(data.time[-1] + 0.5 / data.fs)),
        "before_second": bins_changed(float(data.time[1] - 0.1 / data.fs)),
    }


def measure_missing(api, clf, data: Inputs, decoded) -> dict:
    """Item 2: LL at missing bins, and the marginal LL change per missing bin."""
    is_missing = np.zeros(data.time.size, dtype=bool)
    is_missing[MISSING_BINS] = True
    ll = api.log_likelihood(clf, data, data.spike_times, data.marks, is_missing)
    with_missing = clf.predict(data.spike_times, data.marks, time=data.time, is_missing=is_missing)
    k = int(is_missing.sum())
    return {
        "k": k,
        "ll_min": float(ll[is_missing].min()),
        "ll_max": float(ll[is_missing].max()),
        "mll_without": marginal_log_likelihood(decoded),
        "mll_with": marginal_log_likelihood(with_missing),
        "mll_diff_per_bin": (marginal_log_likelihood(with_missing) - marginal_log_likelihood(decoded)) / k,
    }


def measure_em(api, data: Inputs) -> dict:
    """Item 3: D after EM with max_iter=2, and which E step its model's predict repeats."""

    def em(max_iter: int):
        clf = api.classifier()
        results = clf.estimate_parameters(
            data.position_time, data.position, data.spike_times, data.marks, time=data.time,
            is_training=data.is_training, max_iter=max_iter, tolerance=0.0, estimate_inital_conditions=True,
        )  # fmt: skip
        return clf, [float(v) for v in np.atleast_1d(results.attrs["marginal_log_likelihoods"])]

    model, history2 = em(2)
    _, history3 = em(3)
    after = marginal_log_likelihood(model.predict(data.spike_times, data.marks, time=data.time))
    transitions = np.asarray(model.discrete_state_transitions_, dtype=np.float64)
    # after 2 M steps its predict is E step 3 of max_iter=3; after 1, E step 2
    m_steps = 2 if abs(after - history3[2]) < abs(after - history3[1]) else 1
    return {
        "D00": float(transitions[0, 0]),
        "D10": float(transitions[1, 0]),
        "history2": history2,
        "history3": history3,
        "predict_after": after,
        "m_steps": m_steps,
    }


def measure_position_at_position_time(api, clf, data: Inputs, decoded) -> dict:
    """Item 4: predict with position at its own (camera) rate, no NaN."""
    inside = np.flatnonzero((data.position_time >= data.time[0]) & (data.position_time <= data.time[-1]))
    camera = inside[::CAMERA_STEP]
    results = clf.predict(data.spike_times, data.marks, time=data.time, position=data.position[camera],
                          position_time=data.position_time[camera])  # fmt: skip
    return {"samples": int(camera.size), "max_diff": max_abs_diff(posterior(results), posterior(decoded)),
            "same_nan": bool(np.array_equal(np.isnan(posterior(results)), np.isnan(posterior(decoded))))}  # fmt: skip


def measure_no_encoding_spikes(api, data: Inputs) -> dict:
    """Item 6: one electrode group keeps only spikes after the encoding period."""
    times, marks = list(data.spike_times), list(data.marks)
    late = times[NO_ENCODING_ELECTRODE] >= ENCODING_S
    times[NO_ENCODING_ELECTRODE] = times[NO_ENCODING_ELECTRODE][late]
    marks[NO_ENCODING_ELECTRODE] = marks[NO_ENCODING_ELECTRODE][late]
    clf = api.classifier().fit(data.position_time, data.position, times, marks, is_training=data.is_training)
    results = clf.predict(times, marks, time=data.time)
    inside = np.tile(api.interior(clf), 2)
    values = posterior(results)[:, inside]
    return {
        "decoded_spikes": int(
            ((times[NO_ENCODING_ELECTRODE] >= data.time[0]) & (times[NO_ENCODING_ELECTRODE] <= data.time[-1])).sum()
        ),  # fmt: skip
        "nonfinite_fraction": float(np.mean(~np.isfinite(values))),
        "states_finite": bool(np.isfinite(np.asarray(results["acausal_state_probabilities"].values)).all()),
    }


def read_ours_file(api: Reference, path: Path, ours_posterior: np.ndarray) -> dict:
    """Item 5b: the reference's load_results on our file."""
    ds = api.load(path)
    position = ds["acausal_posterior"].unstack("state_bins").sum("state")
    return {
        "levels": list(ds.indexes["state_bins"].names),
        "dims": list(position.dims),
        "shape": list(position.shape),
        "max_diff": max_abs_diff(posterior(ds), ours_posterior),
        "same_nan": bool(np.array_equal(np.isnan(posterior(ds)), np.isnan(ours_posterior))),
    }


def read_reference_file(api: Ours, path: Path, reference_posterior: np.ndarray) -> dict:
    """Item 5a: our load_results on the reference's (NetCDF3) file."""
    ds = api.load(path)
    return {
        "levels": list(ds.indexes["state_bins"].names),
        "max_diff": max_abs_diff(posterior(ds), reference_posterior),
        "same_nan": bool(np.array_equal(np.isnan(posterior(ds)), np.isnan(reference_posterior))),
    }


def _version(module: str) -> str | None:
    """The installed version of ``module``, or None when it can't be imported."""
    if importlib.util.find_spec(module) is None:
        return None
    return str(getattr(importlib.import_module(module), "__version__", "?"))


def saved_file(save, results, path: Path, *args) -> dict:
    """Write ``results`` with ``save`` and say what kind of file it made."""
    save(results, path, *args)
    return {"signature": path.read_bytes()[:4].hex(), "bytes": path.stat().st_size}


def resave(api: Reference, source: Path, path: Path) -> dict:
    """Item 5c: the reference loads its own file (NetCDF3, read with scipy) and saves it again."""
    results = api.load(source)
    return saved_file(api.save, results, path)


def guarded(record: dict, name: str, measure, *args) -> None:
    """Record what a measurement found, or the error it raised (that is a finding too)."""
    try:
        record[name] = measure(*args)
    except Exception as error:  # any failure is reported in the table
        record[name] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"}


def worker(impl: str, stage: str, workdir: Path) -> None:
    if impl == "reference" and stage == "main":
        # a stock install of 0.6.9 has neither: xarray then writes NetCDF3 with scipy
        sys.modules["h5netcdf"] = None
        sys.modules["netCDF4"] = None
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    data = Inputs(workdir / "inputs.npz")
    api = Reference() if impl == "reference" else Ours()
    record: dict = {"impl": impl, "stage": stage}

    if stage == "installed":  # the reference's save_results in its venv as it is
        record["h5netcdf"] = _version("h5netcdf")
        record["h5py"] = _version("h5py")
        guarded(record, "resave", resave, api, workdir / "reference.nc", workdir / "reference_resaved.nc")
        (workdir / "reference_installed.json").write_text(json.dumps(record))
        return
    if stage == "read":  # the reference reads our files
        record["h5py"] = _version("h5py")
        ours = np.load(workdir / "ours.npz")["acausal_posterior"]
        for name in ("exact", "keep_default"):
            guarded(record, name, read_ours_file, api, workdir / f"ours_{name}.nc", ours)
        (workdir / "reference_read.json").write_text(json.dumps(record))
        return

    clf = api.classifier().fit(data.position_time, data.position, data.spike_times, data.marks,
                               is_training=data.is_training)  # fmt: skip
    decoded = clf.predict(data.spike_times, data.marks, time=data.time)
    guarded(record, "spike_bins", measure_spike_bins, api, clf, data)
    guarded(record, "missing", measure_missing, api, clf, data, decoded)
    guarded(record, "position_time", measure_position_at_position_time, api, clf, data, decoded)
    guarded(record, "no_encoding_spikes", measure_no_encoding_spikes, api, data)
    guarded(record, "em", measure_em, api, data)
    if impl == "reference":
        guarded(record, "save", saved_file, api.save, decoded, workdir / "reference.nc")
    else:
        reference = np.load(workdir / "reference.npz")["acausal_posterior"]
        guarded(record, "read_reference_file", read_reference_file, api, workdir / "reference.nc", reference)
        guarded(record, "save_exact", saved_file, api.save, decoded, workdir / "ours_exact.nc")
        guarded(
            record, "save_keep_default", saved_file, api.save, decoded, workdir / "ours_keep_default.nc", api.keep()
        )
    np.savez(
        workdir / f"{impl}.npz",
        acausal_posterior=posterior(decoded),
        acausal_state_probabilities=np.asarray(decoded["acausal_state_probabilities"].values, dtype=np.float64),
        place_bin_centers=api.centers(clf),
        interior=api.interior(clf),
    )
    (workdir / f"{impl}.json").write_text(json.dumps(record))


# ---------------------------------------------------------------------- the table (in the driver)


def parity(workdir: Path) -> dict:
    """Item 7: the acausal posteriors of the plain decode."""
    a, b = np.load(workdir / "ours.npz"), np.load(workdir / "reference.npz")
    if a["place_bin_centers"].shape != b["place_bin_centers"].shape or not np.allclose(
        a["place_bin_centers"], b["place_bin_centers"]
    ):
        return {"error": "the grids differ"}
    pa, pb = a["acausal_posterior"], b["acausal_posterior"]
    diff = np.abs(np.nan_to_num(pa) - np.nan_to_num(pb))
    n_time = pa.shape[0]
    map_a = np.nan_to_num(pa).reshape(n_time, 2, -1).sum(axis=1).argmax(axis=1)
    map_b = np.nan_to_num(pb).reshape(n_time, 2, -1).sum(axis=1).argmax(axis=1)
    states = np.abs(a["acausal_state_probabilities"] - b["acausal_state_probabilities"])[:-2]
    return {
        "shape": list(pa.shape),
        "interior": int(a["interior"].sum()),
        "grid": int(a["interior"].size),
        "same_nan": bool(np.array_equal(np.isnan(pa), np.isnan(pb))),
        "max": float(diff.max()),
        "mean": float(diff.mean()),
        "map": float(np.mean(map_a == map_b)),
        "states": float(states.max()),
    }


def _bins(bins: list[int], n: int) -> str:
    if not bins:
        return "not counted (dropped)"
    return ", ".join(f"bin {b}" + (f" (n-{n - b})" if b >= n - 3 else "") for b in bins)


def _cell(item: dict, text) -> str:
    return f"raises {item['error']}" if "error" in item else text(item)


def _same(items: list[dict], test) -> str:
    """What ``test`` says; "no" when one side raised and the other did not, "?" when both did."""
    failed = sum("error" in item for item in items)
    return test() if failed == 0 else "no" if failed < len(items) else "?"


def _yes(condition: bool) -> str:
    return "yes" if condition else "no"


def rows(ref: dict, ours: dict, ref_read: dict, par: dict, installed: dict) -> list[tuple[str, str, str, str]]:
    out = []

    def row(behaviour: str, reference: str, our: str, same: str) -> None:
        out.append((behaviour, reference, our, same))

    r, o = ref["spike_bins"], ours["spike_bins"]
    n = r.get("n_time", o.get("n_time", 0))
    for key, label in (
        ("at_last", f"1a. spike at exactly time[-1] ({n} bins): the bin it falls in"),
        ("after_last", "1b. spike at time[-1] + 0.5/fs: counted?"),
        ("before_second", "1c. (control) spike at time[1] - 0.1/fs"),
    ):
        row(label, _cell(r, lambda x: _bins(x[key], n)), _cell(o, lambda x: _bins(x[key], n)),
            _same([r, o], lambda: _yes(r[key] == o[key])))  # fmt: skip

    r, o = ref["missing"], ours["missing"]
    k = r.get("k", o.get("k"))

    def ll_range(x):
        return f"{x['ll_min']:.6g}" if x["ll_min"] == x["ll_max"] else f"{x['ll_min']:.6g} to {x['ll_max']:.6g}"

    def mll(x):
        return f"{x['mll_diff_per_bin']:+.6f} (MLL {x['mll_without']:.3f} -> {x['mll_with']:.3f})"

    row(f"2a. log likelihood at the {k} bins flagged is_missing (every interior bin)", _cell(r, ll_range),
        _cell(o, ll_range), _same([r, o], lambda: _yes((r["ll_min"], r["ll_max"]) == (o["ll_min"], o["ll_max"]))))  # fmt: skip
    row(f"2b. marginal log likelihood: (with {k} missing bins - without) / {k}", _cell(r, mll), _cell(o, mll),
        _same([r, o], lambda: _close(r["mll_diff_per_bin"], o["mll_diff_per_bin"], 1e-3)))  # fmt: skip

    r, o = ref["em"], ours["em"]

    def transitions(x):
        return f"{x['D00']:.6f}, {x['D10']:.6f}"

    def m_steps(x):
        return (f"{x['m_steps']}: its predict's MLL {x['predict_after']:.4f}; max_iter=3's E step 3 "
                f"{x['history3'][2]:.4f}, E step 2 {x['history3'][1]:.4f}")  # fmt: skip

    row(f"3a. EM max_iter=2 (D diagonal {DIAGONAL} at the start): returned D[0,0], D[1,0]",
        _cell(r, transitions), _cell(o, transitions),
        _same([r, o], lambda: _close(max(abs(r["D00"] - o["D00"]), abs(r["D10"] - o["D10"])), 0.0, 1e-4)))  # fmt: skip
    row("3b. EM max_iter=2: M steps the returned model holds", _cell(r, m_steps), _cell(o, m_steps),
        _same([r, o], lambda: _yes(r["m_steps"] == o["m_steps"])))  # fmt: skip

    r, o = ref["position_time"], ours["position_time"]

    def position(x):
        nan = "" if x["same_nan"] else ", NaN pattern differs"
        return f"accepted ({x['samples']} samples); posterior max abs diff from no position {x['max_diff']:.3g}{nan}"

    row("4. predict with position at position_time (31.25 Hz, no NaN)", _cell(r, position), _cell(o, position),
        _same([r, o], lambda: _yes((r["max_diff"] == 0) == (o["max_diff"] == 0))))  # fmt: skip

    r, o = ref.get("save", {"error": "not run"}), ours.get("read_reference_file", {"error": "not run"})
    row("5a. reference save_results as a stock install (no h5netcdf, no netCDF4) -> our load_results",
        _cell(r, lambda x: f"writes {_format(x)}"),
        _cell(o, lambda x: f"load_results: levels {x['levels']}; posterior max abs diff {x['max_diff']:.3g}"
              + ("" if x["same_nan"] else ", NaN pattern differs")),
        _same([r, o], lambda: _yes(o["max_diff"] == 0.0 and o["same_nan"])))  # fmt: skip

    grid = par.get("grid", 0)
    for name, label in (("exact", "exact (the default)"), ("keep_default", "Keep(): within 1e-5, uint16")):
        saved, x = ours.get(f"save_{name}", {"error": "not run"}), ref_read.get(name, {"error": "not run"})
        read = _cell(x, lambda x: f"load_results: levels {x['levels']}; posterior.unstack('state_bins').sum('state') "
                     f"{tuple(x['dims'])} {tuple(x['shape'])}; max abs diff {x['max_diff']:.3g}")  # fmt: skip
        row(f"5b. our save_results, {label} -> reference load_results", read,
            _cell(saved, lambda s: f"writes {_format(s)}"),
            _same([saved, x], lambda: _yes(x["dims"] == ["time", "x_position", "y_position"]
                                           and x["shape"][0] == n and int(np.prod(x["shape"][1:])) == grid)))  # fmt: skip

    x = installed.get("resave", {"error": "not run"})
    row(f"5c. reference save_results in its venv as it is (h5netcdf {installed.get('h5netcdf')}, h5py "
        f"{installed.get('h5py') or 'absent'}): its own file loaded and saved again",
        _cell(x, lambda x: f"writes {_format(x)}"), "n/a", "n/a")  # fmt: skip

    r, o = ref["no_encoding_spikes"], ours["no_encoding_spikes"]

    def finite(x):
        if x["nonfinite_fraction"] == 0 and x["states_finite"]:
            return f"finite ({x['decoded_spikes']} decoded spikes on the group)"
        return (f"NaN in {100 * x['nonfinite_fraction']:.0f} % of interior posterior values; state "
                f"probabilities {'finite' if x['states_finite'] else 'NaN'}")  # fmt: skip

    def same_finite():
        if (r["nonfinite_fraction"] == 0) == (o["nonfinite_fraction"] == 0):
            return "yes"
        return "no (as MODEL.md intends: ours stays finite)" if o["nonfinite_fraction"] == 0 else "no"

    row("6. an electrode group with no encoding spikes: the posterior", _cell(r, finite), _cell(o, finite),
        _same([r, o], same_finite))  # fmt: skip

    if "error" in par:
        row("7. parity", par["error"], "", "?")
        return out
    size = f"{par['shape'][0]} time bins x {par['shape'][1]} state bins ({par['interior']} of {par['grid']} interior)"
    row("7a. parity: acausal posterior max / mean abs diff (bounds 1e-3 / 1e-6)", size,
        f"{par['max']:.3g} / {par['mean']:.3g}" + ("" if par["same_nan"] else "; NaN pattern differs"),
        _yes(par["max"] <= 1e-3 and par["mean"] <= 1e-6 and par["same_nan"]))  # fmt: skip
    row("7b. parity: most probable position bin agrees (bound 99.9 %)", "", f"{100 * par['map']:.3f} %",
        _yes(par["map"] >= 0.999))  # fmt: skip
    row("7c. parity: state probabilities max abs diff, last 2 bins excepted (bound 1e-3)", "",
        f"{par['states']:.3g}", _yes(par["states"] <= 1e-3))  # fmt: skip
    return out


def _close(a: float, b: float, tolerance: float) -> str:
    return f"yes (diff {abs(a - b):.2g})" if abs(a - b) <= tolerance else f"no (diff {abs(a - b):.3g})"


def _format(saved: dict) -> str:
    signature = bytes.fromhex(saved["signature"])
    if signature[:3] == b"CDF":
        kind = {1: "NetCDF3 classic", 2: "NetCDF3 64-bit offset", 5: "NetCDF3 64-bit data"}.get(signature[3], "NetCDF3")
    else:
        kind = "netCDF4 (HDF5)" if signature == b"\x89HDF" else "an unknown format"
    return f"{kind} (starts {signature!r}), {saved['bytes'] / 1e6:.1f} MB"


def markdown(table: list[tuple[str, str, str, str]]) -> str:
    lines = ["| behaviour | reference 0.6.9 | ours | same? |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in table]
    return "\n".join(lines)


def run_worker(python: Path | str, impl: str, stage: str, workdir: Path, extra_env: dict | None = None) -> float:
    env = dict(os.environ, JAX_PLATFORMS="cpu", **(extra_env or {}))
    start = clock.perf_counter()
    done = subprocess.run(
        [str(python), str(Path(__file__).resolve()), "--impl", impl, "--stage", stage, "--workdir", str(workdir)],
        capture_output=True, text=True, env=env, cwd=str(HERE.parent),
    )  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"the {impl} worker ({stage}) failed:\n{done.stderr[-4000:]}")
    return clock.perf_counter() - start


def h5py_for_reference(python: Path, installed: dict, folder: Path) -> tuple[dict, str]:
    """The reference reads our netCDF4 (HDF5) files through xarray's h5netcdf engine, which
    needs h5py; h5netcdf 1.8 no longer installs it. Where the reference's venv lacks it,
    install h5py alone into a temporary folder for the read worker only, leaving the
    venv as it is."""
    if installed.get("h5py"):
        return {}, ""
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(folder), "h5py"],
                          capture_output=True, text=True)  # fmt: skip
    lacks = (f"the reference's venv has h5netcdf {installed.get('h5netcdf')} but no h5py, so there "
             "xarray's h5netcdf engine can neither write (row 5c) nor read HDF5")  # fmt: skip
    if done.returncode:
        return {}, f"{lacks}; installing h5py for the read worker failed ({done.stderr.strip()[-200:]}), so 5b fails."
    return {"PYTHONPATH": str(folder)}, f"{lacks}; the read worker (5b) ran with h5py installed to a temporary folder."


def drive(args) -> None:
    from run_benchmarks import REFERENCE_REQUIREMENTS, ensure_venv

    start = clock.perf_counter()
    # h5netcdf with a backend (h5netcdf 1.8 alone installs none), as MODEL.md asks of that venv
    reference_python = ensure_venv(args.reference_venv, [*REFERENCE_REQUIREMENTS, "h5netcdf[h5py]"])
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.keep) if args.keep else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        info = write_inputs(workdir / "inputs.npz")
        seconds = {
            "reference (stock install)": run_worker(reference_python, "reference", "main", workdir),
            "ours": run_worker(sys.executable, "ours", "main", workdir),
            "reference (its venv as it is)": run_worker(reference_python, "reference", "installed", workdir),
        }
        installed = json.loads((workdir / "reference_installed.json").read_text())
        extra_env, note = h5py_for_reference(reference_python, installed, workdir / "h5py")
        seconds["reference (reads our files)"] = run_worker(reference_python, "reference", "read", workdir, extra_env)
        ref, ours = (json.loads((workdir / f"{name}.json").read_text()) for name in ("reference", "ours"))
        ref_read = json.loads((workdir / "reference_read.json").read_text())
        table = rows(ref, ours, ref_read, parity(workdir), installed)
    print(
        f"Inputs: simulated {ARENA_CM:.0f} cm open field at {PLACE_BIN_SIZE:g} cm bins, {N_TETRODES} tetrodes "
        f"({info['spikes']} spikes), {ENCODING_S:g} s encoding, {DECODING_S:g} s decoded "
        f"({info['decoding_bins']} bins at 500 Hz), seed {SEED}; float32, CPU.\n"
    )
    print(markdown(table))
    if note:
        print(f"\nNote: {note}")
    total = clock.perf_counter() - start
    print("\nSeconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()) + f"; total {total:.1f}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", choices=["ours", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--stage", choices=["main", "installed", "read"], default="main", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--reference-venv", type=Path, default=HERE / ".venv-reference")
    parser.add_argument("--keep", help="a folder to keep the inputs, the workers' outputs and the results files in")
    args = parser.parse_args()
    if args.impl:
        worker(args.impl, args.stage, args.workdir)
    else:
        drive(args)


if __name__ == "__main__":
    main()
