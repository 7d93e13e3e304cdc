"""MTP with mask tokens and gated LoRA: base rows untouched to the bit, lossless decoding, edges."""

import pytest
import torch

import leaninfer
from helpers import tiny_model_dir
from leaninfer.generate.proposers.mtp import block_layout, decode_mtp
from leaninfer.generate.sampling import SamplingConfig
from leaninfer.models.mtp import MTPAdapter, MTPConfig, load_adapter, save_adapter
from leaninfer.train.mtp import build_layout


def _adapter(model, k=3, sampler=True, seed=0) -> MTPAdapter:
    torch.manual_seed(seed)
    ad = MTPAdapter(MTPConfig.for_model(model.cfg, n_masks=k, rank=4, draft_vocab=model.cfg.vocab_size,
                                        sampler=sampler))
    with torch.no_grad():  # a non-trivial adapter: every LoRA and the sampler change the mask rows
        for p in ad.parameters():
            p.normal_(0.0, 0.5)
    return ad.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-gemma")
    tiny_model_dir(folder, "gemma3")
    return folder


def _mtp_forward(model, ad, lay, gate):
    with ad.attached(model):
        ad.gate(gate)
        h = ad.embed(model, lay.tokens[None], lay.slot[None])
        return model(hidden=h, positions=lay.positions[None], block_mask=lay.block, logits=False).hidden


