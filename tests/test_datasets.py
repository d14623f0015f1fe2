"""Dataset loaders, the decode cache and the download command.

Tests marked ``data`` read the real archives under ``MRBENCH_DATA``; they decode each
Omniglot zip once per session into a temporary cache. The other tests build tiny
synthetic archives under ``tmp_path`` and need no data.
"""

from __future__ import annotations

import gzip
import io
import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from bench.components import ImageSplit
from bench.data import cache_dir, content_revision, resolve_root
from bench.data import download as dl
from bench.data import mnist as mnist_mod
from bench.data import omniglot as omniglot_mod
from bench.data.cache import cache_path, load_cached
from bench.data.mnist import MNIST
from bench.data.omniglot import Omniglot, OmniglotLakeRuns
from bench.episodes import gather
from bench.errors import DataError, MrbenchError, OptionsError

# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("decoded")


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch: pytest.MonkeyPatch, session_cache: Path) -> None:
    # Never write decoded arrays into the user's home.
    monkeypatch.setenv("MRBENCH_CACHE", str(session_cache))


def _load_all(ds, root: Path, cache: Path) -> dict[str, ImageSplit]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MRBENCH_CACHE", str(cache))
        return {s: ds.load(s, root) for s in ds.splits}


@pytest.fixture(scope="session")
def vinyals(data_root: Path, session_cache: Path) -> dict[str, ImageSplit]:
    return _load_all(Omniglot(), data_root, session_cache)


@pytest.fixture(scope="session")
def lake(data_root: Path, session_cache: Path) -> dict[str, ImageSplit]:
    return _load_all(Omniglot(split="lake"), data_root, session_cache)


@pytest.fixture(scope="session")
def runs(data_root: Path, session_cache: Path) -> ImageSplit:
    return _load_all(OmniglotLakeRuns(), data_root, session_cache)["meta-test"]


@pytest.fixture(scope="session")
def mnist(data_root: Path, session_cache: Path) -> dict[str, ImageSplit]:
    return _load_all(MNIST(), data_root, session_cache)


def _assert_data_error(exc: pytest.ExceptionInfo[DataError], file_name: str) -> str:
    msg = str(exc.value)
    assert file_name in msg and "MRBENCH_DATA" in msg and "mrbench data download" in msg, msg
    assert "\n" not in msg  # one paragraph
    return msg


# --- Omniglot on the real archives ----------------------------------------------------


@pytest.mark.data
def test_lake_split_counts(lake: dict[str, ImageSplit]) -> None:
    for split, n_chars, n_alphabets in (("meta-train", 964, 30), ("meta-test", 659, 20)):
        s = lake[split]
        assert s.n_classes == n_chars
        assert len(set(s.groups)) == n_alphabets
        assert s.counts.tolist() == [20] * n_chars  # 20 drawers
        assert s.class_names[0].count("/") == 1  # no rotation suffix
        assert s.class_names == sorted(s.class_names, key=lambda n: tuple(n.split("/")))


@pytest.mark.data
def test_lake_has_no_meta_val(data_root: Path) -> None:
    ds = Omniglot(split="lake")
    assert ds.splits == ("meta-train", "meta-test")
    assert Omniglot.splits == ("meta-train", "meta-val", "meta-test")
    with pytest.raises(MrbenchError, match="meta-train, meta-test"):
        ds.load("meta-val", data_root)


@pytest.mark.data
def test_vinyals_class_counts(vinyals: dict[str, ImageSplit]) -> None:
    for split, n in (("meta-train", 4112), ("meta-val", 688), ("meta-test", 1692)):
        s = vinyals[split]
        assert s.n_classes == n
        assert s.counts.tolist() == [20] * n
        assert torch.equal(s.labels, torch.arange(n).repeat_interleave(20))
        assert s.class_names[:2] == [s.class_names[0][:-7] + "/rot000", s.class_names[0][:-7] + "/rot090"]


