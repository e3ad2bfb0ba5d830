"""The C++ encoder classifier against transformers (the independent reference):
logits, loss and gradients, bf16 autocast, Hugging Face directories both ways,
pickled and sharded checkpoints, and malformed files."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from transformers import (AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification,
                          RobertaConfig, RobertaForSequenceClassification)

import enstack
from enstack import model as es_model

# (model family, layers, heads, hidden, intermediate, vocab, positions, type_vocab, labels, act)
CONFIGS = [
    ("roberta", 2, 4, 32, 64, 120, 514, 1, 5, "gelu"),        # CodeBERT/GraphCodeBERT shape, tiny
    ("roberta", 3, 2, 24, 40, 97, 1026, 10, 2, "gelu"),       # UniXcoder: 1026 positions, 10 types
    ("roberta", 1, 8, 64, 48, 300, 514, 2, 3, "gelu_new"),
    ("bert", 2, 4, 32, 64, 150, 512, 2, 4, "gelu"),
]


def _hf_config(family, layers, heads, hidden, inter, vocab, positions, types, labels, act, dropout=0.1):
    cls = RobertaConfig if family == "roberta" else BertConfig
    extra = {"pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2} if family == "roberta" else {}
    return cls(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
               intermediate_size=inter, max_position_embeddings=positions, type_vocab_size=types,
               num_labels=labels, hidden_act=act, hidden_dropout_prob=dropout,
               attention_probs_dropout_prob=dropout, **extra)


def _hf_model(config, attn="sdpa"):
    cls = RobertaForSequenceClassification if config.model_type == "roberta" else BertForSequenceClassification
    return cls._from_config(config, attn_implementation=attn)


def _batch(config, seed, lengths=(5, 37, 1, 64, 12)):
    """Token ids and mask mixing short and long rows, padded to the longest."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    pad = config.pad_token_id
    ids = torch.full((len(lengths), width), pad, dtype=torch.long)
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(3, config.vocab_size, (n,), generator=g)
        ids[row, 0] = 0
        mask[row, :n] = 1
    return ids, mask


def _save_reference(tmp_path, spec, seed, dropout=0.1):
    torch.manual_seed(seed)
    reference = _hf_model(_hf_config(*spec, dropout=dropout))
    reference.save_pretrained(tmp_path)
    return reference


@pytest.mark.parametrize("spec", CONFIGS, ids=lambda s: f"{s[0]}-L{s[1]}-H{s[3]}-P{s[6]}")
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("packing", [2.0, 0.0], ids=["padded", "packed"])
def test_eval_logits_match_transformers(tmp_path, spec, attn, packing):
    reference = _save_reference(tmp_path, spec, seed=11).eval()
    reference = reference.__class__.from_pretrained(tmp_path, attn_implementation=attn).eval()
    ours = es_model.load(tmp_path).eval()
    ours.packing_min_padding = packing
    ids, mask = _batch(reference.config, seed=3)
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, mask)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


