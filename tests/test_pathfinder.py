"""grootvl.data.pathfinder: the long-range task's generator, folder writer and label hygiene."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from PIL import Image

from grootvl.data import ImageFolderDataset, pathfinder, write_pathfinder_folder
from grootvl.data.pathfinder import CLASS_NAMES, DIFFICULTY_DEFAULTS

EIGHT = np.ones((3, 3), bool)  # 8-connectivity


def _markers(img: np.ndarray, value: int) -> list[np.ndarray]:
    """Boolean masks of the marker squares (pixels of the marker intensity)."""
    lab, n = ndi.label(img == value, structure=EIGHT)
    return [lab == k for k in range(1, n + 1)]


def test_shapes_dtypes_balance():
    images, labels = pathfinder(10, size=32, seed=1)
    assert images.shape == (10, 32, 32) and images.dtype == torch.uint8
    assert labels.shape == (10,) and labels.dtype == torch.int64
    assert labels.sum().item() == 5
    assert set(labels.tolist()) == {0, 1}
    images, labels = pathfinder(7, size=40, seed=1, start=3)
    assert images.shape == (7, 40, 40) and abs(labels.sum().item() - 3.5) <= 1.5
    empty_images, empty_labels = pathfinder(0)
    assert empty_images.shape == (0, 32, 32) and empty_labels.shape == (0,)


def test_deterministic_and_independent_of_batching():
    a_img, a_lab = pathfinder(12, seed=5)
    b_img, b_lab = pathfinder(12, seed=5)
    assert torch.equal(a_img, b_img) and torch.equal(a_lab, b_lab)
    # image i depends on (seed, i) only: a later window of the stream is a slice of it
    c_img, c_lab = pathfinder(5, seed=5, start=7)
    assert torch.equal(c_img, a_img[7:]) and torch.equal(c_lab, a_lab[7:])
    d_img, _ = pathfinder(12, seed=6)
    assert not torch.equal(a_img, d_img)


def test_deterministic_across_numba_thread_counts():
    numba = pytest.importorskip("numba")
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = pathfinder(6, seed=2)[0]
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = pathfinder(6, seed=2)[0]
    finally:
        numba.set_num_threads(before)
    assert torch.equal(one, many)


@pytest.mark.parametrize("knobs", [{}, {"line_width": 2.0, "spacing": 2, "marker_size": 4},
                                   {"num_distractors": 4, "max_turn": 40.0}])
def test_label_is_connectivity(knobs):
    """Positive: both markers in one 8-connected component. Negative: in two. The image's
    components are its curves: two long ones plus the distractors."""
    d = {**DIFFICULTY_DEFAULTS, **knobs}
    images, labels = pathfinder(40, size=40, seed=3, **knobs)
    for img, label in zip(images.numpy(), labels.tolist()):
        markers = _markers(img, d["marker_intensity"])
        assert len(markers) == 2
        lab, n = ndi.label(img > 0, structure=EIGHT)
        assert n == 2 + d["num_distractors"]
        comps = [set(np.unique(lab[m]).tolist()) for m in markers]
        assert all(len(c) == 1 for c in comps)
        assert (comps[0] == comps[1]) == (label == 1)


def test_dashes_only_remove_pixels():
    solid, lab_solid = pathfinder(8, seed=4)
    dashed, lab_dashed = pathfinder(8, seed=4, dash_length=2.0, dash_gap=2.0)
    assert torch.equal(lab_solid, lab_dashed)
    assert ((dashed > 0) <= (solid > 0)).all()  # same geometry, gaps cut out
    assert (dashed > 0).sum() < (solid > 0).sum()


@pytest.mark.parametrize("kwargs, match", [
    ({"size": 8}, "size must be"),
    ({"size": 32.5}, "size must be an integer"),
    ({"arm_segments": 0}, "arm_segments must be"),
    ({"num_distractors": -1}, "num_distractors must be"),
    ({"line_width": 0.5}, "line_width must be"),
    ({"spacing": 0}, "spacing must be"),
    ({"max_turn": 120}, "max_turn must be"),
    ({"dash_gap": -1}, "dash_gap must be"),
    ({"marker_intensity": 300}, "marker_intensity must be"),
    ({"seed": -1}, "seed must be"),
    ({"num_images": -2}, "num_images must be"),
])
def test_bad_knobs_are_named(kwargs, match):
    kwargs = {"num_images": 2, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        pathfinder(**kwargs)


def test_unknown_knob_and_impossible_difficulty():
    with pytest.raises(TypeError, match="unknown difficulty knob.*distractors"):
        pathfinder(2, distractors=3)
    with pytest.raises(RuntimeError, match="do not fit"):
        pathfinder(2, size=16, arm_segments=40, num_distractors=30)


def shortcut_features(images: np.ndarray, marker_value: int) -> np.ndarray:
    """Label-blind statistics a model could use instead of following the curves: ink, marker
    distance and positions, ink and curve direction near each marker, ink on the straight
    line between the markers, number of connected components."""
    n, size, _ = images.shape
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    lit = images > 0
    curve = lit & (images != marker_value)
    rows = []
    for img, on, cur in zip(images, lit, curve):
        lab, count = ndi.label(img == marker_value, structure=EIGHT)
        centres = np.array(ndi.center_of_mass(img == marker_value, lab, [1, 2]))
        (ay, ax), (by, bx) = centres
        row = [on.sum(), np.hypot(ay - by, ax - bx), *sorted([ay, ax, by, bx]),
               *sorted(np.hypot(centres[:, 0] - size / 2, centres[:, 1] - size / 2)),
               ndi.label(on, structure=EIGHT)[1]]
        for (py, px), (qy, qx) in (((ay, ax), (by, bx)), ((by, bx), (ay, ax))):
            near = cur & (np.hypot(yy - py, xx - px) <= 5)
            row += [near.sum(), (cur & (np.abs(yy - py) <= 7) & (np.abs(xx - px) <= 7)).sum()]
            if near.any():  # cosine between "towards my curve" and "towards the other marker"
                u = np.array([yy[near].mean() - py, xx[near].mean() - px])
                v = np.array([qy - py, qx - px])
                row.append(u @ v / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-9))
            else:
                row.append(0.0)
        t = ((yy - ay) * (by - ay) + (xx - ax) * (bx - ax)) / ((by - ay) ** 2 + (bx - ax) ** 2)
        dist = np.hypot(ay + t * (by - ay) - yy, ax + t * (bx - ax) - xx)
        row.append((cur & (t > 0.2) & (t < 0.8) & (dist <= 2)).sum())
        rows.append(row)
    return np.asarray(rows, np.float64)


def test_no_shortcut_from_global_statistics():
    """Logistic regression and gradient boosting on label-blind image statistics stay at
    chance on held-out images: the label needs the curves to be followed."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    images, labels = pathfinder(1600, seed=11)
    x = shortcut_features(images.numpy(), DIFFICULTY_DEFAULTS["marker_intensity"])
    y = labels.numpy()
    for model in (make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
                  HistGradientBoostingClassifier(max_iter=100, random_state=0)):
        accuracy = cross_val_score(model, x, y, cv=4).mean()
        # chance is 0.5; with 400 held-out images per fold its std is about 0.025/sqrt(4)
        assert accuracy < 0.56, (type(model).__name__, accuracy)


