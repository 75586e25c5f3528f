"""Issue 25, item 19: every artifact medvlkit writes, damaged or edited, read back by the command that uses it: exit
code 0 or 2, one line naming the file and what was expected, never a traceback (failed on the main of 2026-12-06:
index folders, probes, ft: folders, lite heads, cache shards of another width...)."""

import pytest

from medvlkit.apps.cli import main
from robustness.artifacts import artifact_cases, build_artifacts
from robustness.test_corpus import run_cases


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, tiny_clip_dir):
    root = tmp_path_factory.mktemp("artifacts")
    model = f"hf:{tiny_clip_dir}"
    made = build_artifacts(root / "good", model, main)
    return root, artifact_cases(root / "tampered", made, model), model


def test_item19_tampered_artifacts_are_refused_in_one_line(artifacts, capsys):
    root, cases, model = artifacts
    assert len(cases) >= 40
    failures, runs = run_cases(cases, model, root / "out", capsys)
    print(f"tampered artifacts: {len(cases)} cases, {runs} CLI runs, {len(failures)} failures")
    assert not failures, f"{len(failures)} of {runs} runs failed:\n" + "\n".join(failures)
