"""Every input of the robustness corpus, through every verb that reads it: exit code 0 or 2, never a traceback,
a message when refused, nothing dropped silently, and nothing a hostile file plants ever runs."""

import json
import traceback

import pytest

from medvlkit.apps.cli import main
from robustness.corpus import data_cases, image_cases, model_cases, option_cases, prompt_cases

MODEL_VERBS = {"embed", "zeroshot", "probe", "gate", "index", "finetune", "retrieve"}
OUT_VERBS = MODEL_VERBS - {"index"} | {"evaluate", "apply-calibration", "report", "calibrate"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    marker = root / "PLANTED-CODE-RAN"
    cases = (image_cases(root / "images") + data_cases(root / "data", marker) + model_cases(root, marker)
             + prompt_cases(root) + option_cases(root))
    return root, marker, cases


def _argv(argv: list[str], model: str, out) -> list[str]:
    verb, rest = argv[0], argv[1:]
    extra = []
    if verb in MODEL_VERBS:
        extra += ["--quiet", "--workers", "0"] + ([] if "--model" in rest else ["--model", model])
    if verb in ("probe", "zeroshot", "finetune"):
        extra += ["--bootstrap", "0"]
    if verb in OUT_VERBS and "--out" not in rest:
        extra += ["--out", str(out)]
    return [verb, *extra, *rest]


def run_cases(cases: list, model: str, out_root, capsys) -> tuple[list[str], int]:
    """Every command line of ``cases`` through the CLI in-process: (the failures, the number of runs). A run fails
    on a crash, an exit code other than 0 or 2, a printed traceback, a refusal without a message, or (embed of an
    image case) images embedded + skipped other than the case's files."""
    failures, runs = [], 0
    for case in cases:
        for i, argv in enumerate(case.argv):
            out = out_root / f"{case.name.replace('/', '_').replace(':', '_')}-{i}"
            runs += 1
            try:
                rc = main(_argv(argv, model, out))
            except BaseException as err:  # noqa: BLE001 - a crash is what this test looks for
                failures.append(f"{case.name} {argv[0]}: CRASH {type(err).__name__}: {err}\n"
                                + "".join(traceback.format_exception(err)[-3:]))
                continue
            err_text = capsys.readouterr().err
            if rc not in (0, 2):
                failures.append(f"{case.name} {argv[0]}: exit code {rc}: {err_text[-300:]}")
            elif "Traceback" in err_text:
                failures.append(f"{case.name} {argv[0]}: traceback printed: {err_text[-300:]}")
            elif rc == 2 and not err_text.strip():
                failures.append(f"{case.name} {argv[0]}: refused without a message")
            elif rc == 0 and case.expect_items and argv[0] == "embed":
                res = json.loads((out / "result.json").read_text())
                if res["metrics"]["n_images"] + res["n_skipped"] != case.expect_items:
                    failures.append(f"{case.name}: {res['metrics']['n_images']} embedded + {res['n_skipped']} "
                                    f"skipped != {case.expect_items} files")
    return failures, runs


def test_corpus_never_crashes(corpus, tiny_clip_dir, capsys, monkeypatch):
    root, marker, cases = corpus
    monkeypatch.chdir(root)
    assert len(cases) >= 80
    failures, runs = run_cases(cases, f"hf:{tiny_clip_dir}", root / "out", capsys)
    assert not marker.exists(), "a planted payload ran"
    print(f"robustness corpus: {len(cases)} inputs, {runs} CLI runs, {len(failures)} failures")
    assert not failures, f"{len(failures)} of {runs} runs failed:\n" + "\n".join(failures)


def test_corpus_through_the_python_api(corpus, tiny_clip_dir):
    """The Python API on the same inputs raises MedvlkitError (or its subclasses) and nothing else."""
    from medvlkit import MedvlkitError, create_model, load_dataset
    from medvlkit.engine.features import embed_images

    root, marker, cases = corpus
    model = create_model(f"hf:{tiny_clip_dir}")
    failures, calls = [], 0
    for case in cases:
        for argv in case.argv:
            args = dict(zip(argv[1::1], argv[2::1]))
            try:
                calls += 1
                if "--model" in args and case.kind == "model":
                    create_model(args["--model"])
                elif "--data" in args and argv[0] in ("datasets", "embed") and "--split" not in args:
                    ds = load_dataset(args["--data"], recursive="--recursive" in argv)
                    embed_images(model, ds, num_workers=0, progress=False, on_error="fail", cache=False)
            except MedvlkitError:
                pass
            except Exception as err:  # noqa: BLE001 - anything else is a crash of the API
                failures.append(f"{case.name}: {type(err).__name__}: {err}")
    assert not marker.exists()
    assert calls > 150 and not failures, "\n".join(failures)
