"""The README's command lines executed, in order, so they cannot drift (issue 11): every `domainlm ...` line
of its bash blocks runs through the CLI in a temporary working directory and must exit 0, and what the README
says a command leaves behind must be there.

Only these substitutions are made, nothing else of a line changes:

* models: the decoders (`meta-llama/Llama-2-7b-hf`, `smollm2-135m`, `gemma3-270m`, `PATH`) become a tiny
  saved Llama, `minilm` (also `bench`'s default, where a line names no model) a tiny saved BERT; `NAME`, the
  model a teacher serves, is that Llama's directory name, as `serve` names it;
* `$DATA` and `../shared/data` become a data directory this file writes: the shared data's layout with a few
  dozen synthetic items (`write_data`);
* `--port 8000` and its URL become a free loopback port;
* small limits (`SMALL`; the synergy bench runs fold0 of its five) are set where a command takes them:
  values a line gives are replaced, others appended;
* `runs/student*` is expanded as the shell would;
* `accelerate launch ... -m domainlm CMD` runs as `domainlm CMD`, the single-process run the README says it
  is ("the same command without it"): the multi-process path has its own test (tests/test_distributed.py).

`serve` runs as a subprocess (it blocks) and stops once the `augment` lines after it have used it; every other
command runs in-process (typer's CliRunner). Files a line reads but the README does not make (`my.csv`,
`new_molecules.csv`, `sentences.fr`) are written first; tag libraries a section assumes but does not train
(`runs/en`; the cross-domain section's MiniLM `runs/qed` and `runs/descriptor`) are trained before its first
line, by the `PREPARE` lines, in the README's own form.
"""

from __future__ import annotations

import glob
import json
import pickle
import random
import re
import shlex
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import httpx
import numpy as np
import pytest

from cli_helpers import invoke, read_csv, toy_rows, write_csv
from test_readme import README, commands

DECODERS = ("meta-llama/Llama-2-7b-hf", "smollm2-135m", "gemma3-270m", "PATH")
TRAIN = {"--limit-train": 8, "--limit-eval": 4, "--epochs": 1, "--batch-size": 4, "--grad-accum": 1}
# Per command: option -> small value (replacing the line's own value, or appended).
SMALL = {
    "train": TRAIN,
    "bench": TRAIN,
    "finetune": {"--limit": 4, "--epochs": 1, "--batch-size": 2, "--grad-accum": 1, "--max-answer-tokens": 8},
    # Four requests; a tiny random teacher's empty reply is retried after 10 ms, not 1 s doubling.
    "augment": {"--limit": 2, "--max-tokens": 16, "--backoff": 0.01},
    "translate": {"--max-new-tokens": 6},
}
SYNERGY = {"--fold": "fold0"}  # synergy benches one of its five folds
CROSS_DOMAIN = "Cross-domain tasks: binding affinity (dta) and synergy"
# Section heading -> what runs before its first line.
PREPARE = {
    "Translation": [  # the section trains <FR> and uses <EN> too: each language tag is trained the same way
        "domainlm train --stage domain --model gemma3-270m --corpus $DATA/translation/tatoeba --language EN "
        "--out runs/en"
    ],
    CROSS_DOMAIN: [  # "the stage-2 libraries (any qed / descriptor tag run's `tags/` folder)", on MiniLM
        "domainlm train --task qed --model minilm --data-dir $DATA --out runs/qed",
        "domainlm train --task descriptor --model minilm --data-dir $DATA --out runs/descriptor",
    ],
}
# Sections run in a working directory of their own (the cross-domain one's runs/qed is MiniLM's, the tour's a
# decoder's); the others share the tour's, where their lines find what earlier ones wrote.
OWN_DIRECTORY = {CROSS_DOMAIN: "cross-domain"}


def readme_lines() -> list[tuple[str, str]]:
    """(section heading, command line) of every `domainlm` line of the bash blocks, in README order."""
    out, heading = [], ""
    text = README.read_text()
    for match in re.finditer(r"^#+ ([^\n]*)$|^```(\w*)\n(.*?)```", text, flags=re.M | re.S):
        if match.group(1):
            heading = match.group(1).strip()
        if match.group(2) != "bash":
            continue
        for line in match.group(3).replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("accelerate launch ") and " -m domainlm " in line:
                line = "domainlm " + line.split(" -m domainlm ", 1)[1]  # the single-process run
            if line.startswith("domainlm "):
                out.append((heading, line))
    return out


# ---- a small data directory in the shared data's layout --------------------------------------------------

AMINO = "ACDEFGHIKLMNPQRSTVWY"


