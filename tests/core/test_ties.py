import pytest
import torch

from core.ties import (
    elect_and_mean,
    ema_weights,
    keep_count,
    linear_merge,
    signed_sums,
    sma_weights,
    ties_merge,
    ties_merge_trimmed,
    trim_threshold,
)

# Three task vectors of four entries; density 0.5 keeps the two largest |values| of each:
#   tau1 = [ 3, -1,  2,   0.5] -> [ 3,  0,  2, 0]
#   tau2 = [-2, -3,  0.1, 1  ] -> [-2, -3,  0, 0]
#   tau3 = [ 1,  2, -4,   0.2] -> [ 0,  2, -4, 0]
TAUS = torch.tensor([[3.0, -1.0, 2.0, 0.5], [-2.0, -3.0, 0.1, 1.0], [1.0, 2.0, -4.0, 0.2]])


def test_ties_by_hand_equal_weights():
    # Elected signs of the sums [1, -1, -2, 0]: +, -, -, 0. Agreeing values: entry 0 {3}, entry 1 {-3},
    # entry 2 {-4}, entry 3 none -> [3, -3, -4, 0].
    assert ties_merge(TAUS, sma_weights(3), density=0.5).tolist() == [3.0, -3.0, -4.0, 0.0]


def test_ties_by_hand_ema_weights():
    # EMA(0.5) over 3 checkpoints, oldest first: [0.25, 0.25, 0.5].
    # Sums: entry 0: 0.75 - 0.5 = 0.25 (+) -> {3}; entry 1: -0.75 + 1.0 = 0.25 (+) -> {2};
    # entry 2: 0.5 - 2 = -1.5 (-) -> {-4}; entry 3: 0 -> [3, 2, -4, 0].
    weights = ema_weights(3, 0.5)
    assert weights.tolist() == [0.25, 0.25, 0.5]
    assert ties_merge(TAUS, weights, density=0.5).tolist() == [3.0, 2.0, -4.0, 0.0]


def test_weighted_mean_among_agreeing_values():
    # Two agreeing positives 4 (w 1) and 1 (w 3): (4 + 3) / 4 = 1.75; nothing is trimmed at density 1.
    taus = torch.tensor([[4.0], [1.0]])
    assert ties_merge(taus, torch.tensor([1.0, 3.0]), density=1.0).item() == 1.75


def test_the_sign_and_mean_step_by_hand():
    # Trimmed columns with weights (1, 1, 2):
    #   entry 0: (0.3, -0.1, 0.2): P = 0.3 + 0.4 = 0.7, N = 0.1, Dp = 3, Dn = 1 -> + : 0.7 / 3
    #   entry 1: (-0.5, 0.0, 0.1): P = 0.2, N = 0.5, Dp = 2, Dn = 1 -> - : -0.5 / 1 (the 0 counts for neither)
    #   entry 2: (0.2, -0.2, 0.0): P = N = 0.2 -> no sign elected -> 0
    trimmed = torch.tensor([[0.3, -0.5, 0.2], [-0.1, 0.0, -0.2], [0.2, 0.1, 0.0]], dtype=torch.float64)
    sums = signed_sums(trimmed, torch.tensor([1.0, 1.0, 2.0]))
    expected = [[0.7, 0.2, 0.2], [0.1, 0.5, 0.2], [3, 2, 1], [1, 1, 1]]
    assert all(got.tolist() == pytest.approx(want) for got, want in zip(sums, expected, strict=True))
    assert elect_and_mean(*sums).tolist() == pytest.approx([0.7 / 3, -0.5, 0.0])


def test_linear_merge_and_weights():
    assert torch.allclose(linear_merge(TAUS, sma_weights(3)), TAUS.mean(0))
    assert sma_weights(4).tolist() == [0.25] * 4
    w = ema_weights(5, 0.5)
    assert w.sum().item() == pytest.approx(1.0) and w.tolist() == sorted(w.tolist())  # recent heavier
    assert ema_weights(1).tolist() == [1.0]
    assert keep_count(10, 0.8) == 8 and keep_count(3, 0.01) == 1
    with pytest.raises(ValueError, match="density"):
        keep_count(10, 0.0)


def _slow_ties(taus, weights, density):
    k, n = taus.shape
    keep = keep_count(n, density)
    trimmed = torch.zeros_like(taus)
    for i in range(k):
        for j in sorted(range(n), key=lambda j: -abs(taus[i, j].item()))[:keep]:
            trimmed[i, j] = taus[i, j]
    out = torch.zeros(n)
    for j in range(n):
        total = sum(weights[i].item() * trimmed[i, j].item() for i in range(k))
        sign = (total > 0) - (total < 0)
        num = den = 0.0
        for i in range(k):
            value = trimmed[i, j].item()
            if sign != 0 and value != 0 and (value > 0) == (sign > 0):
                num += weights[i].item() * value
                den += weights[i].item()
        out[j] = num / den if den else 0.0
    return out


