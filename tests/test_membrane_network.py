"""MembraneNetwork on the tiny UNet, and membrane files (kohya/SPM layout)."""

from __future__ import annotations

import math
import os

import pytest
import torch
from helpers_ops import OpLog
from safetensors.torch import save_file

from spmctl.errors import SpmctlError
from spmctl.families.sd1.tiny import build_tiny_unet
from spmctl.membrane import MembraneFile, MembraneModule, MembraneNetwork, load_membrane, lora_name, save_membrane


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 500]), torch.randn(2, 77, 32, generator=g)


def run(unet, inputs, rows=slice(None)):
    device = next(unet.parameters()).device
    x, t, e = (v[rows].to(device) for v in inputs)
    with torch.no_grad():
        return unet(x, t, e).sample


def randomise(net: MembraneNetwork, seed: int = 0, k: int | None = None) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in net.named_wrappers():
            sl = slice(None) if k is None else slice(k, k + 1)
            m.lora_up[sl] = (torch.randn(m.lora_up[sl].shape, generator=g) * 0.5).to(m.lora_up.device)


def test_sd1_and_sd2_module_counts():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):  # full-size configs without allocating weights
        sd1 = UNet2DConditionModel(cross_attention_dim=768)
        sd2 = UNet2DConditionModel(
            cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True
        )
    assert MembraneNetwork(sd1).modules_count == 192
    net2 = MembraneNetwork(sd2)
    assert net2.modules_count == 192
    assert "down_blocks.0.attentions.0.proj_in" in net2.module_names


def test_attach_init_and_names():
    unet = build_tiny_unet()
    net = MembraneNetwork(unet, rank=2, alpha=None)
    assert net.modules_count == 48
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    assert name in net.module_names
    assert lora_name(name) == "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert [n for n, _ in unet.named_modules() if n in set(net.module_names)] == net.module_names
    for _, m in net.named_wrappers():
        fan_in = m.lora_down[0].numel() // 2
        assert m.lora_down.abs().max() <= 1 / math.sqrt(fan_in) + 1e-7  # kaiming_uniform(a=sqrt(5)) bound
        assert torch.count_nonzero(m.lora_up) == 0 and float(m.scale[0]) == 1.0  # alpha None -> rank
    assert len(net.trainable_parameters()) == 96
    assert net.state_dict_for(0)[lora_name(name) + ".alpha"].item() == 2.0
    with pytest.raises(SpmctlError, match="already attached"):
        MembraneNetwork(unet)


def test_gate_zero_and_detach_are_bit_exact(inputs, device):
    reference = run(build_tiny_unet().to(device), inputs)
    unet = build_tiny_unet().to(device)
    state_before = {k: v.clone() for k, v in unet.state_dict().items()}
    layers_before = dict(unet.named_modules())
    net = MembraneNetwork(unet, num_membranes=2)
    assert torch.equal(run(unet, inputs), reference)  # fresh membrane: up is zero
    randomise(net)
    net.set_gates(0.0)
    assert torch.equal(run(unet, inputs), reference)
    net.set_gates(None)
    assert not torch.allclose(run(unet, inputs), reference, atol=1e-3)  # nonzero up changes the output
    net.detach()
    assert torch.equal(run(unet, inputs), reference)
    assert dict(unet.named_modules()).keys() == layers_before.keys()
    assert all(
        a is b for a, b in zip(dict(unet.named_modules()).values(), layers_before.values(), strict=True)
    )
    state_after = unet.state_dict()
    assert state_after.keys() == state_before.keys()
    assert all(torch.equal(state_after[k], v) for k, v in state_before.items())


def test_per_sample_gates_equal_separate_calls(inputs, device):
    untouched = build_tiny_unet().to(device)
    unet = build_tiny_unet().to(device)
    net = MembraneNetwork(unet, num_membranes=2)
    randomise(net)
    net.set_gates(torch.tensor([[1.0, 0.5], [0.0, 0.0]]))
    batched = run(unet, inputs)
    assert torch.equal(batched[1:], run(untouched, inputs)[1:])  # gate-0 sample untouched, bit for bit
    with net.gated([1.0, 0.5]):
        assert torch.equal(net.gates.cpu(), torch.tensor([[1.0, 0.5]]))
        first = run(unet, inputs, slice(0, 1))
    assert net.gates.shape == (2, 2)  # the context manager restored the per-sample gates
    with net.gated(0.0):
        second = run(unet, inputs, slice(1, 2))
    torch.testing.assert_close(batched[:1], first, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched[1:], second, atol=1e-5, rtol=1e-5)
    with pytest.raises(SpmctlError, match="3 rows"):
        net.set_gates(torch.ones(3, 2))
        run(unet, inputs)
    with pytest.raises(SpmctlError, match="2 values"):
        net.set_gates([1.0, 2.0, 3.0])