@pytest.mark.data
def test_vinyals_rotations_are_exact_rot90(vinyals: dict[str, ImageSplit]) -> None:
    for s in vinyals.values():
        v = s.images.view(s.n_classes // 4, 4, 20, 1, 28, 28)
        for k in range(1, 4):
            assert torch.equal(v[:, k], torch.rot90(v[:, 0], k, dims=(-2, -1)))
        names = np.array(s.class_names).reshape(-1, 4)
        assert [n.rsplit("/", 1)[1] for n in names[0]] == ["rot000", "rot090", "rot180", "rot270"]
        assert all(len({n.rsplit("/", 1)[0] for n in row}) == 1 for row in names)


@pytest.mark.data
def test_vinyals_characters_partition_omniglot(
    vinyals: dict[str, ImageSplit], lake: dict[str, ImageSplit]
) -> None:
    chars = {k: {n.rsplit("/", 1)[0] for n in s.class_names} for k, s in vinyals.items()}
    assert [len(chars[k]) for k in ("meta-train", "meta-val", "meta-test")] == [1028, 172, 423]
    assert set.union(*chars.values()) == set(lake["meta-train"].class_names) | set(lake["meta-test"].class_names)
    assert sum(map(len, chars.values())) == 1623  # disjoint


@pytest.mark.data
def test_pixels_are_bright_strokes_on_dark(
    vinyals: dict[str, ImageSplit], lake: dict[str, ImageSplit], runs: ImageSplit, mnist: dict[str, ImageSplit]
) -> None:
    for s in [*vinyals.values(), *lake.values(), runs, *mnist.values()]:
        assert s.images.dtype == torch.uint8
        assert s.images.shape[1:] == (1, 28, 28)
        assert int(s.images.min()) == 0 and int(s.images.max()) == 255
        assert float(s.images.float().mean()) < 128
        assert len(s.revision) == 16


@pytest.mark.data
def test_revision_is_deterministic(data_root: Path, lake: dict[str, ImageSplit], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    again = Omniglot(split="lake").load("meta-test", data_root)  # from the cache
    assert again.revision == lake["meta-test"].revision
    monkeypatch.setenv("MRBENCH_CACHE", str(tmp_path / "fresh"))
    fresh = Omniglot(split="lake").load("meta-test", data_root)  # decoded again
    assert fresh.revision == lake["meta-test"].revision
    assert torch.equal(fresh.images, lake["meta-test"].images)
    assert lake["meta-train"].revision != lake["meta-test"].revision
    assert content_revision(fresh.images, fresh.labels, fresh.class_names) == fresh.revision


@pytest.mark.data
def test_cache_is_used_the_second_time(
    data_root: Path, vinyals: dict[str, ImageSplit], runs: ImageSplit, mnist: dict[str, ImageSplit],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again although the cache holds the arrays")

    for mod, fn in ((omniglot_mod, "_decode_archive"), (omniglot_mod, "_decode_runs"), (mnist_mod, "_decode")):
        monkeypatch.setattr(mod, fn, boom)
    assert Omniglot().load("meta-val", data_root).revision == vinyals["meta-val"].revision
    assert OmniglotLakeRuns().load("meta-test", data_root).revision == runs.revision
    assert MNIST().load("meta-test", data_root).revision == mnist["meta-test"].revision


@pytest.mark.data
def test_vinyals_split_naming_absent_character(data_root: Path, tmp_path: Path) -> None:
    (tmp_path / "omniglot" / "splits" / "vinyals").mkdir(parents=True)
    for z in ("images_background.zip", "images_evaluation.zip"):
        (tmp_path / "omniglot" / z).symlink_to(data_root / "omniglot" / z)
    bad = {"background": {"Armenian": ["character01", "character99"]}}
    (tmp_path / "omniglot" / "splits" / "vinyals" / "val.json").write_text(json.dumps(bad))
    with pytest.raises(DataError) as exc:
        Omniglot().load("meta-val", tmp_path)
    assert "Armenian/character99" in _assert_data_error(exc, "val.json")


# --- Lake's runs ----------------------------------------------------------------------


@pytest.mark.data
def test_lake_runs(data_root: Path, runs: ImageSplit, lake: dict[str, ImageSplit]) -> None:
    assert runs.n_classes == 400 and runs.counts.tolist() == [2] * 400
    assert runs.class_names[:2] == ["run01/class01", "run01/class02"] and runs.class_names[-1] == "run20/class20"
    m = OmniglotLakeRuns().fixed_episodes("meta-test", data_root)
    assert m.n_episodes == 20
    assert (m.spec.n_way, m.spec.k_shot, m.spec.n_query) == (20, 1, 1)
    n = len(runs.images)
    for ids in (m.support, m.query):
        assert ids.shape == (20, 20, 1) and int(ids.min()) >= 0 and int(ids.max()) < n
        assert torch.equal(runs.labels[ids[..., 0]], m.classes)
    assert bool((m.support != m.query).all())
    assert all(len({runs.groups[c] for c in row}) == 1 for row in m.classes.tolist())  # one run per episode
    ep = gather(runs, m)
    assert ep.x_support.shape == (20, 20, 1, 28, 28) and ep.x_query.shape == (20, 20, 1, 28, 28)
    # Every pair is two drawings of one evaluation character, which checks the
    # class_labels.txt pairing (the runs' PNGs are drawings of images_evaluation).
    ev = lake["meta-test"]
    owner = {ev.images[i].numpy().tobytes(): int(ev.labels[i]) for i in range(len(ev.images))}
    pairs = [(owner.get(runs.images[2 * c].numpy().tobytes()), owner.get(runs.images[2 * c + 1].numpy().tobytes()))
             for c in range(400)]
    assert all(a is not None and a == b for a, b in pairs)


@pytest.mark.data
def test_lake_runs_image_size(data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MRBENCH_CACHE", str(tmp_path))
    ds = OmniglotLakeRuns(image_size=32)
    assert ds.load("meta-test", data_root).images.shape == (800, 1, 32, 32)
    assert ds.fixed_episodes("meta-test", data_root).spec.image_shape == (1, 32, 32)


# --- MNIST on the real files -----------------------------------------------------------


@pytest.mark.data
def test_mnist_counts(mnist: dict[str, ImageSplit]) -> None:
    train, test = mnist["meta-train"], mnist["meta-test"]
    assert len(train.images) == 60000 and len(test.images) == 10000
    assert train.class_names == test.class_names == [str(d) for d in range(10)]
    assert train.counts.tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert test.counts.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    for s in (train, test):
        assert int(s.counts.sum()) == len(s.labels)
        assert bool((s.labels[1:] >= s.labels[:-1]).all())


@pytest.mark.data
def test_mnist_image_size(data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MRBENCH_CACHE", str(tmp_path))
    s = MNIST(image_size=14).load("meta-test", data_root)
    assert s.images.shape == (10000, 1, 14, 14) and s.images.dtype == torch.uint8


# --- roots, cache, options (no data) ------------------------------------------------


def test_resolve_root_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MRBENCH_DATA", raising=False)
    monkeypatch.delenv("MRBENCH_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_root(None) == tmp_path / "home" / ".cache" / "mrbench" / "data"
    monkeypatch.setenv("MRBENCH_HOME", str(tmp_path / "mh"))
    assert resolve_root(None) == tmp_path / "mh" / "data"
    monkeypatch.setenv("MRBENCH_DATA", str(tmp_path / "env"))
    assert resolve_root(None) == tmp_path / "env"
    assert resolve_root(tmp_path / "explicit") == tmp_path / "explicit"
    assert resolve_root(str(tmp_path / "explicit")) == tmp_path / "explicit"


def test_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MRBENCH_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MRBENCH_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("MRBENCH_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "mrbench" / "decoded"


def test_load_cached_round_trip_and_recovery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MRBENCH_CACHE", str(tmp_path / "c"))
    calls = []

    def decode() -> dict[str, np.ndarray]:
        calls.append(1)
        return {"x": np.arange(6, dtype=np.uint8).reshape(2, 3), "names": np.array(["a", "bc"])}

    first = load_cached("demo-key", decode)
    second = load_cached("demo-key", decode)
    assert len(calls) == 1
    assert np.array_equal(first["x"], second["x"]) and second["names"].tolist() == ["a", "bc"]
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["demo-key.npz"]  # no temporary files left

    path = cache_path("demo-key")
    path.write_bytes(path.read_bytes()[:40])  # truncated cache file
    with pytest.warns(RuntimeWarning, match="unreadable decode cache"):
        third = load_cached("demo-key", decode)
    assert len(calls) == 2 and np.array_equal(third["x"], first["x"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_cached("demo-key", decode)  # rewritten, so read cleanly
    assert len(calls) == 2

    with pytest.raises(ValueError, match="file name"):
        load_cached("../escape", decode)


def test_load_cached_unwritable_cache_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("MRBENCH_CACHE", str(tmp_path / "file" / "cache"))
    with pytest.warns(RuntimeWarning, match="MRBENCH_CACHE"):
        out = load_cached("k", lambda: {"x": np.zeros(2)})
    assert out["x"].shape == (2,)


def test_options_are_strict() -> None:
    with pytest.raises(OptionsError, match="rotation"):
        Omniglot(rotation=True)
    with pytest.raises(OptionsError):
        Omniglot(split="ravi")
    assert Omniglot().rotations and not Omniglot(split="lake").rotations
    assert Omniglot(split="lake", rotations=True).rotations
    assert Omniglot(split="vinyals").splits == ("meta-train", "meta-val", "meta-test")


# --- errors on broken files (no data) ---------------------------------------------


def _png(seed: int = 0) -> bytes:
    im = Image.new("1", (105, 105), 1)
    ImageDraw.Draw(im).line((10 + seed, 10, 90, 95 - seed), fill=0, width=4)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _write_zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _background(root: Path, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    members = {f"images_background/Alpha/character01/0001_{d:02d}.png": _png(d) for d in range(1, 4)}
    return _write_zip(root / "omniglot" / "images_background.zip", members, compression)


def _lake_train(root: Path) -> None:
    Omniglot(split="lake").load("meta-train", root)


def test_missing_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError) as exc:
        _lake_train(tmp_path / "nope")
    msg = _assert_data_error(exc, str(tmp_path / "nope" / "omniglot" / "images_background.zip"))
    assert "does not exist" in msg and f"folder {tmp_path / 'nope'} does not exist" in msg
    monkeypatch.setenv("MRBENCH_DATA", str(tmp_path / "from-env"))
    with pytest.raises(DataError) as exc:
        Omniglot().load("meta-train")  # vinyals reads its split file first
    _assert_data_error(exc, str(tmp_path / "from-env" / "omniglot" / "splits" / "vinyals" / "train.json"))


def test_missing_file(tmp_path: Path) -> None:
    _write_zip(tmp_path / "omniglot" / "images_evaluation.zip", {"x.txt": b"x"})
    with pytest.raises(DataError) as exc:
        _lake_train(tmp_path)
    _assert_data_error(exc, "images_background.zip")


def test_not_a_zip(tmp_path: Path) -> None:
    (tmp_path / "omniglot").mkdir()
    (tmp_path / "omniglot" / "images_background.zip").write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(DataError) as exc:
        _lake_train(tmp_path)
    assert "not a readable zip" in _assert_data_error(exc, "images_background.zip")


def test_truncated_zip(tmp_path: Path) -> None:
    path = _background(tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError) as exc:
        _lake_train(tmp_path)
    assert "truncated" in _assert_data_error(exc, "images_background.zip")


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_zip_with_corrupt_member(tmp_path: Path, compression: int) -> None:
    path = _background(tmp_path, compression)
    with zipfile.ZipFile(path) as zf:
        info = zf.infolist()[1]
    data = bytearray(path.read_bytes())
    # Local header: 30 bytes + name + extra, then the member's data.
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError) as exc:
        _lake_train(tmp_path)
    msg = _assert_data_error(exc, "images_background.zip")
    assert f"corrupt member {info.filename}" in msg


def test_png_that_fails_to_decode(tmp_path: Path) -> None:
    members = {
        "images_background/Alpha/character01/0001_01.png": _png(),
        "images_background/Alpha/character01/0001_02.png": _png()[:60],  # truncated PNG, intact zip
    }
    _write_zip(tmp_path / "omniglot" / "images_background.zip", members)
    with pytest.raises(DataError) as exc:
        _lake_train(tmp_path)
    assert "0001_02.png that is not a decodable PNG" in _assert_data_error(exc, "images_background.zip")


def test_incomplete_archive(tmp_path: Path) -> None:
    _background(tmp_path)
    with pytest.raises(DataError) as exc:
        _lake_train(tmp_path)
    msg = _assert_data_error(exc, "images_background.zip")
    assert "1 alphabets, 1 characters and 3 images" in msg and "incomplete" in msg


def test_member_outside_layout(tmp_path: Path) -> None:
    _write_zip(tmp_path / "omniglot" / "images_background.zip", {"Alpha/character01/0001_01.png": _png()})
    with pytest.raises(DataError) as exc:
        _lake_train(tmp_path)
    assert "outside the expected layout" in _assert_data_error(exc, "images_background.zip")


@pytest.mark.parametrize(
    "content", [b"{not json", b'{"train": {"Alpha": ["character01"]}}', b'{"background": ["x"]}']
)
def test_bad_vinyals_split_file(tmp_path: Path, content: bytes) -> None:
    folder = tmp_path / "omniglot" / "splits" / "vinyals"
    folder.mkdir(parents=True)
    (folder / "test.json").write_bytes(content)
    with pytest.raises(DataError) as exc:
        Omniglot().load("meta-test", tmp_path)
    _assert_data_error(exc, "test.json")


def test_lake_runs_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        OmniglotLakeRuns().load("meta-test", tmp_path)
    _assert_data_error(exc, "all_runs.zip")
    _write_zip(tmp_path / "omniglot" / "all_runs.zip", {
        "run01/class_labels.txt": b"run01/test/item01.png run01/training/class01.png\n",
        "run01/training/class01.png": _png(),
        "run01/test/item01.png": _png(1),
    })
    with pytest.raises(DataError) as exc:
        OmniglotLakeRuns().fixed_episodes("meta-test", tmp_path)
    assert "holds 1 runs" in _assert_data_error(exc, "all_runs.zip")
    with pytest.raises(MrbenchError, match="Its splits are: meta-test"):
        OmniglotLakeRuns().load("meta-train", tmp_path)


# --- MNIST errors (no data) -----------------------------------------------------------


def _idx(magic: int, shape: tuple[int, ...], fill: int = 0) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in shape)
    return header + bytes([fill]) * int(np.prod(shape))


def _mnist_files(root: Path, images: bytes, labels: bytes) -> Path:
    folder = root / "mnist"
    folder.mkdir(parents=True)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    return folder


def test_mnist_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        MNIST().load("meta-test", tmp_path)
    _assert_data_error(exc, "t10k-images-idx3-ubyte.gz")
    with pytest.raises(MrbenchError, match="meta-train, meta-test"):
        MNIST().load("meta-val", tmp_path)


def test_mnist_truncated_gzip(tmp_path: Path) -> None:
    folder = _mnist_files(tmp_path, _idx(0x803, (10000, 28, 28)), _idx(0x801, (10000,)))
    gz = folder / "t10k-labels-idx1-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[: gz.stat().st_size // 2])
    with pytest.raises(DataError) as exc:
        MNIST().load("meta-test", tmp_path)
    assert "truncated" in _assert_data_error(exc, "t10k-labels-idx1-ubyte.gz")


@pytest.mark.parametrize(
    ("images", "labels", "bad_file", "words"),
    [
        (_idx(0x801, (10000, 28, 28)), _idx(0x801, (10000,)), "t10k-images", "magic number"),
        (_idx(0x803, (500, 28, 28)), _idx(0x801, (500,)), "t10k-images", "declares the shape"),
        (_idx(0x803, (10000, 28, 28))[:-5], _idx(0x801, (10000,)), "t10k-images", "header implies"),
        (_idx(0x803, (10000, 28, 28)), _idx(0x801, (10000,), fill=12), "t10k-labels", "outside the digits"),
    ],
)
def test_mnist_bad_idx(tmp_path: Path, images: bytes, labels: bytes, bad_file: str, words: str) -> None:
    _mnist_files(tmp_path, images, labels)
    with pytest.raises(DataError) as exc:
        MNIST().load("meta-test", tmp_path)
    assert words in _assert_data_error(exc, bad_file)


# --- download (no network: file:// URLs) ---------------------------------------------


def test_download_from_file_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.gz").write_bytes(b"payload-a" * 1000)
    (src / "b.json").write_bytes(b"{}")
    urls = {"mnist": {"a.gz": ((src / "missing.gz").as_uri(), (src / "a.gz").as_uri()),  # first mirror fails
                      "splits/b.json": ((src / "b.json").as_uri(),)}}
    monkeypatch.setattr(dl, "URLS", urls)
    monkeypatch.setattr(dl, "MD5", {})
    seen: list[int] = []
    paths = dl.download("mnist", tmp_path / "root", progress=lambda p, done, total: seen.append(done))
    assert paths == [tmp_path / "root" / "mnist" / "a.gz", tmp_path / "root" / "mnist" / "splits" / "b.json"]
    assert paths[0].read_bytes() == b"payload-a" * 1000 and paths[1].read_bytes() == b"{}"
    assert seen and seen[-1] == 2
    assert sorted(p.name for p in (tmp_path / "root" / "mnist").iterdir()) == ["a.gz", "splits"]  # no .part left

    # Present files are kept unless forced.
    (src / "b.json").write_bytes(b'{"new": 1}')
    dl.download("mnist", tmp_path / "root")
    assert paths[1].read_bytes() == b"{}"
    dl.download("mnist", tmp_path / "root", force=True)
    assert paths[1].read_bytes() == b'{"new": 1}'


def test_download_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dl, "URLS", {"omniglot": {"all_runs.zip": ((tmp_path / "gone.zip").as_uri(),)}})
    with pytest.raises(DataError) as exc:
        dl.download("omniglot", tmp_path / "root")
    msg = str(exc.value)
    assert "all_runs.zip" in msg and "MRBENCH_DATA" in msg and "gone.zip" in msg
    assert not (tmp_path / "root" / "omniglot" / "all_runs.zip").exists()
    assert list((tmp_path / "root" / "omniglot").iterdir()) == []


def test_download_checksum_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "x.gz").write_bytes(b"not the official bytes")
    monkeypatch.setattr(dl, "URLS", {"mnist": {"x.gz": ((tmp_path / "x.gz").as_uri(),)}})
    monkeypatch.setattr(dl, "MD5", {("mnist", "x.gz"): "0" * 32})
    with pytest.raises(DataError, match="md5"):
        dl.download("mnist", tmp_path / "root")
    assert list((tmp_path / "root" / "mnist").iterdir()) == []


def test_download_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(MrbenchError, match="Known names: mnist, omniglot"):
        dl.download("imagenet", tmp_path)


def test_download_urls_cover_the_loaders_layout() -> None:
    assert set(dl.URLS["omniglot"]) == {
        "images_background.zip", "images_evaluation.zip", "all_runs.zip",
        "splits/vinyals/train.json", "splits/vinyals/val.json", "splits/vinyals/test.json",
    }
    kinds = ("images-idx3", "labels-idx1")
    assert set(dl.URLS["mnist"]) == {f"{s}-{k}-ubyte.gz" for s in ("train", "t10k") for k in kinds}