def smiles(i: int) -> str:
    """Valid SMILES, short enough for tiny models; distinct for i < 42."""
    return "C" * (i % 7 + 1) + "N" * (i % 3) + "O" * (i // 7 % 3) + "c1ccccc1" * (i // 21 % 2)


def write_data(root: Path) -> Path:
    rng = random.Random(0)
    protein = lambda n: "".join(rng.choice(AMINO) for _ in range(n))  # noqa: E731
    (root / "corpora").mkdir(parents=True)
    ligands = {f"CHEMBL{i}": smiles(i) for i in range(42)}
    (root / "corpora" / "dtc_ligands.json").write_text(json.dumps(ligands))
    proteins = {f"P{i:05d}": protein(rng.randint(12, 30)) for i in range(40)}
    (root / "corpora" / "dtc_proteins.json").write_text(json.dumps(proteins))

    # Davis' shape (68 drugs x 442 proteins, all measured: Kd in nM), so it is read as Davis, with short
    # sequences and folds naming 36 of its pairs.
    davis = root / "dta" / "davis"
    (davis / "folds").mkdir(parents=True)
    y = np.exp(np.random.default_rng(0).uniform(np.log(1.0), np.log(1e4), size=(68, 442)))
    (davis / "Y").write_bytes(pickle.dumps(y, protocol=2))
    (davis / "ligands_can.txt").write_text(json.dumps({f"D{i}": smiles(i) for i in range(68)}))
    (davis / "proteins.txt").write_text(
        json.dumps({f"K{j}": protein(rng.randint(8, 16)) for j in range(442)})
    )
    picked = np.random.default_rng(1).choice(68 * 442, size=36, replace=False).tolist()
    (davis / "folds" / "train_fold_setting1.txt").write_text(
        json.dumps([picked[i : i + 6] for i in range(0, 30, 6)])
    )
    (davis / "folds" / "test_fold_setting1.txt").write_text(json.dumps(picked[30:]))

    # O'Neil: 6 drugs, each pair in one fold, on 3 cell lines.
    synergy = root / "synergy"
    synergy.mkdir()
    drugs = [(f"drug{i}", smiles(3 * i + 1)) for i in range(6)]
    write_csv(synergy / "oneil_drugs.csv", drugs, header=("name", "smiles"))
    pairs = [(a, b) for i, (a, _) in enumerate(drugs) for b, _ in drugs[i + 1 :]]
    rows = [
        (f"{a}_{b}_{cell}", a, b, cell, round(rng.uniform(-20, 40), 4), k % 5)
        for k, (a, b) in enumerate(pairs)
        for cell in ("A2058", "A2780", "LOVO")
    ]
    write_csv(
        synergy / "oneil_labels.csv",
        rows,
        header=("", *("drug_a_name drug_b_name cell_line synergy fold".split())),
    )

    # PubMedQA: 30 items outside the test set (10 a label, for its 10 stratified folds), 6 test items.
    pubmedqa = root / "pubmedqa"
    pubmedqa.mkdir()
    labels = ["yes", "no", "maybe"]
    items = {
        str(1000 + i): {
            "QUESTION": f"is the {rng.choice(['drug', 'protein', 'molecule'])} {i} binding the protein ?",
            "CONTEXTS": [f"the binding affinity of the drug {i} is a score", "the protein sequence is given"],
            "LABELS": ["BACKGROUND", "RESULTS"],
            "MESHES": ["Proteins"],
            "YEAR": "2011",
            "final_decision": labels[i % 3],
            "LONG_ANSWER": f"the score of the drug {i} is given",
        }
        for i in range(36)
    }
    (pubmedqa / "ori_pqal.json").write_text(json.dumps(items))
    (pubmedqa / "test_ground_truth.json").write_text(
        json.dumps({pmid: items[pmid]["final_decision"] for pmid in list(items)[30:]})
    )

    # Tatoeba EN-FR, more pairs than the preset's 100 validation + 100 test ones per language pair.
    tatoeba = root / "translation" / "tatoeba"
    tatoeba.mkdir(parents=True)
    (tatoeba / "eng-fra.eng").write_text("".join(f"the molecule {i} is a drug\n" for i in range(220)))
    (tatoeba / "eng-fra.fra").write_text("".join(f"la molecule {i} est un medicament\n" for i in range(220)))
    return root


# ---- running a line ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def out_dir(line: str) -> str | None:
    args = shlex.split(line)
    return args[args.index("--out") + 1] if "--out" in args else None


def set_option(args: list[str], option: str, value) -> list[str]:
    """`option value` in args: the value replaced where the option is given, else appended."""
    if option in args:
        i = args.index(option)
        return [*args[: i + 1], str(value), *args[i + 2 :]]
    return [*args, option, str(value)]


def substitute(line: str, env: dict) -> list[str]:
    """The line's arguments after `domainlm`, with this file's documented substitutions."""
    line = line.replace("$DATA", env["data"]).replace("../shared/data", env["data"])
    line = line.replace("127.0.0.1:8000", f"127.0.0.1:{env['port']}")
    args = shlex.split(line)[1:]
    models = {**dict.fromkeys(DECODERS, env["llama"]), "minilm": env["bert"], "NAME": env["served_name"]}
    args = [models.get(a, a) if i and args[i - 1] == "--model" else a for i, a in enumerate(args)]
    args = [word for a in args for word in (sorted(glob.glob(a)) or [a] if "*" in a else [a])]
    command = args[0] if args[0] != "data" else "data export"
    if command == "bench" and "--model" not in args:
        args += ["--model", env["bert"]]  # bench's default, minilm
    if command == "serve":
        args = set_option(args, "--port", env["port"])
    small = {**SMALL.get(command, {}), **(SYNERGY if command == "bench" and "synergy" in args else {})}
    for option, value in small.items():
        args = set_option(args, option, value)
    return args


def run_line(line: str, env: dict, log: list) -> None:
    """Run one line (substituted) in the current directory; fail with its output unless it exits 0."""
    args = substitute(line, env)
    start = time.perf_counter()
    output = ""
    if args[0] not in ("serve", "augment") and "server" in env:  # the served teacher has done its part
        stop_server(env.pop("server"))
    if args[0] == "serve":
        env["server"] = start_server(args, env)
    else:
        result = invoke(*args)
        output = result.output
        if result.exit_code != 0:
            error = "".join(traceback.format_exception(result.exception)) if result.exception else ""
            pytest.fail(
                f"README line failed (exit {result.exit_code}): {line}\nran: {args}\n{output}\n{error}"
            )
    log.append(
        {"line": line, "args": args, "output": output, "seconds": round(time.perf_counter() - start, 2)}
    )


def start_server(args: list[str], env: dict) -> subprocess.Popen:
    """`domainlm serve ...` as a subprocess, once it answers /v1/models."""
    log = env["serve_log"].open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "domainlm", *args], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{env['port']}/v1/models"
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    stop_server(process)
    pytest.fail(f"`domainlm {shlex.join(args)}` did not serve {url}:\n{env['serve_log'].read_text()[-3000:]}")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def tour(tmp_path_factory, model_dir):
    """Every README line run in order. Returns {section heading: its working directory} and the log, one
    {line, args, output, seconds} a command run."""
    root = tmp_path_factory.mktemp("readme")
    env = {
        "data": str(write_data(root / "data")),
        "llama": str(model_dir("llama")),
        "bert": str(model_dir("bert")),
        "port": free_port(),
        "serve_log": root / "serve.log",
    }
    env["served_name"] = Path(env["llama"]).name  # the model id `serve` answers to by default
    work = root / "work"
    work.mkdir()
    write_csv(work / "my.csv", toy_rows(40))  # the user task's file: smiles, y
    write_csv(work / "new_molecules.csv", [(smiles(i),) for i in range(50, 55)], header=("smiles",))
    (work / "sentences.fr").write_text("la molecule 3 est un medicament\n\nla molecule 7 est un medicament\n")
    dirs, log = {}, []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DOMAINLM_CACHE", str(root / "cache"))  # the subprocess inherits it too
        patch.delenv("DOMAINLM_DATA", raising=False)  # every line names its data
        try:
            for heading, line in readme_lines():
                if heading not in dirs:
                    dirs[heading] = root / OWN_DIRECTORY[heading] if heading in OWN_DIRECTORY else work
                    dirs[heading].mkdir(exist_ok=True)
                    patch.chdir(dirs[heading])
                    for setup in PREPARE.get(heading, []):
                        if out_dir(setup) not in {
                            out_dir(other) for h, other in readme_lines() if h == heading
                        }:
                            run_line(setup, env, log)  # (unless the section has come to make it itself)
                patch.chdir(dirs[heading])
                run_line(line, env, log)
        finally:
            if "server" in env:
                stop_server(env.pop("server"))
    return dirs, log


