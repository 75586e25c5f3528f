"""Issue 25, item 19: every artifact medvlkit writes, damaged or edited, read back by the command that uses it: exit
code 0 or 2, one line naming the file and what was expected, never a traceback (failed on the main of 2026-12-06:
index folders, probes, ft: folders, lite heads, cache shards of another width...)."""

import traceback

import pytest

from medvlkit.cli import main
from robustness.artifacts import artifact_cases, build_artifacts
from robustness.test_corpus import _argv


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, tiny_clip_dir):
    root = tmp_path_factory.mktemp("artifacts")
    model = f"hf:{tiny_clip_dir}"
    made = build_artifacts(root / "good", model, main)
    return root, artifact_cases(root / "tampered", made, model), model


def test_item19_tampered_artifacts_are_refused_in_one_line(artifacts, capsys):
    root, cases, model = artifacts
    assert len(cases) >= 40
    failures, runs = [], 0
    for case in cases:
        for i, argv in enumerate(case.argv):
            out = root / "out" / f"{case.name.replace(':', '_')}-{i}"
            runs += 1
            try:
                rc = main(_argv(argv, model, out))
            except BaseException as err:  # noqa: BLE001 - a crash is what this test looks for
                failures.append(f"{case.name}: CRASH {type(err).__name__}: {err}\n"
                                + "".join(traceback.format_exception(err)[-3:]))
                continue
            err_text = capsys.readouterr().err
            if rc not in (0, 2):
                failures.append(f"{case.name}: exit code {rc}: {err_text[-300:]}")
            elif "Traceback" in err_text:
                failures.append(f"{case.name}: traceback printed: {err_text[-300:]}")
            elif rc == 2 and not err_text.strip():
                failures.append(f"{case.name}: refused without a message")
    print(f"tampered artifacts: {len(cases)} cases, {runs} CLI runs, {len(failures)} failures")
    assert not failures, f"{len(failures)} of {runs} runs failed:\n" + "\n".join(failures)
