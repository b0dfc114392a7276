"""Evaluation batches: by length, bounded in padded positions, and progress logged as they finish."""

from domainlm.progress import _Bar, batches_by_length


def test_batches_cover_every_index_once_in_length_order_within_the_budget():
    lengths = [60, 2000, 55, 61, 900, 58, 400, 62, 59, 300]
    batches = list(batches_by_length(lengths, batch_size=4, description="t", max_tokens=1000))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths)
    for b in batches:
        assert len(b) <= 4
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 1000
    assert [1] in batches and [4] in batches  # longer than the budget allows beside another: alone


def test_short_inputs_fill_whole_batches():
    batches = list(batches_by_length([10] * 10, batch_size=4, description="t"))
    assert [len(b) for b in batches] == [4, 4, 2]


def test_log_lines_follow_uneven_progress():
    lines = []
    bar = _Bar(None, None, lines.append, total=100, description="eval")
    for done in (7, 13, 29, 30, 61, 100):
        bar.update(done)
    assert len(lines) == 6 and lines[-1].startswith("eval: 100/100")
    lines.clear()
    bar = _Bar(None, None, lines.append, total=100, description="eval")
    for done in range(1, 101):
        bar.update(done)
    assert len(lines) == 20
