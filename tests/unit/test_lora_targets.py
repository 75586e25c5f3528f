"""LoRA adapters only where they act: torch's ``nn.MultiheadAttention`` reads its ``out_proj`` weight directly, so an
adapter wrapped around that layer would train, save and report itself while never changing an output. Such layers
are left out of the targets (CONCH's pooler and text blocks avoid the problem by calling their ``out_proj``)."""

import torch
from torch import nn

from medvlkit.tasks.finetune.lora import LoraSpec, add_lora, target_names


class _Tower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.proj = nn.Linear(8, 8)
        self.head = nn.Module()
        self.head.out_proj = nn.Linear(8, 8)  # an out_proj that is called: a fair target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.out_proj(self.proj(self.mha(x, x, x, need_weights=False)[0]))


def test_an_adapter_on_multihead_attention_out_proj_would_do_nothing():
    """The reason for the rule, shown: the adapter's update is large, the output does not move."""
    torch.manual_seed(0)
    tower, x = _Tower().eval(), torch.randn(1, 3, 8)
    before = tower(x)
    add_lora(tower, LoraSpec(r=2, dropout=0.0), ["mha.out_proj"])
    for name, p in tower.named_parameters():
        if "lora_B" in name:
            p.data.fill_(5.0)
    assert torch.allclose(tower(x), before)


def test_it_is_left_out_of_the_targets_and_the_others_stay():
    tower = _Tower()
    names = target_names(tower, ("out_proj", "proj"), [tower])
    assert names == ["proj", "head.out_proj"]


def test_the_conch_towers_have_no_such_layer():
    from medvlkit.models.conch import AttentionalPooler, CoCaText

    for module in (AttentionalPooler(8, 16, 2, 1), CoCaText(10, 8, 1, 1, 6, 8, 4)):
        assert not any(isinstance(m, nn.MultiheadAttention) for m in module.modules())


def _functional_pool(self, x):
    """AttentionPool2d as it was computed before (OpenAI's functional call, reading the projections' weights)."""
    import torch.nn.functional as F

    x = x.flatten(start_dim=2).permute(2, 0, 1)
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0) + self.positional_embedding[:, None, :]
    out, _ = F.multi_head_attention_forward(
        query=x[:1], key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=self.num_heads,
        q_proj_weight=self.q_proj.weight, k_proj_weight=self.k_proj.weight, v_proj_weight=self.v_proj.weight,
        in_proj_weight=None, in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=self.c_proj.weight,
        out_proj_bias=self.c_proj.bias, use_separate_proj_weight=True, training=self.training, need_weights=False)
    return out.squeeze(0)


def test_finetune_refuses_adapters_the_forward_never_calls(tmp_path, monkeypatch, capsys):
    """With the ResNet CLIPs' attention pool computed functionally (as medvlkit did until this check found it), LoRA
    on its projections would have been silent no-ops: fine-tuning now stops and names them. Computed with called
    modules (today), the same command trains."""
    from pathlib import Path

    from helpers import make_split_folders
    from medvlkit.apps.cli import main
    from medvlkit.models.clip_resnet import AttentionPool2d

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "pmc_clip"
    data = make_split_folders(tmp_path / "d", {"train": 4, "val": 2, "test": 2})
    argv = ["finetune", "--model", f"pmc-clip:{fixture / 'checkpoint.pt'}", "--data", str(data), "-q", "--workers",
            "0", "--lora", "targets=q_proj,c_proj", "--max-steps", "1", "--batch-size", "4", "--bootstrap", "0"]
    with monkeypatch.context() as m:
        m.setattr(AttentionPool2d, "forward", _functional_pool)
        assert main([*argv, "--out", str(tmp_path / "a")]) == 2
        err = capsys.readouterr().err
        assert "never run as modules" in err and "attnpool.q_proj" in err
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