def test_membranes_compose_additively(inputs):
    base = run(build_tiny_unet(), inputs)
    unet = build_tiny_unet()
    net = MembraneNetwork(unet, num_membranes=2)
    randomise(net, seed=3)
    # Small ups keep the UNet near-linear in each membrane so the deltas add up to first order;
    # exactly additive per layer, the check here is that each gate only drives its own membrane.
    with torch.no_grad():
        for _, m in net.named_wrappers():
            m.lora_up.mul_(1e-3)
    deltas = []
    for gates in ([1.0, 0.0], [0.0, 1.0], [1.0, 1.0]):
        net.set_gates(gates)
        deltas.append(run(unet, inputs) - base)
    torch.testing.assert_close(deltas[0] + deltas[1], deltas[2], atol=1e-4, rtol=1e-2)


@pytest.mark.parametrize("grad", [False, True], ids=["sampling", "training"])
def test_fused_and_reference_agree_in_the_unet(fused_on, device, inputs, monkeypatch, grad):
    """The same UNet with the fused ops (which it must really call: the in-place and layer+membrane ops
    when sampling, the autograd op when training) and with the reference."""
    import spmctl.ops.fused as fused

    unet = build_tiny_unet().to(device)
    net = MembraneNetwork(unet)
    randomise(net)
    net.set_gates(torch.tensor([[0.7], [1.0]]))

    def call():
        x, t, e = (v.to(device) for v in inputs)
        with torch.set_grad_enabled(grad), OpLog() as log:
            return unet(x, t, e).sample.detach(), log.spmctl_ops()

    call()  # the first fused call on a device runs its self-check
    out, ops = call()
    expected_ops = {"spmctl.membrane_fwd.default"} if grad or device.type == "cuda" else {
        "spmctl.membrane_fwd_.default", "spmctl.linear_membrane.default"}
    assert ops == expected_ops
    monkeypatch.setattr(fused, "_backend", "reference")
    expected, ops = call()
    assert ops == set()
    torch.testing.assert_close(expected, out, atol=1e-5, rtol=1e-5)


def test_training_gradients_reach_only_the_membrane(inputs, device):
    unet = build_tiny_unet().requires_grad_(False).to(device)
    net = MembraneNetwork(unet)
    x, t, e = (v.to(device) for v in inputs)
    unet(x, t, e).sample.square().mean().backward()
    ups = [m.lora_up.grad for _, m in net.named_wrappers()]
    assert all(g is not None for g in ups) and sum(float(g.abs().sum()) for g in ups) > 0
    assert all(p.grad is None for p in unet.parameters() if not p.requires_grad)


# ------------------------------------------------------------------------------------------ files


def test_file_round_trip_fp32_exact(tmp_path):
    net = MembraneNetwork(build_tiny_unet(), rank=2, alpha=1.0)
    randomise(net)
    path = net.save(tmp_path / "m.safetensors", prompts=["van gogh", "cat"], extra_metadata={"note": "x"})
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]  # no temporary file left behind
    mf = load_membrane(path)
    assert isinstance(mf, MembraneFile)
    assert mf.concepts == ["van gogh", "cat"] and mf.rank == 2 and mf.alpha == 1.0
    assert mf.metadata["rank"] == "2" and mf.metadata["alpha"] == "1.0" and mf.metadata["note"] == "x"
    sd = net.state_dict_for(0)
    assert mf.tensors.keys() == sd.keys()
    assert all(torch.equal(mf.tensors[k], v) for k, v in sd.items())
    other = MembraneNetwork(build_tiny_unet(), rank=2, alpha=1.0)
    assert other.load(path) == ["van gogh", "cat"]
    assert all(torch.equal(other.state_dict_for(0)[k], v) for k, v in sd.items())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_file_dtype_honoured(tmp_path, dtype):
    net = MembraneNetwork(build_tiny_unet())
    randomise(net)
    path = save_membrane(
        tmp_path / "m.safetensors", net.state_dict_for(0), prompts=["cat"], rank=1, alpha=1.0, dtype=dtype
    )
    mf = load_membrane(path)
    assert {v.dtype for v in mf.tensors.values()} == {dtype}
    assert all(torch.equal(mf.tensors[k], v.to(dtype)) for k, v in net.state_dict_for(0).items())
    net.load_state_dict_for(0, mf.tensors)  # loads back into fp32 parameters


def test_hand_written_original_layout_loads(tmp_path, inputs):
    """A file built here from the key schema alone, the way the original SPM code lays it out."""
    unet = build_tiny_unet()
    g = torch.Generator().manual_seed(5)
    tensors = {}
    for name, layer in unet.named_modules():
        if ".attentions." not in name or not isinstance(layer, torch.nn.Linear | torch.nn.Conv2d):
            continue
        key = "lora_unet_" + name.replace(".", "_")
        if isinstance(layer, torch.nn.Conv2d):
            down = torch.randn(1, layer.in_channels, 1, 1, generator=g)
            up = torch.randn(layer.out_channels, 1, 1, 1, generator=g)
        else:
            down = torch.randn(1, layer.in_features, generator=g)
            up = torch.randn(layer.out_features, 1, generator=g)
        tensors.update(
            {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(0.5)}
        )
    path = tmp_path / "original.safetensors"
    save_file(tensors, str(path), metadata={"prompts": "van gogh", "rank": "1", "alpha": "0.5"})
    net = MembraneNetwork(unet)
    assert net.load(path) == ["van gogh"]
    assert net.alphas[0] == 0.5 and all(float(m.scale[0]) == 0.5 for _, m in net.named_wrappers())
    out = net.state_dict_for(0)
    assert out.keys() == tensors.keys() and all(torch.equal(out[k], v) for k, v in tensors.items())
    assert not torch.allclose(run(unet, inputs), run(build_tiny_unet(), inputs), atol=1e-3)