# dropout 0 trains through SDPA; a dropout too small to drop anything (p * 65536 rounds
# to 0, 1 / (1 - p) rounds to 1) takes the CPU training path with the written-out
# attention (scale folded into the query weights, additive mask bias) and the fused
# mask-free dropout kernels, which then must be the identity.
# Each on the padded layout and packed (real tokens only, attention per sequence).
@pytest.mark.parametrize("packing", [2.0, 0.0], ids=["padded", "packed"])
@pytest.mark.parametrize("dropout", [0.0, 1e-9], ids=["sdpa", "written-out"])
@pytest.mark.parametrize("spec", CONFIGS, ids=lambda s: f"{s[0]}-L{s[1]}-H{s[3]}-P{s[6]}")
def test_loss_and_every_gradient_match_transformers_in_train_mode(tmp_path, spec, dropout, packing):
    reference = _save_reference(tmp_path, spec, seed=5, dropout=dropout).train()
    ours = es_model.load(tmp_path).train()
    ours.packing_min_padding = packing
    ids, mask = _batch(reference.config, seed=9)
    labels = torch.arange(ids.shape[0]) % reference.config.num_labels

    expected_loss = reference(input_ids=ids, attention_mask=mask, labels=labels).loss
    expected_loss.backward()
    loss = torch.nn.functional.cross_entropy(ours(ids, mask), labels)
    loss.backward()

    torch.testing.assert_close(loss, expected_loss, rtol=1e-4, atol=1e-6)
    expected_grads = {n: p.grad for n, p in reference.named_parameters()}
    names = [n for n, _ in ours.named_parameters()]
    assert sorted(names) == sorted(expected_grads)
    largest = max(g.abs().max() for g in expected_grads.values())
    for name, param in ours.named_parameters():
        ref = expected_grads[name]
        assert param.grad is not None, name
        # Relative to the gradient's scale: tiny entries carry only rounding noise. The key
        # bias's true gradient is zero (softmax ignores a per-row constant), so its entries
        # are pure noise: errors are measured against at least a millionth of the largest.
        scale = torch.maximum(ref.abs().max(), largest * 1e-6)
        err = (param.grad - ref).abs().max() / scale
        assert err < 1e-4, f"{name}: max relative gradient error {err:.2e}"


# Batches with >= 10% padding run packed (real tokens only, attention per sequence), which
# also serves a mask with holes; a batch whose first column holds padding (left padding)
# takes the padded path, since the head reads position 0.
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("case", ["holes", "left-padding"])
def test_unusual_masks_match_transformers(tmp_path, train, case):
    reference = _save_reference(tmp_path, CONFIGS[0], seed=4, dropout=0.0).train(train)
    ours = es_model.load(tmp_path).train(train)
    ids, mask = _batch(reference.config, seed=2, lengths=(20, 9, 30, 3))
    if case == "holes":
        mask[0, 5:8] = 0
        mask[2, 10:11] = 0
    else:
        ids[1] = torch.cat([ids[1, 9:], ids[1, :9]])
        mask[1] = torch.cat([mask[1, 9:], mask[1, :9]])
    with torch.set_grad_enabled(train):
        expected = reference(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, mask)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_bf16_autocast_logits_are_close_to_transformers(tmp_path):
    spec = CONFIGS[0]
    reference = _save_reference(tmp_path, spec, seed=2).eval()
    ours = es_model.load(tmp_path).eval()
    ids, mask = _batch(reference.config, seed=4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = reference(input_ids=ids, attention_mask=mask).logits.float()
        got = ours(ids, mask).float()
    with torch.no_grad():
        exact = reference(input_ids=ids, attention_mask=mask).logits
    # bf16 keeps 8 bits of mantissa: both implementations sit within the same
    # distance of the fp32 result (documented tolerance: 3e-2 absolute on logits of ~1).
    torch.testing.assert_close(got, exact, atol=3e-2, rtol=0)
    torch.testing.assert_close(got, expected, atol=3e-2, rtol=0)


def test_padding_is_invisible_like_in_transformers(tmp_path):
    reference = _save_reference(tmp_path, CONFIGS[1], seed=8).eval()
    ours = es_model.load(tmp_path).eval()
    ids, mask = _batch(reference.config, seed=1, lengths=(6, 30))
    with torch.no_grad():
        alone = ours(ids[:1, :6], mask[:1, :6])
        padded = ours(ids, mask)[:1]
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=0)


@pytest.mark.parametrize("spec", [CONFIGS[0], CONFIGS[3]], ids=["roberta", "bert"])
def test_enstack_saved_directory_loads_in_transformers_with_identical_logits(tmp_path, spec):
    torch.manual_seed(0)
    config = _hf_config(*spec).to_dict()
    config["id2label"] = {str(i): f"CWE-{i}" for i in range(spec[8])}
    ours = es_model.from_config(config).eval()
    ours.save_pretrained(tmp_path)
    reference = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert reference.config.id2label[1] == "CWE-1"
    ids, mask = _batch(reference.config, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, mask), reference(input_ids=ids, attention_mask=mask).logits,
                                   atol=1e-5, rtol=0)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["architectures"] == [type(reference).__name__]


