"""models/huge_pages.py: a CPU model's weights (and the KV cache) moved into one huge-page-advised buffer with
nothing about the model changed but where its tensors live."""
import pytest
import torch
from torch import nn

import kernels
from models import huge_pages
from models.layers import QuantizedLinear

needs_thp = pytest.mark.skipif(not huge_pages.enabled(), reason="no transparent huge pages on this machine")


def vma_of(addr: int) -> dict:
    """The /proc/self/smaps fields of the mapping that holds ``addr``."""
    fields, inside = {}, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= addr < hi
            elif inside and ":" in head:
                fields[head[:-1]] = line.split()[1]
    return fields


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.embed = nn.Embedding(50, 64)
        self.head = nn.Linear(64, 50, bias=False)
        self.head.weight = self.embed.weight  # tied: one Parameter in two modules
        self.proj = QuantizedLinear(kernels.quantize_rtn(torch.randn(96, 64, generator=g), 4, 32))
        self.register_buffer("table", torch.randn(7, 3, generator=g))
        self.strided = nn.Parameter(torch.randn(64, 32, generator=g).t(), requires_grad=False)  # not contiguous
        base = torch.randn(10, 64, generator=g)
        self.register_buffer("whole", base)
        self.register_buffer("part", base[2:5])  # two views of one storage: both stay

    def forward(self, ids):
        h = self.embed(ids)
        return self.head(self.proj(h)[..., :64] + h) + self.table.sum() + self.strided.sum() + self.part.sum()


@needs_thp
def test_weights_move_values_and_ties_kept():
    torch.manual_seed(0)
    model = Toy().eval()
    ids = torch.tensor([[1, 7, 49, 3]])
    before = model(ids)
    param_ids = {name: id(p) for name, p in model.named_parameters(remove_duplicate=False)}
    stay = {n: t.data_ptr() for n, t in (("strided", model.strided), ("whole", model.whole), ("part", model.part))}
    moved = huge_pages.place_in_huge_pages(model)
    assert moved > 0
    assert torch.equal(model(ids), before)
    assert {name: id(p) for name, p in model.named_parameters(remove_duplicate=False)} == param_ids
    assert model.head.weight is model.embed.weight
    assert model.head.weight.data_ptr() == model.embed.weight.data_ptr()
    assert {n: getattr(model, n).data_ptr() for n in stay} == stay
    assert model.proj.weight.qweight is model.proj.qweight  # the QuantizedWeight follows its buffers
    placed = [model.embed.weight, model.proj.qweight, model.proj.scales, model.proj.offsets, model.table]
    lo = min(t.data_ptr() for t in placed)
    assert lo % huge_pages.HUGE_PAGE == 0
    assert all(t.data_ptr() % huge_pages.ALIGN == 0 for t in placed)
    assert max(t.data_ptr() + t.nbytes for t in placed) - lo <= moved
    assert vma_of(lo).get("THPeligible") == "1"


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("KERNELSERVE_HUGE_PAGES", "0")
    model = Toy()
    ptr = model.table.data_ptr()
    assert huge_pages.place_in_huge_pages(model) == 0
    assert model.table.data_ptr() == ptr
    assert all(t.sum() == 0 for t in huge_pages.zeros((3, 5), torch.bfloat16, 2))


@needs_thp
def test_zeros_side_by_side_in_huge_pages():
    caches = huge_pages.zeros((4, 16, 3, 40), torch.bfloat16, 5)
    assert len(caches) == 5 and all(c.shape == (4, 16, 3, 40) and c.dtype == torch.bfloat16 for c in caches)
    assert all(not c.any() for c in caches)
    for c in caches:
        c.fill_(1)
    assert all(c.sum() == c.numel() for c in caches)  # no overlap: each fill left the others whole
    assert caches[0].data_ptr() % huge_pages.HUGE_PAGE == 0
    assert vma_of(caches[0].data_ptr()).get("THPeligible") == "1"