# ---- what the lines leave behind --------------------------------------------------------------------------


def output_of(log, prefix: str) -> str:
    return next(entry["output"] for entry in log if entry["line"].startswith(prefix))


def test_every_readme_command_runs_and_exits_0(tour):
    _, log = tour
    ran = [entry["line"] for entry in log]
    assert [line for _, line in readme_lines()] == commands()  # the lines test_readme.py parses, in order
    assert [line for line in ran if line in commands()] == commands()
    assert set(PREPARE) <= {heading for heading, _ in readme_lines()}  # no setup for a section gone


RUNS = ["smiles", "protein", "qed", "y", "ba", "en", "fr", "translate", "qed-8gpu", "qed-fp32"]
FUNCTION_RUNS = ["qed", "y", "ba", "qed-8gpu", "qed-fp32"]  # a head: predictions and a scatter plot


@pytest.mark.parametrize("name", RUNS)
def test_train_leaves_a_complete_run_directory(tour, name):
    run = tour[0]["A tour of the command line"] / "runs" / name
    assert json.loads((run / "status.json").read_text())["status"] == "complete"
    for file in ("config.yaml", "train.log", "metrics.json", "history.json", "training_curve.png"):
        assert (run / file).is_file(), file
    assert {p.name for p in (run / "tags").iterdir()} >= {"tags.json", "tags.safetensors"}
    if name in FUNCTION_RUNS:
        assert (run / "scatter_test.png").is_file()
        assert "prediction" in read_csv(run / "predictions_test.csv")[0]
    if name == "translate":
        assert read_csv(run / "predictions_test.csv")


