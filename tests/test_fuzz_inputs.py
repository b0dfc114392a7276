"""Property-based tests (Hypothesis) over every parser users feed: CSV / JSONL task files, templates,
`tags.json`, PubMedQA and QA JSONL files, teacher replies. Whatever the input, it parses or raises the
project's own error naming the file (and the line or item where there is one): never another exception.

Sizes are tuned so the whole file runs in well under a minute; `pytest --hypothesis-show-statistics`
prints how many cases each test ran.
"""

import csv
import io
import json
import os
import string
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from domainlm.augment.replies import REASONS, extract_json, judge_reply
from domainlm.engine.heads import HeadSpec
from domainlm.engine.library import TagLibrary, embedding_fingerprint
from domainlm.engine.tag_specs import TagSpec
from domainlm.engine.template import Template, parse_marked_text
from domainlm.errors import DomainLMError, InputError
from domainlm.qa.data import QAItem, load_pubmedqa, read_qa_jsonl
from domainlm.tasks.table import load_table_task

# Derandomized, so every run of the suite tries the same cases; DOMAINLM_FUZZ_SCALE=20 (say) explores more.
SCALE = float(os.environ.get("DOMAINLM_FUZZ_SCALE", "1"))


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=int(examples * SCALE),
        deadline=None,
        derandomize=SCALE == 1,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


FUZZ, FEW = fuzz_settings(500), fuzz_settings(200)

# Values that broke or nearly broke parsers: numbers Python cannot convert, class-like labels, separators,
# quotes, control and non-ASCII characters, over-long integers (Python refuses > 4300 digits).
TRICKY = [
    "",
    " ",
    "CCO",
    "c1ccccc1",
    "nan",
    "inf",
    "-inf",
    "1e400",
    "1.0",
    "2",
    "-1",
    "0",
    "1" * 5000,
    "train",
    "val",
    "dev",
    "test",
    "yes",
    "no",
    "maybe",
    '"',
    "a,b",
    "x\ny",
    "\t",
    "\x00",
    "\x1f",
    "é",
    "\u2028",
    "{",
    "}",
    "<SMILES>",
    "<Y>",
    "MKVL",
]
text = st.one_of(st.sampled_from(TRICKY), st.text(max_size=12))
json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    text,
    st.integers(min_value=10**20, max_value=10**30),
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
)
# Lines a JSON-lines reader must survive: not JSON, not an object, too deep, too long a number, bad bytes.
JUNK_LINES = ["{", "[1, 2]", '"text"', "[" * 100_000, "1" * 5000, '{"a": "\x01"}', "{'a': 1}", "\ufeff{}"]


def fresh_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="fuzz-"))


def assert_names(error: Exception, path: Path) -> None:
    """Our error, and it says which file."""
    assert isinstance(error, DomainLMError), f"{type(error).__name__}: {error}"
    assert str(path) in str(error), str(error)
    event("refused, naming the " + ("line or item" if getattr(error, "item", None) else "file"))


# ---- CSV / JSONL task files --------------------------------------------------------------------------------

COLUMNS = ["smiles", "y", "split", "id", "other"]
row = st.lists(text, min_size=0, max_size=6)


GOOD_CELLS = {
    "smiles": st.sampled_from(["CCO", "CCN", "c1ccccc1O", "MKVL"]),
    "y": st.sampled_from(["0", "1", "0.5", "2.0", "b"]),
    "split": st.sampled_from(["train", "train", "val", "test"]),
    "id": st.sampled_from(["a", "b", "c"]),
    "other": text,
}


@st.composite
def good_rows(draw) -> tuple[list[str], list[list[str]]]:
    """A header of known columns and rows of plausible values, one cell in a few replaced by anything."""
    header = draw(st.lists(st.sampled_from(COLUMNS), min_size=1, max_size=5, unique=True))
    rows = []
    for _ in range(draw(st.integers(0, 8))):
        cells = [draw(GOOD_CELLS[c]) for c in header]
        if cells and draw(st.integers(0, 4)) == 0:
            cells[draw(st.integers(0, len(cells) - 1))] = draw(text)
        rows.append(cells)
    return header, rows


