"""The decode viewer: pages built from real decodes of simulated sessions (2D and a
W-track), their data read back against the results file, and each page opened in a
real headless Chromium (the system's package), scrubbed and played."""

import base64
import json
import shutil
import time
import zlib

import numpy as np
import pandas as pd
import pytest

from decoding_assets.decoder import ContFragClusterlessClassifier, load_results
from decoding_assets.decoder.analyses import stream_position_posterior
from decoding_assets.decoder.simulate import simulate_open_field, simulate_w_track
from decoding_assets.viewer import ViewerSource, viewer_html, write_viewer

pytestmark = pytest.mark.xdist_group("simulated")

PARAMS = {"disable_progress_bar": True}


def decode(session, folder, n_decoded: int) -> ViewerSource:
    time_ = session.position_time[-n_decoded:]
    train = session.position_time < time_[0]
    clf = ContFragClusterlessClassifier(session.environment(), PARAMS)
    clf.fit(session.position_time, session.position, session.spike_times, session.spike_waveform_features,
            is_training=train)  # fmt: skip
    path = clf.predict_to_file(folder / "results.nc", session.spike_times, session.spike_waveform_features, time_)
    xy = session.position if session.position.shape[1] == 2 else None
    velocity = np.gradient(xy, session.position_time, axis=0)
    position = pd.DataFrame(
        {"position_x": xy[:, 0], "position_y": xy[:, 1], "orientation": np.arctan2(velocity[:, 1], velocity[:, 0]),
         "speed": session.speed},
        index=pd.Index(session.position_time, name="time"),
    )  # fmt: skip
    return ViewerSource(
        title="simulated <session> · run · contfrag",
        results=load_results(path),
        environment=clf.environments,
        position=position,
        spike_times={f"tetrode {k}": t for k, t in enumerate(session.spike_times)},
    )


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    session = simulate_open_field(duration=60.0, n_tetrodes=4, seed=3)
    return decode(session, tmp_path_factory.mktemp("field"), 2100)


@pytest.fixture(scope="module")
def track(tmp_path_factory):
    session = simulate_w_track(duration=60.0, n_tetrodes=4, seed=3)
    return decode(session, tmp_path_factory.mktemp("track"), 2100)


def page_data(page: str) -> dict:
    start = page.index('<script id="data" type="application/json">') + len('<script id="data" type="application/json">')
    return json.loads(page[start : page.index("</script>", start)].replace("<\\/", "</"))


def unpack(text: str, dtype) -> np.ndarray:
    return np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype=dtype)


