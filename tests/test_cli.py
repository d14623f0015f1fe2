"""The command line: main paths and bad input (one-paragraph errors, no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import pytest

from bench.cli import main


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=300)


def assert_clean_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    text = " ".join(proc.stderr.split())
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"


@pytest.mark.subprocess
def test_plugins_json_lists_first_party_components():
    proc = run_cli("plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    plugins = {p["name"]: p for p in json.loads(proc.stdout)["plugins"]}
    assert set(plugins["mrbench-metric"]["components"]["algorithm"]) == {"protonet", "matchingnet", "relationnet"}
    assert {"maml", "fomaml", "anil", "metasgd", "reptile"} <= set(plugins["mrbench-gradient"]["components"]["algorithm"])
    assert set(plugins["mrbench-finetune"]["components"]["algorithm"]) == {"finetune", "finetune-cosine"}
    assert plugins["mrbench-gradient"]["distribution"] == "mrbench-gradient"
    assert {"procedural-glyphs", "omniglot", "omniglot-lake-runs", "mnist"} <= set(
        plugins["builtin"]["components"]["dataset"])


def test_plugins_table(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "mrbench-metric" in out and "protonet" in out and "procedural-glyphs" in out


def test_suites_lists_the_standard_suites(capsys):
    assert main(["suites", "--json"]) == 0
    ids = {s["id"] for s in json.loads(capsys.readouterr().out)}
    assert {"glyphs-5w1s", "omniglot-5w1s", "omniglot-5w5s", "omniglot-lake-runs"} <= ids


@pytest.mark.subprocess
def test_unknown_algorithm_lists_the_known_ones(tmp_path):
    proc = run_cli("train", "protonett", "--suite", "glyphs-5w1s", "--out", str(tmp_path / "x.pt"))
    assert_clean_error(proc, "Unknown algorithm 'protonett'", "Did you mean 'protonet'?", "maml", "fomaml")


@pytest.mark.subprocess
def test_unknown_suite_lists_the_known_ones(tmp_path):
    proc = run_cli("train", "protonet", "--suite", "omniglot-5w1", "--out", str(tmp_path / "x.pt"))
    assert_clean_error(proc, "Unknown suite 'omniglot-5w1'", "omniglot-5w1s")


@pytest.mark.subprocess
def test_misspelled_algorithm_option(tmp_path):
    proc = run_cli("train", "maml", "--suite", "glyphs-5w1s", "--out", str(tmp_path / "x.pt"), "-o", "inner_lrr=0.1")
    assert_clean_error(proc, "inner_lrr", "Known options:", "inner_lr")


@pytest.mark.subprocess
def test_misspelled_flag():
    proc = run_cli("train", "protonet", "--suite", "glyphs-5w1s", "--stpes", "3", "--out", "x.pt")
    assert_clean_error(proc, "unrecognized arguments: --stpes", "--help")


@pytest.mark.subprocess
def test_missing_data_root(tmp_path):
    proc = run_cli("train", "protonet", "--suite", "omniglot-5w1s", "--steps", "1", "--out", str(tmp_path / "x.pt"),
                   env={"MRBENCH_DATA": str(tmp_path / "nowhere"), "MRBENCH_CACHE": str(tmp_path / "cache")})
    assert_clean_error(proc, f"{tmp_path / 'nowhere'}", "does not exist", "MRBENCH_DATA",
                       "mrbench data download omniglot")


@pytest.mark.subprocess
def test_truncated_archive_names_the_file(tmp_path):
    root = tmp_path / "data" / "omniglot"
    # A valid split file, so the archive is what fails.
    (root / "splits" / "vinyals").mkdir(parents=True)
    for name in ("train", "val", "test"):
        (root / "splits" / "vinyals" / f"{name}.json").write_text('{"background": {"A": ["character01"]}}')
    with zipfile.ZipFile(root / "images_background.zip", "w") as zf:
        for i in range(50):
            zf.writestr(f"images_background/A/character01/{i:04d}_01.png", os.urandom(2000))
    data = (root / "images_background.zip").read_bytes()
    (root / "images_background.zip").write_bytes(data[: len(data) // 2])
    proc = run_cli("data", "check", "omniglot", "--data-root", str(tmp_path / "data"),
                   env={"MRBENCH_CACHE": str(tmp_path / "cache")})
    assert_clean_error(proc, f"{root / 'images_background.zip'} is not a readable zip archive",
                       "truncated, corrupt", "mrbench data download omniglot")


@pytest.mark.subprocess
def test_unknown_shift_and_bad_severity(tmp_path, tiny_suite):
    proc = run_cli("evaluate", "protonet", "--suite", "glyphs-5w1s", "--checkpoint", "x.pt", "--out", "r.json",
                   "--shift", "gausian-noise:2")
    assert_clean_error(proc, "Unknown shift 'gausian-noise'", "Did you mean 'gaussian-noise'?")
    proc = run_cli("evaluate", "protonet", "--suite", "glyphs-5w1s", "--checkpoint", "x.pt", "--out", "r.json",
                   "--shift", "gaussian-noise:high")
    assert_clean_error(proc, "severity 'high' is not an integer")


@pytest.mark.subprocess
def test_missing_checkpoint(tmp_path):
    proc = run_cli("evaluate", "protonet", "--suite", "glyphs-5w1s", "--checkpoint", str(tmp_path / "none.pt"),
                   "--out", str(tmp_path / "r.json"))
    assert_clean_error(proc, "none.pt", "does not exist", "mrbench train")


def test_train_evaluate_run_end_to_end(tmp_path, tiny_suite, capsys):
    ckpt, res = tmp_path / "p.pt", tmp_path / "r.json"
    common = ["--device", "cpu", "--quiet"]
    assert main(["train", "protonet", "--suite", tiny_suite, "--steps", "3", "--meta-batch", "1", "--out", str(ckpt),
                 *common]) == 0
    assert main(["evaluate", "protonet", "--suite", tiny_suite, "--checkpoint", str(ckpt), "--out", str(res),
                 "--shift", "gaussian-noise:2", "--shift", "contrast", *common]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "clean accuracy" in out and "gaussian-noise@2 accuracy" in out and str(res) in out
    entry = json.loads(res.read_text())
    assert entry["metrics"]["clean"]["n_episodes"] == 12
    assert list(entry["metrics"]) == ["clean", "gaussian-noise@2"] + [f"contrast@{s}" for s in range(1, 6)]
    assert main(["run", "--suite", tiny_suite, "--steps", "2", "--out", str(tmp_path / "runs"), *common]) == 0
    out = " ".join(capsys.readouterr().out.split())
    run_dir = tmp_path / "runs" / "tiny-glyphs-v1-protonet-seed0"
    assert (run_dir / "checkpoint.pt").exists() and (run_dir / "result.json").exists()
    assert str(run_dir / "result.json") in out
