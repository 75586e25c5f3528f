"""Files medvlkit wrote itself, damaged or edited (issue 25, item 19): index folders, probes, fine-tuned model
folders, lite heads, embedding and text cache files, calibrations, result files, checkpoints. Each case copies a
good artifact made by the CLI with a tiny model, tampers with it, and names the command that reads it back."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np

from helpers import make_image, make_split_folders
from robustness.corpus import Case


def build_artifacts(root: Path, model: str, run) -> dict[str, Path]:
    """Good artifacts, each made by the CLI (``run(argv) -> exit code``) with the tiny model ``model``."""
    data = make_split_folders(root / "data", {"train": 4, "val": 2, "test": 2})
    quiet = ["--quiet", "--workers", "0"]
    made = {"data": data, "cache": root / "cache"}
    steps = {
        "index": ["index", "--model", model, "--data", str(data / "test"), "--out", str(root / "index"), *quiet,
                  "--no-cache"],
        "probe": ["probe", "--model", model, "--data", str(data), "--out", str(root / "probe"), "--bootstrap", "0",
                  *quiet, "--no-cache"],
        "ft": ["finetune", "--model", model, "--data", str(data), "--lora", "r=2,dropout=0", "--max-steps", "1",
               "--batch-size", "4", "--device", "cpu", "--test-split", "none", "--out", str(root / "ft"), *quiet],
        "zeroshot": ["zeroshot", "--model", model, "--data", str(data), "--split", "val", "--prompts", "pneumonia",
                     "--out", str(root / "zeroshot"), "--bootstrap", "0", *quiet, "--cache-dir", str(root / "cache")],
    }
    for name, argv in steps.items():
        assert run(argv) == 0, f"building the {name} artifact failed"
    assert run(["calibrate", "--predictions", str(root / "zeroshot" / "predictions.csv"), "--out",
                str(root / "calib")]) == 0
    made |= {"index": root / "index", "probe": root / "probe" / "probe.npz", "ft": root / "ft" / "best",
             "ft_run": root / "ft", "zeroshot": root / "zeroshot", "calib": root / "calib" / "calibration.json"}
    return made


def _copy(src: Path, dst: Path) -> Path:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    return dst


def _edit_json(path: Path, fn: Callable[[dict], None]) -> None:
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(json.dumps(obj))


def _index_cases(root: Path, made: dict, model: str) -> list[Case]:
    import faiss

    cases = []

    def case(name: str, tamper: Callable[[Path], None]) -> None:
        folder = _copy(made["index"], root / f"index-{name}")
        tamper(folder)
        cases.append(Case(f"artifact:index:{name}", [["search", "--model", model, "--index", str(folder), "--text",
                                                       "opacity", "-k", "2"]], kind="artifact"))

    def faiss_bytes(folder: Path) -> bytes:
        return (folder / "index.faiss").read_bytes()

    case("faiss_truncated", lambda f: (f / "index.faiss").write_bytes(faiss_bytes(f)[:len(faiss_bytes(f)) // 2]))
    case("faiss_garbage", lambda f: (f / "index.faiss").write_bytes(np.random.default_rng(0).bytes(400)))

    def other_dim(f: Path) -> None:
        idx = faiss.IndexFlatIP(7)
        idx.add(np.ones((4, 7), np.float32))
        faiss.write_index(idx, str(f / "index.faiss"))

    case("faiss_other_dimension", other_dim)

    def huge(f: Path) -> None:
        data = bytearray(faiss_bytes(f))
        data[8:16] = struct.pack("<q", 10 ** 12)  # the header's ntotal
        (f / "index.faiss").write_bytes(bytes(data))

    case("faiss_huge_ntotal", huge)
    case("files_empty", lambda f: (f / "files.csv").write_text(""))
    case("files_short", lambda f: (f / "files.csv").write_text("\n".join(
        (f / "files.csv").read_text().splitlines()[:2]) + "\n"))
    case("files_injected", lambda f: (f / "files.csv").write_text((f / "files.csv").read_text()
                                                                  + "99,/etc/passwd,,\n"))
    case("json_malformed", lambda f: (f / "index.json").write_text("{not json"))
    case("json_no_fingerprint", lambda f: _edit_json(f / "index.json", lambda o: o.pop("model_fingerprint")))
    case("json_list", lambda f: (f / "index.json").write_text("[1, 2]"))
    return cases


def _probe_cases(root: Path, made: dict, model: str) -> list[Case]:
    cases = []

    def case(name: str, arrays: Callable[[dict], dict]) -> None:
        with np.load(made["probe"], allow_pickle=False) as z:
            content = {k: z[k] for k in z.files}
        path = root / f"probe-{name}.npz"
        np.savez(path, **arrays(content))
        cases.append(Case(f"artifact:probe:{name}", [["probe", "--model", model, "--load", str(path), "--data",
                                                       str(made["data"]), "--test-split", "test"]], kind="artifact"))

    def header(edit: Callable[[dict], None]) -> Callable[[dict], dict]:
        def fn(c: dict) -> dict:
            h = json.loads(str(c["header"]))
            edit(h)
            return c | {"header": np.asarray(json.dumps(h))}
        return fn

    case("c_string", header(lambda h: h.update(C="abc")))
    case("classnames_number", header(lambda h: h.update(classnames=7)))
    case("coef_other_dimension", lambda c: c | {"coef": np.zeros((c["coef"].shape[0], 7))})
    case("intercept_short", lambda c: c | {"intercept": np.zeros(1)})
    case("coef_nan", lambda c: c | {"coef": np.full_like(c["coef"], np.nan)})
    case("header_garbage", lambda c: c | {"header": np.asarray("{oops")})
    case("no_coef", lambda c: {k: v for k, v in c.items() if k != "coef"})
    return cases


def _ft_cases(root: Path, made: dict) -> list[Case]:
    from safetensors.numpy import load_file, save_file

    cases = []
    test = str(made["data"] / "test")

    def case(name: str, tamper: Callable[[Path], None]) -> None:
        folder = _copy(made["ft"], root / f"ft-{name}")
        tamper(folder)
        cases.append(Case(f"artifact:ft:{name}", [["zeroshot", "--model", f"ft:{folder}", "--data", test,
                                                    "--classes", "normal,pneumonia"]], kind="artifact"))

    def meta(edit: Callable[[dict], None]) -> Callable[[Path], None]:
        return lambda f: _edit_json(f / "finetune.json", edit)

    case("base_is_itself", lambda f: _edit_json(f / "finetune.json", lambda o: o.update(base=f"ft:{f}")))
    case("base_not_a_string", meta(lambda o: o.update(base=5)))
    case("lora_unknown_key", meta(lambda o: o["lora"].update(bogus=1)))
    case("lora_string_rank", meta(lambda o: o["lora"].update(r="two")))
    case("lora_layers_missing", meta(lambda o: o.update(lora_layers=["no.such.layer"])))
    case("lora_not_an_object", meta(lambda o: o.update(lora="r=2")))

    def head_without_weight(f: Path) -> None:
        state = load_file(str(f / "trained.safetensors"))
        state["classifier.linear.bias"] = np.zeros(2, np.float32)
        save_file(state, str(f / "trained.safetensors"))

    case("classifier_without_weight", head_without_weight)
    case("trained_truncated", lambda f: (f / "trained.safetensors").write_bytes(
        (f / "trained.safetensors").read_bytes()[:50]))
    case("trained_garbage", lambda f: (f / "trained.safetensors").write_bytes(b"\x00" * 64))
    case("adapter_truncated", lambda f: (f / "adapter.safetensors").write_bytes(
        (f / "adapter.safetensors").read_bytes()[:80]))

    def wrong_shape(name: str) -> Callable[[Path], None]:
        def tamper(f: Path) -> None:
            state = load_file(str(f / name))
            state[next(iter(state))] = np.zeros((3, 5), np.float32)
            save_file(state, str(f / name))
        return tamper

    case("trained_wrong_shape", wrong_shape("trained.safetensors"))
    case("adapter_wrong_shape", wrong_shape("adapter.safetensors"))
    return cases


def _lite_cases(root: Path) -> list[Case]:
    from importlib import resources

    shipped = Path(str(resources.files("medvlkit.models") / "weights"))
    cases = []
    data = str(make_image(root / "lite-data" / "a.png").parent)

    def case(name: str, tamper: Callable[[Path], None]) -> None:
        folder = root / f"lite-{name}"
        folder.mkdir()
        for f in ("lite_heads.safetensors", "lite_config.json"):
            shutil.copy(shipped / f, folder / f)
        tamper(folder)
        cases.append(Case(f"artifact:lite:{name}", [["embed", "--model", f"lite:{folder}", "--data", data]],
                          kind="artifact"))

    case("config_malformed", lambda f: (f / "lite_config.json").write_text("{oops"))
    case("config_list", lambda f: (f / "lite_config.json").write_text("[1]"))
    case("config_unknown_field", lambda f: _edit_json(f / "lite_config.json", lambda o: o.update(bogus=1)))
    case("config_string_dim", lambda f: _edit_json(f / "lite_config.json", lambda o: o.update(embed_dim="wide")))
    case("config_other_dim", lambda f: _edit_json(f / "lite_config.json", lambda o: o.update(embed_dim=64)))
    case("heads_truncated", lambda f: (f / "lite_heads.safetensors").write_bytes(
        (f / "lite_heads.safetensors").read_bytes()[:100]))
    return cases


def _cache_cases(root: Path, made: dict, model: str) -> list[Case]:
    """The zeroshot run's embedding cache, each damaged in another copy; the same run read again through it."""
    cases = []
    val = str(made["data"])

    def case(name: str, tamper: Callable[[Path], None]) -> None:
        cache = _copy(made["cache"], root / f"cache-{name}")
        tamper(cache)
        argv = ["zeroshot", "--model", model, "--data", val, "--split", "val", "--prompts", "pneumonia",
                "--cache-dir", str(cache)]
        cases.append(Case(f"artifact:cache:{name}", [argv, argv], kind="artifact"))  # twice: it must not stick

    def shard_other_width(cache: Path) -> None:
        shard = next(cache.rglob("shard-*.npz"))
        with np.load(shard) as z:
            keys = z["keys"]
        np.savez(shard, keys=keys, vectors=np.ones((len(keys), 7), np.float32))

    def shard_nan(cache: Path) -> None:
        shard = next(cache.rglob("shard-*.npz"))
        with np.load(shard) as z:
            keys, vectors = z["keys"], z["vectors"]
        np.savez(shard, keys=keys, vectors=np.full_like(vectors, np.nan))

    def texts_other_width(cache: Path) -> None:
        for f in cache.rglob("texts/*/*.npy"):
            np.save(f, np.ones((np.load(f).shape[0], 7), np.float32))

    case("shard_other_width", shard_other_width)
    case("shard_nan", shard_nan)
    case("texts_other_width", texts_other_width)
    case("shard_truncated", lambda c: next(c.rglob("shard-*.npz")).write_bytes(b"PK\x03\x04"))
    return cases


