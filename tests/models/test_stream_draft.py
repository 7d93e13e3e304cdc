"""Speculative-streaming draft: the stream layout/masks, streams never see later streams or future tokens, the
main stream is the draft LM, cached == uncached, and save/load round trip."""

import pytest
import torch

import leaninfer
from helpers import tiny_model_dir
from leaninfer.io.drafts import build_draft, load_draft, save_draft
from leaninfer.models.draft_lm import init_draft_lm
from leaninfer.models.stream_draft import StreamDraftConfig, causal_block, init_stream_draft, stream_mask


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    tiny_model_dir(folder, "gemma3")
    return leaninfer.load(folder, precision="fp32").model


def _draft(target, n_streams=3, stream_layers=2, layers=(0, 1, 2), vocab=None):
    d2t = torch.arange(target.cfg.vocab_size) if vocab is None else vocab
    torch.manual_seed(0)
    return init_stream_draft(init_draft_lm(target, d2t, list(layers)), n_streams, stream_layers).eval()


def test_stream_mask_positions_and_visibility():
    # two cached context keys (positions 0, 1), then new tokens at 2, 3, 4; streams on rows 0 and 2, S = 2
    key_pos = torch.tensor([[0, 1, 2, 3, 4]])
    pos = torch.tensor([[2, 3, 4]])
    spos, mask = stream_mask(key_pos, 2, causal_block(pos), pos, torch.tensor([0, 2]), 2)
    assert spos.tolist() == [[3, 4, 5, 6]]
    m = mask[0].int().tolist()  # columns: 5 main keys, then streams (r0 s1, r0 s2, r2 s1, r2 s2)
    assert m[0] == [1, 1, 1, 0, 0, 1, 0, 0, 0]  # stream 1 of row 0: context, row 0, itself
    assert m[1] == [1, 1, 1, 0, 0, 1, 1, 0, 0]  # stream 2 of row 0: + stream 1; never row 2's streams
    assert m[3] == [1, 1, 1, 1, 1, 0, 0, 1, 1]
    padded = torch.tensor([[-1, 7]])
    assert stream_mask(padded, 0, causal_block(padded), padded, torch.tensor([0]), 2)[0].tolist() == [[-1, -1]]


def test_streams_never_see_later_streams_or_future_tokens(target):
    draft = _draft(target)
    ids = torch.tensor([[1, 5, 9, 33, 4, 70]])
    with torch.no_grad():
        main, streams = draft.run(ids, rows=torch.arange(6))  # (1, 6, d), (1, 6, 3, d)
        changed = ids.clone()
        changed[0, 4:] = torch.tensor([11, 12])  # future tokens for rows 0..3
        main2, streams2 = draft.run(changed, rows=torch.arange(6))
        assert torch.equal(streams[:, :4], streams2[:, :4]) and torch.equal(main[:, :4], main2[:, :4])
        assert not torch.equal(streams[:, 4:], streams2[:, 4:])
        draft.streams.data[2] += 5.0  # the last stream's embedding: earlier streams and the main stream unchanged
        main3, streams3 = draft.run(ids, rows=torch.arange(6))
        assert torch.equal(streams3[:, :, :2], streams[:, :, :2]) and torch.equal(main3, main)
        assert not torch.equal(streams3[:, :, 2], streams[:, :, 2])
        _, first2 = draft.run(ids, rows=torch.arange(6), n_streams=2)  # running fewer streams: same first ones
        assert torch.allclose(first2, streams3[:, :, :2], atol=1e-5)


def test_main_stream_is_the_draft_lm_and_cached_equals_uncached(target):
    draft = _draft(target, layers=(0, 1, 2))  # every target layer and token: the main stream is the target
    ids = torch.tensor([[1, 5, 9, 33, 4, 70, 2]])
    with torch.no_grad():
        want = target(ids).logits
        assert torch.allclose(draft(ids).logits, want, atol=1e-4)
        main, streams = draft.run(ids, rows=torch.tensor([3, 6]))
        assert torch.allclose(draft.logits(main), want[..., : target.cfg.vocab_size], atol=1e-4)
        cache = draft.new_cache(1, 32)
        m1, s1 = draft.run(ids[:, :4], cache=cache)
        assert cache.length == 4  # stream keys never enter the cache
        m2, s2 = draft.run(ids[:, 4:], cache=cache)
        assert cache.length == 7
        assert torch.allclose(torch.cat([m1, m2], 1), main, atol=1e-4)
        assert torch.allclose(s1[0, 0], streams[0, 0], atol=1e-4) and torch.allclose(s2[0, 0], streams[0, 1],
                                                                                      atol=1e-4)


def test_save_load_round_trip(target, tmp_path):
    draft = _draft(target, n_streams=2, stream_layers=1, layers=(0, 2), vocab=torch.tensor([1, 4, 9, 33, 70]))
    save_draft(tmp_path, "mirror", draft.cfg.to_dict(), draft)
    kind, loaded, _ = load_draft(tmp_path)
    assert kind == "mirror" and loaded.n_streams == 2 and loaded.d2t.tolist() == [1, 4, 9, 33, 70]
    ids = torch.tensor([[1, 9, 50, 33]])
    with torch.no_grad():
        a, b = draft.run(ids), loaded.run(ids)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert isinstance(build_draft("mirror", draft.cfg.to_dict()).cfg, StreamDraftConfig)
    with pytest.raises(ValueError):
        StreamDraftConfig(draft.cfg.lm, n_streams=0)
    with pytest.raises(ValueError):
        StreamDraftConfig(draft.cfg.lm, stream_layers=3)