def test_frames_are_the_posterior_averaged_and_scaled(field):
    data = page_data(viewer_html(field, frame_s=0.010))  # 5 bins of 2 ms per frame
    assert data["kind"] == "field" and data["frame_s"] == pytest.approx(0.010)
    n_bins = field.results.sizes["time"]
    assert data["n_frames"] == -(-n_bins // 5) == 420
    assert len(data["chunks"]) == -(-420 // data["frames_per_chunk"])
    grid = data["grid"]
    cells = grid["nx"] * grid["ny"]
    # each chunk: cell by cell, each frame's change from the one before, modulo 256
    frames = np.concatenate(
        [np.cumsum(unpack(c, np.uint8).reshape(cells, -1).astype(np.int64), axis=1).T % 256 for c in data["chunks"]]
    )
    posterior = np.concatenate([b.values for b in stream_position_posterior(field.results)])
    interior = field.environment.is_track_interior_
    rows, cols = np.nonzero(interior)
    crop = posterior[:, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].reshape(n_bins, -1)
    means = np.nanmean(np.nan_to_num(crop).reshape(420, 5, -1), axis=1)
    expected = np.round(63 * means / means.max(axis=1, keepdims=True))
    np.testing.assert_allclose(frames, expected, atol=1)  # 64 levels, scaled to each frame's maximum
    assert (frames.max(axis=1) == 63).all() and data["levels"] == 64
    inside = unpack(grid["interior"], np.uint8).astype(bool)
    assert inside.sum() == interior.sum() and (frames[:, ~inside] == 0).all()
    states = unpack(data["state_probabilities"], np.uint8).reshape(2, 420)
    probabilities = field.results["acausal_state_probabilities"].values.reshape(420, 5, 2).mean(axis=1)
    np.testing.assert_allclose(states.T / 255, probabilities, atol=1 / 255)
    x = unpack(data["tracks"]["x"], np.float32)
    mid = field.results["time"].values[::5] + 0.005
    np.testing.assert_allclose(x, np.interp(mid, field.position.index, field.position["position_x"]), atol=1e-3)
    spikes = np.cumsum(unpack(data["spikes"][0], np.uint32)) / 1000 + data["t0"]
    times = field.spike_times["tetrode 0"]
    inside_times = times[(times >= data["t0"]) & (times < field.results["time"].values[-1] + 0.002)]
    np.testing.assert_allclose(spikes, inside_times, atol=5e-4)
    assert data["groups"] == ["tetrode 0", "tetrode 1", "tetrode 2", "tetrode 3"]
    assert "simulated &lt;session&gt;" in viewer_html(field)  # the title is escaped


def test_an_interval_of_the_decode(field):
    time_ = field.results["time"].values
    data = page_data(viewer_html(field, start=time_[100], stop=time_[300]))  # [start, stop)
    assert data["n_frames"] == 200 and data["t0"] == pytest.approx(time_[100])
    with pytest.raises(ValueError, match=r"select no time bin; the decode covers .* Choose times inside it"):
        viewer_html(field, start=time_[-1] + 10)
    with pytest.raises(ValueError, match="positive duration"):
        viewer_html(field, frame_s=0.0)


def test_a_long_decode_keeps_at_most_max_frames(field, monkeypatch):
    from decoding_assets import viewer

    monkeypatch.setattr(viewer, "MAX_FRAMES", 300)
    data = page_data(viewer_html(field))
    assert data["n_frames"] <= 300 and data["frame_s"] == pytest.approx(0.002 * 7)


def test_a_track_is_shown_as_posterior_by_time(track):
    data = page_data(viewer_html(track))
    assert data["kind"] == "track" and data["grid"]["n"] == track.environment.place_bin_centers_.shape[0]
    assert len(data["grid"]["breaks"]) >= 4  # the W-track's edges, drawn apart
    linear = unpack(data["tracks"]["linear"], np.float32)
    assert np.isfinite(linear).mean() > 0.99 and 0 <= np.nanmin(linear) and np.nanmax(linear) <= data["grid"]["high"]


# ---------------------------------------------------------------- in a real browser

CHROMIUM, DRIVER = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extras")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,1000",
                 "--disable-dev-shm-usage", "--no-first-run"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def open_page(browser, path):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(path.as_uri())
    WebDriverWait(browser, 60).until(
        lambda d: d.execute_script("return document.body.dataset.ready === '1' || document.getElementById('status').textContent")
    )
    assert browser.find_element("id", "status").text == ""


def until(browser, condition, timeout_s: float = 30.0) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, timeout_s, poll_frequency=0.05).until(lambda _: condition())


def frame_of(label) -> int:
    return int(label.text.split("frame ")[1].split(" /")[0])


def canvas(browser) -> str:
    return browser.execute_script("return document.getElementById('posterior').toDataURL()")


def errors(browser) -> list:
    return [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


@pytest.mark.parametrize("which", ["field", "track"])
def test_the_page_opens_offline_scrubs_and_plays(request, browser, which, tmp_path):
    from selenium.webdriver.common.keys import Keys

    source = request.getfixturevalue(which)
    path = write_viewer(tmp_path / f"{which}.html", source, frame_s=0.010)
    open_page(browser, path)
    slider, label = browser.find_element("id", "slider"), browser.find_element("id", "time-label")
    first_frame, first_label = canvas(browser), label.text
    assert first_label.startswith("t = ") and "frame 1 / 420" in first_label
    # scrub: the slider's own keys, as a user drags it (waits, not sleeps: a loaded machine is slow)
    slider.send_keys(Keys.END)
    until(browser, lambda: "frame 420 / 420" in label.text and canvas(browser) != first_frame)
    slider.send_keys(Keys.HOME)
    for _ in range(40):
        slider.send_keys(Keys.ARROW_RIGHT)
    until(browser, lambda: "frame 41 / 420" in label.text)
    # play at 1x (100 frames of 10 ms a second): time moves on; paused, it stops
    browser.find_element("id", "play").click()
    until(browser, lambda: frame_of(label) > 41 + 20)
    browser.find_element("id", "play").click()
    played = frame_of(label)
    time.sleep(0.5)
    assert frame_of(label) == played < 420, label.text
    assert errors(browser) == []

    # the layout: every part present, visible and inside the window, and drawn
    shot = tmp_path / f"{which}.png"
    browser.save_screenshot(str(shot))
    width = browser.execute_script("return window.innerWidth")
    for element_id in ("title", "posterior", "play", "speed", "slider", "time-label", "traces", "legend"):
        element = browser.find_element("id", element_id)
        rect = element.rect
        assert element.is_displayed() and rect["width"] > 0 and rect["height"] > 0, element_id
        assert 0 <= rect["x"] and rect["x"] + rect["width"] <= width, element_id
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    panel = browser.find_element("id", "posterior").rect
    inside = pixels[int(panel["y"]) : int(panel["y"] + panel["height"]), int(panel["x"]) : int(panel["x"] + panel["width"])]
    # viridis' dark purple (the posterior's low end) fills the track
    purple = (inside[..., 0] < 0.4) & (inside[..., 1] < 0.2) & (inside[..., 2] > 0.25)
    assert purple.mean() > 0.05
    assert set(browser.find_element("id", "legend").text.split()) >= {"Continuous", "Fragmented"}