def _run_file_cases(root: Path, made: dict, model: str) -> list[Case]:
    cases = []
    calib = made["calib"]

    def calibration(name: str, text: str) -> None:
        path = root / f"calibration-{name}.json"
        path.write_text(text)
        cases.append(Case(f"artifact:calibration:{name}", [["apply-calibration", "--predictions",
                                                             str(made["zeroshot"] / "predictions.csv"),
                                                             "--calibration", str(path)]], kind="artifact"))

    good = json.loads(calib.read_text())
    calibration("malformed", "{oops")
    calibration("temperature_string", json.dumps(good | {"temperature": "hot"}))
    calibration("temperature_zero", json.dumps(good | {"temperature": 0}))
    calibration("thresholds_short", json.dumps(good | {"thresholds": [0.5]}))
    calibration("classes_other", json.dumps(good | {"classnames": ["x", "y"]}))
    for name, text in (("malformed", "{oops"), ("list", "[1]"), ("metrics_string", None)):
        folder = _copy(made["zeroshot"], root / f"result-{name}")
        if text is None:
            _edit_json(folder / "result.json", lambda o: o.update(metrics="many", ci=5))
        else:
            (folder / "result.json").write_text(text)
        cases.append(Case(f"artifact:result:{name}", [["report", str(folder)]], kind="artifact"))
    run = _copy(made["ft_run"], root / "ft-run-truncated")
    ckpt = run / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    cases.append(Case("artifact:checkpoint:truncated", [[
        "finetune", "--model", model, "--data", str(made["data"]), "--lora", "r=2,dropout=0", "--max-steps", "2",
        "--batch-size", "4", "--device", "cpu", "--test-split", "none", "--out", str(run), "--resume"]],
        kind="artifact"))
    return cases


def artifact_cases(root: Path, made: dict, model: str) -> list[Case]:
    """Every tampered artifact with the command that reads it (see the module docstring)."""
    return (_index_cases(root, made, model) + _probe_cases(root, made, model) + _ft_cases(root, made)
            + _lite_cases(root) + _cache_cases(root, made, model) + _run_file_cases(root, made, model))