def test_shortcut_check_can_fail():
    """The check above has power: a generator that leaks (label 1 drawn with fatter markers
    here) is caught by the same features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    images, labels = pathfinder(400, seed=12)
    leaky = images.numpy().copy()
    value = DIFFICULTY_DEFAULTS["marker_intensity"]
    for img, label in zip(leaky, labels.tolist()):
        if label:
            img[ndi.binary_dilation(img == value)] = value
    x = shortcut_features(leaky, value)
    assert cross_val_score(LogisticRegression(max_iter=1000), x, labels.numpy(), cv=4).mean() > 0.9


def test_folder_writer_round_trip(tmp_path):
    root = write_pathfinder_folder(tmp_path / "pf", num_train=6, num_val=4, size=32, seed=2)
    for split, count in (("train", 6), ("val", 4)):
        ds = ImageFolderDataset(root / split, mode="L")
        assert ds.classes == list(CLASS_NAMES) and len(ds) == count
    images, labels = pathfinder(10, size=32, seed=2)
    # training images are the stream's first 6, validation images the next 4
    for i in range(10):
        split = "train" if i < 6 else "val"
        path = root / split / CLASS_NAMES[int(labels[i])] / f"{i:07d}.png"
        assert np.array_equal(np.asarray(Image.open(path)), images[i].numpy())
    mtime = (root / "pathfinder.json").stat().st_mtime_ns
    write_pathfinder_folder(root, num_train=6, num_val=4, size=32, seed=2)  # same: skipped
    assert (root / "pathfinder.json").stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match="already exists"):
        write_pathfinder_folder(root, num_train=8, num_val=4, size=32, seed=2)