@st.composite
def csv_files(draw) -> bytes:
    if draw(st.booleans()):
        header, rows = draw(good_rows())
    else:
        header = draw(st.lists(st.sampled_from(COLUMNS) | text, min_size=0, max_size=6))
        rows = draw(st.lists(row, max_size=8))
    if draw(st.booleans()):  # written by a csv writer: quoting is right, contents are anything
        out = io.StringIO()
        csv.writer(out).writerows([header, *rows])
        body = out.getvalue()
    else:  # written by hand: stray quotes and short / long rows
        body = "\n".join(",".join(r) for r in [header, *rows])
    data = body.encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        data = data.replace(b"e", draw(st.sampled_from([b"\xff", b"\xc3", b"\x00", b"e"])))  # bad UTF-8
    return data


@st.composite
def jsonl_files(draw) -> bytes:
    if draw(st.booleans()):
        header, rows = draw(good_rows())
        lines = [json.dumps(dict(zip(header, cells))) for cells in rows]
    else:
        record = st.dictionaries(st.sampled_from(COLUMNS), json_value | text, max_size=5)
        lines = draw(st.lists(record.map(json.dumps) | st.sampled_from(JUNK_LINES) | text, max_size=8))
    data = "\n".join(lines).encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        data += draw(st.sampled_from([b"\n\xff\xfe", b"\n\x80", b""]))
    return data


task_options = st.fixed_dictionaries(
    {
        "head": st.sampled_from(["regression", "classification"]),
        "skip_invalid": st.booleans(),
        "id_column": st.sampled_from([None, "id"]),
        "split_column": st.sampled_from([None, "split"]),
        "n_classes": st.sampled_from([None, 2, 3]),
        "template": st.sampled_from(
            [
                "<SMILES> {smiles} <Y>",
                "{other} is <Protein> {smiles}. <Y>",
                "{smiles:>4} <Y>",
                "{smiles:.2f} <Y>",
            ]
        ),
    }
)


def check_task_file(suffix: str, data: bytes, options: dict) -> None:
    path = fresh_dir() / f"task{suffix}"
    path.write_bytes(data)
    try:
        task = load_table_task(path, label_column="y", **options)
    except Exception as e:  # noqa: BLE001 - the property is about which exceptions escape
        assert_names(e, path)
        return
    assert task.train and all(isinstance(x.fields, dict) for x in task.train + task.val + task.test)
    event("parsed")


@FUZZ
@given(csv_files(), task_options)
def test_csv_task_files_parse_or_name_the_file(data, options):
    check_task_file(".csv", data, options)


@FUZZ
@given(jsonl_files(), task_options)
def test_jsonl_task_files_parse_or_name_the_file(data, options):
    check_task_file(".jsonl", data, options)


@pytest.mark.parametrize(
    "content, line",
    [
        (b"smiles,y\nCCO,0.5\nCCN,\xff\n", 3),  # not UTF-8
        (b"smiles,y\nCCO,0.5\nCCN," + b"1" * 5000 + b"\n", 3),  # a label Python cannot make a float of
        (b"smiles,y\nCCO,0.5\nCCN,1e400\n", 3),  # infinite
    ],
)
def test_task_file_errors_name_the_line(tmp_path, content, line):
    path = tmp_path / "t.csv"
    path.write_bytes(content)
    with pytest.raises(InputError, match=rf"t\.csv, line {line}: "):
        load_table_task(path, "<SMILES> {smiles} <Y>", "y")


# ---- templates -------------------------------------------------------------------------------------------

template_piece = st.one_of(
    st.sampled_from(
        ["{smiles}", "{y}", "<SMILES>", "<Protein>", "<Y>", " ", ". ", "{{", "}}", "{", "}", "<", ">"]
    ),
    st.sampled_from(
        ["{smiles:.2f}", "{smiles!r}", "{0}", "{a.b}", "{a[0]}", "{smiles:{y}}", "{smiles!}", "{:}"]
    ),
    st.text(alphabet=string.ascii_letters + "{}<>:!.[]0 ", max_size=4),
)
templates = st.lists(template_piece, max_size=8).map("".join)


