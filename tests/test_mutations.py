"""The mutation check (python -m tests.mutations) itself: its targets are in the tree, and
one planted mistake is caught. The full check runs in CI after the suite (.ci/run)."""
from tests import mutations


def test_every_planted_mistake_finds_its_target():
    assert mutations.check_targets(mutations.MUTATIONS) == []


def test_a_planted_mistake_is_caught(capsys):
    assert mutations.main(["--only", "k_const-term-dropped"]) == 0
    assert "caught by tests/losses/test_fgd.py::" in capsys.readouterr().out