def test_named_parameters_are_the_hugging_face_names_and_share_storage(tmp_path):
    reference = _save_reference(tmp_path, CONFIGS[0], seed=1)
    ours = es_model.load(tmp_path)
    assert [n for n, _ in ours.named_parameters()] and dict(ours.named_parameters()).keys() == \
        dict(reference.named_parameters()).keys()
    for name, tensor in ours.named_parameters():
        torch.testing.assert_close(tensor, dict(reference.named_parameters())[name], atol=0, rtol=0)
    # Editing a returned parameter edits the model (they are the same storage).
    before = ours.eval()(torch.tensor([[0, 5, 2]]))
    with torch.no_grad():
        dict(ours.named_parameters())["classifier.out_proj.bias"].add_(1.0)
    torch.testing.assert_close(ours(torch.tensor([[0, 5, 2]])), before + 1.0)


def test_pickled_pytorch_model_bin_is_read_with_weights_only(tmp_path):
    reference = _save_reference(tmp_path, CONFIGS[0], seed=3).eval()
    (tmp_path / "model.safetensors").unlink()
    torch.save(reference.state_dict(), tmp_path / "pytorch_model.bin")
    ours = es_model.load(tmp_path).eval()
    ids, mask = _batch(reference.config, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, mask), reference(input_ids=ids, attention_mask=mask).logits,
                                   atol=1e-5, rtol=0)
    # The C++ loader refuses the pickle and says where to go instead.
    with pytest.raises(enstack.ModelError, match="enstack.model.load"):
        enstack._C.model.load_pretrained(str(tmp_path))


def test_a_pickle_with_code_is_refused(tmp_path):
    _save_reference(tmp_path, CONFIGS[0], seed=3)
    (tmp_path / "model.safetensors").unlink()
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(enstack.ModelError, match="weights_only"):
        es_model.load(tmp_path)


def test_sharded_safetensors_load(tmp_path):
    reference = _save_reference(tmp_path, CONFIGS[0], seed=4).eval()
    reference.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    ours = es_model.load(tmp_path / "sharded").eval()
    ids, mask = _batch(reference.config, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, mask), reference(input_ids=ids, attention_mask=mask).logits,
                                   atol=1e-5, rtol=0)


def test_base_checkpoint_gets_a_head_initialised_like_transformers(tmp_path):
    from transformers import RobertaModel

    config = _hf_config(*CONFIGS[0])
    config.initializer_range = 0.5
    RobertaModel(config, add_pooling_layer=True).save_pretrained(tmp_path)
    torch.manual_seed(0)
    ours = es_model.load(tmp_path, num_labels=5)
    params = dict(ours.named_parameters())
    assert params["classifier.out_proj.weight"].shape == (5, config.hidden_size)
    assert torch.count_nonzero(params["classifier.out_proj.bias"]) == 0
    assert abs(params["classifier.dense.weight"].std().item() - 0.5) < 0.1
    # The encoder weights are the checkpoint's.
    base = RobertaModel.from_pretrained(tmp_path)
    torch.testing.assert_close(params["roberta.encoder.layer.1.output.dense.weight"],
                               base.encoder.layer[1].output.dense.weight, atol=0, rtol=0)


def test_num_labels_override_replaces_a_head_of_another_size(tmp_path):
    _save_reference(tmp_path, CONFIGS[0], seed=4)  # 5 labels
    ours = es_model.load(tmp_path, num_labels=2)
    assert ours.num_labels == 2
    assert dict(ours.named_parameters())["classifier.out_proj.weight"].shape[0] == 2