def test_eval_predict_and_tags(tour):
    dirs, log = tour
    work = dirs["A tour of the command line"]
    scores = json.loads((work / "runs" / "qed" / "eval_test.json").read_text())
    assert scores["n"] == TRAIN["--limit-eval"] and scores["mse"] >= 0
    predictions = read_csv(work / "predictions.csv")
    assert [r["smiles"] for r in predictions] == [r["smiles"] for r in read_csv(work / "new_molecules.csv")]
    assert all(float(r["prediction"]) == float(r["prediction"]) for r in predictions)  # numbers, no NaN
    shown = output_of(log, "domainlm tags runs/qed/tags")
    assert "QED" in shown and "SMILES" in shown and "regression" in shown


@pytest.mark.parametrize(
    "section, table",
    [
        ("A tour of the command line", "runs/bench/qed"),
        ("A tour of the command line", "runs/bench-smollm2/qed"),
        (CROSS_DOMAIN, "runs/bench/dta"),
        (CROSS_DOMAIN, "runs/bench/synergy"),
    ],
)
def test_bench_writes_its_table_with_every_method(tour, section, table):
    from domainlm.bench import ALL_METHODS

    path = tour[0][section] / table
    rows = json.loads(path.with_suffix(".json").read_text())["rows"]
    assert [r["method"] for r in rows] == list(ALL_METHODS)
    markdown = path.with_suffix(".md").read_text()
    assert all(f"| {method} |" in markdown for method in ALL_METHODS)
    assert {p.name for p in (path / "plots").glob("*.png")} >= {
        f"{m}__{rows[0]['fold']}.png" for m in ALL_METHODS
    }


def test_dr_llama_exports_augments_finetunes_evaluates_and_compares(tour):
    work = tour[0]["A tour of the command line"]
    exported = json.loads((work / "data" / "pqa" / "split.json").read_text())
    assert exported["counts"] == {"train": 27, "dev": 3, "test": 6}
    # The served tiny teacher answered every request (its random text is rejected as unparseable, counted).
    manifest = json.loads((work / "data" / "pqa-aug" / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["requests_sent"] == counts["requests_planned"] == 4 and counts["failed_requests"] == 0
    assert len((work / "data" / "pqa-aug" / "train.jsonl").read_text().splitlines()) == counts["train_total"]
    student = work / "runs" / "student"
    assert json.loads((student / "status.json").read_text())["status"] == "complete"
    assert (student / "adapter_model.safetensors").is_file()
    evaluation = json.loads((student / "eval-likelihood" / "metrics.json").read_text())
    assert evaluation["splits"]["test"]["parse_failures"] == 0  # likelihood scoring never fails to parse
    for name in ("compare.md", "compare.json", "compare.png"):
        assert (work / "reports" / "pubmedqa" / name).is_file()
    assert "| ours |" in (work / "reports" / "pubmedqa" / "compare.md").read_text()


def test_translate_writes_a_line_for_every_line(tour):
    work = tour[0]["A tour of the command line"]
    source = (work / "sentences.fr").read_text().splitlines()
    written = (work / "sentences.en").read_text().splitlines()
    assert len(written) == len(source) and written[1] == "" and written[0] and written[2]
