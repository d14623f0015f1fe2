"""Committed suites regenerate exactly the manifests they pin."""

from __future__ import annotations

import dataclasses

import pytest

from bench.errors import MrbenchError
from bench.plugins import get_registry
from bench.suites import all_suites, get_suite, suite_manifest

SUITES = sorted(k for k in all_suites() if "@" in k)
FILE_FREE = [s for s in SUITES if all_suites()[s].test.dataset == "procedural-glyphs"]
NEEDS_DATA = [s for s in SUITES if s not in FILE_FREE]


def test_every_suite_pins_its_manifest_and_revision():
    for ref in SUITES:
        s = all_suites()[ref]
        assert s.manifest_sha256 and len(s.manifest_sha256) == 64, ref
        assert s.revision, ref


@pytest.mark.parametrize("ref", FILE_FREE)
def test_file_free_suite_regenerates_its_pinned_manifest(ref):
    manifest, split, _ = suite_manifest(all_suites()[ref], get_registry())
    assert manifest.sha256() == all_suites()[ref].manifest_sha256
    assert manifest.n_episodes == all_suites()[ref].n_episodes


@pytest.mark.data
@pytest.mark.parametrize("ref", NEEDS_DATA)
def test_data_suite_regenerates_its_pinned_manifest(ref, data_root):
    s = all_suites()[ref]
    manifest, split, _ = suite_manifest(s, get_registry(), data_root)
    assert manifest.sha256() == s.manifest_sha256 and split.revision == s.revision
    pinned = (s.attacks or {}).get("ensemble_manifest_sha256")
    if pinned:  # the ensemble's fixed subset: the suite's first ensemble_episodes episodes
        n = int(s.attacks["ensemble_episodes"])
        subset, _, _ = suite_manifest(s, get_registry(), data_root, n)
        assert subset.n_episodes == n and subset.sha256() == pinned


def test_a_changed_protocol_is_caught():
    s = get_suite("glyphs-5w1s")
    with pytest.raises(MrbenchError, match="publish a new suite version"):
        suite_manifest(dataclasses.replace(s, seed=s.seed + 1), get_registry())
    with pytest.raises(MrbenchError, match="revision"):
        suite_manifest(dataclasses.replace(s, revision="0000"), get_registry())


def test_suite_lookup_by_version():
    assert get_suite("omniglot-5w1s@v1").version == 1
    assert get_suite("omniglot-5w1s").ref == "omniglot-5w1s@v1"
