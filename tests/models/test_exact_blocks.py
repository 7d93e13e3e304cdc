"""Verification blocks compute what plain decoding computes, bit for bit, at every block length the speculation
methods reach (attention and MoE experts; models/attention.py EXACT_MAX_T), and longer blocks are refused.

Linear layers are the precision kernels' business (models/quant.py); fp32 `F.linear` is not row-invariant on this
CPU (a row of an M-row matmul differs from the same row alone for every M >= 2), so the whole-model checks here
run the linears row by row to isolate attention and the MoE experts."""

import pytest
import torch

from helpers import block_vs_steps, hf_model, row_by_row_linears
from leaninfer.io.hf import config_from_hf, map_hf_tensors
from leaninfer.models.attention import EXACT_MAX_T, check_exact_block
from leaninfer.models.build import build_decoder
from leaninfer.models.moe import Routing


def _model(arch):
    # intermediate sizes that are multiples of the 16-float vector width, as in real checkpoints: an activation
    # over (T, 40) puts an element in a vector or in the scalar tail depending on T (last-bit differences)
    hf = hf_model(arch) if arch != "qwen2_moe" else _qwen2_moe()
    cfg = config_from_hf(hf.config.to_dict())
    return build_decoder(cfg, map_hf_tensors(cfg, hf.state_dict()))


def _qwen2_moe():
    import transformers as tf

    from helpers import TINY

    torch.manual_seed(0)
    cfg = tf.Qwen2MoeConfig(**TINY, num_experts=6, num_experts_per_tok=2, moe_intermediate_size=24,
                            shared_expert_intermediate_size=48)
    model = tf.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


@pytest.mark.parametrize("arch", ["gemma3", "mixtral", "qwen2_moe"])  # sliding/full attention; MoE (+ shared)
@pytest.mark.parametrize("block", [6, 24, EXACT_MAX_T])
def test_block_logits_equal_one_token_steps(arch, block):
    model = _model(arch)
    routing = Routing(top_k=3) if arch == "mixtral" else None  # 3 experts: the order of their sum matters
    with row_by_row_linears():
        together, steps = block_vs_steps(model, prompt_len=70, block=block, routing=routing)
    assert torch.equal(together, steps)


def test_tree_node_logits_equal_decoding_of_its_path():
    from leaninfer.generate.tree import TokenTree

    model = _model("mixtral")
    parents = torch.tensor([-1] + [i // 2 for i in range(29)])  # 30 nodes, binary tree
    tree = TokenTree(torch.randint(3, 96, (30,), generator=torch.Generator().manual_seed(1)), parents)
    prompt = torch.randint(3, 96, (1, 20), generator=torch.Generator().manual_seed(2))
    with row_by_row_linears(), torch.inference_mode():
        cache = model.new_cache(1, 20 + 30)
        model(prompt, cache=cache)
        pos = (20 + tree.depths())[None]
        got = model(tree.tokens[None], positions=pos, cache=cache, block_mask=tree.mask()).logits[0]
        for node in (3, 17, 29):
            path = [j for j in range(30) if tree.mask()[node, j]]
            c = model.new_cache(1, 20 + 30)
            model(prompt, cache=c)
            for j in path:
                last = model(tree.tokens[j].view(1, 1), cache=c).logits[0, -1]
            assert torch.equal(last, got[node])


def test_int8_block_logits_equal_one_token_steps():
    """The real int8 linears (no row-by-row help) within the packed kernel's range."""
    from leaninfer.models.quant import quantize_model

    model = quantize_model(_model("mixtral"), "int8")
    together, steps = block_vs_steps(model, prompt_len=30, block=6)
    assert torch.equal(together, steps)


def test_longer_verification_blocks_are_refused():
    import leaninfer  # noqa: F401  (package import order)
    from leaninfer.generate.proposers.ngram import NgramProposer
    from leaninfer.generate.sampling import SamplingConfig
    from leaninfer.generate.speculative import decode_speculative

    check_exact_block(EXACT_MAX_T)
    with pytest.raises(ValueError, match=f"longer than {EXACT_MAX_T}"):
        check_exact_block(EXACT_MAX_T + 1)
    model = _model("llama")
    with pytest.raises(ValueError, match="verification block of 65 tokens"):
        decode_speculative(model, NgramProposer(3), [1, 5, 6, 7], 8, SamplingConfig(), set(), k=EXACT_MAX_T)
