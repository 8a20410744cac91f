"""Data sets, loaders, preprocessing and the validation split."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from distbp.data import DataError, Preprocessor, conll, load_data, loaders, split_indices, synthetic


# -- digits and synthetic ---------------------------------------------------------------------------

def test_digits_shapes():
    d = loaders.load_digits()
    assert d.x.shape == (1797, 64) and d.x.dtype == np.float32
    assert d.y.shape == (1797,) and d.y.dtype == np.int64
    assert d.num_classes == 10 and d.classes == [str(i) for i in range(10)]
    assert d.num_features == 64
    assert d.x.min() == 0 and d.x.max() == 16
    assert np.array_equal(np.bincount(d.y)[:3], [178, 182, 177])


def test_digits_split_sizes():
    s = load_data({"name": "digits", "val_fraction": 0.1}, seed=0)
    assert len(s.val) == 180 and len(s.train) == 1617
    assert s.train.num_features == 64


@pytest.mark.parametrize("make", [
    lambda seed: synthetic.blobs(200, 5, 3, 0.5, seed),
    lambda seed: synthetic.spirals(200, 3, 0.2, seed),
    lambda seed: synthetic.regression(200, 5, 0.1, seed),
], ids=["blobs", "spirals", "regression"])
def test_synthetic_is_deterministic_from_the_seed(make):
    a, b, c = make(0), make(0), make(1)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)
    assert a.x.dtype == np.float32 and len(a) == 200


def test_synthetic_shapes():
    b = synthetic.blobs(300, 8, 4, 0.5, 0)
    assert b.x.shape == (300, 8) and b.num_classes == 4 and set(np.unique(b.y)) == {0, 1, 2, 3}
    s = synthetic.spirals(301, 3, 0.2, 0)
    assert s.x.shape == (301, 2) and np.array_equal(np.bincount(s.y), [101, 101, 99])
    r = synthetic.regression(50, 3, 0.1, 0)
    assert r.x.shape == (50, 3) and r.y.shape == (50, 1) and r.y.dtype == np.float32 and r.classes is None


def test_load_data_synthetic():
    cfg = {"name": "synthetic", "kind": "blobs", "samples": 100, "features": 3, "classes": 2, "noise": 0.5,
           "val_fraction": 0.2, "preprocess": "none"}
    s = load_data(cfg, seed=4)
    full = synthetic.blobs(100, 3, 2, 0.5, 4)
    tr, va = split_indices(100, 0.2, 4)
    assert np.array_equal(s.train.x, full.x[tr]) and np.array_equal(s.val.y, full.y[va])


# -- npz ----------------------------------------------------------------------------------------------

def test_npz_good(tmp_path):
    p = tmp_path / "d.npz"
    x = np.arange(24, dtype=np.float64).reshape(6, 2, 2)
    np.savez(p, x=x, y=np.array([3, 5, 3, 9, 5, 3]))
    d = loaders.load_npz(str(p))
    assert d.x.shape == (6, 4) and d.x.dtype == np.float32
    assert np.array_equal(d.x, x.reshape(6, 4))
    assert d.classes == ["3", "5", "9"] and d.y.tolist() == [0, 1, 0, 2, 1, 0]


def test_npz_other_keys_and_string_labels(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, features=np.ones((3, 2)), target=np.array(["cat", "dog", "cat"]))
    d = loaders.load_npz(str(p), "features", "target")
    assert d.classes == ["cat", "dog"] and d.y.tolist() == [0, 1, 0]


def test_npz_regression(tmp_path):
    p = tmp_path / "r.npz"
    np.savez(p, x=np.ones((4, 2)), y=np.array([0.5, 1.5, 2.5, 3.5]))
    d = loaders.load_npz(str(p), task="regression")
    assert d.y.shape == (4, 1) and d.y[:, 0].tolist() == [0.5, 1.5, 2.5, 3.5]


def test_npz_missing_key_names_the_keys(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, a=np.ones((3, 2)), b=np.arange(3))
    with pytest.raises(DataError) as info:
        loaders.load_npz(str(p))
    assert str(info.value) == f"{p}: no array named 'x'; the file holds a, b"


def test_npz_object_array_is_rejected(tmp_path):
    p = tmp_path / "obj.npz"
    np.savez(p, x=np.array([[1, 2], [3]], dtype=object), y=np.array([1, 2]))
    with pytest.raises(DataError) as info:
        loaders.load_npz(str(p))
    msg = str(info.value)
    assert msg.startswith(f"{p}: not a readable .npz file")
    assert "allow_pickle" in msg


def test_npz_not_a_zip(tmp_path):
    p = tmp_path / "junk.npz"
    p.write_text("hello, this is not a zip file\n")
    with pytest.raises(DataError) as e:
        loaders.load_npz(str(p))
    assert str(e.value) == (f"{p}: not an .npz file (an .npz is a zip archive of .npy arrays; this file starts "
                            "with b'hello, this is n')")


def test_npz_nan_named(tmp_path):
    p = tmp_path / "nan.npz"
    x = np.ones((4, 3))
    x[2, 1] = np.nan
    np.savez(p, x=x, y=np.arange(4))
    with pytest.raises(DataError) as info:
        loaders.load_npz(str(p))
    assert str(info.value) == f"{p}: nan at sample 2, column 1 (NaN or infinite values are not allowed)"


def test_npz_non_numeric_and_length_mismatch(tmp_path):
    p = tmp_path / "s.npz"
    np.savez(p, x=np.array([["a", "b"]] * 3), y=np.arange(3))
    with pytest.raises(DataError, match=r"array 'x' has dtype <U1; expected numbers"):
        loaders.load_npz(str(p))
    np.savez(p, x=np.ones((3, 2)), y=np.arange(4))
    with pytest.raises(DataError, match=r"'x' has 3 samples but 'y' has 4"):
        loaders.load_npz(str(p))


def test_npz_fractional_labels(tmp_path):
    p = tmp_path / "f.npz"
    np.savez(p, x=np.ones((3, 2)), y=np.array([0.5, 1.0, 2.0]))
    with pytest.raises(DataError) as e:
        loaders.load_npz(str(p))
    assert str(e.value) == (f"{p} (y): the label column holds real numbers (3 distinct values, such as 0.5), not "
                            "class labels; set data.label to the column of class labels, or data.task: regression "
                            "to predict the numbers")


def test_npz_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"^data\.path: no such file: "):
        loaders.load_npz(str(tmp_path / "nope.npz"))


# -- csv ----------------------------------------------------------------------------------------------

def _csv(tmp_path, text, name="d.csv"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_csv_header_and_default_label(tmp_path):
    d = loaders.load_csv(_csv(tmp_path, "f1,f2,label\n1,2,cat\n3,4,dog\n5,6,cat\n"))
    assert d.x.tolist() == [[1, 2], [3, 4], [5, 6]]
    assert d.classes == ["cat", "dog"] and d.y.tolist() == [0, 1, 0]


def test_csv_without_header(tmp_path):
    d = loaders.load_csv(_csv(tmp_path, "1,2,0\n3,4,1\n5.5,-6,10\n7,8,9\n"))
    assert d.x.tolist() == [[1, 2], [3, 4], [5.5, -6], [7, 8]]
    # numeric labels keep their numeric order ("10" after "9")
    assert d.classes == ["0", "1", "9", "10"] and d.y.tolist() == [0, 1, 3, 2]


def test_csv_label_by_name(tmp_path):
    d = loaders.load_csv(_csv(tmp_path, "a,kind,b\n1,x,2\n3,y,4\n5,x,6\n"), "kind")
    assert d.x.tolist() == [[1, 2], [3, 4], [5, 6]]
    assert d.classes == ["x", "y"] and d.y.tolist() == [0, 1, 0]


def test_csv_label_by_index(tmp_path):
    d = loaders.load_csv(_csv(tmp_path, "7,1,2\n8,3,4\n"), 0)
    assert d.x.tolist() == [[1, 2], [3, 4]] and d.classes == ["7", "8"]


def test_csv_blank_lines_are_skipped(tmp_path):
    d = loaders.load_csv(_csv(tmp_path, "a,b,y\n1,2,0\n\n3,4,1\n"))
    assert d.x.tolist() == [[1, 2], [3, 4]]


def test_csv_ragged_row_names_file_and_line(tmp_path):
    p = _csv(tmp_path, "a,b,y\n1,2,0\n\n3,4,1,5\n")
    with pytest.raises(DataError) as info:
        loaders.load_csv(p)
    assert str(info.value) == f"{p}:4: expected 3 fields, got 4"
    p = _csv(tmp_path, "1,2,0\n3,4,1\n5,6\n", "short.csv")
    with pytest.raises(DataError, match=r"short\.csv:3: expected 3 fields, got 2$"):
        loaders.load_csv(p)


def test_csv_non_numeric_names_line_and_column(tmp_path):
    p = _csv(tmp_path, "a,b,y\n1,2,0\n3,x,1\n")
    with pytest.raises(DataError) as info:
        loaders.load_csv(p)
    assert str(info.value) == f"{p}:3: column b: 'x' is not a number"


def test_csv_nan_named(tmp_path):
    p = _csv(tmp_path, "a,b,y\n1,2,0\n3,nan,1\n")
    with pytest.raises(DataError) as info:
        loaders.load_csv(p)
    assert str(info.value) == f"{p}:3: column b: 'nan' (NaN or infinite values are not allowed)"


def test_csv_nan_label_rejected(tmp_path):
    p = _csv(tmp_path, "a,b,y\n1,2,0\n3,4,nan\n")
    with pytest.raises(DataError, match=r"d\.csv.*nan"):
        loaders.load_csv(p)


def test_csv_nan_regression_target_rejected(tmp_path):
    p = _csv(tmp_path, "a,b,y\n1,2,0.5\n3,4,nan\n")
    with pytest.raises(DataError, match=r"d\.csv:3: .*nan"):
        loaders.load_csv(p, task="regression")


def test_csv_label_name_missing_names_the_columns(tmp_path):
    p = _csv(tmp_path, "f1,label,f2\n1,a,2\n")
    with pytest.raises(DataError) as info:
        loaders.load_csv(p, "lbl")
    assert str(info.value) == f"data.label: no column 'lbl' in {p}; columns: f1, label, f2"


def test_csv_label_name_without_header(tmp_path):
    p = _csv(tmp_path, "1,2,0\n")
    with pytest.raises(DataError, match="names a column but .* has no header row"):
        loaders.load_csv(p, "label")


def test_csv_empty_and_header_only(tmp_path):
    with pytest.raises(DataError, match="the file is empty"):
        loaders.load_csv(_csv(tmp_path, ""))
    with pytest.raises(DataError, match="a header but no data rows"):
        loaders.load_csv(_csv(tmp_path, "a,b,y\n", "h.csv"))


def test_csv_not_text(tmp_path):
    p = tmp_path / "bin.csv"
    p.write_bytes(b"\xff\xfe\x00\x81garbage\n")
    with pytest.raises(DataError, match=r"bin\.csv"):
        loaders.load_csv(str(p))


# -- idx ----------------------------------------------------------------------------------------------

def _idx_bytes(arr: np.ndarray, code: int = 0x08, dtype: str = ">u1") -> bytes:
    return bytes([0, 0, code, arr.ndim]) + struct.pack(">" + "i" * arr.ndim, *arr.shape) + arr.astype(dtype).tobytes()


IMAGES = (np.arange(5 * 3 * 4) % 256).reshape(5, 3, 4).astype(np.uint8)
LABELS = np.array([7, 1, 7, 0, 1], dtype=np.uint8)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_images_and_labels(tmp_path, gz):
    suffix = ".gz" if gz else ""
    write = (lambda p, b: p.write_bytes(gzip.compress(b))) if gz else (lambda p, b: p.write_bytes(b))
    img, lab = tmp_path / f"img-idx3-ubyte{suffix}", tmp_path / f"lab-idx1-ubyte{suffix}"
    write(img, _idx_bytes(IMAGES))
    write(lab, _idx_bytes(LABELS))
    d = loaders.load_idx(str(img), str(lab))
    assert d.x.shape == (5, 12) and d.x.dtype == np.float32
    assert np.array_equal(d.x, IMAGES.reshape(5, 12).astype(np.float32))
    assert d.classes == ["0", "1", "7"] and d.y.tolist() == [2, 1, 2, 0, 1]
    assert np.array_equal(loaders.read_idx(str(img)), IMAGES)


def test_idx_other_dtypes(tmp_path):
    a = np.array([[1.5, -2.0], [3.25, 4.0]])
    p = tmp_path / "f.idx"
    p.write_bytes(_idx_bytes(a, 0x0D, ">f4"))
    assert np.array_equal(loaders.read_idx(str(p)), a.astype(np.float32))
    b = np.array([-3, 70000, 5])
    p.write_bytes(_idx_bytes(b, 0x0C, ">i4"))
    assert loaders.read_idx(str(p)).tolist() == [-3, 70000, 5]


def test_idx_bad_magic(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"\x12\x34" + _idx_bytes(IMAGES)[2:])
    with pytest.raises(DataError) as info:
        loaders.read_idx(str(p))
    assert str(info.value).startswith(f"{p}: bad magic number 12340803")
    assert "magic" in str(info.value)
    p.write_bytes(b"")
    with pytest.raises(DataError, match="bad magic number"):
        loaders.read_idx(str(p))
    # a type byte IDX does not define
    p.write_bytes(bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 0]))
    with pytest.raises(DataError, match="bad magic number 00000701"):
        loaders.read_idx(str(p))


def test_idx_truncated(tmp_path):
    p = tmp_path / "trunc"
    p.write_bytes(_idx_bytes(IMAGES)[:-3])
    with pytest.raises(DataError) as info:
        loaders.read_idx(str(p))
    assert str(info.value) == f"{p}: 73 bytes, but the header's shape (5, 3, 4) of uint8 needs 76"
    p.write_bytes(_idx_bytes(IMAGES)[:6])
    with pytest.raises(DataError, match=r"truncated header \(6 bytes for 3 dimensions\)"):
        loaders.read_idx(str(p))
    p.write_bytes(_idx_bytes(IMAGES) + b"\x00")
    with pytest.raises(DataError, match="needs"):
        loaders.read_idx(str(p))


def test_idx_truncated_and_corrupt_gzip(tmp_path):
    p = tmp_path / "t.gz"
    p.write_bytes(gzip.compress(_idx_bytes(IMAGES))[:-10])
    with pytest.raises(DataError, match=r"t\.gz: cannot read"):
        loaders.read_idx(str(p))
    p.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"t\.gz: cannot read"):
        loaders.read_idx(str(p))
    blob = bytearray(gzip.compress(bytes(range(256)) * 50))
    blob[30:40] = b"\x00" * 10
    p.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=r"t\.gz: cannot read"):
        loaders.read_idx(str(p))


def test_idx_count_mismatch(tmp_path):
    img, lab = tmp_path / "img", tmp_path / "lab"
    img.write_bytes(_idx_bytes(IMAGES))
    lab.write_bytes(_idx_bytes(LABELS[:4]))
    with pytest.raises(DataError) as info:
        loaders.load_idx(str(img), str(lab))
    assert str(info.value) == f"{img} holds 5 images but {lab} holds 4 labels"


def test_idx_labels_must_be_1d(tmp_path):
    img = tmp_path / "img"
    img.write_bytes(_idx_bytes(IMAGES))
    with pytest.raises(DataError, match="labels must be one-dimensional"):
        loaders.load_idx(str(img), str(img))


def test_idx_zero_dimensional(tmp_path):
    p, lab = tmp_path / "z", tmp_path / "lab"
    p.write_bytes(bytes([0, 0, 8, 0, 5]))
    lab.write_bytes(_idx_bytes(LABELS))
    with pytest.raises(DataError, match=r"z: "):
        loaders.load_idx(str(p), str(lab))


def test_idx_nan(tmp_path):
    img, lab = tmp_path / "f", tmp_path / "lab"
    a = np.ones((5, 2))
    a[3, 1] = np.nan
    img.write_bytes(_idx_bytes(a, 0x0D, ">f4"))
    lab.write_bytes(_idx_bytes(LABELS))
    with pytest.raises(DataError, match=rf"^{img}: nan at sample 3, column 1"):
        loaders.load_idx(str(img), str(lab))


def test_idx_missing_labels_file(tmp_path):
    img = tmp_path / "img"
    img.write_bytes(_idx_bytes(IMAGES))
    with pytest.raises(DataError, match=r"^data\.labels: no such file"):
        loaders.load_idx(str(img), str(tmp_path / "nope"))


# -- conll --------------------------------------------------------------------------------------------

CONLL = """-DOCSTART- -X- O

