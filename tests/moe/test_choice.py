"""The multiple-choice continuation task: true continuation among other passages' continuations."""

from leaninfer.eval.choice import accuracy, agreement, build_items, predictions


def test_items_hold_the_true_continuation_and_distractors_from_other_passages():
    passages = [[2] + [100 * p + i for i in range(60)] for p in range(6)]
    items = build_items(passages, ctx_len=8, cont_len=4, n_choices=3, offsets=(0, 20), seed=0)
    assert len(items) == 12
    for it in items:
        src = (it.context[1] // 100)
        assert it.context[0] == 2 and len(it.context) == 8
        assert it.choices[it.answer][0] == it.context[-1] + 1  # continues the context
        assert {c[0] // 100 for c in it.choices} - {src} and len({c[0] // 100 for c in it.choices}) == 3
    oracle = predictions(items, lambda ctx, ch: [float(c[0] == ctx[-1] + 1) for c in ch])
    assert accuracy(items, oracle) == 1.0
    assert agreement(oracle, oracle) == 1.0 and agreement([0, 1], [0, 2]) == 0.5
