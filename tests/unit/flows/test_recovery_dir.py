"""Recovery directories: a mismatch names what differs (issue 18 item 17), bad paths fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.recovery import check_recovery_dir, prepare_recovery_dir
from flows.settings import JobSettings
from hcp.errors import RecoveryStateError


def _settings(root: Path, **changes: object) -> JobSettings:
    return JobSettings(recovery_dir=root, **changes)


def test_mismatch_names_each_difference(tmp_path: Path) -> None:
    root = tmp_path / "rec"
    made = _settings(root)
    t = made.topics
    prepare_recovery_dir(made, {t.gpu: 8, t.asic: 8, t.prices: 2}, 1)
    other = _settings(root, window_s=30.0)
    with pytest.raises(RecoveryStateError) as info:
        prepare_recovery_dir(other, {t.gpu: 4, t.asic: 8, t.prices: 2}, 1)
    text = str(info.value)
    assert "window_ms was 60000, now 30000" in text
    assert f"topics.{t.gpu} was 8, now 4" in text
    assert "asic" not in text and "{" not in text  # only what differs, no dict dumps
    # The same settings resume.
    assert prepare_recovery_dir(made, {t.gpu: 8, t.asic: 8, t.prices: 2}, 1) == root


def test_bad_paths_and_corrupt_manifest(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("x")
    with pytest.raises(RecoveryStateError, match="is a file, not a directory"):
        check_recovery_dir(plain)
    with pytest.raises(RecoveryStateError, match="cannot be used: Not a directory"):
        check_recovery_dir(plain / "sub")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "hcp-recovery.json").write_text("{not json")
    with pytest.raises(RecoveryStateError, match="is corrupt"):
        check_recovery_dir(corrupt)
    check_recovery_dir(tmp_path / "new" / "dir")
    assert (tmp_path / "new" / "dir").is_dir()
