"""Translation end to end on a tiny Llama: stage 1 language tags and stage 3 <Translate> through the CLI,
`domainlm translate`, spBLEU with a local SentencePiece model, and the FLORES bench at tiny settings."""

import importlib.util
import json
from pathlib import Path

import pytest

from cli_helpers import invoke
from domainlm.textmetrics import translation_scores

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "translation.py"
QUICK = ["--epochs", "1", "--batch-size", "4", "--grad-accum", "1"]
# the bench at tiny settings; its language ID of the outputs trained on 200 sentences a language
TINY = ["--flores-lines", "2", "--train-pairs", "8", "--max-new-tokens", "3", "--langid-sentences", "200"]


@pytest.fixture(scope="module")
def translation_run(model_dir, data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("translation")
    model = model_dir("llama")
    for lang in ("EN", "FR"):
        stage1 = [
            "train",
            "--stage",
            "domain",
            "--model",
            model,
            "--corpus",
            data_dir / "translation" / "tatoeba",
        ]
        result = invoke(*stage1, "--language", lang, "--limit-train", 12, *QUICK, "--out", root / lang)
        assert result.exit_code == 0, result.output
    tags = ["--tags", root / "EN" / "tags", "--tags", root / "FR" / "tags"]
    task = ["--task", "translation", "--data-dir", data_dir, "--task-option", "directions=en-fr,fr-en"]
    result = invoke(
        "train",
        "--model",
        model,
        *task,
        *tags,
        "--limit-train",
        8,
        "--limit-eval",
        2,
        *QUICK,
        "--out",
        root / "tr",
    )
    assert result.exit_code == 0, result.output
    return root


def test_stage3_trains_only_translate_and_scores_generations(translation_run):
    metrics = json.loads((translation_run / "tr" / "metrics.json").read_text())
    assert metrics["trainable_params"] == 10 * 32  # <Translate> alone; the language tags stay frozen
    assert {"test_chrf", "test_bleu", "test_lm_loss", "test_gen_tokens_per_s"} <= set(metrics)
    header = (translation_run / "tr" / "predictions_test.csv").read_text().splitlines()[0]
    assert header == "id,reference,prediction"
    stage1 = json.loads((translation_run / "FR" / "metrics.json").read_text())
    assert stage1["tag"] == "FR" and stage1["skipped"]["duplicate"] > 0


def test_translate_writes_a_line_per_input_line(translation_run, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("Bonjour.\n\nMerci beaucoup.\n")
    out = tmp_path / "out.txt"
    run = ["translate", "--run", translation_run / "tr", "--input", source, "--out", out]
    result = invoke(*run, "--src", "FR", "--tgt", "EN", "--max-new-tokens", 4)
    assert result.exit_code == 0, result.output
    assert "1 empty lines" in " ".join(result.output.split())
    lines = out.read_text().split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[3] == ""
    bad = invoke(*run, "--src", "ES", "--tgt", "EN")
    assert bad.exit_code == 2
    assert "unknown language tag <ES>; known language tags: EN, FR" in " ".join(bad.output.split())


def test_spbleu_with_a_local_sentencepiece_model(tmp_path):
    import sentencepiece

    text = tmp_path / "text.txt"
    text.write_text("\n".join(["the cat sat on the mat", "le chat est sur le tapis", "a dog ran home"] * 20))
    sentencepiece.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(tmp_path / "spm"), vocab_size=20, minloglevel=2
    )
    scores = translation_scores(
        ["the cat sat on the mat"], ["the cat sat on the mat"], tmp_path / "spm.model"
    )
    assert scores["spbleu"] == pytest.approx(100) and scores["chrf"] == pytest.approx(100)
    with pytest.raises(Exception, match="cannot be downloaded here"):
        translation_scores(["a"], ["a"], tmp_path / "missing.model")


def load_bench(name: str):
    """A fresh copy of benchmarks/translation.py as a module (a test may replace its names)."""
    spec = importlib.util.spec_from_file_location(name, BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_the_bench_runs_end_to_end_on_a_tiny_model(model_dir, data_dir, tmp_path):
    bench = load_bench("translation_bench")
    args = ["--model", str(model_dir("llama")), "--data", str(data_dir), "--out", str(tmp_path)]
    tiny = [*TINY, "--stage1-sentences", "8"]
    results = bench.main(args + tiny + ["--batch-size", "4"])
    directions = ["EN-FR", "FR-EN", "EN-DE", "DE-EN", "EN-IT", "IT-EN", "IT-FR", "ES-PT"]
    assert list(results["rows"]) == ["base_0shot", "base_3shot", "prompt_tuning", "lora", "tags"]
    assert all(list(r) == directions for r in results["rows"].values())
    assert (
        results["trainable_params"]["prompt_tuning"] == 30 * 32
    )  # as many vectors as a tagged prompt's tags
    saved = json.loads((tmp_path / "translation.json").read_text())
    assert saved["rows"]["tags"]["IT-FR"]["chrf"] >= 0 and "spBLEU not computed" in saved["notes"][0]
    written = (tmp_path / "generations" / "tags-IT-FR.txt").read_text().split("\n")
    assert len(written) == 3 and written[-1] == ""  # one line per FLORES sentence
    md = (tmp_path / "translation.md").read_text()
    assert "python benchmarks/translation.py --model" in md and "| tags |" in md and "tokens/s" in md
    assert 0 <= saved["rows"]["tags"]["IT-FR"]["in_target"] <= 1 and "in the target language" in md
    assert saved["langid_on_references"]["FR"] == 1.0  # two FLORES lines, told apart


def test_the_bench_resumes_from_its_finished_rows(model_dir, data_dir, tmp_path):
    bench = load_bench("translation_bench_resume")
    args = ["--model", str(model_dir("llama")), "--data", str(data_dir), "--out", str(tmp_path)]
    tiny = [*TINY, "--directions", "en-fr"]
    first = bench.main(args + tiny + ["--rows", "base_0shot,lora"])

    def untouchable(*a, **k):
        raise AssertionError("a finished row was trained again")

    bench.GenerativePeft = untouchable  # LoRA is finished: --resume must not train it again
    saved = json.loads((tmp_path / "translation.json").read_text())
    del saved["rows"]["lora"]["EN-FR"]["in_target"]  # as scored before the language shares existed
    (tmp_path / "translation.json").write_text(json.dumps(saved))
    again = bench.main(args + tiny + ["--rows", "base_0shot,lora,base_3shot", "--resume"])  # adds a row
    assert list(again["rows"]) == ["base_0shot", "base_3shot", "lora"]
    assert again["rows"]["lora"]["EN-FR"]["in_target"] == first["rows"]["lora"]["EN-FR"]["in_target"]
    assert (
        again["rows"]["lora"] == first["rows"]["lora"]
        and again["trainable_params"] == first["trainable_params"]
    )
    with pytest.raises(SystemExit, match="other settings.*max_new_tokens"):
        bench.main(args + tiny[:-2] + ["--directions", "en-fr", "--max-new-tokens", "4", "--resume"])


def test_the_tags_row_can_reuse_stage1_language_tags(model_dir, data_dir, tmp_path):
    bench = load_bench("translation_bench_stage1")
    common = ["--model", str(model_dir("llama")), "--data", str(data_dir), "--rows", "tags"]
    tiny = [*TINY, "--stage1-sentences", "8"]
    first = bench.main(
        common + tiny + ["--out", str(tmp_path / "a"), "--directions", "es-pt", "--tag-init", "words"]
    )
    assert json.loads((tmp_path / "a" / "translation.json").read_text())["settings"]["tag_init"] == "words"
    config = (tmp_path / "a" / "stage1" / "PT" / "config.yaml").read_text()
    assert "PT: ' Portuguese'" in config and "Translate: ' translation:'" in config

    def untouchable(*a, **k):
        raise AssertionError("stage 1 ran again")

    bench.train_domain_tag = untouchable
    reused = ["--stage1-tags", str(tmp_path / "a" / "stage1"), "--tag-lr", "0.01", "--directions", "es-pt"]
    second = bench.main(common + tiny + ["--out", str(tmp_path / "b"), *reused])
    assert second["trainable_params"] == first["trainable_params"]
    assert json.loads((tmp_path / "b" / "translation.json").read_text())["settings"]["tag_lr"] == 0.01


def test_the_untrained_row_scores_translate_at_its_start_and_the_tags_row_trains_it_afresh(
    model_dir, data_dir, tmp_path
):
    bench = load_bench("translation_bench_untrained")
    common = ["--model", str(model_dir("llama")), "--data", str(data_dir), "--out", str(tmp_path)]
    tiny = [*TINY, "--stage1-sentences", "8", "--directions", "it-fr", "--tag-init", "words"]
    held_at_stage3 = []
    real = bench.train_tagged_task

    def spy(spec, data, tm, *a, **k):
        held_at_stage3.append(sorted(tm.specs))
        return real(spec, data, tm, *a, **k)

    bench.train_tagged_task = spy
    results = bench.main(common + tiny + ["--rows", "tags_untrained,tags"])
    assert list(results["rows"]) == ["tags_untrained", "tags"]
    assert results["trainable_params"]["tags_untrained"] == 0 and results["trainable_params"]["tags"] > 0
    assert held_at_stage3 == [["DE", "EN", "ES", "FR", "IT", "PT"]]  # <Translate> made anew by stage 3
    assert "| tags_untrained | 0 |" in (tmp_path / "translation.md").read_text()
    assert "tags_untrained" not in bench.arguments(common).rows  # asked for by name only
