"""Continuous batching: rows joining and leaving a left-padded batch decode what batch-1 decoding decodes."""

import random

import torch

import leaninfer
from helpers import tiny_model_dir
from leaninfer.generate.batch import BatchDecoder


def test_join_leave_equals_single(tmp_path):
    tiny_model_dir(tmp_path)
    engine = leaninfer.load(tmp_path, precision="fp32")
    rng = random.Random(0)
    prompts = [[1] + [rng.randrange(3, 96) for _ in range(rng.randrange(1, 20))] for _ in range(10)]
    lengths = [rng.randrange(3, 25) for _ in prompts]
    ref = [engine.generate(p, max_new_tokens=n, eos=False).token_ids for p, n in zip(prompts, lengths)]
    bd = BatchDecoder(engine.model, max_batch=3, max_len=48)  # small: forces compaction
    waiting = list(range(len(prompts)))
    rows: list[int] = []  # request index per row
    outs: dict[int, list[int]] = {i: [] for i in waiting}
    pending: list[int] = []
    while waiting or rows:
        while waiting and not bd.full:
            i = waiting.pop(0)
            _, logits, _ = bd.join(prompts[i])
            rows.append(i)
            pending.append(int(logits.argmax(-1)))
            outs[i].append(pending[-1])
        for r in reversed(range(len(rows))):  # finished rows leave
            if len(outs[rows[r]]) == lengths[rows[r]]:
                moved = bd.leave(r)
                if moved is not None:
                    rows[r], pending[r] = rows[moved], pending[moved]
                rows.pop()
                pending.pop()
        if not rows:
            continue
        logits = bd.step(pending)
        pending = [int(t) for t in logits.argmax(-1)]
        for r, i in enumerate(rows):
            outs[i].append(pending[r])
    assert [outs[i] for i in range(len(prompts))] == ref
    assert bd.cache.length == 0 and bool((bd.cache.pos == -1).all())


def test_compact_keeps_rows():
    from leaninfer.cache.kv import KVCache

    c = KVCache(2, 2, 1, 8, 4)
    c.reserve(0, torch.tensor([[-1, 0, 1, 2], [0, 1, -1, -1]]))
    c.k[:, :, :, :4] = torch.arange(4.0)[None, None, None, :, None]
    c.compact()
    assert c.length == 3
    assert c.pos.tolist() == [[0, 1, 2, -1, -1, -1, -1, -1], [-1, 0, 1, -1, -1, -1, -1, -1]]
    assert c.k[0, 0, 0, :3, 0].tolist() == [1.0, 2.0, 3.0] and c.k[0, 1, 0, 1:3, 0].tolist() == [0.0, 1.0]
