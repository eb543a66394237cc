"""Provenance of the results: which commit ran."""

from ufp4_compile.training import experiment


def test_git_sha_prefers_the_named_commit(monkeypatch):
    monkeypatch.setenv("UFP4_GIT_SHA", "0123abc")
    assert experiment.git_sha() == "0123abc"
    monkeypatch.delenv("UFP4_GIT_SHA")
    sha = experiment.git_sha()
    assert sha is None or (sha != "0123abc" and len(sha) >= 7)