@FUZZ
@given(templates, st.dictionaries(st.sampled_from(["smiles", "y", "0", "a"]), json_value, max_size=4))
def test_templates_parse_and_render_or_raise_input_errors(template, values):
    try:
        parsed = Template(template)
    except InputError:
        return
    try:
        parts = parsed.render(values, source="rows.csv", item="line 2")
    except InputError as e:
        assert "rows.csv, line 2" in str(e)
        return
    assert [p.value for p in parts if p.kind == "tag"] == parsed.markers


@FUZZ
@given(
    st.lists(template_piece | text, max_size=10).map("".join), st.sets(st.sampled_from(["SMILES", "Y", "a"]))
)
def test_marked_text_always_splits_back_into_itself(raw, known):
    parts = parse_marked_text(raw, known)
    assert "".join(f"<{p.value}>" if p.kind == "tag" else p.value for p in parts) == raw


# ---- tags.json -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def library_dir(tmp_path_factory) -> Path:
    specs = {
        "SMILES": TagSpec("SMILES", "domain", 2, char_level=True),
        "Y": TagSpec("Y", "function", 2, head=HeadSpec("classification", n_classes=2, classes=["a", "b"])),
    }
    tensors = {
        "tag.SMILES": torch.zeros(2, 4),
        "tag.Y": torch.zeros(2, 4),
        "head.Y.weight": torch.zeros(2, 4),
    }
    library = TagLibrary("tiny", embedding_fingerprint(torch.randn(10, 4)), 4, specs, tensors)
    return library.save(tmp_path_factory.mktemp("library") / "tags")


@st.composite
def mutated_meta(draw, meta: dict):
    """The valid `tags.json` with keys dropped, values replaced by any JSON, and its tag list mutated."""
    meta = json.loads(json.dumps(meta))
    for key in draw(st.lists(st.sampled_from(sorted(meta)), max_size=3)):
        if draw(st.booleans()):
            meta.pop(key, None)
        else:
            meta[key] = draw(json_value)
    tags = (
        [t for t in meta.get("tags") or [] if isinstance(t, dict)]
        if isinstance(meta.get("tags"), list)
        else []
    )
    if tags and draw(st.booleans()):
        tag = tags[draw(st.integers(0, len(tags) - 1))]
        field = draw(st.sampled_from(["name", "kind", "length", "char_level", "head", "extra"]))
        tag[field] = draw(json_value | st.sampled_from([{"type": "regression", "label_std": "1"}, {"n": 1}]))
    if isinstance(meta.get("embedding_fingerprint"), dict) and draw(st.booleans()):
        meta["embedding_fingerprint"][draw(st.sampled_from(["shape", "row_norms"]))] = draw(json_value)
    return meta


@FEW
@given(st.data())
def test_tags_json_loads_or_names_the_file(library_dir, data):
    meta = json.loads((library_dir / "tags.json").read_text())
    folder = fresh_dir() / "tags"
    folder.mkdir()
    (folder / "tags.safetensors").write_bytes((library_dir / "tags.safetensors").read_bytes())
    doc = data.draw(mutated_meta(meta).map(json.dumps) | text | st.sampled_from(JUNK_LINES))
    (folder / "tags.json").write_bytes(doc.encode("utf-8", "surrogatepass"))
    try:
        library = TagLibrary.load(folder)
        library.check_compatible(meta["embedding_fingerprint"], 4, "tiny")
        for name in library.specs:
            library.tensors_for(name)
    except Exception as e:  # noqa: BLE001
        assert_names(e, folder)
        return
    event("parsed")


# ---- PubMedQA and QA JSONL -------------------------------------------------------------------------------

QA_KEYS = ["id", "question", "context", "contexts", "label", "answer", "final_decision", "long_answer"]
QA_KEYS += ["source", "parent_id"]


@st.composite
def qa_records(draw) -> dict:
    """A valid item with some fields replaced by anything, or a dictionary of anything."""
    if draw(st.booleans()):
        return draw(st.dictionaries(st.sampled_from(QA_KEYS), json_value | text, max_size=7))
    record = {
        "id": draw(st.sampled_from(["1", "2", "3"]) | text),
        "question": draw(st.sampled_from(["is it?", " q "]) | text),
        draw(st.sampled_from(["context", "contexts"])): draw(st.lists(text, max_size=2) | text),
        draw(st.sampled_from(["label", "answer", "final_decision"])): draw(
            st.sampled_from(["yes", "No", " maybe ", "perhaps"])
        ),
    }
    if draw(st.booleans()):  # else the record stays valid
        record[draw(st.sampled_from(QA_KEYS))] = draw(json_value | text)
    return record


