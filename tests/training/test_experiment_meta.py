"""Provenance of the results: which commit ran."""

from ufp4_compile.training import experiment


def test_git_sha_prefers_the_named_commit(monkeypatch):
    monkeypatch.setenv("UFP4_GIT_SHA", "0123abc")
    assert experiment.git_sha() == "0123abc"
    monkeypatch.delenv("UFP4_GIT_SHA")
    sha = experiment.git_sha()
    assert sha is None or (sha != "0123abc" and len(sha) >= 7)


def test_git_sha_marks_a_tree_that_differs_from_its_commit(monkeypatch, tmp_path):
    """A tree whose tracked files differ from the checked-out commit (a copy of a newer tree over an older
    .git) is reported as ``<sha>-dirty``, not as that commit."""
    import pathlib
    import shutil
    import subprocess

    if shutil.which("git") is None:
        import pytest

        pytest.skip("no git")
    repo = tmp_path / "repo"
    package = repo / "ufp4_compile" / "training"
    package.mkdir(parents=True)
    (package / "experiment.py").write_text("x = 1\n")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "one"]):
        subprocess.run(["git", *cmd], cwd=repo, check=True, env={**__import__("os").environ, **env})
    monkeypatch.delenv("UFP4_GIT_SHA", raising=False)
    monkeypatch.setattr(experiment, "__file__", str(package / "experiment.py"))
    clean = experiment.git_sha()
    assert clean and not clean.endswith("-dirty")
    (package / "experiment.py").write_text("x = 2\n")
    assert experiment.git_sha() == clean + "-dirty"
    assert pathlib.Path(experiment.__file__).parent == package