def test_lower_rank_file_is_zero_padded(tmp_path, inputs):
    small_unet = build_tiny_unet()
    small = MembraneNetwork(small_unet, rank=1, alpha=1.0)
    randomise(small)
    path = small.save(tmp_path / "r1.safetensors", prompts=["cat"])
    unet = build_tiny_unet()
    big = MembraneNetwork(unet, rank=4, num_membranes=2)
    big.load(path, k=1)
    big.set_gates([0.0, 1.0])
    torch.testing.assert_close(run(unet, inputs), run(small_unet, inputs), atol=1e-6, rtol=1e-6)
    assert big.ranks == [4, 1] and big.state_dict_for(1).keys() == small.state_dict_for(0).keys()
    assert all(torch.equal(big.state_dict_for(1)[k], v) for k, v in small.state_dict_for(0).items())


def test_wrong_shape_names_the_first_bad_key(tmp_path):
    net = MembraneNetwork(build_tiny_unet())
    tensors = net.state_dict_for(0)
    keys = [k for k in tensors if k.endswith(".lora_up.weight")]
    bad = keys[3]
    tensors[bad] = torch.zeros(7, 1)
    tensors[keys[5]] = torch.zeros(9, 1)
    with pytest.raises(SpmctlError, match=bad.replace(".", r"\.")):
        net.load_state_dict_for(0, tensors)
    path = save_membrane(tmp_path / "bad.safetensors", tensors, prompts=["x"], rank=1, alpha=1.0)
    with pytest.raises(SpmctlError, match=r"bad\.safetensors.*" + bad.replace(".", r"\.")):
        net.load(path)
    missing = net.state_dict_for(0)
    first = next(iter(missing))
    del missing[first]
    with pytest.raises(SpmctlError, match=first.replace(".", r"\.")):
        net.load_state_dict_for(0, missing)


def test_truncated_corrupt_and_missing_files(tmp_path):
    net = MembraneNetwork(build_tiny_unet())
    path = net.save(tmp_path / "m.safetensors", prompts=["cat"])
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.safetensors").write_bytes(b"\x00\x01not a safetensors file at all" * 10)
    for name in ("trunc.safetensors", "junk.safetensors"):
        with pytest.raises(SpmctlError, match="not a readable membrane"):
            load_membrane(tmp_path / name)
    with pytest.raises(SpmctlError, match="not found"):
        load_membrane(tmp_path / "absent.safetensors")
    with pytest.raises(SpmctlError, match="float32, float16 or bfloat16"):
        save_membrane(tmp_path / "x.safetensors", {}, prompts=[], rank=1, alpha=1.0, dtype=torch.int8)
    assert sorted(os.listdir(tmp_path)) == ["junk.safetensors", "m.safetensors", "trunc.safetensors"]


def test_merged_weights_match_the_membrane_and_leave_the_base_untouched(inputs, monkeypatch):
    unet = build_tiny_unet()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    net = MembraneNetwork(unet, num_membranes=2)
    randomise(net, seed=3)
    with net.gated([0.7, 0.2]):
        expected = run(unet, inputs)
    with torch.no_grad(), net.merged([0.7, 0.2]):  # no_grad: with a gradient recorded it is `gated`
        assert not any(isinstance(unet.get_submodule(p), MembraneModule) for p in net.module_names)
        merged = run(unet, inputs)
    torch.testing.assert_close(merged, expected, rtol=1e-5, atol=1e-5)
    wrappers = [unet.get_submodule(path) for path in net.module_names]
    assert all(w is m for w, (_, m) in zip(wrappers, net.named_wrappers(), strict=True))  # back on exit
    net.detach()
    for key, value in unet.state_dict().items():
        assert torch.equal(value, before[key]), key
    # over the memory budget it runs the membrane op instead (same result)
    net = MembraneNetwork(unet, num_membranes=2)
    randomise(net, seed=3)
    with net.gated([0.7, 0.2]):
        expected = run(unet, inputs)
    monkeypatch.setenv("SPMCTL_MERGE_BUDGET_MB", "0")
    with net.merged([0.7, 0.2]):
        assert torch.equal(run(unet, inputs), expected)
    with pytest.raises(SpmctlError, match="same for every sample"), net.merged(torch.ones(2, 2)):
        pass
