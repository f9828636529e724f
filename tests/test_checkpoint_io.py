"""Checkpoint file formats: optimizer state in safetensors, per-file digests in the manifest, sealed writes."""
import hashlib

import pytest
import torch

from core.manifest import ManifestError, build_manifest, content_id, verify_manifest
from trainer import optim_state
from trainer.checkpoint import publish_checkpoint


def _stepped_adamw(steps=3, fused=False):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4))
    opt = torch.optim.AdamW([{"params": [model[0].weight, model[2].weight], "weight_decay": 0.1},
                             {"params": [model[0].bias, model[1].weight, model[1].bias, model[2].bias],
                              "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.95), fused=fused)
    for _ in range(steps):
        model(torch.randn(5, 8)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


@pytest.mark.parametrize("fused", [False, True])
def test_optimizer_state_round_trip_is_exact(tmp_path, fused):
    model, opt = _stepped_adamw(fused=fused)
    assert optim_state.save(opt.state_dict(), tmp_path) == [tmp_path / optim_state.FILE_NAME]
    loaded = optim_state.load(optim_state.state_files(tmp_path))
    original = opt.state_dict()
    assert loaded["param_groups"] == original["param_groups"]
    assert isinstance(loaded["param_groups"][0]["betas"], tuple)
    assert loaded["state"].keys() == original["state"].keys()
    for index, values in original["state"].items():
        assert loaded["state"][index].keys() == values.keys()
        for name, value in values.items():
            assert torch.equal(loaded["state"][index][name], value), (index, name)
            assert loaded["state"][index][name].dtype == value.dtype
    # a fresh optimizer given the loaded state takes exactly the step the original takes
    clone, opt2 = _stepped_adamw(steps=0, fused=fused)
    clone.load_state_dict(model.state_dict())
    opt2.load_state_dict(loaded)
    x = torch.randn(5, 8)
    for m, o in ((model, opt), (clone, opt2)):
        m(x).pow(2).mean().backward()
        o.step()
    for a, b in zip(model.parameters(), clone.parameters()):
        assert torch.equal(a, b)


def test_non_tensor_state_and_legacy_pt_file(tmp_path):
    state = {"state": {0: {"step": 7, "note": "x", "buf": torch.arange(3.0)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    optim_state.save(state, tmp_path)
    loaded = optim_state.load(tmp_path / optim_state.FILE_NAME)
    assert loaded["state"][0]["step"] == 7 and loaded["state"][0]["note"] == "x"
    assert torch.equal(loaded["state"][0]["buf"], torch.arange(3.0))
    torch.save(state, tmp_path / optim_state.LEGACY_NAME)  # checkpoints written before the safetensors format
    assert optim_state.state_files(tmp_path) == [tmp_path / optim_state.FILE_NAME]
    (tmp_path / optim_state.FILE_NAME).rename(tmp_path / "elsewhere")
    assert optim_state.state_files(tmp_path) == [tmp_path / optim_state.LEGACY_NAME]
    assert optim_state.load(tmp_path / optim_state.LEGACY_NAME)["state"][0]["step"] == 7


def test_sharded_optimizer_state_round_trip_and_missing_shard_named(tmp_path, monkeypatch):
    model, opt = _stepped_adamw()
    monkeypatch.setattr(optim_state, "SHARD_BYTES", 600)  # a few tensors per shard
    sealed = []
    paths = optim_state.save(opt.state_dict(), tmp_path, seal=sealed.append)
    assert len(paths) >= 3 and sealed == paths
    assert [p.name for p in paths] == [f"optimizer-{i:05d}-of-{len(paths):05d}.safetensors" for i in range(1, len(paths) + 1)]
    assert optim_state.state_files(tmp_path) == paths
    loaded = optim_state.load(optim_state.state_files(tmp_path))
    for index, values in opt.state_dict()["state"].items():
        for name, value in values.items():
            assert torch.equal(loaded["state"][index][name], value), (index, name)
    paths[1].unlink()
    with pytest.raises(optim_state.OptimizerStateError, match=f"2 of {len(paths)}|{len(paths) - 1} of {len(paths)}"):
        optim_state.load(optim_state.state_files(tmp_path))
    from trainer.checkpoint import optimizer_state_files
    assert optimizer_state_files(tmp_path) == [p for p in paths if p.exists()]


def test_foreign_safetensors_file_is_refused_by_name(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / optim_state.FILE_NAME
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(optim_state.OptimizerStateError, match=r"optimizer\.safetensors.*not a Cadence optimizer state"):
        optim_state.load(path)


def _folder(tmp_path):
    folder = tmp_path / "ckpt"
    (folder / "training_state").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 4096)
    (folder / "config.json").write_text("{}")
    (folder / "training_state" / "optimizer.safetensors").write_bytes(b"\1\2\3" * 50000)
    return folder


def test_manifest_digests_are_blake3_and_sha256_manifests_still_verify(tmp_path):
    import blake3

    from core.manifest import MANIFEST_NAME, write_manifest

    folder = _folder(tmp_path)
    m = build_manifest(folder)
    for rel in ("model.safetensors", "config.json", "training_state/optimizer.safetensors"):
        data = (folder / rel).read_bytes()
        assert m["files"][rel] == {"blake3": blake3.blake3(data).hexdigest(), "size": len(data)}
    # the content id covers model files only, so it does not depend on the training state's digest
    assert content_id(m) == content_id(build_manifest(folder, model_only=True))
    # a manifest of an earlier version (sha256 entries) verifies, keeps its content id, and catches a change
    old = {"format": 1, "files": {rel: {"sha256": hashlib.sha256((folder / rel).read_bytes()).hexdigest(),
                                        "size": (folder / rel).stat().st_size} for rel in m["files"]}}
    (folder / MANIFEST_NAME).write_text(__import__("json").dumps(old))
    assert verify_manifest(folder) == old
    assert content_id(old) != content_id(m)  # sha256 ids are kept as they were (unprefixed)
    (folder / "config.json").write_text("{ }")
    with pytest.raises(ManifestError, match="config.json: size"):
        verify_manifest(folder)
    write_manifest(folder)
    verify_manifest(folder)


@pytest.mark.parametrize("rel", ["model.safetensors", "config.json", "training_state/optimizer.safetensors"])
def test_one_flipped_byte_in_any_file_fails_verification_naming_it(tmp_path, rel):
    from core.manifest import write_manifest

    folder = _folder(tmp_path)
    write_manifest(folder)
    verify_manifest(folder)
    data = bytearray((folder / rel).read_bytes())
    data[len(data) // 2] ^= 1
    (folder / rel).write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=rf"{rel}: blake3 mismatch"):
        verify_manifest(folder)


def test_sealed_files_are_hashed_while_the_writer_goes_on(tmp_path):
    order = []

    def write(tmp, seal):
        (tmp / "model.safetensors").write_bytes(b"m" * 300000)
        seal()
        order.append("sealed")
        (tmp / "training_state").mkdir()
        (tmp / "training_state" / "optimizer.safetensors").write_bytes(b"o" * 300000)

    info = publish_checkpoint(tmp_path, 3, write)
    manifest = verify_manifest(info.path)
    assert set(manifest["files"]) == {"model.safetensors", "training_state/optimizer.safetensors"}
    assert manifest["global_step"] == 3 and order == ["sealed"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