John NNP B-PER
lives VBZ O
in IN O
Paris NNP B-LOC

Mary NNP B-PER
lives VBZ O
in IN O
Rome NNP B-LOC

JOHN NNP B-PER
runs VBZ O

Zed NNP B-PER
sleeps VBZ O
"""


def test_conll_sentences(tmp_path):
    p = tmp_path / "t.conll"
    p.write_text(CONLL)
    s = conll.read_conll(str(p))
    assert len(s) == 4
    assert s[0] == (["John", "lives", "in", "Paris"], ["B-PER", "O", "O", "B-LOC"])
    assert s[3] == (["Zed", "sleeps"], ["B-PER", "O"])


def test_conll_line_without_tag(tmp_path):
    p = tmp_path / "bad.conll"
    p.write_text("John B-PER\n\nlives\n")
    with pytest.raises(DataError) as info:
        conll.read_conll(str(p))
    assert str(info.value).startswith(f"{p}:3: 'lives' has no tag")


def test_conll_empty_and_missing(tmp_path):
    p = tmp_path / "e.conll"
    p.write_text("-DOCSTART- O\n\n\n")
    with pytest.raises(DataError, match="no sentences found"):
        conll.read_conll(str(p))
    with pytest.raises(DataError, match=r"^data\.path: no such file"):
        conll.read_conll(str(tmp_path / "nope.conll"))


def test_conll_normalize():
    assert conll.normalize("Paris") == "paris"
    assert conll.normalize("1999-AB") == "0000-ab"


def _seed_with_val(n: int, frac: float, want: list[int]) -> int:
    for seed in range(1000):
        if split_indices(n, frac, seed)[1].tolist() == want:
            return seed
    raise AssertionError("no seed found")


def test_conll_windows_and_vocab_from_train_only(tmp_path):
    p = tmp_path / "t.conll"
    p.write_text(CONLL)
    seed = _seed_with_val(4, 0.25, [3])  # the sentence "Zed sleeps" is the validation split
    s = load_data({"name": "conll", "path": str(p), "val_fraction": 0.25}, seed, window=1)
    # counts in training: in 2, john 2, lives 2, then once each, alphabetically
    assert s.train.vocab == ["<unk>", "<s>", "</s>", "in", "john", "lives", "mary", "paris", "rome", "runs"]
    assert s.train.classes == ["B-LOC", "B-PER", "O"]
    assert s.train.x.dtype == np.int64 and s.train.x.shape == (10, 3)
    assert s.train.x.tolist() == [
        [1, 4, 5], [4, 5, 3], [5, 3, 7], [3, 7, 2],      # john lives in paris
        [1, 6, 5], [6, 5, 3], [5, 3, 8], [3, 8, 2],      # mary lives in rome
        [1, 4, 9], [4, 9, 2],                            # JOHN runs
    ]
    assert s.train.y.tolist() == [1, 2, 2, 0, 1, 2, 2, 0, 1, 2]
    # "zed" and "sleeps" appear only in validation: unknown (id 0)
    assert s.val.x.tolist() == [[1, 0, 0], [0, 0, 2]]
    assert s.val.y.tolist() == [1, 2]
    assert s.preprocessor.kind == "none"


def test_conll_window_two(tmp_path):
    p = tmp_path / "t.conll"
    p.write_text(CONLL)
    seed = _seed_with_val(4, 0.25, [3])
    s = load_data({"name": "conll", "path": str(p), "val_fraction": 0.25}, seed, window=2)
    assert s.train.x.shape == (10, 5)
    assert s.train.x[:4].tolist() == [[1, 1, 4, 5, 3], [1, 4, 5, 3, 7], [4, 5, 3, 7, 2], [5, 3, 7, 2, 2]]
    assert s.val.x.tolist() == [[1, 1, 0, 0, 2], [1, 0, 0, 2, 2]]


def test_conll_min_count(tmp_path):
    p = tmp_path / "t.conll"
    p.write_text(CONLL)
    seed = _seed_with_val(4, 0.25, [3])
    s = load_data({"name": "conll", "path": str(p), "val_fraction": 0.25, "min_count": 2}, seed, window=0)
    assert s.train.vocab == ["<unk>", "<s>", "</s>", "in", "john", "lives"]
    assert s.train.x[:, 0].tolist() == [4, 5, 3, 0, 0, 5, 3, 0, 4, 0]


# -- preprocessing ------------------------------------------------------------------------------------

def test_standardize_on_train():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((400, 4)) * [1, 5, 0.1, 3] + [10, -2, 0, 7]).astype(np.float32)
    x[:, 2] = 4.0  # a constant feature
    pre = Preprocessor("standardize").fit(x)
    z = pre.transform(x)
    assert z.dtype == np.float32 and np.isfinite(z).all()
    assert np.allclose(z.mean(axis=0), 0, atol=1e-5)
    assert np.allclose(z.std(axis=0)[[0, 1, 3]], 1, atol=1e-5)
    assert np.array_equal(z[:, 2], np.zeros(400, np.float32))  # centred, not divided by 0


def test_train_statistics_apply_to_val_exactly():
    train = np.array([[1, 0, 5], [3, 4, 5]], dtype=np.float32)
    val = np.array([[5, 6, 9], [2, 2, 5]], dtype=np.float32)
    std = Preprocessor("standardize").fit(train)
    # means (2, 2, 5), std (1, 2, 0 -> 1)
    assert std.transform(val).tolist() == [[3, 2, 4], [0, 0, 0]]
    cen = Preprocessor("center").fit(train)
    assert cen.transform(val).tolist() == [[3, 4, 4], [0, 0, 0]]
    assert Preprocessor("none").fit(train).transform(val) is val


def test_load_data_uses_train_statistics():
    cfg = {"name": "synthetic", "kind": "blobs", "samples": 200, "features": 3, "classes": 2, "noise": 1.0,
           "val_fraction": 0.25, "preprocess": "standardize"}
    s = load_data(cfg, seed=0)
    raw = synthetic.blobs(200, 3, 2, 1.0, 0)
    tr, va = split_indices(200, 0.25, 0)
    mean = raw.x[tr].astype(np.float64).mean(axis=0)
    std = raw.x[tr].astype(np.float64).std(axis=0)
    assert np.array_equal(s.preprocessor.mean, mean)
    expected_val = ((raw.x[va].astype(np.float64) - mean) * (1.0 / std)).astype(np.float32)
    assert np.array_equal(s.val.x, expected_val)
    assert not np.allclose(s.val.x.mean(axis=0), 0, atol=1e-3)  # val was not fitted on itself


def test_whiten_gives_identity_covariance():
    rng = np.random.default_rng(1)
    mix = rng.standard_normal((5, 5))
    x = (rng.standard_normal((1000, 5)) @ mix + 3).astype(np.float32)
    pre = Preprocessor("whiten", eps=1e-8).fit(x)
    z = pre.transform(x).astype(np.float64)
    assert np.allclose(z.mean(axis=0), 0, atol=1e-4)
    cov = (z - z.mean(axis=0)).T @ (z - z.mean(axis=0)) / len(z)
    assert np.abs(cov - np.eye(5)).max() < 1e-3


def test_whiten_degenerate_stays_finite():
    x = np.zeros((50, 3), np.float32)
    x[:, 0] = np.arange(50)
    z = Preprocessor("whiten", eps=1e-5).fit(x).transform(x)
    assert np.isfinite(z).all()


def test_center():
    x = np.array([[1, 10], [3, 20]], np.float32)
    assert Preprocessor("center").fit(x).transform(x).tolist() == [[-1, -5], [1, 5]]


def test_unknown_preprocess():
    with pytest.raises(DataError, match="data.preprocess: unknown 'zca'"):
        Preprocessor("zca")


@pytest.mark.parametrize("kind", ["none", "center", "standardize", "whiten"])
def test_preprocessor_state_round_trip(tmp_path, kind):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((100, 4)).astype(np.float32) * 3 + 1
    pre = Preprocessor(kind, eps=1e-4).fit(x)
    np.savez(tmp_path / "s.npz", **{k: np.asarray(v) for k, v in pre.state().items()})
    with np.load(tmp_path / "s.npz", allow_pickle=False) as f:
        back = Preprocessor.from_state({k: f[k] for k in f.files})
    assert back.kind == kind and back.eps == 1e-4
    other = rng.standard_normal((20, 4)).astype(np.float32)
    assert np.array_equal(back.transform(other), pre.transform(other))


def test_load_data_with_restored_preprocessor():
    cfg = {"name": "synthetic", "kind": "blobs", "samples": 100, "features": 3, "classes": 2, "noise": 1.0,
           "val_fraction": 0.2, "preprocess": "whiten"}
    a = load_data(cfg, seed=0)
    b = load_data(cfg, seed=0, preprocessor=Preprocessor.from_state(a.preprocessor.state()))
    assert np.array_equal(a.train.x, b.train.x) and np.array_equal(a.val.x, b.val.x)


# -- split ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, frac", [(10, 0.1), (1797, 0.1), (100, 0.25), (7, 0.5), (33, 0.0), (5, 0.01)])
def test_split_indices(n, frac):
    tr, va = split_indices(n, frac, seed=3)
    tr2, va2 = split_indices(n, frac, seed=3)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    assert len(np.intersect1d(tr, va)) == 0
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(n))
    expected = int(round(n * frac)) or (1 if frac > 0 else 0)
    assert len(va) == expected
    assert np.all(np.diff(tr) > 0) and np.all(np.diff(va) > 0)


def test_split_depends_on_the_seed():
    assert not np.array_equal(split_indices(100, 0.2, 0)[1], split_indices(100, 0.2, 1)[1])


def test_too_few_samples_for_a_split():
    with pytest.raises(DataError, match="need at least 2"):
        load_data({"name": "synthetic", "kind": "blobs", "samples": 1, "features": 2, "classes": 2,
                   "noise": 0.1}, seed=0)


def test_val_fraction_leaving_no_training_data():
    cfg = {"name": "synthetic", "kind": "blobs", "samples": 3, "features": 2, "classes": 2, "noise": 0.1,
           "val_fraction": 0.9}
    with pytest.raises(DataError, match=r"^data\.val_fraction: 0\.9 of 3 sample\(s\) leaves none for training$"):
        load_data(cfg, seed=0)


def test_conll_not_text(tmp_path):
    p = tmp_path / "u.conll"
    p.write_bytes(b"John B-PER\n\xff\xfe O\n")
    with pytest.raises(DataError, match=r"u\.conll: not a UTF-8 text file"):
        conll.read_conll(str(p))


def test_npz_scalar_arrays(tmp_path):
    p = tmp_path / "s.npz"
    np.savez(p, x=np.array(3.0), y=np.array(1))
    with pytest.raises(DataError, match="one row per sample"):
        loaders.load_npz(str(p))


def test_npz_two_column_labels(tmp_path):
    p = tmp_path / "y2.npz"
    np.savez(p, x=np.ones((3, 2)), y=np.ones((3, 2)))
    with pytest.raises(DataError, match=r"y2\.npz: 'y' has shape \(3, 2\); class labels need one value per sample"):
        loaders.load_npz(str(p))
    d = loaders.load_npz(str(p), task="regression")
    assert d.y.shape == (3, 2)


# -- problems found by trying real files ------------------------------------------------------

def test_an_empty_label_cell_is_named_by_line(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("a,b,label\n1,2,x\n3,4,\n5,6,y\n")
    with pytest.raises(DataError) as e:
        loaders.load_csv(str(p))
    assert str(e.value) == f"{p}:3: the label column label is empty"


def test_a_real_valued_last_column_says_to_set_label_or_regression(tmp_path):
    p = tmp_path / "d.csv"
    rng = np.random.default_rng(0)
    p.write_text("a,b,price\n" + "".join(f"{i},{i * 2},{v:.6f}\n" for i, v in enumerate(rng.uniform(0, 9, 535))))
    with pytest.raises(DataError) as e:
        loaders.load_csv(str(p))
    assert str(e.value).startswith(f"{p}: the label column holds real numbers (535 distinct values, such as ")
    assert str(e.value).endswith("; set data.label to the column of class labels, or data.task: regression to "
                                 "predict the numbers")


@pytest.mark.parametrize("delimiter", [";", "\t", ","])
def test_the_delimiter_is_detected(tmp_path, delimiter):
    p = tmp_path / "d.csv"
    p.write_text(delimiter.join(["a", "b", "label"]) + "\n" + "".join(
        delimiter.join([f"{i}.5", f"{-i}", "yes" if i % 2 else "no"]) + "\n" for i in range(10)))
    d = loaders.load_csv(str(p))
    assert d.x.shape == (10, 2) and d.classes == ["no", "yes"] and d.x[3].tolist() == [3.5, -3.0]
    assert loaders.load_csv(str(p), delimiter=delimiter).x.shape == (10, 2)


def test_a_relative_data_path_names_the_directory_it_was_resolved_against(tmp_path, monkeypatch):
    from distbp.train import ConfigError, resolve
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        resolve(None, ["data.name=csv", "data.path=data/train.csv"])
    assert str(e.value) == f"data.path: no such file: data/train.csv (relative to the working directory {tmp_path})"


def test_swapped_conll_columns_are_caught(tmp_path):
    from distbp.data.conll import read_conll
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(300)]
    lines = []
    for _ in range(60):
        lines += [f"{rng.choice(['O', 'B-PER', 'I-PER'])} {rng.choice(words)}" for _ in range(8)] + [""]
    p = tmp_path / "swapped.conll"
    p.write_text("\n".join(lines))
    with pytest.raises(DataError) as e:
        read_conll(str(p))
    assert str(e.value).startswith(f"{p}:1: the last column, which distbp reads as the tag, has ")
    assert str(e.value).endswith("it holds words, not tags; put the word first and the tag last on each line")
    (tmp_path / "right.conll").write_text("\n".join(" ".join(reversed(x.split())) for x in lines))
    assert len(read_conll(str(tmp_path / "right.conll"))) == 60