qa_record = qa_records()


@FUZZ
@given(st.lists(qa_record.map(json.dumps) | st.sampled_from(JUNK_LINES) | text, max_size=6))
def test_qa_jsonl_files_parse_or_name_file_and_line(lines):
    path = fresh_dir() / "train.jsonl"
    path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass"))
    try:
        items = read_qa_jsonl(path)
    except Exception as e:  # noqa: BLE001
        assert_names(e, path)
        return
    assert all(isinstance(item, QAItem) and item.label in ("yes", "no", "maybe") for item in items)
    event("parsed")


pqal_record = st.fixed_dictionaries(
    {},
    optional={
        "QUESTION": text | json_value,
        "CONTEXTS": st.lists(text, max_size=2) | json_value,
        "final_decision": st.sampled_from(["yes", "no", "maybe"]) | json_value,
        "LONG_ANSWER": text,
    },
)
pqal_files = st.dictionaries(
    st.text(string.digits, min_size=1, max_size=3), pqal_record | json_value, max_size=12
)


@FEW
@given(
    pqal_files.map(json.dumps) | text | st.sampled_from(JUNK_LINES),
    st.one_of(
        pqal_files.map(lambda d: json.dumps(dict.fromkeys(list(d)[:3], "yes"))),
        json_value.map(json.dumps),
        text,
    ),
    st.sampled_from(["official", "paper"]),
)
def test_pubmedqa_files_load_or_name_the_file(pqal, truth, split):
    folder = fresh_dir()
    (folder / "ori_pqal.json").write_bytes(pqal.encode("utf-8", "surrogatepass"))
    (folder / "test_ground_truth.json").write_bytes(truth.encode("utf-8", "surrogatepass"))
    try:
        splits = load_pubmedqa(folder, split=split)
    except Exception as e:  # noqa: BLE001
        assert_names(e, folder)
        return
    assert all(isinstance(item, QAItem) for items in splits.as_dict().values() for item in items)
    event("parsed")


def test_a_malformed_qa_line_shows_the_whole_json_error(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(
        '{"id": "1", "question": "q?", "context": "c", "label": "yes"}\n{"id": "2", "q": "a\x01b"}\n'
    )
    with pytest.raises(InputError) as caught:
        read_qa_jsonl(path)
    assert str(caught.value) == f"{path}, line 2: not valid JSON (Invalid control character at: column 20)"


def test_a_broken_ori_pqal_json_is_named_with_its_line_and_column(tmp_path):
    (tmp_path / "ori_pqal.json").write_text('{\n  "1": {"QUESTION": "q?",\n  "CONTEXTS": [}\n}\n')
    with pytest.raises(InputError) as caught:
        load_pubmedqa(tmp_path, split="paper")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'ori_pqal.json'}, line 3: not valid JSON (")
    assert "line 3 column 16" in message


# ---- teacher replies -------------------------------------------------------------------------------------

reply_object = st.dictionaries(
    st.sampled_from(["question", "answer", "long_answer", "label", "x"]), json_value | text
)


@st.composite
def replies(draw) -> str:
    body = draw(reply_object.map(json.dumps) | text | st.sampled_from(JUNK_LINES))
    wrapper = draw(st.sampled_from(["{}", "```json\n{}\n```", "Sure! {} Hope this helps.", "{}}}", "```{}"]))
    return wrapper.replace("{}", body, 1)


PARENT = QAItem("p1", "is the drug safe?", "the context", "yes", long_answer="it is safe")


@FUZZ
@given(replies(), st.sampled_from(["rewrite", "new"]), st.integers(0, 3))
def test_teacher_replies_give_an_item_or_a_reason(reply, mode, sample):
    assert extract_json(reply) is None or isinstance(extract_json(reply), dict)
    verdict = judge_reply(reply, PARENT, mode, sample)
    if verdict.item is None:
        assert verdict.reason in REASONS and verdict.detail
    else:
        assert verdict.item.label in ("yes", "no", "maybe") and verdict.item.parent_id == "p1"