@pytest.mark.parametrize("precision", ["fp32", "int8", "w8a8"])
def test_gated_lora_leaves_real_rows_bit_identical(model_dir, precision):
    model = leaninfer.load(model_dir, precision=precision).model
    ad = _adapter(model)
    seq = [1, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    L = len(seq)
    lay = build_layout(seq, [2, 5, 7], 3)  # 19 rows: 10 real + 3 mask blocks
    with torch.no_grad():
        gated = _mtp_forward(model, ad, lay, lay.mask_rows)
        plain_lora = _mtp_forward(model, ad, lay, "all")
        no_lora = _mtp_forward(model, ad, lay, torch.zeros(0, dtype=torch.long))
        base_same_block = model(lay.tokens[None], positions=lay.positions[None], block_mask=lay.block,
                                logits=False).hidden
        no_masks = model(torch.tensor([seq]), logits=False).hidden
        with ad.attached(model):  # a block without masks: the adapter is the base model
            ad.gate(torch.zeros(0, dtype=torch.long))
            no_masks_attached = model(torch.tensor([seq]), logits=False).hidden
    assert torch.equal(model.head(gated[:, :L]), model.head(no_lora[:, :L]))  # with masks in the block
    assert torch.equal(no_masks_attached, no_masks)  # without masks
    assert not torch.allclose(gated[:, L:], no_lora[:, L:])  # the LoRA does act on mask rows
    assert not torch.allclose(plain_lora[:, :L], gated[:, :L])  # plain LoRA drifts the base rows
    if precision != "fp32":  # quantised models are row-invariant: equal to the mask-free forward too
        assert torch.equal(model.head(gated[:, :L]), model.head(no_masks))
    else:
        assert torch.equal(gated[:, :L], base_same_block[:, :L])


def test_block_layout_quadratic_and_linear():
    slot, off, mask = block_layout(2, 2, quadratic=True)
    assert slot.tolist() == [-1, -1, -1, 0, 1, 0, 1, 0, 1]
    assert off.tolist() == [0, 1, 2, 1, 2, 2, 3, 3, 4]
    assert mask[2, :3].all() and not mask[:3, 3:].any()  # real rows see real rows only
    assert mask[6, [0, 1, 5, 6]].all() and mask[6].sum() == 4  # mask 2 after d1: x0, d1, its block
    slot, off, mask = block_layout(2, 3, quadratic=False)
    assert slot.tolist() == [-1, -1, -1, 0, 1, 2] and off.tolist() == [0, 1, 2, 3, 4, 5]


def test_training_layout_masks_and_labels():
    lay = build_layout([1, 2, 3, 4, 5], [0, 2], 2)
    assert lay.tokens.numel() == 9 and lay.positions.tolist() == [0, 1, 2, 3, 4, 1, 2, 3, 4]
    assert lay.labels.tolist() == [3, 4, 5, -1]  # mask j after i predicts token i + 1 + j (+1 index)
    assert lay.twin.tolist() == [1, 2, 3, 4]
    assert lay.block[5, :1].all() and not lay.block[5, 1:5].any()  # first block sees x0 only
    assert lay.block[6, 5] and not lay.block[5, 6] and not lay.block[7, 5]  # own block, causal


@pytest.mark.parametrize("decoding", ["quadratic", "linear"])
@pytest.mark.parametrize("precision", ["fp32", "int8", "w8a8"])
def test_mtp_greedy_equals_plain(model_dir, decoding, precision):
    engine = leaninfer.load(model_dir, precision=precision)
    ad = _adapter(engine.model, k=3)
    prompt = [1, 5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7]
    plain = engine.generate(prompt, max_new_tokens=30, eos=False)
    for sampler in ("on", "off"):
        out = engine.generate(prompt, max_new_tokens=30, eos=False, method="mtp", adapter=ad, k=3,
                              decoding=decoding, sampler=sampler)
        assert out.token_ids == plain.token_ids
        assert out.stats["mean_accepted_tokens"] >= 1.0


def test_mtp_sampling_matches_target_distribution(model_dir):
    """Tokens that went through draft verification follow the target: the histogram of the 3rd and 4th tokens
    equals the mean of the target's conditionals given each sample's prefix (E[1(t=v)] = E[p(v | prefix)])."""
    engine = leaninfer.load(model_dir, precision="fp32")
    model = engine.model
    ad = _adapter(model, k=2)
    prompt = [1, 5, 6, 7]
    n, V = 400, model.cfg.vocab_size
    hist, expect = torch.zeros(2, V), torch.zeros(2, V)
    accepted = 0
    with torch.no_grad():
        for s in range(n):
            out = decode_mtp(model, ad, prompt, 4, SamplingConfig(1.0, seed=s), set(), k=2)
            accepted += out.extra["draft_tokens_accepted"]
            for i in (2, 3):
                hist[i - 2, out.tokens[i]] += 1
                ctx = torch.tensor([prompt + out.tokens[:i]])
                expect[i - 2] += torch.softmax(model(ctx).logits[0, -1], -1)
    assert accepted > 0  # the check covers accepted drafts, not only corrections
    assert (hist / n - expect / n).abs().max() < 0.08  # ~3.5 standard errors at n = 400


def test_mtp_edges(model_dir):
    engine = leaninfer.load(model_dir, precision="fp32")
    ad = _adapter(engine.model, k=3)
    prompt = [1, 5, 6, 7, 8]
    plain = engine.generate(prompt, max_new_tokens=9, eos=False)
    for n in (1, 2, 5, 9):
        out = engine.generate(prompt, max_new_tokens=n, eos=False, method="mtp", adapter=ad, k=3)
        assert out.token_ids == plain.token_ids[:n] and out.finish_reason == "length"
    eos_tok = plain.token_ids[4]
    out = decode_mtp(engine.model, ad, prompt, 9, SamplingConfig(), {eos_tok}, k=3)
    assert out.tokens == plain.token_ids[: plain.token_ids.index(eos_tok) + 1] and out.finish_reason == "eos"
    stop_at = plain.token_ids[2]
    out = decode_mtp(engine.model, ad, prompt, 9, SamplingConfig(), set(), on_token=lambda t: t == stop_at, k=3)
    assert out.finish_reason == "stop" and out.tokens[-1] == stop_at
    with pytest.raises(ValueError):
        engine.generate(prompt, max_new_tokens=4, method="mtp", adapter=ad, k=4)  # more than the mask slots
    with pytest.raises(ValueError):
        engine.generate(prompt, max_new_tokens=4, method="mtp", adapter=ad, decoding="cubic")


def test_adapter_round_trip(model_dir, tmp_path):
    model = leaninfer.load(model_dir, precision="fp32").model
    ad = _adapter(model)
    save_adapter(tmp_path, ad, {"target": {"name": "tiny"}})
    back = load_adapter(tmp_path)
    for (k, a), (k2, b) in zip(ad.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.allclose(a.float(), b.float(), atol=1e-2, rtol=1e-2)
    (tmp_path / "adapter.safetensors").write_bytes(b"corrupt")
    with pytest.raises(ValueError):
        load_adapter(tmp_path)


def test_bench_mtp_on_tiny_model(tmp_path):
    import json

    from leaninfer.bench.mtp import MTPBenchConfig, run_mtp_bench, write_mtp_report
    from leaninfer.models.mtp import user_dir

    tiny_model_dir(tmp_path / "m", "gemma3")
    model = leaninfer.load(tmp_path / "m", precision="fp32").model
    save_adapter(user_dir(tmp_path / "m"), _adapter(model, k=4),
                 {"target": {"name": "m", "vocab_size": 96, "dim": 32, "n_layers": 3}})
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("\n".join(json.dumps({"question_id": i, "category": c, "turns": [f"w5 w6 w{7 + i} w5 w6"]})
                               for i, c in enumerate(["qa", "qa", "rag"])))
    cfg = MTPBenchConfig(model=str(tmp_path / "m"), precision="fp32", questions=qfile, per_category=None,
                         max_new_tokens=8, others=["ngram"], ppl_texts=2)
    result = run_mtp_bench(cfg)
    assert result["lossless"] == "3/3" and result["tokens_per_step"] >= 1.0
    assert set(result["per_k"]) == {"1", "2", "4"} and "mtp_linear" in result["methods"]
    assert result["base_ppl_delta_gated"] == 0.0 and result["base_ppl_delta_plain_lora"] != 0.0
    assert len(result["methods"]["mtp"]["accept_by_position"]) == 4
    paths = write_mtp_report(result, tmp_path / "mtp.json")
    assert all(p.exists() for p in paths)


def test_long_blocks_are_refused_for_verification_but_allowed_for_scoring(tmp_path):
    """bench mtp scores 256-token passages with masks in one block (not a verification: no losslessness claim)."""
    tiny_model_dir(tmp_path, "gemma3")
    model = leaninfer.load(tmp_path, precision="fp32").model
    ad = _adapter(model, k=4)
    with pytest.raises(ValueError, match="longer than"):
        with ad.attached(model, max_rows=500):
            pass
    with ad.attached(model, max_rows=500, lossless=False):
        pass