@pytest.mark.parametrize("k, density, weighting", [(2, 0.8, "sma"), (5, 0.5, "ema"), (7, 0.3, "sma")])
def test_ties_matches_slow_reference(k, density, weighting):
    g = torch.Generator().manual_seed(k)
    taus = torch.randn(k, 40, generator=g)
    weights = sma_weights(k) if weighting == "sma" else ema_weights(k)
    assert torch.allclose(ties_merge(taus, weights, density), _slow_ties(taus, weights, density), atol=1e-6)


def test_row_chunks_with_whole_tensor_thresholds_equal_the_whole_merge():
    g = torch.Generator().manual_seed(0)
    taus = torch.randn(4, 12, 10, generator=g)
    weights = ema_weights(4)
    thresholds = [trim_threshold(t, 0.8) for t in taus]
    whole = ties_merge(taus, weights, 0.8)
    chunks = torch.cat([ties_merge_trimmed(taus[:, r : r + 5], weights, thresholds) for r in range(0, 12, 5)])
    assert torch.equal(whole, chunks)


@pytest.mark.parametrize("path", ["dense", "blocks"])
@pytest.mark.parametrize("chunk_elements", [7, 64, 1 << 16])
@pytest.mark.parametrize("method, weighting", [("ties", "sma"), ("ties", "ema"), ("linear", "ema")])
def test_streamed_module_merge_equals_the_reference(chunk_elements, method, weighting, path, monkeypatch):
    import teacher.merge as merge
    from teacher.merge import merge_module

    if path == "blocks":  # the large-module path, eager (the compiled step is checked in the slow tier)
        monkeypatch.setattr(merge, "COMPILE_MIN_ELEMENTS", 0)
        monkeypatch.setattr(merge, "_compiled", False)

    g = torch.Generator().manual_seed(1)
    pairs = [(torch.randn(3, 10, generator=g), torch.randn(12, 3, generator=g)) for _ in range(5)]
    weights = sma_weights(5) if weighting == "sma" else ema_weights(5)
    full = torch.stack([2.0 * b @ a for a, b in pairs])
    thresholds = [trim_threshold(t, 0.6) for t in full]
    merged = merge_module(pairs, weights, 2.0, method, thresholds, chunk_elements)
    expected = ties_merge(full, weights, 0.6) if method == "ties" else linear_merge(full, weights)
    assert torch.allclose(merged, expected, atol=1e-5)


@pytest.mark.slow
def test_compiled_block_step_equals_the_reference(monkeypatch):
    import teacher.merge as merge

    monkeypatch.setattr(merge, "COMPILE_MIN_ELEMENTS", 0)
    monkeypatch.setattr(merge, "_compiled", None)
    g = torch.Generator().manual_seed(2)
    pairs = [(torch.randn(4, 300, generator=g), torch.randn(50, 4, generator=g)) for _ in range(6)]
    full = torch.stack([0.5 * b @ a for a, b in pairs])
    thresholds = [trim_threshold(t, 0.8) for t in full]
    merged = merge.merge_module(pairs, ema_weights(6), 0.5, "ties", thresholds, chunk_elements=3000)
    assert merge._compiled not in (None, False)  # it did compile here
    assert torch.allclose(merged, ties_merge(full, ema_weights(6), 0.8), atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["ties", "linear"])
def test_merge_on_cuda_equals_the_cpu_merge(method):
    """The teacher merges on its own device; a GPU merge computes what the CPU merge computes."""
    from teacher.merge import merge_module

    g = torch.Generator().manual_seed(3)
    pairs = [(torch.randn(16, 512, generator=g), torch.randn(2048, 16, generator=g)) for _ in range(4)]
    thresholds = [trim_threshold(2.0 * b @ a, 0.8) for a, b in pairs]
    on_cpu = merge_module(pairs, ema_weights(4), 2.0, method, thresholds)
    on_gpu = merge_module([(a.cuda(), b.cuda()) for a, b in pairs], ema_weights(4), 2.0, method, thresholds)
    assert on_gpu.device.type == "cuda"
    # Entries within round-off of a trim threshold may be kept on one device and not the other.
    close = torch.isclose(on_gpu.cpu(), on_cpu, atol=1e-4, rtol=1e-4)
    assert close.float().mean() > 0.999