def test_wrong_weights_list_every_problem_in_one_error(tmp_path):
    _save_reference(tmp_path, CONFIGS[0], seed=4)
    config = json.loads((tmp_path / "config.json").read_text())
    config["hidden_size"] = 64
    config["num_hidden_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(enstack.ModelError) as info:
        es_model.load(tmp_path)
    text = str(info.value)
    assert "missing" in text and "roberta.encoder.layer.2" in text
    assert "wrong shape" in text and "checkpoint [120, 32], model [120, 64]" in text


# --- malformed files --------------------------------------------------------------------------

def _write_safetensors(path, header: bytes, data: bytes = b""):
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


MALFORMED = {
    "too-short": lambda p: p.write_bytes(b"\x01\x02"),
    "header-longer-than-file": lambda p: p.write_bytes(struct.pack("<Q", 1 << 40) + b"{}"),
    "header-not-json": lambda p: _write_safetensors(p, b"{not json"),
    "unknown-dtype": lambda p: _write_safetensors(
        p, json.dumps({"w": {"dtype": "F7", "shape": [1], "data_offsets": [0, 4]}}).encode(), b"\0" * 4),
    "out-of-range": lambda p: _write_safetensors(
        p, json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode(), b"\0" * 8),
    "overlapping": lambda p: _write_safetensors(
        p, json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                       "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode(), b"\0" * 12),
    "size-mismatch": lambda p: _write_safetensors(
        p, json.dumps({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}).encode(), b"\0" * 8),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_safetensors_is_a_model_error(tmp_path, case):
    _save_reference(tmp_path, CONFIGS[0], seed=1)
    MALFORMED[case](tmp_path / "model.safetensors")
    with pytest.raises(enstack.ModelError, match="model.safetensors"):
        es_model.load(tmp_path)


@pytest.mark.parametrize("change, key", [
    ({"model_type": "gpt2"}, "model_type"),
    ({"position_embedding_type": "relative_key_query"}, "position_embedding_type"),
    ({"num_attention_heads": 5}, "num_attention_heads"),
    ({"hidden_act": "swish"}, "hidden_act"),
    ({"vocab_size": "many"}, "vocab_size"),
])
def test_unsupported_configs_name_the_key(tmp_path, change, key):
    _save_reference(tmp_path, CONFIGS[0], seed=1)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(change)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(enstack.ModelError, match=key):
        es_model.load(tmp_path)


def test_config_that_is_not_json_is_a_model_error(tmp_path):
    _save_reference(tmp_path, CONFIGS[0], seed=1)
    (tmp_path / "config.json").write_text("{ nope")
    with pytest.raises(enstack.ModelError, match="not valid JSON"):
        es_model.load(tmp_path)


def test_fast_dropout_has_torch_semantics_and_a_reproducible_mask():
    from enstack._C.model import fast_dropout

    x = torch.randn(64, 300, 96, requires_grad=True)
    torch.manual_seed(7)
    y = fast_dropout(x, 0.1)
    ratio = (y / x).detach()
    kept = ratio != 0
    # Kept values are scaled by 1 / (1 - p) exactly, as torch.nn.functional.dropout does.
    torch.testing.assert_close(ratio[kept], torch.full_like(ratio[kept], 1 / 0.9))
    share = kept.float().mean().item()
    n = x.numel()
    assert abs(share - 0.9) < 5 * (0.9 * 0.1 / n) ** 0.5  # binomial: within 5 standard deviations
    y.sum().backward()
    torch.testing.assert_close(x.grad, ratio)  # the gradient is the mask
    torch.manual_seed(7)
    assert torch.equal(fast_dropout(x.detach(), 0.1), y.detach())  # the seed reproduces the mask
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(7)
    single = fast_dropout(x.detach(), 0.1)
    torch.set_num_threads(threads)
    assert torch.equal(single, y.detach())  # and the thread count does not change it
    assert torch.equal(fast_dropout(x.detach(), 0.1, training=False), x.detach())
    assert not torch.equal(fast_dropout(x.detach(), 0.1), y.detach())  # the generator advanced
    # Independent positions: neighbours are not correlated (16-bit fields of one 64-bit draw).
    flat = kept.flatten().float()
    corr = torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1].item()
    assert abs(corr) < 0.01
    with pytest.raises(enstack.ConfigError):
        fast_dropout(x.detach(), 1.0)


def _mask_for(seed, like, p):
    """The multipliers the next dropout call under torch.manual_seed(seed) applies to a tensor like `like`."""
    from enstack._C.model import fast_dropout

    torch.manual_seed(seed)
    return fast_dropout(torch.ones_like(like), p)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dropout_add_equals_residual_plus_masked_input_with_gradients(dtype):
    from enstack._C.model import dropout_add

    y = torch.randn(8, 37, 24, dtype=dtype, requires_grad=True)
    r = torch.randn(8, 37, 24, dtype=dtype, requires_grad=True)
    mask = _mask_for(3, y, 0.1)
    torch.manual_seed(3)
    out = dropout_add(y, r, 0.1)
    reference_y = y.detach().clone().requires_grad_()
    reference_r = r.detach().clone().requires_grad_()
    reference = reference_r + reference_y * mask  # torch's own ops, the same mask
    assert torch.equal(out, reference)
    grad = torch.randn_like(out)
    out.backward(grad)
    reference.backward(grad)
    assert torch.equal(y.grad, reference_y.grad)
    assert torch.equal(r.grad, reference_r.grad)
    assert torch.equal(dropout_add(y, r, 0.1, training=False), y + r)


@pytest.mark.parametrize("shape", [(2, 4, 33, 33), (3, 2, 5, 256), (1, 1, 1, 7)])
def test_softmax_dropout_matches_torch_softmax_then_the_same_mask(shape):
    from enstack._C.model import softmax_dropout

    scores = (torch.randn(*shape) * 3).requires_grad_()
    scores.data[..., -2:] = float("-inf")  # masked keys, as the attention bias makes them
    scores.data[..., 0] = 1.0
    mask = _mask_for(11, scores, 0.2)
    torch.manual_seed(11)
    out = softmax_dropout(scores, 0.2)
    reference_scores = scores.detach().clone().requires_grad_()
    reference = torch.softmax(reference_scores, -1) * mask
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-7)
    grad = torch.randn_like(out)
    out.backward(grad)
    reference.backward(grad)
    torch.testing.assert_close(scores.grad, reference_scores.grad, rtol=1e-5, atol=1e-7)
    assert torch.equal(scores.grad[..., -2:], torch.zeros_like(scores.grad[..., -2:]))


def test_fused_dropouts_pass_gradcheck_under_a_fixed_seed():
    from enstack._C.model import dropout_add, fast_dropout, softmax_dropout

    def seeded(fn):
        def run(*args):
            torch.manual_seed(5)
            return fn(*args, 0.3)
        return run

    x = torch.randn(3, 5, 9, dtype=torch.float64, requires_grad=True)
    r = torch.randn(3, 5, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(seeded(fast_dropout), (x,))
    assert torch.autograd.gradcheck(seeded(dropout_add), (x, r))
    assert torch.autograd.gradcheck(seeded(softmax_dropout), (x,))


def test_dropout_mask_is_the_same_however_the_tensor_is_split_across_threads():
    from enstack._C.model import softmax_dropout

    scores = torch.randn(4, 4, 129, 129, requires_grad=True)
    threads = torch.get_num_threads()
    results = []
    for n in (1, 2, 3):
        torch.set_num_threads(n)
        torch.manual_seed(2)
        out = softmax_dropout(scores, 0.1)
        grad, = torch.autograd.grad(out, scores, torch.ones_like(out))
        results.append((out, grad))
    torch.set_num_threads(threads)
    for out, grad in results[1:]:
        assert torch.equal(out, results[0][0])
        assert torch.equal(grad, results[0][1])
